//! The type checker: walks each compiled CEL expression against the declared
//! schema ([`crate::schema`]) and rejects, at load time, what would otherwise
//! only fail (or silently be false) per event: unknown fields and functions,
//! wrong argument types, comparisons across types, non-boolean conditions.

use cel::common::ast::{operators as op, CallExpr, ComprehensionExpr, Expr, LiteralValue};
use cel::{IdedExpr, Program};

use crate::schema::{self, Decl2, Ty, MAX_WINDOW_MS};
use crate::symbols;

/// What an expression may see where it is written.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Scope {
    /// `event` is bound (not after a wait, where no event is being processed).
    pub event: bool,
    /// `key` is bound (everywhere but in the `key` expression itself).
    pub key: bool,
}

/// A problem inside an expression, at a character offset of its source.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct TypeError {
    pub offset: usize,
    pub message: String,
    pub hint: String,
}

/// Type-checks `program`, returning its type or every problem found.
pub(crate) fn check(program: &Program, scope: Scope) -> Result<Ty, Vec<TypeError>> {
    let mut c = Checker {
        program,
        scope,
        locals: Vec::new(),
        errors: Vec::new(),
    };
    let ty = c.ty(program.expression());
    if c.errors.is_empty() {
        Ok(ty)
    } else {
        Err(c.errors)
    }
}

struct Checker<'a> {
    program: &'a Program,
    scope: Scope,
    locals: Vec<(String, Ty)>,
    errors: Vec<TypeError>,
}

impl Checker<'_> {
    /// Records a problem at node `id` and returns `Dyn`, so one mistake is
    /// reported once rather than at every enclosing node.
    fn fail(&mut self, id: u64, message: String, hint: impl Into<String>) -> Ty {
        let offset = self
            .program
            .source_info()
            .offset_for(id)
            .map_or(0, |(start, _)| start as usize);
        self.errors.push(TypeError {
            offset,
            message,
            hint: hint.into(),
        });
        Ty::Dyn
    }

    fn ty(&mut self, e: &IdedExpr) -> Ty {
        match &e.expr {
            Expr::Literal(l) => self.literal(e.id, l),
            Expr::Ident(name) => self.ident(e.id, name),
            Expr::Select(s) if s.test => self.fail(
                e.id,
                "has() is not supported".into(),
                "absent event fields read as \"\", 0 or false: compare with those",
            ),
            Expr::Select(s) => {
                let operand = self.ty(&s.operand);
                self.select(e.id, operand, &s.field)
            }
            Expr::Call(call) => self.call(e.id, call),
            Expr::List(l) => {
                let tys: Vec<Ty> = l.elements.iter().map(|x| self.ty(x)).collect();
                Ty::List(Box::new(unify_all(&tys)))
            }
            Expr::Map(_) | Expr::Struct(_) => self.fail(
                e.id,
                "map and message literals are not supported".into(),
                "compare fields one by one, or use a list with `in`",
            ),
            Expr::Comprehension(c) => self.comprehension(c),
            Expr::Unspecified => Ty::Dyn,
        }
    }

    fn literal(&mut self, id: u64, l: &LiteralValue) -> Ty {
        match l {
            LiteralValue::Boolean(_) => Ty::Bool,
            LiteralValue::Int(_) => Ty::Int,
            LiteralValue::UInt(_) => Ty::Uint,
            LiteralValue::Double(_) => Ty::Double,
            LiteralValue::String(_) => Ty::String,
            LiteralValue::Null => Ty::Null,
            LiteralValue::Bytes(_) => self.fail(
                id,
                "bytes literals are not supported".into(),
                "use a string",
            ),
        }
    }

    fn ident(&mut self, id: u64, name: &str) -> Ty {
        if let Some((_, t)) = self.locals.iter().rev().find(|(n, _)| n == name) {
            return t.clone();
        }
        match name {
            "event" if !self.scope.event => self.fail(
                id,
                "`event` is not available here: this runs after a wait, when no event is processed".into(),
                "use `key` or `profile.*`, or put what you need from the event into the journey's `key`",
            ),
            "key" if !self.scope.key => self.fail(
                id,
                "`key` is not available in the `key` expression itself".into(),
                "derive the key from `event.*` or `profile.*`",
            ),
            _ => match schema::field(name) {
                Some(f) => f.1.ty(f.0),
                None => self.fail(
                    id,
                    format!("unknown name `{name}`"),
                    "expressions may use `event`, `profile`, `now` and `key`",
                ),
            },
        }
    }

    fn select(&mut self, id: u64, operand: Ty, field: &str) -> Ty {
        match operand {
            Ty::Record(path) => {
                let full = format!("{path}.{field}");
                match schema::field(&full) {
                    Some(f) => f.1.ty(f.0),
                    None => {
                        let what = path.split('.').next().unwrap_or(path);
                        self.fail(
                            id,
                            format!("unknown {what} field `{full}`"),
                            format!(
                                "fields of `{path}` are: {}",
                                schema::fields_under(path).join(", ")
                            ),
                        )
                    }
                }
            }
            Ty::Map(_, v) => *v,
            Ty::Dyn => Ty::Dyn,
            other => self.fail(
                id,
                format!("`{other}` has no field `{field}`"),
                "select fields of `event`, `event.commerce` etc. or `profile` only",
            ),
        }
    }

    fn call(&mut self, id: u64, call: &CallExpr) -> Ty {
        if let Some(target) = &call.target {
            return self.member_call(id, target, call);
        }
        let args: Vec<Ty> = call.args.iter().map(|a| self.ty(a)).collect();
        let name = call.func_name.as_str();
        match name {
            op::LOGICAL_AND | op::LOGICAL_OR => self.bools(id, name, &args),
            op::LOGICAL_NOT => self.bools(id, name, &args),
            op::NOT_STRICTLY_FALSE => Ty::Bool,
            op::EQUALS | op::NOT_EQUALS => self.equality(id, call, &args),
            op::LESS | op::LESS_EQUALS | op::GREATER | op::GREATER_EQUALS => {
                self.ordering(id, &args)
            }
            op::ADD | op::SUBSTRACT | op::MULTIPLY | op::DIVIDE | op::MODULO => {
                self.arithmetic(id, name, &args)
            }
            op::NEGATE => match &args[..] {
                [t] if t.is_numeric() || matches!(t, Ty::Duration | Ty::Dyn) => t.clone(),
                _ => self.fail(
                    id,
                    "`-` needs a number or duration".into(),
                    "negate a number",
                ),
            },
            op::CONDITIONAL => self.conditional(id, &args),
            op::INDEX => self.index(id, &args),
            op::IN => self.membership(id, call, &args),
            _ => self.global_function(id, call, &args),
        }
    }

    fn bools(&mut self, id: u64, name: &str, args: &[Ty]) -> Ty {
        if let Some(t) = args.iter().find(|t| !matches!(t, Ty::Bool | Ty::Dyn)) {
            let op = name.trim_matches('_');
            return self.fail(
                id,
                format!("`{op}` needs bool operands, got {t}"),
                "compare the value, e.g. `x > 0` or `x != \"\"`",
            );
        }
        Ty::Bool
    }

    fn equality(&mut self, id: u64, call: &CallExpr, args: &[Ty]) -> Ty {
        let [a, b] = args else { return Ty::Bool };
        if !comparable(a, b) {
            return self.fail(
                id,
                format!("cannot compare {a} with {b}"),
                "compare values of one type: quote strings, leave numbers bare, or convert with int(), double() or string()",
            );
        }
        self.symbol_literals(&call.args[0], &call.args[1]);
        self.symbol_literals(&call.args[1], &call.args[0]);
        Ty::Bool
    }

    fn ordering(&mut self, id: u64, args: &[Ty]) -> Ty {
        let [a, b] = args else { return Ty::Bool };
        let ok = (a.is_numeric() && b.is_numeric())
            || matches!((a, b), (Ty::Dyn, _) | (_, Ty::Dyn))
            || (a == b && matches!(a, Ty::String | Ty::Timestamp | Ty::Duration | Ty::Bool));
        if !ok {
            return self.fail(
                id,
                format!("cannot order {a} against {b}"),
                "compare numbers with numbers, timestamps with timestamps (e.g. `now - duration(\"72h\")`)",
            );
        }
        Ty::Bool
    }

    fn arithmetic(&mut self, id: u64, name: &str, args: &[Ty]) -> Ty {
        let [a, b] = args else { return Ty::Dyn };
        use Ty::*;
        let result = match (name, a, b) {
            (_, Dyn, _) | (_, _, Dyn) => Some(Dyn),
            (_, x, y) if x == y && x.is_numeric() => Some(x.clone()),
            (op::ADD, String, String) => Some(String),
            (op::ADD, List(x), List(y)) => Some(List(Box::new(unify(x, y)))),
            (op::ADD, Timestamp, Duration) | (op::ADD, Duration, Timestamp) => Some(Timestamp),
            (op::ADD | op::SUBSTRACT, Duration, Duration) => Some(Duration),
            (op::SUBSTRACT, Timestamp, Duration) => Some(Timestamp),
            (op::SUBSTRACT, Timestamp, Timestamp) => Some(Duration),
            _ => None,
        };
        match result {
            Some(t) => t,
            None => self.fail(
                id,
                format!(
                    "`{}` is not defined for {a} and {b}",
                    name.trim_matches('_')
                ),
                "CEL does not mix int and double: convert one side with int() or double()",
            ),
        }
    }

    fn conditional(&mut self, id: u64, args: &[Ty]) -> Ty {
        let [c, a, b] = args else { return Ty::Dyn };
        if !matches!(c, Ty::Bool | Ty::Dyn) {
            return self.fail(
                id,
                format!("`? :` needs a bool condition, got {c}"),
                "compare the value",
            );
        }
        if !comparable(a, b) {
            return self.fail(
                id,
                format!("the branches of `? :` differ: {a} and {b}"),
                "make both branches the same type",
            );
        }
        unify(a, b)
    }

    fn index(&mut self, id: u64, args: &[Ty]) -> Ty {
        match args {
            [Ty::List(t), Ty::Int | Ty::Uint | Ty::Dyn] => (**t).clone(),
            [Ty::Map(_, v), _] => (**v).clone(),
            [Ty::Dyn, _] => Ty::Dyn,
            [a, b] => self.fail(
                id,
                format!("cannot index {a} with {b}"),
                "index lists with an int, maps with a key",
            ),
            _ => Ty::Dyn,
        }
    }

    fn membership(&mut self, id: u64, call: &CallExpr, args: &[Ty]) -> Ty {
        match args {
            [x, Ty::List(t)] if comparable(x, t) => {
                if let Expr::List(l) = &call.args[1].expr {
                    for el in &l.elements {
                        self.symbol_literals(el, &call.args[0]);
                    }
                }
                Ty::Bool
            }
            [x, Ty::Map(k, _)] if comparable(x, k) => Ty::Bool,
            [_, Ty::Dyn] => Ty::Bool,
            [x, c] => self.fail(
                id,
                format!("`in` cannot look for {x} in {c}"),
                "use `x in [\"a\", \"b\"]` with elements of x's type",
            ),
            _ => Ty::Bool,
        }
    }

    /// Checks a string literal compared with `event.event_type` / `event.channel`
    /// names a real symbol: a typo would otherwise make the condition never hold.
    fn symbol_literals(&mut self, literal: &IdedExpr, other: &IdedExpr) {
        let Expr::Literal(LiteralValue::String(s)) = &literal.expr else {
            return;
        };
        let Expr::Select(sel) = &other.expr else {
            return;
        };
        let is_event = matches!(&sel.operand.expr, Expr::Ident(n) if n == "event");
        let s = s.inner();
        match sel.field.as_str() {
            "event_type" if is_event && symbols::event_type(s).is_none() => {
                self.unknown_event_type(literal.id, s);
            }
            "channel" if is_event && symbols::channel(s).is_none() => {
                self.unknown_channel(literal.id, s);
            }
            _ => {}
        }
    }

    fn unknown_event_type(&mut self, id: u64, s: &str) {
        self.fail(
            id,
            format!("unknown event type {s:?}"),
            format!(
                "event types are: {}",
                symbols::list(&symbols::EVENT_TYPES, |e| e.as_str())
            ),
        );
    }

    fn unknown_channel(&mut self, id: u64, s: &str) {
        self.fail(
            id,
            format!("unknown channel {s:?}"),
            format!(
                "channels are: {}",
                symbols::list(&rapport_model::Channel::ALL, |c| c.as_str())
            ),
        );
    }

    fn global_function(&mut self, id: u64, call: &CallExpr, args: &[Ty]) -> Ty {
        let name = call.func_name.as_str();
        let expect = |want: &[&[Ty]]| want.iter().any(|w| args_match(args, w));
        let (ok, ret) = match name {
            "size" => (
                args.len() == 1 && matches!(args[0], Ty::String | Ty::List(_) | Ty::Map(..) | Ty::Dyn),
                Ty::Int,
            ),
            "duration" => {
                if let Some(s) = string_literal(&call.args[0]) {
                    self.window_literal(call.args[0].id, s, false);
                }
                (expect(&[&[Ty::String]]), Ty::Duration)
            }
            "timestamp" => (expect(&[&[Ty::String], &[Ty::Int]]), Ty::Timestamp),
            "int" => (args.len() == 1, Ty::Int),
            "double" => (args.len() == 1, Ty::Double),
            "string" => (args.len() == 1, Ty::String),
            _ => {
                return self.fail(
                    id,
                    format!("unknown function `{name}`"),
                    format!(
                        "functions are size, duration, timestamp, int, double, string, the string methods contains, startsWith, endsWith, matches, and profile.{}",
                        schema::PROFILE_FUNCTIONS.iter().map(|f| f.name).collect::<Vec<_>>().join(", profile.")
                    ),
                )
            }
        };
        if !ok {
            let got: Vec<String> = args.iter().map(ToString::to_string).collect();
            return self.fail(
                id,
                format!("`{name}` cannot take ({})", got.join(", ")),
                "see the function table in deploy/journeys/README.md",
            );
        }
        ret
    }

    fn member_call(&mut self, id: u64, target: &IdedExpr, call: &CallExpr) -> Ty {
        let this = self.ty(target);
        let args: Vec<Ty> = call.args.iter().map(|a| self.ty(a)).collect();
        let name = call.func_name.as_str();
        match (&this, name) {
            (Ty::Record("profile"), _) => self.profile_call(id, call, &args),
            (Ty::String | Ty::Dyn, "contains" | "startsWith" | "endsWith" | "matches") => {
                if !args_match(&args, &[Ty::String]) {
                    return self.fail(id, format!("`{name}` takes one string"), "pass a string");
                }
                Ty::Bool
            }
            (Ty::String | Ty::List(_) | Ty::Map(..) | Ty::Dyn, "size") if args.is_empty() => Ty::Int,
            _ => self.fail(
                id,
                format!("unknown function `{name}` on {this}"),
                "string methods are contains, startsWith, endsWith, matches and size; profile functions are listed in deploy/journeys/README.md",
            ),
        }
    }

    fn profile_call(&mut self, id: u64, call: &CallExpr, args: &[Ty]) -> Ty {
        let name = call.func_name.as_str();
        let Some(f) = schema::profile_function(name) else {
            return self.fail(
                id,
                format!("unknown profile function `profile.{name}`"),
                format!(
                    "profile functions are: {}",
                    schema::PROFILE_FUNCTIONS
                        .iter()
                        .map(|f| f.name)
                        .collect::<Vec<_>>()
                        .join(", ")
                ),
            );
        };
        let want: Vec<Ty> = f.args.iter().map(|a| a.ty()).collect();
        if !args_match(args, &want) {
            let got: Vec<String> = args.iter().map(ToString::to_string).collect();
            let want: Vec<String> = want.iter().map(ToString::to_string).collect();
            return self.fail(
                id,
                format!(
                    "`profile.{name}` takes ({}), got ({})",
                    want.join(", "),
                    got.join(", ")
                ),
                format!("profile.{name}: {}", f.doc),
            );
        }
        for (decl, arg) in f.args.iter().zip(&call.args) {
            self.argument_literal(*decl, arg);
        }
        f.ret.ty()
    }

    /// Checks literal arguments: event types, channels, windows.
    fn argument_literal(&mut self, decl: Decl2, arg: &IdedExpr) {
        match decl {
            Decl2::EventType => {
                if let Some(s) = string_literal(arg).filter(|s| symbols::event_type(s).is_none()) {
                    self.unknown_event_type(arg.id, s);
                }
            }
            Decl2::Channel => {
                if let Some(s) = string_literal(arg).filter(|s| symbols::channel(s).is_none()) {
                    self.unknown_channel(arg.id, s);
                }
            }
            Decl2::Window => {
                if let Expr::Call(c) = &arg.expr {
                    if let (Some(a), true) = (c.args.first(), c.func_name == "duration") {
                        if let Some(s) = string_literal(a) {
                            self.window_literal(a.id, s, true);
                        }
                    }
                }
            }
            _ => {}
        }
    }

    fn window_literal(&mut self, id: u64, s: &str, window: bool) {
        match crate::cel_duration_ms(s) {
            None => {
                self.fail(
                    id,
                    format!("{s:?} is not a CEL duration"),
                    "write hours, minutes, seconds: \"168h\", \"90m\", \"30s\" (CEL durations have no days)",
                );
            }
            Some(ms) if window && !(1..=MAX_WINDOW_MS).contains(&ms) => {
                self.fail(
                    id,
                    format!("window {s:?} is outside 1ms..2208h"),
                    "profiles keep counts for 92 days (2208h): use a shorter, non-zero window",
                );
            }
            Some(_) => {}
        }
    }

    fn comprehension(&mut self, c: &ComprehensionExpr) -> Ty {
        let range = self.ty(&c.iter_range);
        let (var, var2) = match range {
            Ty::List(t) => (*t, Ty::Dyn),
            Ty::Map(k, v) => (*k, *v),
            _ => (Ty::Dyn, Ty::Dyn),
        };
        let accu = self.ty(&c.accu_init);
        let depth = self.locals.len();
        self.locals.push((c.iter_var.clone(), var));
        if let Some(v2) = &c.iter_var2 {
            self.locals.push((v2.clone(), var2));
        }
        self.locals.push((c.accu_var.clone(), accu));
        self.ty(&c.loop_cond);
        let step = self.ty(&c.loop_step);
        self.locals.push((c.accu_var.clone(), step));
        let result = self.ty(&c.result);
        self.locals.truncate(depth);
        result
    }
}

fn string_literal(e: &IdedExpr) -> Option<&str> {
    match &e.expr {
        Expr::Literal(LiteralValue::String(s)) => Some(s.inner()),
        _ => None,
    }
}

/// Whether values of types `a` and `b` can be compared for equality.
fn comparable(a: &Ty, b: &Ty) -> bool {
    a == b
        || (a.is_numeric() && b.is_numeric())
        || matches!(
            (a, b),
            (Ty::Dyn, _) | (_, Ty::Dyn) | (Ty::Null, _) | (_, Ty::Null)
        )
        || matches!((a, b), (Ty::List(_), Ty::List(_)))
}

fn unify(a: &Ty, b: &Ty) -> Ty {
    if a == b {
        a.clone()
    } else {
        Ty::Dyn
    }
}

fn unify_all(tys: &[Ty]) -> Ty {
    match tys.split_first() {
        None => Ty::Dyn,
        Some((first, rest)) => rest.iter().fold(first.clone(), |acc, t| unify(&acc, t)),
    }
}

fn args_match(got: &[Ty], want: &[Ty]) -> bool {
    got.len() == want.len()
        && got.iter().zip(want).all(|(g, w)| {
            g == w
                || matches!(g, Ty::Dyn)
                || (g.is_numeric() && w.is_numeric() && matches!(w, Ty::Double))
        })
}

//! Reading CEL source text back from a parsed expression: the conditions of a
//! journey are split at `&&` and each part shown to people as they wrote it
//! (in action reasons and decisions), so the loader needs the text of a
//! subtree and the character offsets of the parser's positions.

use cel::common::ast::{operators as op, Expr as Ast};
use cel::IdedExpr;

/// The parts of a top-level `a && b && ...`, in order (`e` itself otherwise).
pub(crate) fn split_and<'a>(e: &'a IdedExpr, out: &mut Vec<&'a IdedExpr>) {
    match &e.expr {
        Ast::Call(c) if c.func_name == op::LOGICAL_AND && c.target.is_none() => {
            for a in &c.args {
                split_and(a, out);
            }
        }
        _ => out.push(e),
    }
}

/// Whether CEL function `name` is a comparison operator (`==`, `<`, ...).
pub(crate) fn is_comparison(name: &str) -> bool {
    [
        op::EQUALS,
        op::NOT_EQUALS,
        op::LESS,
        op::LESS_EQUALS,
        op::GREATER,
        op::GREATER_EQUALS,
    ]
    .contains(&name)
}

/// The source text of the subtree at `e`, from the offsets of all its nodes.
pub(crate) fn node_text(program: &cel::Program, e: &IdedExpr, chars: &[char]) -> Option<String> {
    let mut lo = usize::MAX;
    let mut hi = 0;
    visit(e, &mut |n| {
        if let Some((s, t)) = program.source_info().offset_for(n.id) {
            lo = lo.min(s as usize);
            hi = hi.max(t as usize + 1);
        }
    });
    if lo >= hi {
        return None;
    }
    // Offsets mark where tokens start: complete the last identifier, then close
    // what is open (calls, lists, strings).
    let mut hi = hi.min(chars.len());
    while hi < chars.len() && (chars[hi].is_alphanumeric() || chars[hi] == '_') {
        hi += 1;
    }
    let mut text: String = chars.get(lo..hi)?.iter().collect();
    let mut open: Vec<char> = Vec::new();
    let mut quote: Option<char> = None;
    for &ch in &chars[lo..hi] {
        track(ch, &mut open, &mut quote);
    }
    let mut i = hi;
    while i < chars.len() && (!open.is_empty() || quote.is_some()) {
        track(chars[i], &mut open, &mut quote);
        text.push(chars[i]);
        i += 1;
    }
    Some(text.trim().to_owned())
}

/// Follows brackets and quotes, to know what is still open.
fn track(ch: char, open: &mut Vec<char>, quote: &mut Option<char>) {
    match (*quote, ch) {
        (Some(q), c) if c == q => *quote = None,
        (Some(_), _) => {}
        (None, '"' | '\'') => *quote = Some(ch),
        (None, '(') => open.push(')'),
        (None, '[') => open.push(']'),
        (None, '{') => open.push('}'),
        (None, ')' | ']' | '}') => {
            open.pop();
        }
        _ => {}
    }
}

fn visit(e: &IdedExpr, f: &mut impl FnMut(&IdedExpr)) {
    f(e);
    match &e.expr {
        Ast::Call(c) => {
            if let Some(t) = &c.target {
                visit(t, f);
            }
            c.args.iter().for_each(|a| visit(a, f));
        }
        Ast::Select(s) => visit(&s.operand, f),
        Ast::List(l) => l.elements.iter().for_each(|x| visit(x, f)),
        Ast::Comprehension(c) => visit(&c.iter_range, f),
        _ => {}
    }
}

/// The character offset of CEL parser position (line 1-based, column 0-based).
pub(crate) fn char_offset(source: &str, line: isize, column: isize) -> usize {
    let line = line.max(1) as usize;
    let before: usize = source
        .split_inclusive('\n')
        .take(line - 1)
        .map(|l| l.chars().count())
        .sum();
    before + column.max(0) as usize
}

//! Event-type guards: the event types for which a condition can hold at all,
//! read from its syntax tree once at load time. The evaluator skips the CEL
//! program for any other event, which is most of them for conditions such as
//! `cancel_when = "event.event_type in ['return', 'refund_requested']"` that
//! are checked on every event of a customer inside a journey.

use cel::common::ast::{operators as op, Expr, IdedExpr, LiteralValue};
use rapport_model::EventType;

use crate::symbols;

/// A set of event types, one bit per [`EventType`].
pub type EventTypes = u32;

/// The bit of `t`.
pub fn bit(t: EventType) -> EventTypes {
    1 << (t as u32)
}

/// The event types outside of which `e` is certainly false; `None` when the
/// expression does not say (then it is always evaluated).
pub(crate) fn event_types(e: &IdedExpr) -> Option<EventTypes> {
    let Expr::Call(c) = &e.expr else {
        return None;
    };
    if c.target.is_some() {
        return None;
    }
    match (c.func_name.as_str(), c.args.as_slice()) {
        (op::LOGICAL_AND, [a, b]) => match (event_types(a), event_types(b)) {
            (Some(x), Some(y)) => Some(x & y),
            (Some(x), None) | (None, Some(x)) => Some(x),
            (None, None) => None,
        },
        (op::LOGICAL_OR, [a, b]) => Some(event_types(a)? | event_types(b)?),
        (op::EQUALS, [a, b]) => {
            if is_event_type(a) {
                literal_type(b).map(bit)
            } else if is_event_type(b) {
                literal_type(a).map(bit)
            } else {
                None
            }
        }
        (op::IN, [a, list]) if is_event_type(a) => {
            let Expr::List(l) = &list.expr else {
                return None;
            };
            l.elements
                .iter()
                .map(|el| literal_type(el).map(bit))
                .try_fold(0, |acc, b| Some(acc | b?))
        }
        _ => None,
    }
}

/// Whether `e` is `event.event_type`.
fn is_event_type(e: &IdedExpr) -> bool {
    matches!(&e.expr, Expr::Select(s)
        if !s.test && s.field == "event_type"
            && matches!(&s.operand.expr, Expr::Ident(n) if n == "event"))
}

fn literal_type(e: &IdedExpr) -> Option<EventType> {
    match &e.expr {
        Expr::Literal(LiteralValue::String(s)) => symbols::event_type(s.inner()),
        _ => None,
    }
}

/// The field path of an expression that only reads one event field, e.g.
/// `event.commerce.sku` gives `commerce.sku`: such a journey key or template
/// part is read directly, without running CEL.
pub(crate) fn event_path(e: &IdedExpr) -> Option<String> {
    fn walk(e: &IdedExpr, out: &mut Vec<String>) -> bool {
        match &e.expr {
            Expr::Ident(n) if n == "event" => true,
            Expr::Select(s) if !s.test => {
                let ok = walk(&s.operand, out);
                out.push(s.field.clone());
                ok
            }
            _ => false,
        }
    }
    let mut parts = Vec::new();
    (walk(e, &mut parts) && !parts.is_empty()).then(|| parts.join("."))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn guard(src: &str) -> Option<EventTypes> {
        let env = crate::bind::environment();
        event_types(env.compile(src).unwrap().expression())
    }

    #[test]
    fn guards_are_read_from_equalities_memberships_and_their_combinations() {
        let (d, r) = (bit(EventType::Delivered), bit(EventType::Return));
        assert_eq!(guard("event.event_type == 'delivered'"), Some(d));
        assert_eq!(guard("'delivered' == event.event_type"), Some(d));
        assert_eq!(
            guard("event.event_type in ['delivered', 'return']"),
            Some(d | r)
        );
        assert_eq!(
            guard("event.event_type == 'delivered' && profile.orders > 1"),
            Some(d)
        );
        assert_eq!(
            guard("event.event_type == 'delivered' || event.event_type == 'return'"),
            Some(d | r)
        );
        // Anything that could hold for another event type has no guard.
        assert_eq!(
            guard("event.event_type == 'delivered' || profile.orders > 1"),
            None
        );
        assert_eq!(guard("event.event_type != 'delivered'"), None);
        assert_eq!(guard("profile.orders > 1"), None);
    }

    #[test]
    fn plain_event_fields_are_recognised() {
        let env = crate::bind::environment();
        let path = |s: &str| event_path(env.compile(s).unwrap().expression());
        assert_eq!(path("event.commerce.sku").as_deref(), Some("commerce.sku"));
        assert_eq!(path("event.event_id").as_deref(), Some("event_id"));
        assert_eq!(path("event.commerce.sku + 'x'"), None);
        assert_eq!(path("profile.orders"), None);
    }
}

//! Per-customer action order across the two alternating producers.
//!
//! An interval's actions go out on one producer while the previous interval is
//! still being flushed and committed on the other, so without care an action for
//! a customer could land in the action topic before an earlier one for the same
//! customer (an escalation before its alert ticket). An action whose customer had
//! actions in the interval still committing is held, with every later action of
//! that customer, until every record of that interval is acknowledged (each
//! has its offset then, so a record sent later lands after it; the interval's
//! transaction may still be committing); then they go out in the order they
//! were decided. Other customers' actions are not delayed, so the overlap that
//! makes exactly-once fast stays.

use compact_str::CompactString;
use hashbrown::HashSet;
use rapport_model::Action;

/// Which customers' actions are in flight, and what waits for them.
#[derive(Default)]
pub(super) struct ActionOrder {
    /// Customers with actions in the interval committing in the background.
    committing: HashSet<CompactString>,
    /// Customers with actions sent in the current interval.
    current: HashSet<CompactString>,
    /// Actions waiting for the committing interval, in decision order.
    held: Vec<Action>,
    held_keys: HashSet<CompactString>,
}

impl ActionOrder {
    /// `a` back when it may be sent now; `None` when it is held.
    pub fn admit(&mut self, a: Action) -> Option<Action> {
        let key = key_of(&a);
        if self.committing.contains(&key) || self.held_keys.contains(&key) {
            self.held_keys.insert(key);
            self.held.push(a);
            return None;
        }
        self.current.insert(key);
        Some(a)
    }

    /// The committing interval's records are acknowledged: the held actions,
    /// to send now (in the current interval).
    pub fn delivered(&mut self) -> Vec<Action> {
        if self.committing.is_empty() && self.held.is_empty() {
            return Vec::new();
        }
        self.committing.clear();
        self.held_keys.clear();
        let held = std::mem::take(&mut self.held);
        for a in &held {
            self.current.insert(key_of(a));
        }
        held
    }

    /// The current interval starts committing.
    pub fn interval_committing(&mut self) {
        self.committing = std::mem::take(&mut self.current);
    }

    /// Forgets everything (the uncommitted work was dropped).
    pub fn clear(&mut self) {
        *self = ActionOrder::default();
    }

    /// Actions held back right now.
    #[cfg(test)]
    pub fn held(&self) -> usize {
        self.held.len()
    }
}

/// The customer an action is for (its key on the action topic); short ids are
/// held inline.
fn key_of(a: &Action) -> CompactString {
    CompactString::from(a.customer_id.as_str())
}

#[cfg(test)]
mod tests {
    use super::*;
    use rapport_model::{ActionKind, DeliveryChannel};

    fn action(id: &str, customer: &str) -> Action {
        Action {
            action_id: id.into(),
            customer_id: customer.into(),
            kind: ActionKind::AlertTicket,
            journey: "j".into(),
            trigger_event_id: "e".into(),
            trigger_event_time: 0,
            channel: DeliveryChannel::CallCenter,
            payload: Default::default(),
            reasons: vec![],
            emotional_state: None,
        }
    }

    #[test]
    fn a_customer_with_actions_committing_waits_and_keeps_its_order() {
        let mut o = ActionOrder::default();
        assert!(o.admit(action("a1", "c-1")).is_some());
        o.interval_committing();
        // c-1 has an action committing: its next two wait, c-2 does not.
        assert!(o.admit(action("a2", "c-1")).is_none());
        assert!(o.admit(action("b1", "c-2")).is_some());
        assert!(o.admit(action("a3", "c-1")).is_none());
        assert_eq!(o.held(), 2);
        let released: Vec<String> = o.delivered().into_iter().map(|a| a.action_id).collect();
        assert_eq!(released, ["a2", "a3"]);
        // Released actions belong to the current interval now.
        o.interval_committing();
        assert!(o.admit(action("a4", "c-1")).is_none());
        assert!(o.admit(action("b2", "c-2")).is_none());
    }
}

//! Identity stitching: one customer, one profile, across partitions.
//!
//! A shopper browses under an anonymous id `A` (profile `A`, on the partition
//! of `A`), then logs in as customer `C` (profile `C`, on the partition of
//! `C`). The touchpoint that first names both links them, and `A`'s history
//! moves into `C`'s profile. The two profiles may live on different
//! partitions and instances, so the move is a re-keying done with Kafka's own
//! machinery, the way Kafka Streams re-keys: an internal repartition topic,
//! co-partitioned with the input and consumed by the same group, whose records
//! are produced in the same transaction as the rest of the engine's output.
//!
//! The merge protocol ([`Message`]):
//!
//! 1. `C`'s partition sees the linking touchpoint. Unless a limit refuses the
//!    link ([`IdentityConfig`]: junk ids, too many anonymous ids per window),
//!    it notes a merge awaited from `A` (a merge id), holds the touchpoint and
//!    every later record of `C`, and sends a [`Message::LinkRequest`] keyed by
//!    `A` to `A`'s partition.
//! 2. `A`'s partition, after everything already routed to `A`, records the
//!    link `A -> C` (the identity stage's state: a stub left under `A`'s key,
//!    changelogged like any profile) and sends `A`'s whole profile (counters,
//!    windows, journeys, waits with their original due times, caps used) to `C`
//!    as a [`Message::Transfer`]. Later records keyed `A` follow the link as
//!    [`Message::Forward`]s.
//! 3. `C`'s partition absorbs the transfer once (the merge id is struck from
//!    the awaited list; a repeat finds nothing to strike) with commutative
//!    rules ([`rapport_model::Profile::absorb`]), then applies the held
//!    records in their order, so the anonymous history counts for them.
//!
//! Every step is a record of a transaction that also carries the consumed
//! offsets and the changed state, so a crash at any point redoes the step or
//! finds it done. Two known customers are never merged: an anonymous id that
//! already belongs to `C1` and logs in as `C2` is re-pointed to `C2` (the
//! latest login) with an identity conflict recorded, and `C2` receives no
//! history. Merges, conflicts and refused links go to the identity-events
//! topic ([`IdentityEvent`]).

pub mod topics;

use serde::{Deserialize, Serialize};

use rapport_model::duration::parse_duration;
use rapport_model::Touchpoint;

/// The `[identity]` section.
#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct IdentityConfig {
    /// Stitch anonymous histories into customers' profiles (default on).
    pub stitching: bool,
    /// The internal repartition topic; default `<group_id>-identity-repartition`.
    pub repartition_topic: String,
    /// Where merges, conflicts and refused links are recorded; empty turns it off.
    pub events_topic: String,
    /// At most this many anonymous ids are linked to one customer within `window`.
    pub max_anonymous_ids: usize,
    /// The window of `max_anonymous_ids`, e.g. `"30d"`.
    pub window: String,
    /// How long an anonymous id keeps following its customer after the link,
    /// e.g. `"90d"`; after that its records start a fresh anonymous profile.
    pub link_ttl: String,
    /// Identifiers never linked, as regular expressions matched against the whole
    /// id (beside the built-in empty, `null`, `undefined`, `anonymous` and all zeros).
    pub junk_patterns: Vec<String>,
    /// Records of one customer held while a merge is awaited; beyond it they are
    /// applied without waiting (the merge still arrives and is absorbed).
    pub max_held: usize,
}

impl Default for IdentityConfig {
    fn default() -> Self {
        IdentityConfig {
            stitching: true,
            repartition_topic: String::new(),
            events_topic: "rapport-identity-events".into(),
            max_anonymous_ids: 10,
            window: "30d".into(),
            link_ttl: "90d".into(),
            junk_patterns: Vec::new(),
            max_held: 1000,
        }
    }
}

impl IdentityConfig {
    /// The repartition topic for consumer group `group_id`.
    pub fn repartition(&self, group_id: &str) -> String {
        match self.repartition_topic.trim().is_empty() {
            true => format!("{group_id}-identity-repartition"),
            false => self.repartition_topic.clone(),
        }
    }

    /// Checks the section; the offending key and why.
    pub fn validate(&self, inputs: &[String]) -> Result<(), (&'static str, String)> {
        if !self.stitching {
            return Ok(());
        }
        if inputs.contains(&self.repartition_topic) || inputs.contains(&self.events_topic) {
            return Err((
                "identity.repartition_topic",
                "names a touchpoint topic; the identity topics are Rapport's own".into(),
            ));
        }
        if self.max_anonymous_ids == 0 {
            return Err((
                "identity.max_anonymous_ids",
                "is 0: no anonymous id could ever be linked; use at least 1 (default 10), or set identity.stitching = false".into(),
            ));
        }
        if self.max_held == 0 {
            return Err((
                "identity.max_held",
                "must be at least 1 (default 1000)".into(),
            ));
        }
        for (key, text) in [
            ("identity.window", &self.window),
            ("identity.link_ttl", &self.link_ttl),
        ] {
            match parse_duration(text) {
                Ok(ms) if ms > 0 => {}
                Ok(_) => return Err((key, format!("{text:?} is not a positive duration"))),
                Err(e) => return Err((key, e)),
            }
        }
        self.rules().map(|_| ())
    }

    /// The compiled rules, once the section is valid.
    pub fn rules(&self) -> Result<IdentityRules, (&'static str, String)> {
        let mut junk = Vec::new();
        for p in &self.junk_patterns {
            let re = regex_lite::Regex::new(&format!("^(?:{p})$")).map_err(|e| {
                (
                    "identity.junk_patterns",
                    format!("{p:?} is not a regular expression: {e}"),
                )
            })?;
            junk.push(re);
        }
        let ms = |t: &str| parse_duration(t).unwrap_or(0);
        Ok(IdentityRules {
            max_anonymous_ids: self.max_anonymous_ids,
            window_ms: ms(&self.window),
            link_ttl_ms: ms(&self.link_ttl),
            max_held: self.max_held,
            junk,
        })
    }
}

/// What the processor checks links against, compiled from [`IdentityConfig`].
#[derive(Debug, Clone)]
pub struct IdentityRules {
    /// Anonymous ids linked to one customer within `window_ms`, at most.
    pub max_anonymous_ids: usize,
    /// The window of `max_anonymous_ids`, ms.
    pub window_ms: i64,
    /// How long a link is followed, ms.
    pub link_ttl_ms: i64,
    /// Records held per customer while a merge is awaited, at most.
    pub max_held: usize,
    junk: Vec<regex_lite::Regex>,
}

impl IdentityRules {
    /// True for an identifier that must never be linked: empty, `null`,
    /// `undefined`, `anonymous`, `unknown`, `none`, nothing but zeros and
    /// separators (`0`, `00000000-0000-0000-0000-000000000000`), or one of the
    /// configured patterns. Such ids are shared by many people.
    pub fn is_junk(&self, id: &str) -> bool {
        let t = id.trim();
        if t.is_empty()
            || ["null", "undefined", "anonymous", "unknown", "none", "nil"]
                .iter()
                .any(|j| t.eq_ignore_ascii_case(j))
            || t.bytes()
                .all(|b| matches!(b, b'0' | b'-' | b'_' | b':' | b'.'))
        {
            return true;
        }
        self.junk.iter().any(|re| re.is_match(t))
    }
}

/// The identity part of a stored profile: links, merges awaited and the
/// records held meanwhile. Kept beside the profile in the same stored record,
/// so it is committed, changelogged and restored with it.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct IdentityState {
    /// On an anonymous id whose history moved: the customer it belongs to now.
    pub linked_to: Option<Link>,
    /// On a customer: the anonymous ids its touchpoints named, oldest first,
    /// each with what became of the link (the per-window limit reads it).
    pub links: Vec<LinkEntry>,
    /// On a customer: merges requested and not received yet.
    pub awaiting: Vec<Awaiting>,
    /// On a customer awaiting a merge: the touchpoints held meanwhile, in
    /// arrival order.
    pub held: Vec<Held>,
}

/// An anonymous id a customer's touchpoint named.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LinkEntry {
    /// The anonymous id (as stored: the pseudonym when pseudonymization is on).
    pub anonymous_id: String,
    /// Event time of the touchpoint that named it, epoch ms.
    pub at_ms: i64,
    /// What became of it.
    pub state: LinkState,
    /// The partition that owns the anonymous id (from its clear id), where an
    /// erasure of the customer sends the link's removal.
    pub home: i32,
}

/// What became of an anonymous id a customer's touchpoint named.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum LinkState {
    /// Requested; the transfer has not arrived.
    Requested,
    /// Linked, its history merged (or it had none).
    Merged,
    /// Linked, re-pointed from another customer; nothing moved.
    Conflict,
    /// Not linked: the id is a known customer's.
    KnownCustomer,
    /// Not linked: the customer reached `max_anonymous_ids` within the window.
    LimitExceeded,
}

impl LinkState {
    /// True when the anonymous id's records follow this customer.
    pub fn linked(self) -> bool {
        matches!(
            self,
            LinkState::Requested | LinkState::Merged | LinkState::Conflict
        )
    }
}

/// A touchpoint held while a merge is awaited.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Held {
    /// The touchpoint as JSON (already pseudonymized).
    pub touchpoint: Vec<u8>,
    /// The partition of the anonymous id it names, when it may link one.
    pub home: Option<i32>,
}

impl IdentityState {
    /// True when nothing is recorded (the stored record then carries none).
    pub fn is_empty(&self) -> bool {
        self.linked_to.is_none()
            && self.links.is_empty()
            && self.awaiting.is_empty()
            && self.held.is_empty()
    }

    /// Anonymous ids linked within `window_ms` before `now_ms`.
    pub fn links_since(&self, now_ms: i64, window_ms: i64) -> usize {
        let since = now_ms.saturating_sub(window_ms);
        self.links
            .iter()
            .filter(|l| l.at_ms >= since && l.state.linked())
            .count()
    }

    /// The entry of `anonymous_id`, if a touchpoint named it.
    pub fn entry(&self, anonymous_id: &str) -> Option<&LinkEntry> {
        self.links.iter().find(|l| l.anonymous_id == anonymous_id)
    }
}

/// Where an anonymous id's records go after its history moved.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Link {
    /// The customer id (as stored: the pseudonym when pseudonymization is on).
    pub customer_id: String,
    /// The partition that owns the customer (computed from the clear id, which
    /// only the customer's partition sees).
    pub partition: i32,
    /// Event time of the link, epoch ms.
    pub at_ms: i64,
}

/// A merge requested from an anonymous id's partition and not received yet.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Awaiting {
    /// Identifies the merge; the transfer carries it back.
    pub merge_id: String,
    /// The anonymous id whose history is awaited.
    pub anonymous_id: String,
}

/// A record of the internal repartition topic.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum Message {
    /// To the anonymous id's partition: link it to the customer and send its history.
    LinkRequest {
        /// Identifies the merge.
        merge_id: String,
        /// The anonymous id.
        anonymous_id: String,
        /// The customer that logged in with it.
        customer_id: String,
        /// The partition that owns the customer.
        customer_partition: i32,
        /// Event time of the linking touchpoint, epoch ms.
        at_ms: i64,
    },
    /// To the customer's partition: the anonymous history, or why there is none.
    Transfer {
        /// The merge it answers.
        merge_id: String,
        /// The anonymous id.
        anonymous_id: String,
        /// The customer.
        customer_id: String,
        /// What the identity stage did.
        outcome: TransferOutcome,
        /// The anonymous profile in its stored encoding, base64 (none when it
        /// had no history or the link was refused).
        profile: Option<String>,
    },
    /// To the anonymous id's partition: the customer it was linked to is
    /// erased; remove what is kept under the anonymous id, and suppress it.
    Erase {
        /// The erasure request.
        request_id: String,
        /// The anonymous id.
        anonymous_id: String,
    },
    /// To the customer's partition: a touchpoint keyed by a linked anonymous id.
    Forward {
        /// The customer it belongs to.
        customer_id: String,
        /// The touchpoint (already pseudonymized).
        touchpoint: Box<Touchpoint>,
    },
}

/// What the identity stage did with a link request.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum TransferOutcome {
    /// Linked; the history (if any) is attached.
    Merged,
    /// Already linked to this customer: nothing more to move.
    AlreadyLinked,
    /// Linked to another customer before: re-pointed here, nothing moved (two
    /// known customers are never merged).
    Conflict,
    /// The id is itself a known customer's: not linked.
    KnownCustomer,
    /// The id was erased (its customer asked to be forgotten): not linked.
    Erased,
}

impl Message {
    /// The record value.
    pub fn encode(&self) -> Vec<u8> {
        serde_json::to_vec(self).unwrap_or_default()
    }

    /// Reads a record value.
    pub fn decode(bytes: &[u8]) -> Result<Message, serde_json::Error> {
        serde_json::from_slice(bytes)
    }
}

/// A record of the identity-events topic: a merge, a conflict or a refused link.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct IdentityEvent {
    /// `merged`, `conflict`, `limit_exceeded`, `known_customer`.
    pub kind: String,
    /// The anonymous id.
    pub anonymous_id: String,
    /// The customer it was (or would have been) linked to.
    pub customer_id: String,
    /// For a conflict: the customer the anonymous id belonged to before.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub previous_customer_id: Option<String>,
    /// The merge, when one was requested.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub merge_id: Option<String>,
    /// Event time of the linking touchpoint, epoch ms.
    pub at_ms: i64,
    /// What was moved, for a merge: touchpoints of the anonymous history.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub events_moved: Option<u64>,
}

/// A record the processor sends to the repartition topic.
#[derive(Debug, Clone, PartialEq)]
pub struct Outgoing {
    /// The partition that owns `key`.
    pub partition: i32,
    /// The id the message is for.
    pub key: String,
    /// The message.
    pub message: Message,
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rules(patterns: &[&str]) -> IdentityRules {
        IdentityConfig {
            junk_patterns: patterns.iter().map(|p| p.to_string()).collect(),
            ..Default::default()
        }
        .rules()
        .unwrap()
    }

    #[test]
    fn shared_placeholder_ids_are_junk() {
        let r = rules(&["test-.*"]);
        for junk in [
            "",
            " ",
            "null",
            "NULL",
            "undefined",
            "anonymous",
            "0",
            "00000000-0000-0000-0000-000000000000",
            "test-device",
        ] {
            assert!(r.is_junk(junk), "{junk:?} should be junk");
        }
        for fine in ["anon-1", "c-100", "0a", "protest-1"] {
            assert!(!r.is_junk(fine), "{fine:?} is a real id");
        }
    }

    #[test]
    fn a_bad_section_is_refused_with_its_key() {
        let bad = IdentityConfig {
            window: "soon".into(),
            ..Default::default()
        };
        assert_eq!(bad.validate(&[]).unwrap_err().0, "identity.window");
        let bad = IdentityConfig {
            junk_patterns: vec!["(".into()],
            ..Default::default()
        };
        assert_eq!(bad.validate(&[]).unwrap_err().0, "identity.junk_patterns");
        let bad = IdentityConfig {
            max_anonymous_ids: 0,
            ..Default::default()
        };
        assert_eq!(
            bad.validate(&[]).unwrap_err().0,
            "identity.max_anonymous_ids"
        );
        assert!(IdentityConfig::default().validate(&[]).is_ok());
    }

    #[test]
    fn links_count_within_the_window_only() {
        let entry = |id: &str, at_ms, state| LinkEntry {
            anonymous_id: id.into(),
            at_ms,
            state,
            home: 0,
        };
        let s = IdentityState {
            links: vec![
                entry("a", 0, LinkState::Merged),
                entry("b", 900, LinkState::Conflict),
                entry("c", 1000, LinkState::Requested),
                entry("d", 1000, LinkState::LimitExceeded),
            ],
            ..Default::default()
        };
        assert_eq!(s.links_since(1000, 100), 2);
        assert_eq!(s.links_since(1000, 10_000), 3);
    }

    #[test]
    fn messages_read_back_as_written() {
        let mut tp = rapport_model::testing::tp(
            "e1",
            "c",
            rapport_model::Channel::Web,
            rapport_model::EventType::ProductView,
            5,
        )
        .with_sku("sku-1");
        tp.customer_id = None;
        tp.anonymous_id = Some("anon-1".into());
        for m in [
            Message::LinkRequest {
                merge_id: "m".into(),
                anonymous_id: "a".into(),
                customer_id: "c".into(),
                customer_partition: 3,
                at_ms: 7,
            },
            Message::Forward {
                customer_id: "c".into(),
                touchpoint: Box::new(tp),
            },
        ] {
            assert_eq!(Message::decode(&m.encode()).unwrap(), m);
        }
    }
}

//! The merge protocol in one processor owning four partitions, with the
//! repartition topic simulated as per-partition queues: what crosses
//! partitions in the engine crosses them here.

use std::sync::Arc;

use rapport_model::testing::tp;
use rapport_model::{Action, Channel, EventType, Touchpoint};

use crate::config::{Partitioner, StateConfig};
use crate::identity::{IdentityConfig, IdentityEvent, LinkState};
use crate::ingest::route::KeyRule;
use crate::metrics::Metrics;
use crate::state::StateStore;

use super::{Outcome, Processor, Record, StitchRules};

const REPARTITION: &str = "g-identity-repartition";
const PARTITIONS: i32 = 4;
const T0: i64 = 1_764_000_000_000;

/// A processor owning every partition, and the repartition queues' offsets.
struct Cluster {
    p: Processor,
    rule: KeyRule,
    next: [i64; PARTITIONS as usize],
    input: [i64; PARTITIONS as usize],
    actions: Vec<Action>,
    events: Vec<IdentityEvent>,
    _dir: tempfile::TempDir,
}

impl Cluster {
    fn new(identity: IdentityConfig) -> Self {
        let dir = tempfile::tempdir().unwrap();
        let cfg = StateConfig {
            path: dir.path().to_owned(),
            block_cache_mb: 8,
            write_buffer_mb: 8,
            ..Default::default()
        };
        let journeys = Arc::new(rapport_journeys::CompiledJourneys::shipped().unwrap());
        let state = Arc::new(StateStore::open(&cfg).unwrap());
        let rule = KeyRule::new(Partitioner::Murmur2, PARTITIONS);
        let mut p = Processor::new(1 << 20, rule, journeys, state, Metrics::new(), 1 << 20)
            .unwrap()
            .with_stitching(StitchRules::of(&identity, REPARTITION.into()).unwrap());
        for n in 0..PARTITIONS {
            p.start_partition(n).unwrap();
        }
        Cluster {
            p,
            rule,
            next: [0; PARTITIONS as usize],
            input: [0; PARTITIONS as usize],
            actions: Vec::new(),
            events: Vec::new(),
            _dir: dir,
        }
    }

    /// Produces `t` to the touchpoint topic, keyed and partitioned by its identity.
    fn touch(&mut self, t: &Touchpoint) -> Outcome {
        let key = t.identity().unwrap().to_owned();
        let partition = self.rule.partition_of(key.as_bytes());
        let bytes = serde_json::to_vec(t).unwrap();
        let offset = self.input[partition as usize];
        self.input[partition as usize] += 1;
        let r = Record {
            topic: "touch",
            partition,
            offset,
            key: Some(key.as_bytes()),
            value: &bytes,
        };
        self.p.process(&r, &mut self.actions).unwrap()
    }

    /// Delivers the identity messages made so far, and those they make, until none are left.
    fn pump(&mut self) -> usize {
        let mut delivered = 0;
        loop {
            let out: Vec<_> = self.p.take_outbox().collect();
            self.events.extend(self.p.take_identity_events());
            if out.is_empty() {
                return delivered;
            }
            for o in out {
                let value = o.message.encode();
                let offset = self.next[o.partition as usize];
                self.next[o.partition as usize] += 1;
                let r = Record {
                    topic: REPARTITION,
                    partition: o.partition,
                    offset,
                    key: Some(o.key.as_bytes()),
                    value: &value,
                };
                let outcome = self.p.process(&r, &mut self.actions).unwrap();
                assert_eq!(outcome, Outcome::Applied, "{:?}", o.message);
                delivered += 1;
            }
        }
    }

    fn stored(&mut self, id: &str) -> Option<crate::state::Stored> {
        let p = self.rule.partition_of(id.as_bytes());
        let task = self.p.tasks.get_mut(&p).unwrap();
        let state = self.p.shared.state.clone();
        let mut out = None;
        task.update(&state, id, |s| {
            out = Some(s.clone());
            false
        })
        .unwrap();
        out.filter(|s| s.profile.events > 0 || s.identity.is_some())
    }

    fn guides(&self, customer: &str) -> usize {
        self.actions
            .iter()
            .filter(|a| a.customer_id == customer && a.journey == "hesitation_guide")
            .count()
    }
}

fn anon_view(event: &str, anon: &str, at: i64) -> Touchpoint {
    let mut t = tp(event, anon, Channel::Web, EventType::ProductView, at).with_sku("tv-55");
    t.customer_id = None;
    t.anonymous_id = Some(anon.into());
    t
}

fn login(event: &str, customer: &str, anon: &str, at: i64) -> Touchpoint {
    let mut t = tp(event, customer, Channel::Web, EventType::Identify, at);
    t.anonymous_id = Some(anon.into());
    t
}

fn view(event: &str, customer: &str, anon: Option<&str>, at: i64) -> Touchpoint {
    let mut t = tp(event, customer, Channel::Web, EventType::ProductView, at).with_sku("tv-55");
    t.anonymous_id = anon.map(Into::into);
    t
}

/// An anonymous id and a customer id that live on different partitions.
fn apart(rule: &KeyRule, n: usize) -> (String, String) {
    (0..)
        .map(|i| (format!("anon-{n}-{i}"), format!("c-{n}-{i}")))
        .find(|(a, c)| rule.partition_of(a.as_bytes()) != rule.partition_of(c.as_bytes()))
        .unwrap()
}

#[test]
fn anonymous_views_count_for_the_customer_once_the_history_moves() {
    let mut c = Cluster::new(IdentityConfig::default());
    let (anon, customer) = apart(&c.rule, 1);
    c.touch(&anon_view("v1", &anon, T0));
    c.touch(&anon_view("v2", &anon, T0 + 60_000));
    // The login and the next view arrive before the history does: both wait.
    c.touch(&login("l1", &customer, &anon, T0 + 120_000));
    c.touch(&view("v3", &customer, Some(&anon), T0 + 180_000));
    assert_eq!(
        c.guides(&customer),
        0,
        "nothing fires before the history arrives"
    );
    let held = c.stored(&customer).unwrap();
    assert_eq!(held.identity.as_ref().unwrap().held.len(), 2);
    assert_eq!(c.pump(), 2, "a link request and a transfer");
    assert_eq!(
        c.guides(&customer),
        1,
        "the third view, counting the two anonymous ones, fires the guide"
    );
    let merged = c.stored(&customer).unwrap();
    assert!(merged.profile.anonymous_ids.contains(&anon));
    assert_eq!(merged.profile.events, 4);
    let ident = merged.identity.unwrap();
    assert!(ident.awaiting.is_empty() && ident.held.is_empty());
    assert_eq!(ident.links[0].state, LinkState::Merged);
    let stub = c.stored(&anon).unwrap();
    assert_eq!(stub.profile.events, 0, "the anonymous profile is gone");
    assert_eq!(stub.link().unwrap().customer_id, customer);
    assert_eq!(c.events.len(), 1);
    assert_eq!(c.events[0].kind, "merged");
    assert_eq!(c.events[0].events_moved, Some(2));

    // A late anonymous record follows the link to the customer.
    c.touch(&anon_view("v4", &anon, T0 + 240_000));
    assert_eq!(c.pump(), 1);
    assert_eq!(c.stored(&customer).unwrap().profile.events, 5);
    assert_eq!(c.stored(&anon).unwrap().profile.events, 0);
}

#[test]
fn two_known_customers_on_one_device_are_not_merged() {
    let mut c = Cluster::new(IdentityConfig::default());
    let (anon, first) = apart(&c.rule, 2);
    let second = "c-second";
    c.touch(&anon_view("v1", &anon, T0));
    c.touch(&login("l1", &first, &anon, T0 + 1000));
    c.pump();
    c.touch(&view("v2", &first, None, T0 + 2000));
    c.touch(&login("l2", second, &anon, T0 + 3000));
    c.pump();
    let first_profile = c.stored(&first).unwrap().profile;
    let second_profile = c.stored(second).unwrap().profile;
    assert_eq!(
        first_profile.events, 3,
        "the first customer keeps the anonymous view and its own"
    );
    assert_eq!(
        second_profile.events, 1,
        "the second receives nothing of the first"
    );
    assert!(!second_profile.anonymous_ids.contains(&first));
    let kinds: Vec<&str> = c.events.iter().map(|e| e.kind.as_str()).collect();
    assert_eq!(kinds, ["merged", "conflict"]);
    assert_eq!(
        c.events[1].previous_customer_id.as_deref(),
        Some(first.as_str())
    );
    // The device now follows the latest login.
    assert_eq!(c.stored(&anon).unwrap().link().unwrap().customer_id, second);
    // A login older than the link's does not take the device back.
    c.touch(&login("l0", "c-earlier", &anon, T0 + 500));
    c.pump();
    assert_eq!(c.stored(&anon).unwrap().link().unwrap().customer_id, second);
    assert_eq!(c.events.last().unwrap().kind, "conflict");
    c.touch(&anon_view("v3", &anon, T0 + 4000));
    c.pump();
    assert_eq!(c.stored(second).unwrap().profile.events, 2);
    assert_eq!(c.stored(&first).unwrap().profile.events, 3);
}

#[test]
fn a_known_customers_id_used_as_an_anonymous_id_is_not_merged() {
    let mut c = Cluster::new(IdentityConfig::default());
    c.touch(&view("v1", "c-alice", None, T0));
    c.touch(&login("l1", "c-bob", "c-alice", T0 + 1000));
    c.pump();
    assert_eq!(c.stored("c-alice").unwrap().profile.events, 1);
    let bob = c.stored("c-bob").unwrap();
    assert!(!bob.profile.anonymous_ids.contains(&"c-alice".to_owned()));
    assert_eq!(
        bob.identity.unwrap().links[0].state,
        LinkState::KnownCustomer
    );
    assert_eq!(c.events[0].kind, "known_customer");
}

#[test]
fn the_anonymous_id_past_the_limit_is_not_linked() {
    let mut c = Cluster::new(IdentityConfig {
        max_anonymous_ids: 2,
        window: "1d".into(),
        ..Default::default()
    });
    for (i, anon) in ["a-1", "a-2", "a-3"].into_iter().enumerate() {
        c.touch(&anon_view(&format!("v{i}"), anon, T0 + i as i64));
        c.touch(&login(&format!("l{i}"), "c-many", anon, T0 + 10 + i as i64));
        c.pump();
    }
    let p = c.stored("c-many").unwrap();
    assert_eq!(p.profile.anonymous_ids, ["a-1", "a-2"]);
    assert_eq!(p.profile.events, 2 + 3, "two merged views and three logins");
    assert_eq!(
        c.stored("a-3").unwrap().profile.events,
        1,
        "a-3 keeps its own history"
    );
    let kinds: Vec<&str> = c.events.iter().map(|e| e.kind.as_str()).collect();
    assert_eq!(kinds, ["merged", "merged", "limit_exceeded"]);
    // Outside the window the limit frees up again.
    c.touch(&login("l9", "c-many", "a-9", T0 + 2 * 86_400_000));
    c.pump();
    assert!(c
        .stored("c-many")
        .unwrap()
        .profile
        .anonymous_ids
        .contains(&"a-9".to_owned()));
}

#[test]
fn junk_anonymous_ids_are_never_linked() {
    let mut c = Cluster::new(IdentityConfig {
        junk_patterns: vec!["test-.*".into()],
        ..Default::default()
    });
    for (i, junk) in ["null", "00000000-0000-0000-0000-000000000000", "test-1"]
        .into_iter()
        .enumerate()
    {
        c.touch(&anon_view(&format!("v{i}"), junk, T0));
        c.touch(&login(&format!("l{i}"), "c-j", junk, T0 + 1));
    }
    assert_eq!(c.pump(), 0, "no link is requested");
    let p = c.stored("c-j").unwrap();
    assert_eq!(p.profile.events, 3);
    assert!(p.identity.is_none());
}

#[test]
fn a_repeated_transfer_is_absorbed_once() {
    let mut c = Cluster::new(IdentityConfig::default());
    let (anon, customer) = apart(&c.rule, 3);
    c.touch(&anon_view("v1", &anon, T0));
    c.touch(&login("l1", &customer, &anon, T0 + 1000));
    // Deliver the request, keep the transfer, deliver it twice.
    let request: Vec<_> = c.p.take_outbox().collect();
    assert_eq!(request.len(), 1);
    let value = request[0].message.encode();
    let r = Record {
        topic: REPARTITION,
        partition: request[0].partition,
        offset: 0,
        key: None,
        value: &value,
    };
    c.p.process(&r, &mut c.actions).unwrap();
    let transfer: Vec<_> = c.p.take_outbox().collect();
    let value = transfer[0].message.encode();
    for offset in [0, 1] {
        let r = Record {
            topic: REPARTITION,
            partition: transfer[0].partition,
            offset,
            key: None,
            value: &value,
        };
        c.p.process(&r, &mut c.actions).unwrap();
    }
    assert_eq!(c.stored(&customer).unwrap().profile.events, 2);
}

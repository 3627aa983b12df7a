//! Identity stitching in the processor (the protocol is described in
//! [`crate::identity`]): which profile a touchpoint goes to, the records of the
//! internal repartition topic, and the merge.

use base64::Engine as _;
use rapport_model::{Action, Profile, Touchpoint};

use crate::identity::{
    Awaiting, Held, IdentityEvent, IdentityRules, Link, LinkEntry, LinkState, Message, Outgoing,
    TransferOutcome,
};
use crate::ingest::route::KeyRule;
use crate::ingest::{Rejection, Stage};
use crate::state::{topic_hash, StateError, Stored};

use super::{Lane, Outcome, Processor, Record};

/// How the processor stitches identities.
#[derive(Debug, Clone)]
pub struct StitchRules {
    /// Records of this topic are identity messages ([`Message`]).
    pub topic: String,
    /// Junk ids, limits and how long links are followed.
    pub rules: IdentityRules,
}

impl StitchRules {
    /// The rules of a valid `[identity]` section, with messages on `topic`;
    /// `None` with stitching off.
    pub fn of(
        cfg: &crate::identity::IdentityConfig,
        topic: String,
    ) -> anyhow::Result<Option<Self>> {
        if !cfg.stitching {
            return Ok(None);
        }
        let rules = cfg.rules().map_err(|(k, e)| anyhow::anyhow!("{k}: {e}"))?;
        Ok(Some(StitchRules { topic, rules }))
    }
}

/// Where a touchpoint goes, decided on the stored record it is keyed to.
#[derive(Debug)]
pub(super) enum Routed {
    /// Applied to this profile.
    Apply,
    /// Applied to this profile, but the anonymous id it names is not linked
    /// (a known customer's, or over the limit): the profile does not list it.
    Unlinked(String),
    /// The profile is an anonymous id linked to a customer: the record follows.
    Forward(Link),
    /// Held until the awaited merges arrive.
    Hold,
    /// The first touchpoint naming this anonymous id: a merge is requested and
    /// the record held.
    Link {
        merge_id: String,
        anonymous_id: String,
        home: i32,
        at_ms: i64,
    },
    /// The anonymous id is refused by the per-window limit (recorded once).
    Refused(String),
}

/// Where a record came from, for merge ids that are the same when the record
/// is processed again after a crash.
#[derive(Debug, Clone, Copy)]
pub(super) struct Seed {
    pub hash: u32,
    pub partition: i32,
    pub offset: i64,
    /// Position among the held records a transfer released (0 otherwise).
    pub index: usize,
}

impl Seed {
    pub fn of(r: &Record<'_>) -> Self {
        Seed {
            hash: topic_hash(r.topic),
            partition: r.partition,
            offset: r.offset,
            index: 0,
        }
    }

    fn merge_id(&self) -> String {
        format!(
            "m-{:08x}-{}-{}-{}",
            self.hash, self.partition, self.offset, self.index
        )
    }
}

impl StitchRules {
    /// Decides where `tp` goes, given the stored record `s` it is keyed to;
    /// records the decision in `s` (a held record, a requested link).
    /// `follow` is false for a record that already followed a link (links are
    /// one level deep).
    pub(super) fn route(
        &self,
        s: &mut Stored,
        tp: &Touchpoint,
        home: Option<i32>,
        follow: bool,
        seed: Seed,
    ) -> Routed {
        if follow && tp.customer_id.is_none() {
            if let Some(link) = s.link() {
                if tp.event_time <= link.at_ms.saturating_add(self.rules.link_ttl_ms) {
                    return Routed::Forward(link.clone());
                }
            }
        }
        if s.identity
            .as_deref()
            .is_some_and(|i| !i.awaiting.is_empty())
        {
            let ident = s.identity_mut();
            if ident.held.len() < self.rules.max_held {
                ident.held.push(Held {
                    touchpoint: serde_json::to_vec(tp).unwrap_or_default(),
                    home,
                });
                return Routed::Hold;
            }
            tracing::warn!(customer = %s.profile.id, held = self.rules.max_held, "identity.max_held records held while a merge is awaited; applying without waiting");
        }
        let (Some(home), Some(anon)) = (home, tp.anonymous_id.as_deref()) else {
            return Routed::Apply;
        };
        if let Some(e) = s.identity.as_deref().and_then(|i| i.entry(anon)) {
            return match e.state.linked() {
                true => Routed::Apply,
                false => Routed::Unlinked(anon.to_owned()),
            };
        }
        let at_ms = tp.event_time;
        let ident = s.identity_mut();
        let refused =
            ident.links_since(at_ms, self.rules.window_ms) >= self.rules.max_anonymous_ids;
        ident.links.push(LinkEntry {
            anonymous_id: anon.to_owned(),
            at_ms,
            home,
            state: match refused {
                true => LinkState::LimitExceeded,
                false => LinkState::Requested,
            },
        });
        if refused {
            return Routed::Refused(anon.to_owned());
        }
        let merge_id = seed.merge_id();
        ident.awaiting.push(Awaiting {
            merge_id: merge_id.clone(),
            anonymous_id: anon.to_owned(),
        });
        ident.held.push(Held {
            touchpoint: serde_json::to_vec(tp).unwrap_or_default(),
            home: Some(home),
        });
        Routed::Link {
            merge_id,
            anonymous_id: anon.to_owned(),
            home,
            at_ms,
        }
    }
}

/// The partition of the anonymous id `tp` may link to its customer, computed
/// from the clear ids (before pseudonymization); `None` when it links nothing
/// (no customer id, no anonymous id, the same id twice, or a junk id).
pub(super) fn anonymous_home(
    tp: &Touchpoint,
    rule: &KeyRule,
    rules: &IdentityRules,
) -> Option<i32> {
    let (c, a) = (tp.customer_id.as_deref()?, tp.anonymous_id.as_deref()?);
    (a != c && !rules.is_junk(a) && !rules.is_junk(c)).then(|| rule.partition_of(a.as_bytes()))
}

impl Processor {
    /// Stitches anonymous histories into customers' profiles through the
    /// repartition topic `rules.topic` (see [`crate::identity`]); `None` leaves
    /// identities as they come.
    pub fn with_stitching(mut self, rules: Option<StitchRules>) -> Self {
        self.shared.stitch = rules;
        self
    }

    /// The identity messages to send since the last call, each partition's in
    /// the order they were made.
    pub fn take_outbox(&mut self) -> impl Iterator<Item = Outgoing> + '_ {
        self.tasks
            .values_mut()
            .flat_map(|t| t.scratch.outbox.drain(..))
    }

    /// The identity events (merges, conflicts, refused links) since the last call.
    pub fn take_identity_events(&mut self) -> impl Iterator<Item = IdentityEvent> + '_ {
        self.tasks
            .values_mut()
            .flat_map(|t| t.scratch.identity_events.drain(..))
    }
}

fn bad_message(reason: String) -> Outcome {
    Outcome::Rejected(Rejection {
        stage: Stage::Route,
        class: "bad_identity_message",
        reason,
    })
}

/// What a link request gets: the outcome, the anonymous history to move, and
/// the customer the anonymous id was linked to before (on a conflict).
type LinkAnswer = (TransferOutcome, Option<Profile>, Option<String>);

/// Decides a link request on the anonymous id's stored profile `s`, linking it
/// to `target` where it may be: an erased or known id is never linked, an id
/// linked elsewhere follows the latest login by event time, and a first link
/// takes the anonymous history with it.
fn answer_link(s: &mut Stored, anonymous_id: &str, target: &Link, erased: bool) -> LinkAnswer {
    if erased {
        return (TransferOutcome::Erased, None, None);
    }
    if s.known {
        return (TransferOutcome::KnownCustomer, None, None);
    }
    match s.link().cloned() {
        Some(l) if l.customer_id == target.customer_id => {
            (TransferOutcome::AlreadyLinked, None, None)
        }
        Some(l) => {
            // The link follows the latest login by event time,
            // whichever request arrived first.
            if target.at_ms >= l.at_ms {
                s.identity_mut().linked_to = Some(target.clone());
            }
            (TransferOutcome::Conflict, None, Some(l.customer_id))
        }
        None => {
            let history = std::mem::replace(&mut s.profile, Profile::new(anonymous_id));
            s.identity_mut().linked_to = Some(target.clone());
            let moved = (history.events > 0 || !history.timers.is_empty()).then_some(history);
            (TransferOutcome::Merged, moved, None)
        }
    }
}

/// The link state a transfer's outcome leaves on the customer's side.
fn link_state(outcome: TransferOutcome) -> LinkState {
    match outcome {
        TransferOutcome::Merged | TransferOutcome::AlreadyLinked => LinkState::Merged,
        TransferOutcome::Conflict => LinkState::Conflict,
        TransferOutcome::KnownCustomer | TransferOutcome::Erased => LinkState::KnownCustomer,
    }
}

impl Lane<'_> {
    /// When `r` is on the repartition topic: handles its identity message.
    pub(super) fn identity_record(
        &mut self,
        r: &Record<'_>,
        out: &mut Vec<Action>,
    ) -> Result<Option<Outcome>, StateError> {
        if self.sh.stitch.as_ref().is_none_or(|s| s.topic != r.topic) {
            return Ok(None);
        }
        let msg = match Message::decode(r.value) {
            Ok(m) => m,
            Err(e) => {
                return Ok(Some(bad_message(format!(
                    "unreadable identity message: {e}"
                ))))
            }
        };
        let outcome = match msg {
            Message::LinkRequest {
                merge_id,
                anonymous_id,
                customer_id,
                customer_partition,
                at_ms,
            } => {
                let target = Link {
                    customer_id,
                    partition: customer_partition,
                    at_ms,
                };
                self.link_request(r, &merge_id, &anonymous_id, target)?
            }
            Message::Transfer {
                merge_id,
                anonymous_id,
                customer_id,
                outcome,
                profile,
            } => {
                let history = match profile
                    .map(|p| decode_profile(&p, &anonymous_id))
                    .transpose()
                {
                    Ok(h) => h,
                    Err(reason) => return Ok(Some(bad_message(reason))),
                };
                let t = Transfer {
                    merge_id: &merge_id,
                    anonymous_id: &anonymous_id,
                    outcome,
                    history,
                };
                self.transfer(r, &customer_id, t, out)?
            }
            Message::Erase {
                request_id,
                anonymous_id,
            } => self.erase_link(&request_id, &anonymous_id)?,
            Message::Forward {
                customer_id,
                touchpoint,
            } => self.forwarded(r, &customer_id, &touchpoint, out)?,
        };
        Ok(Some(outcome))
    }

    /// On the customer's partition: applies a touchpoint forwarded from the
    /// partition of an anonymous id already linked to the customer.
    fn forwarded(
        &mut self,
        r: &Record<'_>,
        customer_id: &str,
        touchpoint: &Touchpoint,
        out: &mut Vec<Action>,
    ) -> Result<Outcome, StateError> {
        let outcome = self.route_and_apply(
            Some(r),
            Seed::of(r),
            customer_id,
            touchpoint,
            None,
            false,
            out,
        )?;
        if outcome == Outcome::Applied {
            self.sh
                .metrics
                .identity_routed
                .with_label_values(&["forward_applied"])
                .inc();
        }
        Ok(outcome)
    }

    /// On the anonymous id's partition: links it to the customer (or records
    /// why not) and sends its history there.
    fn link_request(
        &mut self,
        r: &Record<'_>,
        merge_id: &str,
        anonymous_id: &str,
        target: Link,
    ) -> Result<Outcome, StateError> {
        let seed = Seed::of(r);
        let erased = self.sh.privacy.as_ref().is_some_and(|rules| {
            let suppressed = &self.task.privacy.suppressed;
            !suppressed.is_empty() && suppressed.contains(&rules.hasher.hash(anonymous_id))
        });
        let mut answer: Option<LinkAnswer> = None;
        self.task.update(&self.sh.state, anonymous_id, |s| {
            if s.reflects(seed.hash, seed.partition, seed.offset) {
                return false;
            }
            s.advance(seed.hash, seed.partition, seed.offset);
            answer = Some(answer_link(s, anonymous_id, &target, erased));
            true
        })?;
        let Some((outcome, history, previous)) = answer else {
            return Ok(Outcome::AlreadyApplied);
        };
        self.link_event(
            merge_id,
            anonymous_id,
            &target,
            outcome,
            history.as_ref(),
            previous,
        );
        let profile = history.map(|h| base64::engine::general_purpose::STANDARD.encode(h.encode()));
        self.task.scratch.outbox.push(Outgoing {
            partition: target.partition,
            key: target.customer_id.clone(),
            message: Message::Transfer {
                merge_id: merge_id.into(),
                anonymous_id: anonymous_id.into(),
                customer_id: target.customer_id,
                outcome,
                profile,
            },
        });
        Ok(Outcome::Applied)
    }

    /// Counts and keeps the identity event a link request's outcome makes
    /// (merged, conflict, known customer; none for a repeat or an erased id).
    fn link_event(
        &mut self,
        merge_id: &str,
        anonymous_id: &str,
        target: &Link,
        outcome: TransferOutcome,
        history: Option<&Profile>,
        previous: Option<String>,
    ) {
        let kind = match outcome {
            TransferOutcome::Merged => Some("merged"),
            TransferOutcome::Conflict => Some("conflict"),
            TransferOutcome::KnownCustomer => Some("known_customer"),
            TransferOutcome::AlreadyLinked | TransferOutcome::Erased => None,
        };
        if let Some(kind) = kind {
            self.identity_event(IdentityEvent {
                kind: kind.into(),
                anonymous_id: anonymous_id.into(),
                customer_id: target.customer_id.clone(),
                previous_customer_id: previous,
                merge_id: Some(merge_id.into()),
                at_ms: target.at_ms,
                events_moved: history
                    .map(|h| h.events)
                    .or(Some(0))
                    .filter(|_| kind == "merged"),
            });
        }
    }

    /// On the customer's partition: absorbs an awaited transfer once, then
    /// applies the records held meanwhile, in their order.
    fn transfer(
        &mut self,
        r: &Record<'_>,
        customer_id: &str,
        t: Transfer<'_>,
        out: &mut Vec<Action>,
    ) -> Result<Outcome, StateError> {
        let seed = Seed::of(r);
        let mut released: Option<Vec<Held>> = None;
        self.task.update(&self.sh.state, customer_id, |s| {
            if s.reflects(seed.hash, seed.partition, seed.offset) {
                return false;
            }
            let Some(ident) = s.identity.as_deref_mut() else {
                return false;
            };
            let Some(pos) = ident.awaiting.iter().position(|w| w.merge_id == t.merge_id) else {
                // Absorbed before (a repeat under at_least_once): nothing to do.
                return false;
            };
            ident.awaiting.remove(pos);
            if let Some(e) = ident
                .links
                .iter_mut()
                .find(|l| l.anonymous_id == t.anonymous_id)
            {
                e.state = link_state(t.outcome);
            }
            let done = ident.awaiting.is_empty();
            released = Some(match done {
                true => std::mem::take(&mut ident.held),
                false => Vec::new(),
            });
            if let Some(h) = &t.history {
                s.profile.absorb_with(h, &self.sh.seen);
                // Actions deferred past quiet hours go to the customer now.
                let id = s.profile.id.clone();
                for d in &mut s.profile.delivery.deferred {
                    d.action.customer_id.clone_from(&id);
                }
            }
            if t.outcome.linked() && !s.profile.anonymous_ids.iter().any(|a| a == t.anonymous_id) {
                s.profile.anonymous_ids.push(t.anonymous_id.to_owned());
            }
            s.advance(seed.hash, seed.partition, seed.offset);
            true
        })?;
        let Some(released) = released else {
            return Ok(Outcome::AlreadyApplied);
        };
        self.release(customer_id, seed, released, out)?;
        // Waits that came with the history and are already due fire now.
        let wm = self.task.watermark;
        if self.task.timers.first().is_some_and(|(at, _)| *at <= wm) {
            self.fire_timers(wm, out)?;
        }
        Ok(Outcome::Applied)
    }

    /// Applies the touchpoints held for a customer while their transfers were
    /// awaited, in the order they arrived, each with its own place in the
    /// transferring record's idempotence seed.
    fn release(
        &mut self,
        customer_id: &str,
        seed: Seed,
        released: Vec<Held>,
        out: &mut Vec<Action>,
    ) -> Result<(), StateError> {
        self.sh
            .metrics
            .identity_routed
            .with_label_values(&["released"])
            .inc_by(released.len() as u64);
        for (i, held) in released.into_iter().enumerate() {
            let tp: Touchpoint = match serde_json::from_slice(&held.touchpoint) {
                Ok(tp) => tp,
                Err(e) => {
                    // Written by this engine from a valid touchpoint: not input.
                    tracing::error!(customer = customer_id, error = %e, "a held touchpoint is unreadable; skipped");
                    continue;
                }
            };
            let seed = Seed {
                index: i + 1,
                ..seed
            };
            self.route_and_apply(None, seed, customer_id, &tp, held.home, true, out)?;
        }
        Ok(())
    }

    /// Counts an identity event and keeps it for the identity-events topic.
    pub(super) fn identity_event(&mut self, e: IdentityEvent) {
        self.sh
            .metrics
            .identity_events
            .with_label_values(&[e.kind.as_str()])
            .inc();
        tracing::debug!(kind = %e.kind, anonymous_id = %e.anonymous_id, customer_id = %e.customer_id, "identity event");
        self.task.scratch.identity_events.push(e);
    }

    /// Acts on a routing decision that did not apply the record: sends the
    /// link request or the forwarded record, records a refused link.
    pub(super) fn routed(&mut self, id: &str, tp: &Touchpoint, routed: Routed) {
        let routes = &self.sh.metrics.identity_routed;
        match routed {
            Routed::Apply | Routed::Unlinked(_) => {}
            Routed::Hold => routes.with_label_values(&["held"]).inc(),
            Routed::Forward(link) => {
                routes.with_label_values(&["forwarded"]).inc();
                self.task.scratch.outbox.push(Outgoing {
                    partition: link.partition,
                    key: link.customer_id.clone(),
                    message: Message::Forward {
                        customer_id: link.customer_id,
                        touchpoint: Box::new(tp.clone()),
                    },
                });
            }
            Routed::Link {
                merge_id,
                anonymous_id,
                home,
                at_ms,
            } => {
                routes.with_label_values(&["held"]).inc();
                self.task.scratch.outbox.push(Outgoing {
                    partition: home,
                    key: anonymous_id.clone(),
                    message: Message::LinkRequest {
                        merge_id,
                        anonymous_id,
                        customer_id: id.to_owned(),
                        customer_partition: self.task.partition,
                        at_ms,
                    },
                });
            }
            Routed::Refused(anonymous_id) => self.identity_event(IdentityEvent {
                kind: "limit_exceeded".into(),
                anonymous_id,
                customer_id: id.to_owned(),
                previous_customer_id: None,
                merge_id: None,
                at_ms: tp.event_time,
                events_moved: None,
            }),
        }
    }
}

/// A transfer as the customer's partition reads it.
pub(super) struct Transfer<'a> {
    merge_id: &'a str,
    anonymous_id: &'a str,
    outcome: TransferOutcome,
    history: Option<Profile>,
}

impl TransferOutcome {
    /// True when the anonymous id follows the customer after this answer.
    pub fn linked(self) -> bool {
        !matches!(
            self,
            TransferOutcome::KnownCustomer | TransferOutcome::Erased
        )
    }
}

fn decode_profile(b64: &str, id: &str) -> Result<Profile, String> {
    let bytes = base64::engine::general_purpose::STANDARD
        .decode(b64)
        .map_err(|e| format!("the transfer of {id:?} is not base64: {e}"))?;
    Profile::decode(&bytes).map_err(|e| format!("the transfer of {id:?} is unreadable: {e}"))
}

#[cfg(test)]
#[path = "stitch_tests.rs"]
mod tests;

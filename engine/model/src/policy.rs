//! What the delivery policy remembers about a customer, kept in the profile so
//! it is committed in the same transaction as the actions it allowed: sends
//! counted by caps, consent per purpose and channel, the customer's time zone,
//! and actions deferred past quiet hours.
//!
//! The rules themselves (caps, quiet hours, suppression, control groups) are
//! configuration and live in `rapport-journeys`; this module only holds state
//! and the few facts the model itself must know (how a `consent_changed`
//! touchpoint reads).

use compact_str::CompactString;
use serde::{Deserialize, Serialize};

use crate::action::{Action, ActionKind, DeliveryChannel};
use crate::touchpoint::{EventType, Touchpoint};

/// What an action is for; consent, caps, quiet hours and suppression rules are
/// written per purpose.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Purpose {
    /// Offers, guides, invitations: needs marketing consent, counts against marketing caps.
    Marketing,
    /// Survey requests: survey throttling applies.
    Survey,
    /// Service to a customer with a problem (recovery, tickets, call-backs).
    Service,
}

impl Purpose {
    /// Every purpose, in the order of their index.
    pub const ALL: [Purpose; 3] = [Purpose::Marketing, Purpose::Survey, Purpose::Service];

    /// Dense index, for per-purpose tables.
    pub fn index(self) -> usize {
        self as usize
    }

    /// The symbol used in journey and policy files.
    pub fn as_str(self) -> &'static str {
        match self {
            Purpose::Marketing => "marketing",
            Purpose::Survey => "survey",
            Purpose::Service => "service",
        }
    }

    /// The purpose named `s`.
    pub fn parse(s: &str) -> Option<Purpose> {
        Self::ALL.into_iter().find(|p| p.as_str() == s)
    }

    /// The purpose an action kind has unless the journey says otherwise.
    pub fn default_for(kind: ActionKind) -> Purpose {
        match kind {
            ActionKind::SurveyRequest => Purpose::Survey,
            ActionKind::RecoveryOffer
            | ActionKind::AlertTicket
            | ActionKind::SelfServiceLink
            | ActionKind::Callback => Purpose::Service,
            ActionKind::GuideLink | ActionKind::ExclusiveOffer | ActionKind::AmbassadorInvite => {
                Purpose::Marketing
            }
        }
    }
}

/// One action the policy let through, as caps count it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SentMark {
    /// Event time it was sent at, epoch ms.
    pub at_ms: i64,
    /// The journey that sent it.
    pub journey: CompactString,
    /// What it was for.
    pub purpose: Purpose,
    /// How it reached the customer.
    pub channel: DeliveryChannel,
}

/// What the customer last said about one purpose on one channel (or on all).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct ConsentMark {
    /// The purpose.
    pub purpose: Purpose,
    /// The channel, or `None` for every channel.
    pub channel: Option<DeliveryChannel>,
    /// Granted (true) or withdrawn.
    pub granted: bool,
    /// Event time of the `consent_changed` touchpoint, epoch ms.
    pub at_ms: i64,
}

/// An action held back until quiet hours end; a profile timer with the key
/// [`deferred_key`] of its action id fires it, and the policy judges it again then.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct DeferredAction {
    /// The action, as decided.
    pub action: Action,
    /// What it is for.
    pub purpose: Purpose,
    /// Event time it was deferred at, epoch ms.
    pub deferred_ms: i64,
    /// When it is due (the end of quiet hours in the customer's time zone), epoch ms.
    pub due_ms: i64,
}

/// Everything the delivery policy keeps per customer.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct DeliveryState {
    /// Sends that count against a configured cap, oldest first, pruned by the
    /// longest cap window: enough to hold every cap exactly over rolling windows.
    pub sent: Vec<SentMark>,
    /// Latest consent per (purpose, channel); at most one mark per pair.
    pub consent: Vec<ConsentMark>,
    /// The customer's IANA time zone, from the `timezone` attribute of their
    /// touchpoints (unchecked here; the policy falls back to its default when
    /// it names no zone).
    pub timezone: Option<CompactString>,
    /// Actions deferred past quiet hours, waiting for their timer.
    pub deferred: Vec<DeferredAction>,
}

/// The longest time zone name kept (IANA names are far shorter).
pub const MAX_TIMEZONE_LEN: usize = 64;

/// The prefix of the timer key of a deferred action: `policy:deferred:<action id>`.
pub const DEFERRED_KEY_PREFIX: &str = "policy:deferred:";

/// The timer key of the deferred action with id `action_id`.
pub fn deferred_key(action_id: &str) -> CompactString {
    let mut k = CompactString::new(DEFERRED_KEY_PREFIX);
    k.push_str(action_id);
    k
}

impl DeliveryState {
    /// What the customer last said about `purpose` on `channel`: the newest of
    /// the mark for that channel and the mark for every channel.
    pub fn consent(&self, purpose: Purpose, channel: DeliveryChannel) -> Option<&ConsentMark> {
        self.consent
            .iter()
            .filter(|m| m.purpose == purpose && m.channel.is_none_or(|c| c == channel))
            .max_by_key(|m| (m.at_ms, m.channel.is_some()))
    }

    /// Records a consent change; a late one does not overwrite a newer mark.
    pub fn record_consent(&mut self, mark: ConsentMark) {
        match self
            .consent
            .iter_mut()
            .find(|m| m.purpose == mark.purpose && m.channel == mark.channel)
        {
            Some(m) if m.at_ms <= mark.at_ms => *m = mark,
            Some(_) => {}
            None => self.consent.push(mark),
        }
    }

    /// Records a send, dropping those at or before `forget_before_ms` (outside every cap window).
    pub fn record_sent(&mut self, mark: SentMark, forget_before_ms: i64) {
        self.sent.retain(|s| s.at_ms > forget_before_ms);
        let pos = self.sent.partition_point(|s| s.at_ms <= mark.at_ms);
        self.sent.insert(pos, mark);
    }

    /// Applies what `t` says about consent and the time zone.
    pub fn apply(&mut self, t: &Touchpoint) {
        if let Some(tz) = t.attributes.get("timezone") {
            let tz = tz.trim();
            if !tz.is_empty() && tz.len() <= MAX_TIMEZONE_LEN {
                self.timezone = Some(CompactString::from(tz));
            }
        }
        if let Ok(Some(change)) = consent_change(t) {
            let purposes = match change.purpose {
                Some(p) => std::slice::from_ref(&Purpose::ALL[p.index()]),
                None => &Purpose::ALL[..],
            };
            for &purpose in purposes {
                if change.channel.is_none() {
                    // "Every channel" replaces what was said per channel before it.
                    self.consent.retain(|m| {
                        !(m.purpose == purpose && m.channel.is_some() && m.at_ms <= t.event_time)
                    });
                }
                self.record_consent(ConsentMark {
                    purpose,
                    channel: change.channel,
                    granted: change.granted,
                    at_ms: t.event_time,
                });
            }
        }
    }
}

impl DeliveryState {
    /// Adds `other`'s delivery state (identity stitching), so what one history
    /// used or said holds for the merged customer:
    /// - sends: the union, in time order, so caps already used carry over
    ///   (pruned by the policy's longest cap window at the next send);
    /// - consent: per (purpose, channel) the latest mark, a withdrawal winning
    ///   a tie; then, as [`DeliveryState::apply`] does, a per-channel mark at or
    ///   before an every-channel mark of its purpose goes;
    /// - time zone: `other`'s when `prefer_other_timezone` and it names one,
    ///   else ours when we name one (the caller decides which is the latest,
    ///   since the zone carries no time of its own);
    /// - deferred actions: the union by action id (one action deferred in both:
    ///   the earlier due time).
    ///
    /// Sends, consent and deferred actions merge commutatively and associatively.
    pub fn merge(&mut self, other: &DeliveryState, prefer_other_timezone: bool) {
        self.sent.extend(other.sent.iter().cloned());
        self.sent.sort_by(|a, b| sent_key(a).cmp(&sent_key(b)));
        self.merge_consent(&other.consent);
        if other.timezone.is_some() && (prefer_other_timezone || self.timezone.is_none()) {
            self.timezone.clone_from(&other.timezone);
        }
        self.deferred.extend(other.deferred.iter().cloned());
        self.deferred
            .sort_by(|a, b| deferred_key_of(a).cmp(&deferred_key_of(b)));
        self.deferred
            .dedup_by(|later, kept| later.action.action_id == kept.action.action_id);
        self.deferred
            .sort_by_key(|d| (d.due_ms, d.action.action_id.clone()));
    }

    fn merge_consent(&mut self, other: &[ConsentMark]) {
        let mut all: Vec<ConsentMark> = self.consent.iter().chain(other).copied().collect();
        // Latest first per (purpose, channel), a withdrawal first at the same time.
        all.sort_by_key(|m| {
            (
                m.purpose,
                m.channel.map(DeliveryChannel::index),
                std::cmp::Reverse(m.at_ms),
                m.granted,
            )
        });
        all.dedup_by_key(|m| (m.purpose, m.channel));
        let every: Vec<ConsentMark> = all
            .iter()
            .filter(|m| m.channel.is_none())
            .copied()
            .collect();
        all.retain(|m| {
            m.channel.is_none()
                || !every
                    .iter()
                    .any(|e| e.purpose == m.purpose && m.at_ms <= e.at_ms)
        });
        self.consent = all;
    }
}

/// The order sends are kept in: time, then what tells two apart.
fn sent_key(s: &SentMark) -> (i64, &str, Purpose, usize) {
    (s.at_ms, s.journey.as_str(), s.purpose, s.channel.index())
}

/// The order deferred actions are deduplicated in: by action id, the earliest due first.
fn deferred_key_of(d: &DeferredAction) -> (&str, i64, i64, Purpose) {
    (
        d.action.action_id.as_str(),
        d.due_ms,
        d.deferred_ms,
        d.purpose,
    )
}

/// What a `consent_changed` touchpoint says.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ConsentChange {
    /// The purpose (attribute `purpose`), or `None` for every purpose (absent or `"all"`).
    pub purpose: Option<Purpose>,
    /// The channel (attribute `channel`), or `None` for every channel (absent or `"all"`).
    pub channel: Option<DeliveryChannel>,
    /// Attribute `granted`: `"true"` / `"granted"` or `"false"` / `"denied"`.
    pub granted: bool,
}

/// Reads a `consent_changed` touchpoint's attributes `purpose`, `channel` and
/// `granted`; `Ok(None)` for any other event type, `Err` with what is wrong
/// for a consent change that cannot be read (the touchpoint is refused).
pub fn consent_change(t: &Touchpoint) -> Result<Option<ConsentChange>, String> {
    if t.event_type != EventType::ConsentChanged {
        return Ok(None);
    }
    let attr = |k: &str| {
        t.attributes
            .get(k)
            .map(|v| v.trim())
            .filter(|v| !v.is_empty() && *v != "all")
    };
    let purpose = match attr("purpose") {
        None => None,
        Some(p) => Some(Purpose::parse(p).ok_or_else(|| {
            format!(
                "consent_changed attribute purpose {p:?} is not marketing, survey, service or all"
            )
        })?),
    };
    let channel = match attr("channel") {
        None => None,
        Some(c) => Some(DeliveryChannel::parse(c).ok_or_else(|| {
            format!("consent_changed attribute channel {c:?} is not a delivery channel or all")
        })?),
    };
    let granted = match t.attributes.get("granted").map(|g| g.trim()) {
        Some("true" | "granted") => true,
        Some("false" | "denied") => false,
        Some(g) => {
            return Err(format!(
                "consent_changed attribute granted {g:?} is not true, false, granted or denied"
            ))
        }
        None => return Err("consent_changed without the attribute granted".into()),
    };
    Ok(Some(ConsentChange {
        purpose,
        channel,
        granted,
    }))
}

/// Namespace of Rapport's decision ids (UUID v5).
const DECISION_ID_NAMESPACE: uuid::Uuid = uuid::Uuid::from_bytes([
    0x6b, 0x1e, 0x2d, 0x0b, 0x52, 0x61, 0x70, 0x70, 0x6f, 0x72, 0x74, 0x44, 0x65, 0x63, 0x69, 0x64,
]);

/// The deterministic id of the policy's decision `outcome` about action
/// `action_id` at event time `at_ms`: the same input gives the same id on
/// every replay, and a deferred action's later decision has its own id.
pub fn decision_id(action_id: &str, outcome: &str, at_ms: i64) -> String {
    let mut name = Vec::with_capacity(action_id.len() + outcome.len() + 10);
    for part in [
        action_id.as_bytes(),
        outcome.as_bytes(),
        &at_ms.to_be_bytes(),
    ] {
        name.extend_from_slice(part);
        name.push(0);
    }
    uuid::Uuid::new_v5(&DECISION_ID_NAMESPACE, &name).to_string()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testing::tp;
    use crate::touchpoint::Channel;

    fn consent(at: i64, attrs: &[(&str, &str)]) -> Touchpoint {
        let mut t = tp("c", "c1", Channel::Web, EventType::ConsentChanged, at);
        for (k, v) in attrs {
            t.attributes.insert((*k).into(), (*v).into());
        }
        t
    }

    #[test]
    fn consent_is_per_purpose_and_channel_and_the_newest_wins() {
        let mut d = DeliveryState::default();
        d.apply(&consent(
            10,
            &[
                ("purpose", "marketing"),
                ("channel", "email"),
                ("granted", "true"),
            ],
        ));
        let m = |d: &DeliveryState, c| d.consent(Purpose::Marketing, c).map(|m| m.granted);
        assert_eq!(m(&d, DeliveryChannel::Email), Some(true));
        assert_eq!(m(&d, DeliveryChannel::Sms), None);
        assert_eq!(d.consent(Purpose::Survey, DeliveryChannel::Email), None);
        // A late withdrawal (older than the grant) changes nothing.
        d.apply(&consent(
            5,
            &[
                ("purpose", "marketing"),
                ("channel", "email"),
                ("granted", "false"),
            ],
        ));
        assert_eq!(m(&d, DeliveryChannel::Email), Some(true));
        // Withdrawing everything on every channel overrides the grant.
        d.apply(&consent(20, &[("granted", "denied")]));
        assert_eq!(m(&d, DeliveryChannel::Email), Some(false));
        assert_eq!(
            d.consent(Purpose::Service, DeliveryChannel::Sms)
                .map(|m| m.granted),
            Some(false)
        );
        assert_eq!(d.consent.len(), 3, "one mark per purpose: {:?}", d.consent);
    }

    #[test]
    fn an_unreadable_consent_change_is_an_error() {
        assert!(consent_change(&consent(1, &[("purpose", "marketing")])).is_err());
        assert!(consent_change(&consent(1, &[("granted", "maybe")])).is_err());
        assert!(consent_change(&consent(1, &[("granted", "true"), ("channel", "fax")])).is_err());
        let ok = consent_change(&consent(1, &[("granted", "true"), ("channel", "all")]));
        assert_eq!(
            ok,
            Ok(Some(ConsentChange {
                purpose: None,
                channel: None,
                granted: true
            }))
        );
    }

    #[test]
    fn timezone_comes_from_the_attribute() {
        let mut d = DeliveryState::default();
        let mut t = tp("e", "c1", Channel::App, EventType::PageView, 1);
        t.attributes.insert("timezone".into(), "Asia/Tokyo".into());
        d.apply(&t);
        assert_eq!(d.timezone.as_deref(), Some("Asia/Tokyo"));
    }

    #[test]
    fn sends_are_pruned_and_kept_in_time_order() {
        let mut d = DeliveryState::default();
        let mark = |at| SentMark {
            at_ms: at,
            journey: "j".into(),
            purpose: Purpose::Marketing,
            channel: DeliveryChannel::Email,
        };
        d.record_sent(mark(30), 0);
        d.record_sent(mark(10), 0);
        d.record_sent(mark(40), 15);
        let at: Vec<i64> = d.sent.iter().map(|s| s.at_ms).collect();
        assert_eq!(at, [30, 40]);
    }

    #[test]
    fn merged_consent_keeps_the_latest_per_purpose_and_channel() {
        let (mut a, mut b) = (DeliveryState::default(), DeliveryState::default());
        let email = [("purpose", "marketing"), ("channel", "email")];
        a.apply(&consent(10, &[email[0], email[1], ("granted", "true")]));
        b.apply(&consent(20, &[email[0], email[1], ("granted", "false")]));
        b.apply(&consent(5, &[("purpose", "survey"), ("granted", "true")]));
        a.apply(&consent(
            6,
            &[
                ("purpose", "survey"),
                ("channel", "sms"),
                ("granted", "false"),
            ],
        ));
        let mut ab = a.clone();
        ab.merge(&b, false);
        let mut ba = b.clone();
        ba.merge(&a, true);
        assert_eq!(ab, ba);
        let granted = |d: &DeliveryState, p, c| d.consent(p, c).map(|m| m.granted);
        assert_eq!(
            granted(&ab, Purpose::Marketing, DeliveryChannel::Email),
            Some(false)
        );
        assert_eq!(
            granted(&ab, Purpose::Survey, DeliveryChannel::Sms),
            Some(false)
        );
        assert_eq!(
            granted(&ab, Purpose::Survey, DeliveryChannel::Email),
            Some(true)
        );
        // An every-channel mark later than a per-channel one replaces it.
        let mut c = DeliveryState::default();
        c.apply(&consent(30, &[("purpose", "survey"), ("granted", "true")]));
        ab.merge(&c, false);
        assert_eq!(
            granted(&ab, Purpose::Survey, DeliveryChannel::Sms),
            Some(true)
        );
        assert_eq!(ab.consent.len(), 2, "{:?}", ab.consent);
    }

    #[test]
    fn merged_sends_and_deferred_actions_are_unions_and_the_time_zone_is_chosen() {
        let mark = |at| SentMark {
            at_ms: at,
            journey: "j".into(),
            purpose: Purpose::Marketing,
            channel: DeliveryChannel::Email,
        };
        let (mut a, mut b) = (DeliveryState::default(), DeliveryState::default());
        a.record_sent(mark(30), 0);
        b.record_sent(mark(10), 0);
        b.record_sent(mark(40), 0);
        a.timezone = Some("Europe/Paris".into());
        b.timezone = Some("Asia/Tokyo".into());
        let mut kept = a.clone();
        kept.merge(&b, false);
        assert_eq!(kept.timezone.as_deref(), Some("Europe/Paris"));
        a.merge(&b, true);
        assert_eq!(a.timezone.as_deref(), Some("Asia/Tokyo"));
        let at: Vec<i64> = a.sent.iter().map(|s| s.at_ms).collect();
        assert_eq!(at, [10, 30, 40]);
        let mut none = DeliveryState::default();
        none.merge(&b, false);
        assert_eq!(
            none.timezone.as_deref(),
            Some("Asia/Tokyo"),
            "a zone beats none"
        );
    }

    #[test]
    fn decision_ids_are_stable_and_distinct() {
        let a = decision_id("a1", "sent", 5);
        assert_eq!(a, decision_id("a1", "sent", 5));
        assert_ne!(a, decision_id("a1", "capped", 5));
        assert_ne!(a, decision_id("a1", "sent", 6));
    }
}

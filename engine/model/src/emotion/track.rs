//! The emotional state as the profile stores it.

use serde::{Deserialize, Serialize};

use super::{Signal, DAY_MS};
use crate::action::EmotionalState;

/// The emotional state as stored in the profile: what [`update`] decided last,
/// since when, and the observations it decided on.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct EmotionTrack {
    /// The current state.
    pub state: EmotionalState,
    /// Event time the state was entered, epoch ms (0 for the initial `neutral`).
    pub since_ms: i64,
    /// Event time of the latest evaluation, epoch ms (0 when never evaluated).
    pub evaluated_ms: i64,
    /// Observation per signal at the latest evaluation, indexed by
    /// [`Signal::index`] (held inline: read and written on every touchpoint).
    pub observed: [f32; Signal::ALL.len()],
    /// Days with customer touchpoints: bit `i` is day `active_day - i` (days
    /// since the epoch, UTC), so `engagement` is a bit count, not a scan of the
    /// profile's history on every event.
    pub active_days: u128,
    /// The day of bit 0 of `active_days`.
    pub active_day: i64,
    /// Event time every signal was last observed from the profile's history,
    /// epoch ms; in between, a touchpoint re-observes only the signals its type
    /// can move (see [`update_on_touchpoint`]).
    pub refreshed_ms: i64,
}

impl Default for EmotionTrack {
    fn default() -> Self {
        EmotionTrack {
            state: EmotionalState::Neutral,
            since_ms: 0,
            evaluated_ms: 0,
            observed: Signal::ALL.map(|s| s.absent() as f32),
            active_days: 0,
            active_day: 0,
            refreshed_ms: 0,
        }
    }
}

impl EmotionTrack {
    /// Notes a customer touchpoint at `at_ms` (days more than 127 before the
    /// latest are forgotten).
    pub fn note_active(&mut self, at_ms: i64) {
        let day = at_ms.div_euclid(DAY_MS);
        let ahead = day - self.active_day;
        if ahead > 0 {
            self.active_days = match u32::try_from(ahead) {
                Ok(n) if n < 128 => self.active_days << n,
                _ => 0,
            };
            self.active_day = day;
        }
        let back = self.active_day - day;
        if (0..128).contains(&back) {
            self.active_days |= 1 << back;
        }
    }

    /// Days with customer touchpoints in `[since_ms, now_ms]`.
    pub fn days_active(&self, since_ms: i64, now_ms: i64) -> u32 {
        let (first, last) = (since_ms.div_euclid(DAY_MS), now_ms.div_euclid(DAY_MS));
        // Bits for days first..=last: back = active_day - day.
        let lo = (self.active_day - last).max(0);
        let hi = (self.active_day - first).min(127);
        if lo > hi {
            return 0;
        }
        let width = hi - lo + 1;
        let mask = if width >= 128 {
            u128::MAX
        } else {
            ((1u128 << width) - 1) << lo
        };
        (self.active_days & mask).count_ones()
    }

    /// Merges `other`'s track into this one (identity stitching). The state
    /// entered latest wins, with its entry time and observations (ties: the
    /// state's name, then the observations), since
    /// it reflects the customer's latest mood; the evaluation time is the later
    /// one, so state time never runs backwards; the active days are the union
    /// of both; and the signals are marked for a full re-observation (the
    /// engine's next [`super::update`] reads them from the merged history).
    /// Commutative and associative.
    pub fn merge(&mut self, other: &EmotionTrack) {
        if other.precedence_cmp(self).is_gt() {
            self.state = other.state;
            self.since_ms = other.since_ms;
            self.observed = other.observed;
        }
        self.evaluated_ms = self.evaluated_ms.max(other.evaluated_ms);
        let day = self.active_day.max(other.active_day);
        self.active_days = shifted_days(self, day) | shifted_days(other, day);
        self.active_day = day;
        self.refreshed_ms = 0;
    }

    /// Which of two tracks a merge keeps the state of: a total order.
    fn precedence_cmp(&self, other: &EmotionTrack) -> std::cmp::Ordering {
        // Only what the winner brings along, so a merged track ranks as its winner did.
        (self.since_ms, self.state.as_str())
            .cmp(&(other.since_ms, other.state.as_str()))
            .then_with(|| {
                let bits = |t: &EmotionTrack| t.observed.map(f32::to_bits);
                bits(self).cmp(&bits(other))
            })
    }

    /// The observation of `signal` at the latest evaluation.
    pub fn observed(&self, signal: Signal) -> f64 {
        f64::from(self.observed[signal.index()])
    }
}

/// `t`'s active days as bits relative to `day` (at or after `t.active_day`).
fn shifted_days(t: &EmotionTrack, day: i64) -> u128 {
    match day.checked_sub(t.active_day).map(u32::try_from) {
        Some(Ok(n)) if n < 128 => t.active_days << n,
        _ => 0,
    }
}

//! Merging an anonymous visitor's profile into the customer's (identity
//! stitching, issue 15).
//!
//! When an anonymous visitor logs in, the history of the anonymous profile
//! moves to the customer's partition and is merged into the customer's profile
//! by [`Profile::absorb`]. Histories may arrive in any order (two devices, a
//! merge redone after a restart elsewhere), so every rule is commutative and
//! associative: counters add, sets union, the latest by event time wins, and
//! bounded lists keep the newest N by event time. Lists whose order carries no
//! meaning come out in one canonical order, so that two merges of the same
//! histories are equal field by field.
//!
//! Where a rule cannot reproduce what one profile that saw every touchpoint
//! would hold, the difference is documented on [`Profile::absorb_with`].

use std::cmp::Reverse;
use std::collections::VecDeque;

use super::{
    CallWait, ChannelActivity, JourneyEntries, JourneyMark, JourneyRun, ProductInterest, Profile,
    RecentTouch, Score, Timer, RECENT_CONTACTS, RECENT_SIGNALS, RECENT_TOUCHPOINTS,
    TRACKED_PRODUCTS, VIEWS_PER_PRODUCT,
};
use crate::seen::SeenLimits;

impl Profile {
    /// Merges `other`'s history (an anonymous profile that turned out to be
    /// this customer) into self, with the default bounds of the seen event ids
    /// (see [`Profile::absorb_with`] for every rule).
    pub fn absorb(&mut self, other: &Profile) {
        self.absorb_with(other, &SeenLimits::default());
    }

    /// Merges `other`'s history into self; `limits` bound the merged record of
    /// seen event ids as the engine's configuration bounds it. The rules:
    ///
    /// - `id` stays; `other.id` (unless it is ours) and `other.anonymous_ids`
    ///   join `anonymous_ids` (a sorted set without our own id).
    /// - Counters add: `events`, channel counts, `orders`, `returns`,
    ///   `open_issues`, `lifetime_value`, journey mark counts. A return or a
    ///   resolved ticket in one history does not cancel a purchase or an open
    ///   ticket in the other (each history clamped at zero on its own).
    /// - Times take their extreme: `first_seen_ms` the earliest of histories
    ///   with events, `last_seen_ms`, channel `last_ms`, `last_purchase_ms`,
    ///   `max_wait_seconds`, journey `fired_ms`, product `purchased_ms` the latest.
    /// - Latest by event time wins: each survey keeps the newest two distinct
    ///   answers of both (latest, and the one before for the trend); the chat
    ///   `sentiment` of the history with the later `sentiment_ms` (the weighted
    ///   average cannot be recomputed from its parts).
    /// - Bounded lists keep the newest by time of the union: `contacts_ms`,
    ///   `review_reads_ms`, `call_waits`, each product's views, `recent` (one
    ///   entry per event id). Products are joined by sku and, beyond
    ///   [`TRACKED_PRODUCTS`], the stalest go by `product()`'s rule (latest view
    ///   or purchase).
    /// - Journey runs: one per (journey, key), the one entered first (ties: the
    ///   smaller trigger event id), as that instance started first. Timers keep
    ///   their due times; for a (journey, key) waiting in both, the timer of the
    ///   chosen run (same trigger event), else the earliest due.
    /// - Journey entries: the union of entry times, in order; the journey's
    ///   re-entry rule prunes them at the next entry, as for any entry.
    /// - `windows`, `emotion`, `delivery` and `seen_events` merge by their own
    ///   rules ([`crate::window::Windows::merge`],
    ///   [`crate::emotion::EmotionTrack::merge`],
    ///   [`crate::policy::DeliveryState::merge`], [`crate::seen::SeenEvents::merge`]).
    ///   In short: window counts add per bucket; the emotional state entered
    ///   latest wins and is re-observed at the engine's next evaluation;
    ///   sends, consent (latest per purpose and channel) and deferred actions
    ///   union; seen ids union within `limits`.
    ///   The time zone is that of the history seen latest among those that
    ///   name one: the zone carries no time of its own, so after a merge the
    ///   profile's `last_seen_ms` stands for it. That is order-independent as
    ///   long as the history seen latest names a zone; when it does not, three
    ///   or more histories may keep a different one depending on the order.
    /// - `lifetime_value` adds in floating point: exact for amounts in cents
    ///   up to 2^53, otherwise equal to rounding.
    ///
    /// The test `every_field_is_merged` lists every field, so a field added to
    /// [`Profile`] fails to compile there until a rule here covers it.
    pub fn absorb_with(&mut self, other: &Profile, limits: &SeenLimits) {
        let prefer_other_timezone = timezone_precedence(other) > timezone_precedence(self);
        self.merge_ids(&other.id, &other.anonymous_ids);
        self.merge_activity(other);
        self.merge_feedback(other);
        merge_products(&mut self.products, &other.products);
        merge_recent(&mut self.recent, &other.recent);
        merge_marks(&mut self.journeys, &other.journeys);
        merge_runs(&mut self.journey_runs, &other.journey_runs);
        merge_timers(&mut self.timers, &other.timers, &self.journey_runs);
        merge_entries(&mut self.journey_entries, &other.journey_entries);
        self.windows.merge(&other.windows);
        self.emotion.merge(&other.emotion);
        self.delivery.merge(&other.delivery, prefer_other_timezone);
        self.seen_events.merge(&other.seen_events, limits);
    }

    /// Seen times, event and channel counts, orders, returns, value, open issues.
    fn merge_activity(&mut self, other: &Profile) {
        if other.events > 0 {
            if self.events == 0 {
                (self.first_seen_ms, self.last_seen_ms) = (other.first_seen_ms, other.last_seen_ms);
            }
            self.first_seen_ms = self.first_seen_ms.min(other.first_seen_ms);
            self.last_seen_ms = self.last_seen_ms.max(other.last_seen_ms);
        }
        self.events = self.events.saturating_add(other.events);
        merge_channels(&mut self.channels, &other.channels);
        self.orders = self.orders.saturating_add(other.orders);
        self.returns = self.returns.saturating_add(other.returns);
        self.open_issues = self.open_issues.saturating_add(other.open_issues);
        self.lifetime_value += other.lifetime_value;
        self.last_purchase_ms = self.last_purchase_ms.max(other.last_purchase_ms);
    }

    /// Surveys, sentiment, and the contact, review-read and call-wait signals.
    fn merge_feedback(&mut self, other: &Profile) {
        let theirs = [other.nps, other.csat, other.ces];
        let ours = [&mut self.nps, &mut self.csat, &mut self.ces];
        for (i, (ours, theirs)) in ours.into_iter().zip(theirs).enumerate() {
            let previous = &mut self.previous_surveys[i];
            merge_survey(ours, previous, theirs, other.previous_surveys[i]);
        }
        let latest = |p: &Profile| (p.sentiment_ms, p.sentiment.to_bits());
        if latest(other) > latest(self) {
            (self.sentiment, self.sentiment_ms) = (other.sentiment, other.sentiment_ms);
        }
        merge_newest(
            &mut self.contacts_ms,
            &other.contacts_ms,
            RECENT_CONTACTS,
            |&t| t,
        );
        let reads = &other.review_reads_ms;
        merge_newest(&mut self.review_reads_ms, reads, RECENT_SIGNALS, |&t| t);
        let wait_key = |w: &CallWait| (w.at_ms, w.seconds);
        merge_newest(
            &mut self.call_waits,
            &other.call_waits,
            RECENT_SIGNALS,
            wait_key,
        );
        self.max_wait_seconds = self.max_wait_seconds.max(other.max_wait_seconds);
    }

    /// Adds `id` (unless ours) and `anonymous_ids` to ours, as a sorted set.
    fn merge_ids(&mut self, id: &str, anonymous_ids: &[String]) {
        let theirs = std::iter::once(id).chain(anonymous_ids.iter().map(String::as_str));
        for a in theirs {
            if a != self.id && !self.anonymous_ids.iter().any(|x| x == a) {
                self.anonymous_ids.push(a.to_owned());
            }
        }
        self.anonymous_ids.retain(|a| *a != self.id);
        self.anonymous_ids.sort();
        self.anonymous_ids.dedup();
    }
}

/// Which profile's time zone a merge keeps: one that names a zone, then the
/// one seen latest, then the greater name (a total order, so the choice does
/// not depend on which side absorbs which).
fn timezone_precedence(p: &Profile) -> (bool, i64, Option<&str>) {
    let tz = p.delivery.timezone.as_deref();
    (tz.is_some(), p.last_seen_ms, tz)
}

fn merge_channels(ours: &mut [ChannelActivity; 7], theirs: &[ChannelActivity; 7]) {
    for (o, t) in ours.iter_mut().zip(theirs) {
        o.count = o.count.saturating_add(t.count);
        o.last_ms = o.last_ms.max(t.last_ms);
    }
}

/// The newest two distinct answers of both histories: the latest and the one before.
fn merge_survey(
    latest: &mut Option<Score>,
    previous: &mut Option<Score>,
    their_latest: Option<Score>,
    their_previous: Option<Score>,
) {
    let mut all: Vec<Score> = [*latest, *previous, their_latest, their_previous]
        .into_iter()
        .flatten()
        .collect();
    all.sort_by_key(|s| Reverse((s.at_ms, s.score)));
    all.dedup();
    *latest = all.first().copied();
    *previous = all.get(1).copied();
}

/// Keeps the newest `cap` of both lists by `key`, oldest first (a multiset:
/// two histories' events at the same time both count).
fn merge_newest<T: Clone, K: Ord>(ours: &mut Vec<T>, theirs: &[T], cap: usize, key: fn(&T) -> K) {
    ours.extend_from_slice(theirs);
    ours.sort_by_key(key);
    let excess = ours.len().saturating_sub(cap);
    ours.drain(..excess);
}

/// Joins products by sku (views: the newest [`VIEWS_PER_PRODUCT`] of both;
/// purchase: the latest), keeps the [`TRACKED_PRODUCTS`] touched latest, by sku.
fn merge_products(ours: &mut Vec<ProductInterest>, theirs: &[ProductInterest]) {
    for t in theirs {
        match ours.iter_mut().find(|p| p.sku == t.sku) {
            Some(p) => {
                p.views_ms.extend_from_slice(&t.views_ms);
                p.views_ms.sort_unstable();
                let excess = p.views_ms.len().saturating_sub(VIEWS_PER_PRODUCT);
                p.views_ms.drain(..excess);
                p.purchased_ms = p.purchased_ms.max(t.purchased_ms);
            }
            None => ours.push(t.clone()),
        }
    }
    if ours.len() > TRACKED_PRODUCTS {
        // The same staleness as `Profile::product`, ties by sku.
        ours.sort_by(|a, b| (staleness(b), &b.sku).cmp(&(staleness(a), &a.sku)));
        ours.truncate(TRACKED_PRODUCTS);
    }
    ours.sort_by(|a, b| a.sku.cmp(&b.sku));
}

/// When a product was last touched (viewed or bought): the older, the staler.
fn staleness(p: &ProductInterest) -> i64 {
    p.views_ms.last().copied().unwrap_or(0).max(p.purchased_ms)
}

/// The newest [`RECENT_TOUCHPOINTS`] of both by time, one per event id (the
/// later if an id is in both), oldest first.
fn merge_recent(ours: &mut VecDeque<RecentTouch>, theirs: &VecDeque<RecentTouch>) {
    let mut all: Vec<RecentTouch> = ours.drain(..).chain(theirs.iter().cloned()).collect();
    all.sort_by(|a, b| {
        a.event_id
            .cmp(&b.event_id)
            .then_with(|| recent_key(b).cmp(&recent_key(a)))
    });
    all.dedup_by(|later, kept| later.event_id == kept.event_id);
    all.sort_by(|a, b| recent_key(a).cmp(&recent_key(b)));
    let excess = all.len().saturating_sub(RECENT_TOUCHPOINTS);
    ours.extend(all.into_iter().skip(excess));
}

/// The order recent touches are kept in: time, then what tells two apart.
fn recent_key(t: &RecentTouch) -> (i64, &str, usize, &str) {
    (
        t.at_ms,
        t.event_id.as_str(),
        t.channel.index(),
        t.event_type.as_str(),
    )
}

/// Journey marks by (journey, key): latest firing, counts added.
fn merge_marks(ours: &mut Vec<JourneyMark>, theirs: &[JourneyMark]) {
    for t in theirs {
        match ours
            .iter_mut()
            .find(|m| m.journey == t.journey && m.key == t.key)
        {
            Some(m) => {
                m.fired_ms = m.fired_ms.max(t.fired_ms);
                m.count = m.count.saturating_add(t.count);
            }
            None => ours.push(t.clone()),
        }
    }
    ours.sort_by(|a, b| (&a.journey, &a.key).cmp(&(&b.journey, &b.key)));
}

/// One run per (journey, key): the one entered first, ties by trigger event id.
fn merge_runs(ours: &mut Vec<JourneyRun>, theirs: &[JourneyRun]) {
    ours.extend_from_slice(theirs);
    ours.sort_by(|a, b| run_key(a).cmp(&run_key(b)));
    ours.dedup_by(|later, kept| later.journey == kept.journey && later.key == kept.key);
}

/// The order runs are chosen in: per (journey, key), the earliest entry first.
fn run_key(r: &JourneyRun) -> (&str, &str, i64, &str, u32, &[u32]) {
    (
        r.journey.as_str(),
        r.key.as_str(),
        r.entered_ms,
        r.trigger_event_id.as_str(),
        r.version,
        r.at.as_slice(),
    )
}

/// One timer per (journey, key), due times unchanged: the timer of the chosen
/// run in `runs` when one has its trigger event, else the earliest due.
fn merge_timers(ours: &mut Vec<Timer>, theirs: &[Timer], runs: &[JourneyRun]) {
    ours.extend_from_slice(theirs);
    ours.sort_by(|a, b| timer_key(a, runs).cmp(&timer_key(b, runs)));
    ours.dedup_by(|later, kept| later.journey == kept.journey && later.key == kept.key);
}

/// The order timers are chosen in: per (journey, key), the timer of the run
/// first, then the earliest due.
fn timer_key<'a>(t: &'a Timer, runs: &[JourneyRun]) -> (&'a str, &'a str, bool, i64, &'a str) {
    let of_run = runs.iter().any(|r| {
        r.journey == t.journey && r.key == t.key && r.trigger_event_id == t.trigger_event_id
    });
    (
        t.journey.as_str(),
        t.key.as_str(),
        !of_run,
        t.fire_at_ms,
        t.trigger_event_id.as_str(),
    )
}

/// Entry times by (journey, key): the union, in time order.
fn merge_entries(ours: &mut Vec<JourneyEntries>, theirs: &[JourneyEntries]) {
    for t in theirs {
        match ours
            .iter_mut()
            .find(|e| e.journey == t.journey && e.key == t.key)
        {
            Some(e) => {
                e.entered_ms.extend_from_slice(&t.entered_ms);
                e.entered_ms.sort_unstable();
            }
            None => ours.push(t.clone()),
        }
    }
    ours.sort_by(|a, b| (&a.journey, &a.key).cmp(&(&b.journey, &b.key)));
}

#[cfg(test)]
mod tests;

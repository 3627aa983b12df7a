//! How one touchpoint updates a customer's profile: counters, the products
//! looked at and bought, surveys, the signals the emotional state reads, the
//! recent touches agents see, the windows and the delivery state.

use compact_str::CompactString;
use smallvec::SmallVec;

use super::{
    CallWait, ProductInterest, Profile, RecentTouch, Score, RECENT_CONTACTS, RECENT_SIGNALS,
    RECENT_TOUCHPOINTS, TRACKED_PRODUCTS, VIEWS_PER_PRODUCT,
};
use crate::touchpoint::{EventType, SurveyKind, Touchpoint};

impl Profile {
    /// Applies one validated touchpoint.
    pub fn apply(&mut self, t: &Touchpoint) {
        let at = t.event_time;
        self.count(t, at);
        self.link_anonymous(t);
        if is_review_read(t) {
            push_bounded(&mut self.review_reads_ms, at, RECENT_SIGNALS);
        }
        match t.event_type {
            EventType::ProductView => {
                if let Some(sku) = t.sku() {
                    self.product(sku, at).push_view(at);
                }
            }
            EventType::Purchase => self.purchase(t, at),
            EventType::Return => {
                self.returns += 1;
                if let Some(a) = t.commerce.as_ref().and_then(|c| c.amount) {
                    self.lifetime_value = (self.lifetime_value - a).max(0.0);
                }
            }
            EventType::SurveyResponse => self.survey_answer(t, at),
            EventType::DeliveryFailed | EventType::RefundRequested | EventType::TicketOpened => {
                self.open_issues += 1;
            }
            EventType::TicketResolved => {
                self.open_issues = self.open_issues.saturating_sub(1);
            }
            EventType::HelpSearch | EventType::CallStarted | EventType::ChatHandoff => {
                push_bounded(&mut self.contacts_ms, at, RECENT_CONTACTS);
            }
            _ => {}
        }
        if let Some(wait) = t.call.as_ref().and_then(|c| c.wait_seconds) {
            self.call_wait(wait, at);
        }
        if let Some(s) = t.chat.as_ref().and_then(|c| c.sentiment) {
            self.sentiment = 0.7 * self.sentiment + 0.3 * s;
            self.sentiment_ms = self.sentiment_ms.max(at);
        }
        self.remember(t, at);
        self.windows.record(t.event_type, t.channel, at);
        self.delivery.apply(t);
    }

    /// Counts the touchpoint: first and last seen, events, its channel.
    fn count(&mut self, t: &Touchpoint, at: i64) {
        if self.events == 0 || at < self.first_seen_ms {
            self.first_seen_ms = at;
        }
        self.last_seen_ms = self.last_seen_ms.max(at);
        self.events += 1;
        let ch = &mut self.channels[t.channel.index()];
        ch.count += 1;
        ch.last_ms = ch.last_ms.max(at);
    }

    /// Notes the anonymous id a customer's touchpoint also carries.
    fn link_anonymous(&mut self, t: &Touchpoint) {
        if let Some(anon) = t.anonymous_id.as_deref() {
            if t.customer_id.is_some()
                && anon != self.id
                && !self.anonymous_ids.iter().any(|a| a == anon)
            {
                self.anonymous_ids.push(anon.to_owned());
            }
        }
    }

    /// An order: its amount, and the product bought.
    fn purchase(&mut self, t: &Touchpoint, at: i64) {
        self.orders += 1;
        self.last_purchase_ms = self.last_purchase_ms.max(at);
        if let Some(c) = &t.commerce {
            self.lifetime_value += c.amount.unwrap_or(0.0);
            if let Some(sku) = c.sku.as_deref() {
                let p = self.product(sku, at);
                p.purchased_ms = p.purchased_ms.max(at);
            }
        }
    }

    /// A survey answer replaces its survey's latest, unless that is newer;
    /// the one it replaces is kept for the trend.
    fn survey_answer(&mut self, t: &Touchpoint, at: i64) {
        let Some(s) = &t.survey else {
            return;
        };
        let slot = match s.kind {
            SurveyKind::Nps => &mut self.nps,
            SurveyKind::Csat => &mut self.csat,
            SurveyKind::Ces => &mut self.ces,
        };
        // A late answer does not overwrite a newer one.
        if slot.is_none_or(|old| old.at_ms <= at) {
            let before = slot.replace(Score {
                score: s.score,
                at_ms: at,
            });
            if before.is_some() {
                self.previous_surveys[s.kind.index()] = before;
            }
        }
    }

    /// A call's wait for an agent: the longest, and the recent ones in time order.
    fn call_wait(&mut self, wait: i32, at: i64) {
        self.max_wait_seconds = self.max_wait_seconds.max(wait);
        if wait > 0 {
            let w = CallWait {
                at_ms: at,
                seconds: wait,
            };
            let pos = self.call_waits.partition_point(|c| c.at_ms <= at);
            self.call_waits.insert(pos, w);
            if self.call_waits.len() > RECENT_SIGNALS {
                self.call_waits.remove(0);
            }
        }
    }

    /// Keeps the touchpoint among the recent ones shown to agents.
    fn remember(&mut self, t: &Touchpoint, at: i64) {
        // The oldest touch's id buffer is reused for the newest: no allocation
        // once the ring is full.
        if self.recent.len() == RECENT_TOUCHPOINTS {
            self.recent.pop_front();
        }
        self.recent.push_back(RecentTouch {
            event_id: CompactString::from(t.event_id.as_str()),
            channel: t.channel,
            event_type: t.event_type,
            at_ms: at,
        });
    }

    /// The interest record for `sku`, created if missing (evicting the stalest).
    fn product(&mut self, sku: &str, at: i64) -> &mut ProductInterest {
        if let Some(i) = self.products.iter().position(|p| p.sku == sku) {
            return &mut self.products[i];
        }
        if self.products.len() == TRACKED_PRODUCTS {
            let stalest = self
                .products
                .iter()
                .enumerate()
                .min_by_key(|(_, p)| p.views_ms.last().copied().unwrap_or(0).max(p.purchased_ms))
                .map(|(i, _)| i)
                .unwrap_or(0);
            self.products.swap_remove(stalest);
        }
        let _ = at;
        self.products.push(ProductInterest {
            sku: CompactString::from(sku),
            views_ms: SmallVec::new(),
            purchased_ms: 0,
        });
        self.products.last_mut().expect("just pushed")
    }
}

impl ProductInterest {
    fn push_view(&mut self, at: i64) {
        // Keep view times sorted so out-of-order events still count in the right window.
        if self.views_ms.len() == VIEWS_PER_PRODUCT {
            // Full: a view older than every kept one changes nothing; any other
            // replaces the oldest (so the list never leaves its inline storage).
            if self.views_ms.first().is_some_and(|&t| at < t) {
                return;
            }
            self.views_ms.remove(0);
        }
        let pos = self.views_ms.partition_point(|&t| t <= at);
        self.views_ms.insert(pos, at);
    }
}

/// A page view, product view or search whose url or query mentions reviews.
fn is_review_read(t: &Touchpoint) -> bool {
    matches!(
        t.event_type,
        EventType::PageView | EventType::ProductView | EventType::Search
    ) && t.web.as_ref().is_some_and(|w| {
        [w.url.as_deref(), w.query.as_deref()]
            .into_iter()
            .flatten()
            .any(mentions_reviews)
    })
}

/// Whether a url or search query is about reviews ("review" in any case).
fn mentions_reviews(text: &str) -> bool {
    const WORD: &[u8] = b"review";
    text.as_bytes()
        .windows(WORD.len())
        .any(|w| w.eq_ignore_ascii_case(WORD))
}

/// Inserts `at` keeping the newest `cap` values in time order.
fn push_bounded(v: &mut Vec<i64>, at: i64, cap: usize) {
    let pos = v.partition_point(|&t| t <= at);
    v.insert(pos, at);
    if v.len() > cap {
        v.remove(0);
    }
}

//! The demo's doors: part of the simulated web traffic goes through the
//! collector over HTTP, as Segment calls an SDK would send, and the rest
//! straight to the touchpoint topic.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use base64::Engine as _;
use rapport_connectors::publish::send_when_room;
use rapport_connectors::simulator::Simulator;
use rapport_model::{Channel, EventType, Touchpoint};
use rdkafka::producer::{BaseProducer, BaseRecord, Producer};
use serde_json::{json, Value};

/// The write key the demo's collector accepts.
pub(super) const WRITE_KEY: &str = "demo-write-key";

/// Calls per `/v1/batch` request.
const BATCH: usize = 100;

/// A Segment-style client of the demo's collector.
pub(super) struct WebDoor {
    agent: ureq::Agent,
    url: String,
    auth: String,
    calls: Vec<Value>,
    /// Touchpoints of the pending calls, produced directly if the collector refuses.
    pending: Vec<(String, Vec<u8>)>,
    first: Option<Instant>,
    /// Calls the collector acknowledged.
    pub sent: u64,
    /// Calls it refused, produced straight to Kafka instead.
    pub refused: u64,
}

impl WebDoor {
    /// A client of the collector listening on `addr`.
    pub fn new(addr: std::net::SocketAddr) -> Self {
        let token = base64::engine::general_purpose::STANDARD.encode(format!("{WRITE_KEY}:"));
        WebDoor {
            agent: ureq::Agent::new_with_defaults(),
            url: format!("http://{addr}/v1/batch"),
            auth: format!("Basic {token}"),
            calls: Vec::with_capacity(BATCH),
            pending: Vec::with_capacity(BATCH),
            first: None,
            sent: 0,
            refused: 0,
        }
    }

    /// Takes `t` as a Segment call when it is web traffic an SDK would send
    /// (page and product views, items added to the cart); false otherwise.
    fn offer(&mut self, key: &str, value: &[u8], t: &Touchpoint) -> bool {
        let Some(call) = segment_call(t) else {
            return false;
        };
        self.calls.push(call);
        self.pending.push((key.to_owned(), value.to_vec()));
        self.first.get_or_insert_with(Instant::now);
        true
    }

    /// Sends the pending calls when there are enough of them or they waited
    /// long enough (or `now`); what the collector refuses goes to `producer`.
    fn flush(&mut self, now: bool, producer: &BaseProducer, topic: &str) -> anyhow::Result<()> {
        let due = self
            .first
            .is_some_and(|f| f.elapsed() > Duration::from_millis(200));
        if self.calls.is_empty() || !(now || due || self.calls.len() >= BATCH) {
            return Ok(());
        }
        let body = json!({ "batch": self.calls }).to_string();
        let ok = self
            .agent
            .post(&self.url)
            .header("Authorization", &self.auth)
            .header("Content-Type", "application/json")
            .send(body.as_bytes())
            .is_ok_and(|r| r.status() == 200);
        let n = self.calls.len() as u64;
        if ok {
            self.sent += n;
        } else {
            self.refused += n;
            for (key, value) in &self.pending {
                send_when_room(producer, BaseRecord::to(topic).key(key).payload(value))?;
            }
        }
        self.calls.clear();
        self.pending.clear();
        self.first = None;
        Ok(())
    }
}

/// The Segment call an SDK would send for `t`, for web page and product views
/// and items added to the cart.
fn segment_call(t: &Touchpoint) -> Option<Value> {
    if t.channel != Channel::Web {
        return None;
    }
    let user = t.customer_id.as_deref()?;
    let time = chrono::DateTime::from_timestamp_millis(t.event_time)?.to_rfc3339();
    let url = t.web.as_ref().and_then(|w| w.url.as_deref());
    let sku = t.commerce.as_ref().and_then(|c| c.sku.as_deref());
    let (kind, event) = match t.event_type {
        EventType::PageView => ("page", None),
        EventType::ProductView => ("track", Some("Product Viewed")),
        EventType::AddToCart => ("track", Some("Product Added")),
        _ => return None,
    };
    let mut call = json!({
        "type": kind,
        "userId": user,
        "messageId": t.event_id,
        "timestamp": time,
        "properties": { "url": url, "sku": sku },
    });
    if let Some(e) = event {
        call["event"] = json!(e);
    }
    Some(call)
}

/// Feeds the simulated population at `rate` touchpoints/s until `stop`: web
/// traffic through `web` (the collector), the rest to `topic`. Returns how
/// many touchpoints were sent either way.
pub(super) fn feed(
    bootstrap: &str,
    topic: &str,
    sim: &mut Simulator,
    rate: u64,
    stop: &AtomicBool,
    sent: &AtomicU64,
    web: &mut WebDoor,
) -> anyhow::Result<u64> {
    let producer = rapport_connectors::publish::producer(bootstrap)?;
    let started = Instant::now();
    let mut n = 0u64;
    while !stop.load(Ordering::Relaxed) {
        let due = Duration::from_secs_f64(n as f64 / rate.max(1) as f64);
        if let Some(wait) = due.checked_sub(started.elapsed()) {
            web.flush(false, &producer, topic)?;
            producer.poll(wait.min(Duration::from_millis(20)));
            continue;
        }
        let r = sim.next_record(chrono::Utc::now().timestamp_millis());
        let through_web = !r.malformed
            && serde_json::from_slice::<Touchpoint>(&r.value)
                .is_ok_and(|t| web.offer(&r.key, &r.value, &t));
        if !through_web {
            send_when_room(
                &producer,
                BaseRecord::to(topic).key(&r.key).payload(&r.value),
            )?;
        }
        web.flush(false, &producer, topic)?;
        n += 1;
        sent.store(n, Ordering::Relaxed);
        producer.poll(Duration::ZERO);
    }
    web.flush(true, &producer, topic)?;
    producer.flush(Duration::from_secs(30))?;
    Ok(n)
}

#[cfg(test)]
mod tests {
    use super::*;
    use rapport_model::testing::tp;

    #[test]
    fn web_views_become_the_segment_calls_an_sdk_sends() {
        let mut t = tp(
            "e1",
            "c-1",
            Channel::Web,
            EventType::ProductView,
            1_764_000_000_000,
        );
        t.commerce = Some(rapport_model::touchpoint::Commerce {
            sku: Some("tv-55".into()),
            ..Default::default()
        });
        let call = segment_call(&t).unwrap();
        assert_eq!(call["type"], "track");
        assert_eq!(call["event"], "Product Viewed");
        assert_eq!(call["userId"], "c-1");
        assert_eq!(call["messageId"], "e1");
        assert_eq!(call["properties"]["sku"], "tv-55");
        assert_eq!(call["timestamp"], "2025-11-24T16:00:00+00:00");
        // The mapping the collector ships reads it back as the same touchpoint type.
        let m = crate::collect::mapping::Mapping::builtin();
        let back = m
            .map(crate::collect::mapping::CallKind::Track, &call, 0)
            .unwrap();
        assert_eq!(back.event_type, EventType::ProductView);
        assert_eq!(back.event_id, "e1");
        assert_eq!(back.event_time, t.event_time);
        assert_eq!(back.commerce.and_then(|c| c.sku).as_deref(), Some("tv-55"));
        // Other channels and event types go to Kafka directly.
        let store = tp(
            "e2",
            "c-1",
            Channel::Store,
            EventType::Purchase,
            1_764_000_000_000,
        );
        assert!(segment_call(&store).is_none());
    }
}

//! What each of Rapport's Kafka clients asks of the brokers: requests by type
//! and bytes each way, from librdkafka's statistics, as the Prometheus
//! counters `rapport_kafka_requests_total{client,request}` and
//! `rapport_kafka_bytes_total{client,direction}`.
//!
//! A broker's CPU follows its requests more than its bytes: paced at 23k
//! touchpoints/s on a two-core machine, the local broker's CPU went to its
//! network and request threads (writes, wake-ups, purgatory checks) for a few
//! thousand small requests a second. With these counters ops see which client
//! asks how often (`rate(rapport_kafka_requests_total[1m])`), and what a
//! setting such as the consumer's `fetch.wait.max.ms` or the producers'
//! `linger.ms` changes.
//!
//! librdkafka reports totals since each client started, per broker
//! connection; [`Requests::observe`] adds what grew since the client's last
//! report, so a producer replaced by a new one (its totals start again at
//! zero) neither subtracts nor counts twice. A client that has not reported
//! for [`FORGET_AFTER`] is forgotten (a producer replaced after a failed or
//! abandoned commit reports no more), so the totals kept do not grow with
//! every replacement.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use prometheus::IntCounterVec;
use rdkafka::client::ClientContext;
use rdkafka::consumer::ConsumerContext;
use rdkafka::producer::{DeliveryResult, ProducerContext};
use rdkafka::Statistics;

use crate::metrics::Metrics;

/// How often the engine's clients report their statistics, unless their
/// settings say otherwise (`statistics.interval.ms`).
pub const STATISTICS_INTERVAL_MS: &str = "5000";

/// How long a client may go without a report before its totals are
/// forgotten: hundreds of its reporting intervals, so only a client that is
/// gone is.
const FORGET_AFTER: Duration = Duration::from_secs(30 * 60);

/// A client's totals at its last report.
#[derive(Default)]
struct Totals {
    by_request: HashMap<String, i64>,
    sent: u64,
    received: u64,
}

/// A client's totals and when it reported them.
struct Last {
    totals: Totals,
    at: Instant,
}

/// Counts one kind of client's requests and bytes into the engine's metrics,
/// from each client's statistics.
pub struct Requests {
    client: &'static str,
    requests: IntCounterVec,
    bytes: IntCounterVec,
    /// By librdkafka's name of the client instance (`rdkafka#producer-3`).
    last: Mutex<HashMap<String, Last>>,
}

impl Requests {
    /// Counts under the label `client` (`consumer`, `producer`, ...).
    pub fn new(metrics: &Metrics, client: &'static str) -> Self {
        Requests {
            client,
            requests: metrics.kafka_requests.clone(),
            bytes: metrics.kafka_bytes.clone(),
            last: Mutex::new(HashMap::new()),
        }
    }

    /// Adds what the client of `statistics` sent and received since its last report.
    pub fn observe(&self, statistics: &Statistics) {
        self.observe_at(statistics, Instant::now());
    }

    /// [`Requests::observe`] for a report received at `at`; forgets the
    /// clients that have not reported for [`FORGET_AFTER`].
    fn observe_at(&self, statistics: &Statistics, at: Instant) {
        let mut last = match self.last.lock() {
            Ok(l) => l,
            Err(poisoned) => poisoned.into_inner(),
        };
        let entry = last.entry(statistics.name.clone()).or_insert(Last {
            totals: Totals::default(),
            at,
        });
        entry.at = at;
        self.count(&mut entry.totals, totals(statistics));
        last.retain(|_, l| at.saturating_duration_since(l.at) < FORGET_AFTER);
    }

    /// Adds what grew from `before` to `now`, and keeps `now`.
    fn count(&self, before: &mut Totals, now: Totals) {
        for (request, &n) in &now.by_request {
            let grew = n - before.by_request.get(request).copied().unwrap_or(0);
            if grew > 0 {
                self.requests
                    .with_label_values(&[self.client, request.as_str()])
                    .inc_by(grew as u64);
            }
        }
        let sent = now.sent.saturating_sub(before.sent);
        let received = now.received.saturating_sub(before.received);
        if sent > 0 {
            self.bytes
                .with_label_values(&[self.client, "sent"])
                .inc_by(sent);
        }
        if received > 0 {
            self.bytes
                .with_label_values(&[self.client, "received"])
                .inc_by(received);
        }
        *before = now;
    }
}

/// A client's totals over its broker connections.
fn totals(s: &Statistics) -> Totals {
    let mut t = Totals::default();
    for b in s.brokers.values() {
        for (request, &n) in &b.req {
            if n > 0 {
                *t.by_request.entry(request.clone()).or_insert(0) += n;
            }
        }
        t.sent += b.txbytes;
        t.received += b.rxbytes;
    }
    t
}

/// A client context that only counts: for clients with nothing else to
/// handle (the benchmarks' producers and readers). Set
/// `statistics.interval.ms` on the client for it to count anything.
pub struct Counted(pub Requests);

impl ClientContext for Counted {
    fn stats(&self, statistics: Statistics) {
        self.0.observe(&statistics);
    }
}

impl ConsumerContext for Counted {}

impl ProducerContext for Counted {
    type DeliveryOpaque = ();

    fn delivery(&self, _: &DeliveryResult<'_>, _: ()) {}
}

#[cfg(test)]
mod tests {
    use super::*;

    /// librdkafka's statistics of one client with one broker connection.
    fn report(name: &str, fetches: i64, produces: i64, sent: u64) -> Statistics {
        let json = format!(
            r#"{{"name":"{name}","client_id":"c","type":"producer","ts":0,"time":0,"age":0,
            "replyq":0,"msg_cnt":0,"msg_size":0,"msg_max":0,"msg_size_max":0,"simple_cnt":0,
            "metadata_cache_cnt":0,"tx":0,"tx_bytes":0,"rx":0,"rx_bytes":0,"txmsgs":0,
            "txmsg_bytes":0,"rxmsgs":0,"rxmsg_bytes":0,
            "brokers":{{"b:9092/1":{{"name":"b:9092/1","nodeid":1,"nodename":"b:9092",
            "source":"learned","state":"UP","stateage":0,"outbuf_cnt":0,"outbuf_msg_cnt":0,
            "waitresp_cnt":0,"waitresp_msg_cnt":0,"tx":0,"txbytes":{sent},"txerrs":0,
            "txretries":0,"txidle":0,"req_timeouts":0,"rx":0,"rxbytes":7,"rxerrs":0,
            "rxcorriderrs":0,"rxpartial":0,"rxidle":0,"zbuf_grow":0,"buf_grow":0,
            "wakeups":0,"connects":1,"disconnects":0,
            "req":{{"Fetch":{fetches},"Produce":{produces},"Metadata":0}},
            "toppars":{{}}}}}},
            "topics":{{}}}}"#
        );
        serde_json::from_str(&json).expect("a statistics report")
    }

    fn requests(m: &Metrics, request: &str) -> u64 {
        m.kafka_requests
            .with_label_values(&["producer", request])
            .get()
    }

    #[test]
    fn counts_what_grew_since_the_clients_last_report() {
        let m = Metrics::new();
        let r = Requests::new(&m, "producer");
        r.observe(&report("rdkafka#producer-1", 0, 10, 1000));
        r.observe(&report("rdkafka#producer-1", 0, 25, 1500));
        assert_eq!(requests(&m, "Produce"), 25);
        assert_eq!(
            m.kafka_bytes.with_label_values(&["producer", "sent"]).get(),
            1500
        );
        // Request types never sent get no series.
        let rendered = m.render();
        assert!(!rendered.contains("request=\"Metadata\""), "{rendered}");
        assert!(!rendered.contains("request=\"Fetch\""), "{rendered}");
    }

    /// A client silent for long is forgotten; one that reports is kept.
    #[test]
    fn a_client_that_stopped_reporting_is_forgotten() {
        let m = Metrics::new();
        let r = Requests::new(&m, "producer");
        let start = Instant::now();
        r.observe_at(&report("rdkafka#producer-1", 0, 40, 0), start);
        r.observe_at(&report("rdkafka#producer-2", 0, 5, 0), start);
        let later = start + FORGET_AFTER - Duration::from_secs(1);
        r.observe_at(&report("rdkafka#producer-2", 0, 6, 0), later);
        assert_eq!(r.last.lock().unwrap().len(), 2, "forgotten too soon");
        r.observe_at(&report("rdkafka#producer-2", 0, 7, 0), start + FORGET_AFTER);
        let kept: Vec<String> = r.last.lock().unwrap().keys().cloned().collect();
        assert_eq!(kept, ["rdkafka#producer-2"]);
        assert_eq!(requests(&m, "Produce"), 47);
    }

    #[test]
    fn a_new_client_adds_its_own_totals_and_an_old_one_never_subtracts() {
        let m = Metrics::new();
        let r = Requests::new(&m, "producer");
        r.observe(&report("rdkafka#producer-1", 0, 40, 0));
        // The producer was replaced: the new one starts from zero.
        r.observe(&report("rdkafka#producer-2", 0, 5, 0));
        assert_eq!(requests(&m, "Produce"), 45);
        // A broker connection gone from a report lowers the client's totals;
        // nothing is taken back, and the next growth counts from there.
        r.observe(&report("rdkafka#producer-1", 0, 30, 0));
        r.observe(&report("rdkafka#producer-1", 0, 33, 0));
        assert_eq!(requests(&m, "Produce"), 48);
    }
}

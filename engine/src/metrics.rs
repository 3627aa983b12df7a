//! Prometheus metrics: what the engine did, per outcome, so ops can see it.

use prometheus::{
    Gauge, Histogram, HistogramOpts, HistogramVec, IntCounter, IntCounterVec, IntGauge,
    IntGaugeVec, Opts, Registry,
};

/// The engine's metrics, registered in their own registry.
#[derive(Clone)]
pub struct Metrics {
    /// The registry served at `/metrics`.
    pub registry: Registry,
    /// Touchpoints applied to profiles, by source topic.
    pub events: IntCounterVec,
    /// Records skipped because their offset was already applied to state (replay after restart).
    pub skipped: IntCounter,
    /// Touchpoints skipped because their profile had already seen their event id.
    pub duplicates: IntCounter,
    /// Records sent to the dead-letter topic, by stage and class.
    pub dead_letters: IntCounterVec,
    /// Actions emitted, by journey and kind.
    pub actions: IntCounterVec,
    /// Survey answers, by survey, classification, channel and store (`""` when
    /// none): live NPS, CSAT and CES.
    pub survey_answers: IntCounterVec,
    /// Delivery-policy decisions, by journey and outcome (`sent`, `capped`,
    /// `held_out`, ...).
    pub decisions: IntCounterVec,
    /// Emotional-state transitions, by state left and state entered.
    pub emotion_transitions: IntCounterVec,
    /// Timers fired (actions they produced).
    pub timers_fired: IntCounter,
    /// Changelog records restored into local state.
    pub restored: IntCounter,
    /// Changelog offsets each partition being restored has left to read, by partition.
    pub restore_remaining: IntGaugeVec,
    /// Commits of state, actions and offsets.
    pub commits: IntCounter,
    /// Commits started before the commit interval was up, because the
    /// interval's changed profiles filled the profile cache.
    pub early_commits: IntCounter,
    /// Times the input was paused because the changed profiles filled the
    /// profile cache while a commit was still in flight.
    pub input_holds: IntCounter,
    /// Actions held back until the interval carrying an earlier action of the
    /// same customer had committed, so that a customer's actions arrive in
    /// the order they were decided (the runtime's `order`).
    pub actions_held: IntCounter,
    /// Times uncommitted work was dropped and redone from the last commit.
    pub rewinds: IntCounter,
    /// Commits given up because a call into the Kafka client overran its own
    /// timeout (the runtime's `commit::watch`).
    pub commits_abandoned: IntCounter,
    /// Records in each owned input partition not processed yet, by topic and partition.
    pub lag: IntGaugeVec,
    /// RocksDB memory and compaction: `block_cache`, `memtables`, `pending_compaction`.
    pub state_bytes: IntGaugeVec,
    /// From a record's timestamp to the commit that made its effects visible.
    pub commit_latency_seconds: Histogram,
    /// From a touchpoint record's timestamp (its producer's clock, or the
    /// broker's for `LogAppendTime` topics) to a stage of its way through the
    /// engine: `received` (the consumer handed it to the processing loop)
    /// and `decided` (its actions decided and handed to the producer, or
    /// held for their customer's earlier ones; records without actions are
    /// not counted there). The first is the input's part of the latency
    /// (the broker, the fetch, the local queue while the loop was busy), the
    /// difference the engine's own; under `exactly_once` the commit follows
    /// (`rapport_commit_latency_seconds`).
    pub record_latency_seconds: HistogramVec,
    /// Duration of a commit.
    pub commit_seconds: Histogram,
    /// Where a record's way to a committed action spends its time, by phase:
    /// `process` (a batch through the processor), `prepare` (the interval's
    /// changed profiles cut for the commit), `encode` (their changelog
    /// records encoded and handed to the producer), `ahead` (a part of
    /// them written ahead of the commit while the engine is caught up), `flush` (the interval's
    /// records acknowledged, counted from their last send), `offsets` (the
    /// consumed offsets added to the transaction, within `flush`: while the
    /// records are in flight), `transaction` (the transaction committed), `wait` (the
    /// processing loop waiting for the previous interval's commit), `state`
    /// (RocksDB written after the commit) and `end` (on the loop's thread, the
    /// committed encodings kept and the profile cache trimmed).
    pub commit_phase_seconds: HistogramVec,
    /// Profiles held decoded in memory.
    pub cached_profiles: IntGauge,
    /// Their estimated memory, bytes (bounded by `state.profile_cache_mb` after
    /// each commit).
    pub profile_cache_bytes: IntGauge,
    /// Profiles whose committed encoding is kept in memory (the encoded cache).
    pub encoded_profiles: IntGauge,
    /// Their memory, bytes (bounded by `state.encoded_cache_mb`).
    pub encoded_cache_bytes: IntGauge,
    /// Estimated memory of the profiles changed since the last commit's cut,
    /// held until committed (bounded by `state.profile_cache_mb` and one batch).
    pub changed_profile_bytes: IntGauge,
    /// Entries of the index of pending waits held in memory.
    pub pending_waits: IntGauge,
    /// Profiles asked for, by where they were found: `decoded` (the profile
    /// cache), `encoded` (the encoded cache), `rocksdb`, or `new` (nowhere).
    /// Many `rocksdb` lookups against `encoded` ones say the customers being
    /// seen outgrow `state.encoded_cache_mb`.
    pub profile_lookups: IntCounterVec,
    /// Erasure requests applied.
    pub erasures: IntCounter,
    /// Touchpoints of erased customers, dead-lettered with reason `erased`.
    pub erased_touchpoints: IntCounter,
    /// Identity merges, conflicts and refused links, by kind.
    pub identity_events: IntCounterVec,
    /// Touchpoints routed by the identity stage: held while a merge is awaited,
    /// forwarded along a link, released after a merge.
    pub identity_routed: IntCounterVec,
    /// 1 when the engine is consuming, 0 otherwise.
    pub ready: IntGauge,
    /// 1 while the consumer is a settled member of its group (librdkafka's
    /// group handler `up`, its join `steady`), from the consumer's statistics
    /// every 5 s; 0 while it looks for the coordinator, joins or rebalances,
    /// or is out of the group. A member with no partitions (more instances
    /// than partitions) is settled.
    pub group_member: IntGauge,
    /// Partitions the group has assigned this instance, as librdkafka counts
    /// them (every touchpoint topic's, and the internal topics').
    pub group_partitions: IntGauge,
    /// Seconds since the main loop last polled its consumer, taken when the
    /// metrics are read. The consumer's rebalance callbacks, statistics and
    /// errors are served only by that poll: a loop held up in a call that
    /// blocks shows here, however its other metrics stand still.
    pub consumer_poll_age: Gauge,
    /// Requests the engine's Kafka clients sent to the brokers, by client
    /// (`consumer`, `producer`) and librdkafka's name of the request
    /// (`Fetch`, `Produce`, `AddOffsetsToTxn`, ...), from the clients'
    /// statistics ([`crate::kafka::requests`]).
    pub kafka_requests: IntCounterVec,
    /// Bytes the engine's Kafka clients sent to and received from the
    /// brokers, by client and direction (`sent`, `received`).
    pub kafka_bytes: IntCounterVec,
}

impl Metrics {
    /// Creates and registers every metric.
    pub fn new() -> Self {
        let registry = Registry::new();
        let m = Metrics {
            events: IntCounterVec::new(
                Opts::new("rapport_events_total", "Touchpoints applied to profiles"),
                &["topic"],
            )
            .expect("valid metric"),
            skipped: IntCounter::new(
                "rapport_events_skipped_total",
                "Records skipped because state already reflects them",
            )
            .expect("valid metric"),
            duplicates: IntCounter::new(
                "rapport_duplicate_events_total",
                "Touchpoints skipped because their customer's profile had already seen their event id",
            )
            .expect("valid metric"),
            dead_letters: IntCounterVec::new(
                Opts::new(
                    "rapport_dead_letters_total",
                    "Records sent to the dead-letter topic",
                ),
                &["stage", "class"],
            )
            .expect("valid metric"),
            actions: IntCounterVec::new(
                Opts::new("rapport_actions_total", "Actions emitted"),
                &["journey", "kind"],
            )
            .expect("valid metric"),
            survey_answers: IntCounterVec::new(
                Opts::new(
                    "rapport_survey_answers_total",
                    "NPS, CSAT and CES answers, by survey, classification, channel and store",
                ),
                &["survey", "classification", "channel", "store"],
            )
            .expect("valid metric"),
            decisions: IntCounterVec::new(
                Opts::new(
                    "rapport_decisions_total",
                    "Delivery-policy decisions on journeys' actions, by journey and outcome",
                ),
                &["journey", "outcome"],
            )
            .expect("valid metric"),
            emotion_transitions: IntCounterVec::new(
                Opts::new(
                    "rapport_emotion_transitions_total",
                    "Customers' emotional-state changes, by state left and state entered",
                ),
                &["from", "to"],
            )
            .expect("valid metric"),
            timers_fired: IntCounter::new(
                "rapport_timer_actions_total",
                "Actions produced by durable timers",
            )
            .expect("valid metric"),
            restored: IntCounter::new(
                "rapport_restored_records_total",
                "Changelog records restored into local state",
            )
            .expect("valid metric"),
            restore_remaining: IntGaugeVec::new(
                Opts::new(
                    "rapport_restore_remaining_records",
                    "Changelog offsets a partition being restored has left to read (0 once ready)",
                ),
                &["partition"],
            )
            .expect("valid metric"),
            commits: IntCounter::new(
                "rapport_commits_total",
                "Commits of state, actions and offsets",
            )
            .expect("valid metric"),
            early_commits: IntCounter::new(
                "rapport_early_commits_total",
                "Commits started before the commit interval was up because the interval's changed profiles filled the profile cache (state.profile_cache_mb)",
            )
            .expect("valid metric"),
            input_holds: IntCounter::new(
                "rapport_input_holds_total",
                "Times the input was paused because the interval's changed profiles filled the profile cache while a commit was still in flight (a slow broker)",
            )
            .expect("valid metric"),
            actions_held: IntCounter::new(
                "rapport_actions_held_total",
                "Actions held back until the interval carrying an earlier action of the same customer had committed, to keep each customer's actions in decision order",
            )
            .expect("valid metric"),
            rewinds: IntCounter::new(
                "rapport_rewinds_total",
                "Times a failed commit (a rebalance, a broker restart) made the engine drop uncommitted work and redo it from the last commit",
            )
            .expect("valid metric"),
            commits_abandoned: IntCounter::new(
                "rapport_commits_abandoned_total",
                "Commits given up because a call into the Kafka client overran its own timeout; each is redone from the last commit (also counted in rapport_rewinds_total) on a replaced producer",
            )
            .expect("valid metric"),
            lag: IntGaugeVec::new(
                Opts::new(
                    "rapport_consumer_lag_records",
                    "Records in an owned input partition that the engine has not processed yet",
                ),
                &["topic", "partition"],
            )
            .expect("valid metric"),
            state_bytes: IntGaugeVec::new(
                Opts::new(
                    "rapport_state_bytes",
                    "RocksDB bytes by kind: block_cache, memtables, pending_compaction",
                ),
                &["kind"],
            )
            .expect("valid metric"),
            commit_latency_seconds: Histogram::with_opts(
                HistogramOpts::new(
                    "rapport_commit_latency_seconds",
                    "From the timestamp of the oldest record of an interval to the commit of its effects",
                )
                .buckets(vec![
                    0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0,
                ]),
            )
            .expect("valid metric"),
            record_latency_seconds: HistogramVec::new(
                HistogramOpts::new(
                    "rapport_record_latency_seconds",
                    "From a touchpoint's timestamp to the engine having received it and having decided its actions",
                )
                .buckets(vec![
                    0.001, 0.002, 0.005, 0.01, 0.015, 0.02, 0.03, 0.05, 0.075, 0.1, 0.15, 0.2,
                    0.3, 0.5, 1.0, 2.5, 10.0, 60.0,
                ]),
                &["stage"],
            )
            .expect("valid metric"),
            commit_seconds: Histogram::with_opts(
                HistogramOpts::new("rapport_commit_seconds", "Duration of one commit").buckets(
                    vec![0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 5.0],
                ),
            )
            .expect("valid metric"),
            commit_phase_seconds: HistogramVec::new(
                HistogramOpts::new(
                    "rapport_commit_phase_seconds",
                    "Time spent in each phase of processing and committing an interval",
                )
                .buckets(vec![
                    0.0005, 0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.2, 0.5, 1.0, 5.0,
                ]),
                &["phase"],
            )
            .expect("valid metric"),
            cached_profiles: IntGauge::new(
                "rapport_cached_profiles",
                "Profiles held decoded in memory",
            )
            .expect("valid metric"),
            profile_cache_bytes: IntGauge::new(
                "rapport_profile_cache_bytes",
                "Estimated memory of the profiles held decoded in memory, bytes",
            )
            .expect("valid metric"),
            encoded_profiles: IntGauge::new(
                "rapport_encoded_profiles",
                "Profiles whose committed encoding is kept in memory, to decode without a RocksDB lookup",
            )
            .expect("valid metric"),
            encoded_cache_bytes: IntGauge::new(
                "rapport_encoded_cache_bytes",
                "Memory of the committed profile encodings kept in memory, bytes",
            )
            .expect("valid metric"),
            profile_lookups: IntCounterVec::new(
                Opts::new(
                    "rapport_profile_lookups_total",
                    "Profiles asked for, by where they were found: decoded, encoded (the encoded cache), rocksdb or new",
                ),
                &["found"],
            )
            .expect("valid metric"),
            changed_profile_bytes: IntGauge::new(
                "rapport_changed_profile_bytes",
                "Estimated memory of the profiles changed since the last commit's cut, held until committed, bytes",
            )
            .expect("valid metric"),
            pending_waits: IntGauge::new(
                "rapport_pending_waits",
                "Entries of the index of pending waits held in memory",
            )
            .expect("valid metric"),
            ready: IntGauge::new("rapport_ready", "1 when the engine is consuming")
                .expect("valid metric"),
            group_member: IntGauge::new(
                "rapport_consumer_group_member",
                "1 while the consumer is a settled member of its group (not joining, rebalancing or out of it)",
            )
            .expect("valid metric"),
            group_partitions: IntGauge::new(
                "rapport_consumer_group_partitions",
                "Partitions the group has assigned this instance",
            )
            .expect("valid metric"),
            consumer_poll_age: Gauge::new(
                "rapport_consumer_poll_age_seconds",
                "Seconds since the main loop last polled its consumer (which serves its rebalance callbacks and statistics)",
            )
            .expect("valid metric"),
            kafka_requests: IntCounterVec::new(
                Opts::new(
                    "rapport_kafka_requests_total",
                    "Requests the engine's Kafka clients sent to the brokers, by client and request type",
                ),
                &["client", "request"],
            )
            .expect("valid metric"),
            kafka_bytes: IntCounterVec::new(
                Opts::new(
                    "rapport_kafka_bytes_total",
                    "Bytes the engine's Kafka clients sent to and received from the brokers",
                ),
                &["client", "direction"],
            )
            .expect("valid metric"),
            erasures: IntCounter::new("rapport_erasures_total", "Erasure requests applied")
                .expect("valid metric"),
            erased_touchpoints: IntCounter::new(
                "rapport_erased_touchpoints_total",
                "Touchpoints of erased customers, dead-lettered with reason erased",
            )
            .expect("valid metric"),
            identity_events: IntCounterVec::new(
                Opts::new(
                    "rapport_identity_events_total",
                    "Identity merges, conflicts and refused links, by kind",
                ),
                &["kind"],
            )
            .expect("valid metric"),
            identity_routed: IntCounterVec::new(
                Opts::new(
                    "rapport_identity_routed_total",
                    "Touchpoints held while a merge is awaited, forwarded along a link, or released after a merge",
                ),
                &["route"],
            )
            .expect("valid metric"),
            registry,
        };
        for c in [
            Box::new(m.events.clone()) as Box<dyn prometheus::core::Collector>,
            Box::new(m.skipped.clone()),
            Box::new(m.duplicates.clone()),
            Box::new(m.dead_letters.clone()),
            Box::new(m.actions.clone()),
            Box::new(m.commits.clone()),
            Box::new(m.early_commits.clone()),
            Box::new(m.input_holds.clone()),
            Box::new(m.actions_held.clone()),
            Box::new(m.rewinds.clone()),
            Box::new(m.commits_abandoned.clone()),
            Box::new(m.lag.clone()),
            Box::new(m.state_bytes.clone()),
            Box::new(m.profile_lookups.clone()),
            Box::new(m.changed_profile_bytes.clone()),
            Box::new(m.commit_latency_seconds.clone()),
            Box::new(m.record_latency_seconds.clone()),
            Box::new(m.timers_fired.clone()),
            Box::new(m.restored.clone()),
            Box::new(m.emotion_transitions.clone()),
            Box::new(m.decisions.clone()),
            Box::new(m.survey_answers.clone()),
            Box::new(m.restore_remaining.clone()),
            Box::new(m.commit_seconds.clone()),
            Box::new(m.commit_phase_seconds.clone()),
            Box::new(m.cached_profiles.clone()),
            Box::new(m.profile_cache_bytes.clone()),
            Box::new(m.encoded_profiles.clone()),
            Box::new(m.encoded_cache_bytes.clone()),
            Box::new(m.pending_waits.clone()),
            Box::new(m.ready.clone()),
            Box::new(m.group_member.clone()),
            Box::new(m.group_partitions.clone()),
            Box::new(m.consumer_poll_age.clone()),
            Box::new(m.kafka_requests.clone()),
            Box::new(m.kafka_bytes.clone()),
            Box::new(m.erasures.clone()),
            Box::new(m.erased_touchpoints.clone()),
            Box::new(m.identity_events.clone()),
            Box::new(m.identity_routed.clone()),
        ] {
            m.registry.register(c).expect("metric names are unique");
        }
        m
    }

    /// Actions emitted in total, all journeys and kinds.
    pub fn actions_total(&self) -> u64 {
        use prometheus::core::Collector;
        self.actions
            .collect()
            .iter()
            .flat_map(|f| f.get_metric())
            .map(|m| m.get_counter().get_value() as u64)
            .sum()
    }

    /// Notes that phase `phase` (see [`Metrics::commit_phase_seconds`]) took
    /// from `since` until now.
    pub fn phase_done(&self, phase: &str, since: std::time::Instant) {
        self.commit_phase_seconds
            .with_label_values(&[phase])
            .observe(since.elapsed().as_secs_f64());
    }

    /// Observations of [`Metrics::record_latency_seconds`] for a batch of
    /// records the consumer handed over now, added to the metric at once.
    pub fn batch_latency(&self) -> BatchLatency {
        let stage = |s: &str| self.record_latency_seconds.with_label_values(&[s]).local();
        BatchLatency {
            received_us: chrono::Utc::now().timestamp_micros(),
            received: stage("received"),
            decided: stage("decided"),
        }
    }

    /// The text exposition format.
    pub fn render(&self) -> String {
        prometheus::TextEncoder::new()
            .encode_to_string(&self.registry.gather())
            .unwrap_or_default()
    }
}

/// A batch's observations of [`Metrics::record_latency_seconds`]
/// ([`Metrics::batch_latency`]): one clock reading for the batch's
/// `received`, one per record with actions for `decided`.
pub struct BatchLatency {
    received_us: i64,
    received: prometheus::local::LocalHistogram,
    decided: prometheus::local::LocalHistogram,
}

impl BatchLatency {
    /// A record with timestamp `ts_ms` (none: not counted) was received with the batch.
    pub fn received(&mut self, ts_ms: Option<i64>) {
        if let Some(ts) = ts_ms {
            self.received.observe(seconds_since(ts, self.received_us));
        }
    }

    /// The actions of the record with timestamp `ts_ms` are decided, now.
    pub fn decided(&mut self, ts_ms: Option<i64>) {
        if let Some(ts) = ts_ms {
            let now = chrono::Utc::now().timestamp_micros();
            self.decided.observe(seconds_since(ts, now));
        }
    }

    /// Adds the batch's observations to the metric.
    pub fn flush(&mut self) {
        self.received.flush();
        self.decided.flush();
    }
}

/// Seconds from `ts_ms` to `now_us`; 0 for a timestamp from a clock ahead of
/// this one.
fn seconds_since(ts_ms: i64, now_us: i64) -> f64 {
    (now_us - ts_ms.saturating_mul(1000)).max(0) as f64 / 1e6
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

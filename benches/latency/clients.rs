//! The latency run's own Kafka clients: the producer that paces
//! touchpoints, the read_committed reader of actions, and the plain consumer
//! of one input partition.

use super::*;

/// Produces simulated touchpoints at `rate` for [`WARMUP_SECONDS`] and then
/// `seconds`, noting when each of the latter was handed over; returns how many
/// were noted.
///
/// The touchpoints are made before the first is sent ([`prepare`]) and only
/// get their event time when they go out: made while sending, the simulator
/// and the JSON round trip took the bench's producer thread about 8 µs a
/// touchpoint, a sixth of a core at 23k touchpoints/s on a machine whose two
/// cores the engine and the broker already fill.
pub(super) fn produce(
    bootstrap: &str,
    topic: &str,
    rate: u64,
    seconds: u64,
    sent: &Sent,
    bench: &Metrics,
    warmed_up: &mut dyn FnMut(),
) -> anyhow::Result<u64> {
    // The simulator's producer settings (murmur2, idempotent, lz4) but for linger.
    let producer: BaseProducer<Counted> = ClientConfig::new()
        .set("bootstrap.servers", bootstrap)
        .set("linger.ms", PRODUCER_LINGER_MS.to_string())
        .set("compression.type", "lz4")
        .set("enable.idempotence", "true")
        .set("partitioner", "murmur2_random")
        .set("statistics.interval.ms", STATISTICS_MS)
        .create_with_context(Counted(Requests::new(bench, "bench producer")))?;
    producer
        .client()
        .fetch_metadata(Some(topic), Duration::from_secs(10))?;
    let warmup = rate * WARMUP_SECONDS;
    let total = warmup + rate * seconds;
    let mut sim = Simulator::new(simulation());
    let mut records: Vec<Prepared> = (0..total)
        .map(|n| Prepared::next(&mut sim, n >= warmup))
        .collect::<anyhow::Result<_>>()?;
    // Sized once: growing a table of a million entries took tens of
    // milliseconds under the lock the reader also takes, a pause in the input.
    // And its memory touched before the run: left to the first inserts of
    // the measured run, each landing on a page not yet mapped (huge pages
    // zeroed 2 MiB at a time), they held the producer for 150 ms and the
    // records due meanwhile reached the engine as one burst, which carried
    // most of the slowest hundredth of actions.
    let measured = (rate * seconds) as usize;
    let mut map = sent.lock().map_err(|_| anyhow::anyhow!("poisoned"))?;
    map.reserve(measured);
    let now = (Instant::now(), 0, 0);
    for i in 0..measured {
        map.insert(format!("evt-warm-{i}"), now);
    }
    map.clear();
    drop(map);
    let started = Instant::now();
    for (n, r) in records.iter_mut().enumerate() {
        if n as u64 == warmup {
            warmed_up();
        }
        let due = Duration::from_secs_f64(n as f64 / rate as f64);
        // Sleep until this record is due, serving delivery reports, when it is
        // a millisecond or more away; records due sooner go out together.
        // Waiting in poll() instead spun a core the engine and the broker
        // need: it waits in whole milliseconds and retries until its deadline.
        loop {
            let ahead = due.saturating_sub(started.elapsed());
            if ahead < Duration::from_millis(1) {
                break;
            }
            producer.poll(Duration::ZERO);
            std::thread::sleep(ahead.min(Duration::from_millis(2)));
        }
        let now_ms = chrono::Utc::now().timestamp_millis();
        r.set_event_time(now_ms)?;
        if let Some(id) = r.event_id.take() {
            let mut map = sent.lock().map_err(|_| anyhow::anyhow!("poisoned"))?;
            map.insert(id, (Instant::now(), now_ms, now_ms));
        }
        send_when_room(
            &producer,
            BaseRecord::to(topic)
                .key(r.key.as_bytes())
                .payload(&r.value),
        )?;
        producer.poll(Duration::ZERO);
    }
    producer.flush(Duration::from_secs(30))?;
    Ok(total - warmup)
}

/// A simulated touchpoint made before the run, its event time written in
/// as it is sent.
pub(super) struct Prepared {
    key: String,
    value: Vec<u8>,
    /// Where the 13 digits of the event time are in `value` (a malformed
    /// touchpoint may have none).
    time_at: Option<usize>,
    /// The event id of a measured touchpoint.
    event_id: Option<String>,
}

impl Prepared {
    /// The event time the simulator is given: 13 digits, as every epoch
    /// millisecond until the year 2286, so the real one fits in its place.
    const TIME: i64 = 9_999_999_999_999;
    const TIME_FIELD: &'static [u8] = b"\"event_time\":9999999999999";

    /// The simulator's next touchpoint; `measured` keeps its event id.
    fn next(sim: &mut Simulator, measured: bool) -> anyhow::Result<Prepared> {
        let r = sim.next_record(Self::TIME);
        let time_at = r
            .value
            .windows(Self::TIME_FIELD.len())
            .position(|w| w == Self::TIME_FIELD)
            .map(|at| at + Self::TIME_FIELD.len() - 13);
        let event_id = match measured {
            true => serde_json::from_slice::<Produced>(&r.value)
                .ok()
                .filter(|t| t.event_time == Self::TIME)
                .map(|t| t.event_id),
            false => None,
        };
        anyhow::ensure!(
            time_at.is_some() || r.malformed,
            "the simulator's touchpoint has no event time to fill in: {}",
            String::from_utf8_lossy(&r.value)
        );
        Ok(Prepared {
            key: r.key,
            value: r.value,
            time_at,
            event_id,
        })
    }

    /// Writes `ms` as the event time.
    fn set_event_time(&mut self, ms: i64) -> anyhow::Result<()> {
        let Some(at) = self.time_at else {
            return Ok(());
        };
        anyhow::ensure!(
            (1_000_000_000_000..=Self::TIME).contains(&ms),
            "event time {ms} is not 13 digits"
        );
        let mut rest = ms;
        for d in self.value[at..at + 13].iter_mut().rev() {
            *d = b'0' + (rest % 10) as u8;
            rest /= 10;
        }
        Ok(())
    }
}

/// Settings of the bench's own consumers (`role` names the group): no
/// commits, and fetches answered and taken as soon as a record is there.
pub(super) fn eager(bootstrap: &str, role: &str) -> ClientConfig {
    let mut c = ClientConfig::new();
    c.set("bootstrap.servers", bootstrap)
        .set(
            "group.id",
            format!("bench-latency-{role}-{}", crate::suffix()),
        )
        .set("enable.auto.commit", "false")
        .set("fetch.wait.max.ms", "5")
        .set("fetch.queue.backoff.ms", "1")
        .set("statistics.interval.ms", STATISTICS_MS);
    c
}

/// How often the bench's clients and the engine's report their statistics
/// (the requests they sent), ms: the measured run's counts are within a
/// second of its ends.
pub(super) const STATISTICS_MS: &str = "1000";

/// A read_committed consumer of `topic` that has its partitions.
pub(super) fn reader(
    bootstrap: &str,
    topic: &str,
    bench: &Metrics,
) -> anyhow::Result<BaseConsumer<Counted>> {
    let c: BaseConsumer<Counted> = eager(bootstrap, "reader")
        .set("isolation.level", "read_committed")
        .set("auto.offset.reset", "earliest")
        .create_with_context(Counted(Requests::new(bench, "action reader")))?;
    c.subscribe(&[topic])?;
    let deadline = Instant::now() + Duration::from_secs(30);
    while c.assignment()?.count() == 0 {
        anyhow::ensure!(Instant::now() < deadline, "reader not assigned after 30 s");
        if let Some(m) = c.poll(Duration::from_millis(50)) {
            m?;
        }
    }
    Ok(c)
}

/// Reads actions with read_committed until `stop`; one sample for each action
/// its trigger touchpoint fired at once.
pub(super) fn read_actions(
    c: &BaseConsumer<Counted>,
    sent: &Sent,
    stop: &AtomicBool,
) -> anyhow::Result<Vec<Sample>> {
    let mut samples = Vec::new();
    while !stop.load(Ordering::SeqCst) {
        let Some(m) = c.poll(Duration::from_millis(50)) else {
            continue;
        };
        let arrived = Instant::now();
        let arrived_ms = chrono::Utc::now().timestamp_millis();
        let m = m?;
        let Ok(a) = serde_json::from_slice::<serde_json::Value>(m.payload().unwrap_or_default())
        else {
            continue;
        };
        let (Some(id), Some(at)) = (
            a["trigger_event_id"].as_str(),
            a["trigger_event_time"].as_i64(),
        ) else {
            continue;
        };
        let decided = m.timestamp().to_millis().unwrap_or(arrived_ms);
        let map = sent.lock().map_err(|_| anyhow::anyhow!("poisoned"))?;
        if let Some(&(when, wall, event_time)) = map.get(id) {
            if event_time == at {
                samples.push(Sample {
                    sent_ms: wall,
                    total_us: arrived.duration_since(when).as_micros() as u64,
                    decided_ms: decided - wall,
                    visible_ms: arrived_ms - decided,
                });
            }
        }
    }
    Ok(samples)
}

/// A plain read_uncommitted consumer of partition 0 of the touchpoint topic,
/// fetching as eagerly as the engine does: what it sees is the latency the
/// bench producer and the broker add before any engine could have a record.
pub(super) fn probe(
    bootstrap: &str,
    topic: &str,
    bench: &Metrics,
) -> anyhow::Result<BaseConsumer<Counted>> {
    let c: BaseConsumer<Counted> = eager(bootstrap, "probe")
        .create_with_context(Counted(Requests::new(bench, "plain consumer")))?;
    let mut tpl = rdkafka::TopicPartitionList::new();
    tpl.add_partition_offset(topic, 0, rdkafka::Offset::End)?;
    c.assign(&tpl)?;
    Ok(c)
}

/// Milliseconds from each record's producer timestamp (set when the bench
/// handed it over) to its receipt, with that timestamp, until `stop`.
pub(super) fn read_probe(
    c: &BaseConsumer<Counted>,
    stop: &AtomicBool,
) -> anyhow::Result<Vec<(i64, i64)>> {
    let mut out = Vec::new();
    while !stop.load(Ordering::SeqCst) {
        let Some(m) = c.poll(Duration::from_millis(50)) else {
            continue;
        };
        let now = chrono::Utc::now().timestamp_millis();
        if let Some(t) = m?.timestamp().to_millis() {
            out.push((now - t, t));
        }
    }
    Ok(out)
}

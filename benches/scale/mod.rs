//! Memory and state size against the number of customers: `rapport run` in a
//! process of its own (so its RSS is the engine's alone) over simulated
//! touchpoints of a given number of customers, the shipped journeys and policy, the default memory
//! settings; timed from outside, from its start until its group's committed
//! offsets reach the end of the input. Reports peak and final RSS and the
//! RocksDB directory's size after a clean stop. The run's topics are deleted afterwards.

use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicU64};
use std::time::{Duration, Instant};

use rapport::kafka::{ensure_topics, TopicSpec};
use rapport_connectors::simulator::{SimConfig, Simulator};
use rdkafka::admin::{AdminClient, AdminOptions};
use rdkafka::client::DefaultClientContext;
use rdkafka::config::ClientConfig;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::TopicPartitionList;

/// One run over `events` touchpoints of `customers` customers.
pub fn scale(bootstrap: &str, customers: u64, events: u64) -> anyhow::Result<()> {
    let s = super::suffix();
    // RAPPORT_BENCH_SCALE_INPUT names an input topic to create once and keep, so
    // that runs with other settings (RAPPORT_BENCH_SCALE_CONFIG) read the same input.
    let kept = std::env::var("RAPPORT_BENCH_SCALE_INPUT").ok();
    let input = kept.clone().unwrap_or_else(|| format!("bench.scale.{s}"));
    if kept.is_none() || !topic_has_records(bootstrap, &input) {
        publish_input(bootstrap, &input, customers, events)?;
    }
    let dir = tempfile::tempdir()?;
    let config = write_config(dir.path(), bootstrap, &input, &s)?;
    let started = Instant::now();
    // RAPPORT_BENCH_WRAPPER runs the engine under a profiler, e.g. "heaptrack -o /tmp/ht".
    let wrapper = std::env::var("RAPPORT_BENCH_WRAPPER").unwrap_or_default();
    let mut argv: Vec<String> = wrapper.split_whitespace().map(str::to_owned).collect();
    argv.push(env!("CARGO_BIN_EXE_rapport").to_owned());
    let mut child = Command::new(&argv[0])
        .args(&argv[1..])
        .args(["run", "--config"])
        .arg(&config)
        .env("RUST_LOG", "warn")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()?;
    let outcome = wait_committed(bootstrap, &format!("bench-scale-{s}"), &input, &mut child);
    let secs = started.elapsed().as_secs_f64();
    let (peak, now) = (status_kib(&child, "VmHWM:"), status_kib(&child, "VmRSS:"));
    // A graceful stop flushes RocksDB's memtables (its write-ahead log is off),
    // so the directory then holds the whole state.
    let _ = Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status();
    let _ = child.wait();
    let state_mib = dir_bytes(&dir.path().join("state")) as f64 / (1 << 20) as f64;
    let mut topics = vec![
        format!("bench.scale.actions.{s}"),
        format!("bench.scale.dlq.{s}"),
        format!("bench.scale.decisions.{s}"),
        format!("bench-scale-{s}-profiles-changelog"),
        format!("bench-scale-{s}-identity-repartition"),
    ];
    if kept.is_none() {
        topics.push(input.clone());
    }
    delete_topics(bootstrap, &topics);
    outcome?;
    crate::report::row!(
        "| `rapport run` in its own process, {customers} customers, {events} events, the shipped journeys and policy, default memory settings | peak RSS {} MiB, RSS at the end {} MiB, RocksDB on disk after a clean stop {state_mib:.0} MiB, {:.0} events/s from start (incl. start-up) |",
        peak / 1024,
        now / 1024,
        events as f64 / secs
    );
    Ok(())
}

/// Creates `input` and fills it with `events` simulated touchpoints of `customers`.
fn publish_input(bootstrap: &str, input: &str, customers: u64, events: u64) -> anyhow::Result<()> {
    super::rt().block_on(ensure_topics(bootstrap, &[TopicSpec::new(input, 4)]))?;
    let mut sim = Simulator::new(SimConfig {
        customers,
        seed: 11,
        malformed_per_mille: 0,
    });
    let (stop, sent) = (AtomicBool::new(false), AtomicU64::new(0));
    rapport_connectors::publish::publish(
        bootstrap,
        input,
        &mut sim,
        0,
        Some(events),
        &stop,
        &sent,
    )?;
    Ok(())
}

/// Whether `topic` exists with records in it.
fn topic_has_records(bootstrap: &str, topic: &str) -> bool {
    let c: Result<BaseConsumer, _> = ClientConfig::new()
        .set("bootstrap.servers", bootstrap)
        .create();
    c.ok()
        .and_then(|c| c.fetch_watermarks(topic, 0, Duration::from_secs(10)).ok())
        .is_some_and(|(lo, hi)| hi > lo)
}

fn write_config(
    dir: &Path,
    bootstrap: &str,
    input: &str,
    s: &str,
) -> anyhow::Result<std::path::PathBuf> {
    let journeys = Path::new(env!("CARGO_MANIFEST_DIR")).join("deploy/journeys/*.toml");
    let text = format!(
        r#"journeys = ["{journeys}"]
[kafka]
bootstrap_servers = "{bootstrap}"
group_id = "bench-scale-{s}"
touchpoint_topics = ["{input}"]
action_topic = "bench.scale.actions.{s}"
dead_letter_topic = "bench.scale.dlq.{s}"
decisions_topic = "bench.scale.decisions.{s}"
[state]
path = "{state}"
{cache}
[engine]
instance_id = "bench-scale-{s}"
wall_clock_timers = false
[http]
listen = ""
"#,
        journeys = journeys.display(),
        state = dir.join("state").display(),
        // RAPPORT_BENCH_PROFILE_CACHE overrides state.profile_cache_mb.
        cache = std::env::var("RAPPORT_BENCH_PROFILE_CACHE")
            .map(|n| format!("profile_cache_mb = {n}"))
            .unwrap_or_default(),
    );
    let mut table: toml::Table = text.parse()?;
    // RAPPORT_BENCH_SCALE_CONFIG overrides settings, as dotted keys separated by
    // line breaks or ';', e.g. "kafka.prefetch_mb = 32; state.block_cache_mb = 32",
    // to see what each memory setting costs.
    if let Ok(extra) = std::env::var("RAPPORT_BENCH_SCALE_CONFIG") {
        merge(&mut table, extra.replace(';', "\n").parse()?);
    }
    let path = dir.join("rapport.toml");
    std::fs::write(&path, toml::to_string(&table)?)?;
    Ok(path)
}

/// Sets every key of `extra` in `into`, table by table.
fn merge(into: &mut toml::Table, extra: toml::Table) {
    for (k, v) in extra {
        match (into.get_mut(&k), v) {
            (Some(toml::Value::Table(t)), toml::Value::Table(e)) => merge(t, e),
            (_, v) => {
                into.insert(k, v);
            }
        }
    }
}

/// Waits until `group`'s committed offsets reach the end of `topic`, or the
/// engine exits.
fn wait_committed(
    bootstrap: &str,
    group: &str,
    topic: &str,
    child: &mut Child,
) -> anyhow::Result<()> {
    let c: BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", bootstrap)
        .set("group.id", group)
        .set("enable.auto.commit", "false")
        .create()?;
    let mut ends = TopicPartitionList::new();
    for p in 0..4 {
        let (_, hi) = c.fetch_watermarks(topic, p, Duration::from_secs(10))?;
        ends.add_partition_offset(topic, p, rdkafka::Offset::Offset(hi))?;
    }
    loop {
        if let Some(status) = child.try_wait()? {
            anyhow::bail!("rapport run exited early: {status}");
        }
        let mut asked = TopicPartitionList::new();
        for p in 0..4 {
            asked.add_partition(topic, p);
        }
        let done = c
            .committed_offsets(asked, Duration::from_secs(10))
            .map(|got| {
                ends.elements().iter().all(|e| {
                    got.find_partition(topic, e.partition())
                        .is_some_and(|g| g.offset().to_raw() >= e.offset().to_raw())
                })
            })
            .unwrap_or(false);
        if done {
            return Ok(());
        }
        std::thread::sleep(Duration::from_millis(200));
    }
}

/// A `/proc/<pid>/status` field of the child, KiB.
fn status_kib(child: &Child, field: &str) -> u64 {
    std::fs::read_to_string(format!("/proc/{}/status", child.id()))
        .ok()
        .and_then(|s| {
            s.lines()
                .find_map(|l| l.strip_prefix(field))
                .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        })
        .unwrap_or(0)
}

fn dir_bytes(dir: &Path) -> u64 {
    std::fs::read_dir(dir)
        .map(|entries| {
            entries
                .flatten()
                .map(|e| match e.metadata() {
                    Ok(m) if m.is_dir() => dir_bytes(&e.path()),
                    Ok(m) => m.len(),
                    Err(_) => 0,
                })
                .sum()
        })
        .unwrap_or(0)
}

/// Deletes the run's topics (the inputs of the larger runs take gigabytes).
pub(super) fn delete_topics(bootstrap: &str, topics: &[String]) {
    let admin: Result<AdminClient<DefaultClientContext>, _> = ClientConfig::new()
        .set("bootstrap.servers", bootstrap)
        .create();
    if let Ok(admin) = admin {
        let names: Vec<&str> = topics.iter().map(String::as_str).collect();
        let _ = super::rt().block_on(admin.delete_topics(&names, &AdminOptions::new()));
    }
}

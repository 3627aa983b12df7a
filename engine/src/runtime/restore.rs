//! Restoring a partition's state from its changelog partition into RocksDB.

use std::time::{Duration, Instant};

use anyhow::{bail, Context as _};
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::{Message, Offset, TopicPartitionList};

use crate::config::KafkaConfig;
use crate::kafka::client_config;
use crate::state::{StateBatch, StateStore, Stored};

use super::WATERMARK_KEY;

/// The clients that restore changelog partitions: a read_committed reader, and a
/// read_uncommitted one that asks for the true end of a partition (a read_committed
/// client would answer with the last stable offset, which stops short of a
/// transaction a dead instance left in the middle of committing).
pub struct Restorer {
    reader: BaseConsumer,
    ends: BaseConsumer,
}

impl Restorer {
    /// Clients for the cluster of `k` (with its `[kafka.client]` settings).
    pub fn new(k: &KafkaConfig) -> anyhow::Result<Restorer> {
        let base = |isolation: &str| {
            client_config(k)
                .set("group.id", format!("{}-restore", k.group_id))
                .set("enable.auto.commit", "false")
                .set("isolation.level", isolation)
                .set("auto.offset.reset", "earliest")
                .set("fetch.max.bytes", "104857600")
                .set("max.partition.fetch.bytes", "16777216")
                .set("fetch.wait.max.ms", "10")
                .create::<BaseConsumer>()
                .context("creating the changelog restore consumer")
        };
        Ok(Restorer {
            reader: base("read_committed")?,
            ends: base("read_uncommitted")?,
        })
    }
}

/// Replays changelog partition `p` from the local checkpoint to its end into
/// RocksDB with `restorer`, waiting for transactions still open at the end of the
/// partition to be decided. Returns the number of records applied.
pub fn restore_partition(
    restorer: &Restorer,
    changelog: &str,
    state: &StateStore,
    p: i32,
) -> anyhow::Result<u64> {
    let checkpoint = state.checkpoint(p)?;
    // Without a checkpoint this partition has no local state: nothing old to replace.
    let fresh = checkpoint.is_none();
    let from = checkpoint.unwrap_or(0);
    let (low, high) = restorer
        .ends
        .fetch_watermarks(changelog, p, Duration::from_secs(30))?;
    let start = from.max(low);
    if high <= start {
        return Ok(0);
    }
    let mut tpl = TopicPartitionList::new();
    tpl.add_partition_offset(changelog, p, Offset::Offset(start))?;
    restorer.reader.assign(&tpl)?;
    let result = replay(restorer, changelog, state, p, (start, high), fresh);
    restorer.reader.unassign()?;
    result
}

/// Reads changelog partition `p` over `[start, high)` into RocksDB.
fn replay(
    restorer: &Restorer,
    changelog: &str,
    state: &StateStore,
    p: i32,
    (start, high): (i64, i64),
    fresh: bool,
) -> anyhow::Result<u64> {
    let started = Instant::now();
    let (mut n, mut next) = (0u64, start);
    let mut batch = StateBatch::default();
    while next < high {
        match restorer.reader.poll(Duration::from_millis(200)) {
            // Left over from an earlier restore (of another partition, or of this one).
            Some(Ok(m)) if m.partition() != p || m.offset() < start => {}
            Some(Ok(m)) => {
                next = m.offset() + 1;
                apply(
                    &mut batch,
                    state,
                    p,
                    m.key().unwrap_or_default(),
                    m.payload(),
                    fresh,
                )?;
                n += 1;
                if batch.len() >= 10_000 {
                    batch.set_checkpoint(p, next);
                    state.write(std::mem::take(&mut batch))?;
                }
            }
            Some(Err(e)) => return Err(e.into()),
            None => {
                // Aborted records and transaction markers are never returned, but the
                // position moves past them once their transaction is decided (a dead
                // instance's open transaction is aborted after transaction.timeout.ms).
                let pos = restorer
                    .reader
                    .position()?
                    .find_partition(changelog, p)
                    .map(|e| e.offset());
                if let Some(Offset::Offset(o)) = pos {
                    next = next.max(o);
                }
                if next < high && started.elapsed() > Duration::from_secs(300) {
                    bail!("changelog restore stuck below offset {high} for 300 s");
                }
            }
        }
    }
    batch.set_checkpoint(p, next);
    state.write(batch)?;
    Ok(n)
}

/// Adds one changelog record (a profile, its deletion, or the watermark) to `batch`.
fn apply(
    batch: &mut StateBatch,
    state: &StateStore,
    p: i32,
    key: &[u8],
    value: Option<&[u8]>,
    fresh: bool,
) -> anyhow::Result<()> {
    if key == WATERMARK_KEY {
        if let Some(v) = value.and_then(|v| <[u8; 8]>::try_from(v).ok()) {
            batch.set_watermark(p, i64::from_be_bytes(v));
        }
        return Ok(());
    }
    let id = String::from_utf8_lossy(key);
    // The timer index follows the profile: drop the old entries, add the new.
    if let Some(old) = if fresh { None } else { state.get(p, &id)? } {
        for t in &old.profile.timers {
            batch.delete_timer(p, t.fire_at_ms, &id);
        }
    }
    match value {
        Some(v) => {
            let stored = Stored::decode(&id, p, v)?;
            for t in &stored.profile.timers {
                batch.put_timer(p, t.fire_at_ms, &id);
            }
            batch.put_profile(p, &id, v);
        }
        None => batch.delete_profile(p, &id),
    }
    Ok(())
}

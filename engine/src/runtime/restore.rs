//! Restoring partitions' state from their changelog partitions into RocksDB.
//!
//! A restore is a phase of its own, driven by the main loop in slices
//! ([`Restorer::step`]): the loop keeps polling the group consumer between slices,
//! so a long restore neither stalls the partitions that are ready nor gets this
//! instance thrown out of the group, and a rebalance that arrives meanwhile simply
//! cancels the restores of the partitions it takes away ([`Restorer::cancel`]).
//! Progress is written to RocksDB with the partition's checkpoint as it goes, so a
//! cancelled or crashed restore resumes where it stopped.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use anyhow::{bail, Context as _};
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::{Message, Offset, TopicPartitionList};

use crate::config::KafkaConfig;
use crate::kafka::client_config;
use crate::state::{StateBatch, StateStore, Stored};

use super::{TOUCH_KEY, WATERMARK_KEY};

/// How long a changelog partition may make no progress (waiting for a dead
/// instance's transaction to be aborted, or for the broker) before its restore fails.
const STUCK_AFTER: Duration = Duration::from_secs(300);

/// Restored records written to RocksDB in one batch.
const BATCH_RECORDS: usize = 10_000;

/// The clients that restore changelog partitions (a read_committed reader, and a
/// read_uncommitted one that asks for the true end of a partition: a read_committed
/// client would answer with the last stable offset, which stops short of a
/// transaction a dead instance left in the middle of committing), and the restores
/// in progress.
pub struct Restorer {
    reader: BaseConsumer,
    ends: BaseConsumer,
    jobs: BTreeMap<i32, Job>,
    /// The reader's assignment no longer matches `jobs`.
    reassign: bool,
    /// Records applied since [`Restorer::take_applied`] was last called.
    applied: u64,
}

/// One partition being restored.
struct Job {
    changelog: String,
    /// The partition had no local state when its restore began: no old profile
    /// to replace.
    fresh: bool,
    /// The end of the changelog partition (open transactions included) when the
    /// restore began.
    high: i64,
    /// The next changelog offset to apply.
    next: i64,
    /// Records applied by this restore.
    applied: u64,
    batch: StateBatch,
    /// When `next` last moved.
    moved: Instant,
    /// The restore has been reported stalled (see [`Restorer::stalled`]).
    stalled: bool,
}

/// Where one partition's restore stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RestoreStatus {
    /// Input (and changelog) partition.
    pub partition: i32,
    /// Changelog records applied so far.
    pub applied: u64,
    /// Changelog offsets left to read (aborted records and transaction markers
    /// included, so the last few may never arrive as records).
    pub remaining: i64,
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
            jobs: BTreeMap::new(),
            reassign: false,
            applied: 0,
        })
    }

    /// Starts restoring partition `p` of `changelog` from the local checkpoint to
    /// the partition's current end. Returns false when local state is already
    /// current (nothing to restore).
    pub fn begin(&mut self, changelog: &str, state: &StateStore, p: i32) -> anyhow::Result<bool> {
        let checkpoint = state.checkpoint(p)?;
        let (low, high) = self
            .ends
            .fetch_watermarks(changelog, p, super::restart::KAFKA_READ)
            .with_context(|| format!("reading the end of {changelog} [{p}]"))?;
        let next = checkpoint.unwrap_or(0).max(low);
        if high <= next {
            return Ok(false);
        }
        self.jobs.insert(
            p,
            Job {
                changelog: changelog.to_owned(),
                fresh: checkpoint.is_none(),
                high,
                next,
                applied: 0,
                batch: StateBatch::default(),
                moved: Instant::now(),
                stalled: false,
            },
        );
        self.reassign = true;
        Ok(true)
    }

    /// Stops restoring `p` (its partition was revoked), keeping what was applied.
    pub fn cancel(&mut self, state: &StateStore, p: i32) -> anyhow::Result<()> {
        if let Some(mut job) = self.jobs.remove(&p) {
            self.reassign = true;
            job.flush(state, p)?;
        }
        Ok(())
    }

    /// Stops every restore, keeping what was applied.
    pub fn cancel_all(&mut self, state: &StateStore) -> anyhow::Result<()> {
        let partitions: Vec<i32> = self.jobs.keys().copied().collect();
        for p in partitions {
            self.cancel(state, p)?;
        }
        Ok(())
    }

    /// True when no restore is in progress.
    pub fn is_idle(&self) -> bool {
        self.jobs.is_empty()
    }

    /// True when partition `p` is being restored.
    pub fn is_restoring(&self, p: i32) -> bool {
        self.jobs.contains_key(&p)
    }

    /// Where each restore in progress stands.
    pub fn status(&self) -> Vec<RestoreStatus> {
        self.jobs
            .iter()
            .map(|(p, j)| RestoreStatus {
                partition: *p,
                applied: j.applied,
                remaining: (j.high - j.next).max(0),
            })
            .collect()
    }

    /// The partitions whose restore has not moved for `after` below its end,
    /// each with whether this is the first time it is reported. Their
    /// changelog's last stable offset may be held by a transaction no
    /// coordinator will end (see [`super::TOUCH_KEY`]).
    pub fn stalled(&mut self, after: Duration) -> Vec<(i32, bool)> {
        let mut out = Vec::new();
        for (p, j) in self.jobs.iter_mut() {
            if j.next < j.high && j.moved.elapsed() >= after {
                out.push((*p, !j.stalled));
                j.stalled = true;
            }
        }
        out
    }

    /// Records applied since the last call.
    pub fn take_applied(&mut self) -> u64 {
        std::mem::take(&mut self.applied)
    }

    /// Applies what the changelog delivers for about `budget`, and returns the
    /// partitions whose restore completed in this slice with the records each
    /// restore applied. Their state is in RocksDB when this returns.
    pub fn step(
        &mut self,
        state: &StateStore,
        budget: Duration,
    ) -> anyhow::Result<Vec<(i32, u64)>> {
        let mut done = Vec::new();
        let until = Instant::now() + budget;
        while !self.jobs.is_empty() {
            if self.reassign {
                self.assign()?;
            }
            let wait = until
                .saturating_duration_since(Instant::now())
                .min(Duration::from_millis(50));
            match self.reader.poll(wait) {
                Some(Ok(m)) => {
                    if apply_message(&mut self.jobs, state, &m)? {
                        self.applied += 1;
                    }
                }
                // A broker away for a moment: the client reconnects by itself,
                // and the restore goes on where it was (no rewind for it).
                Some(Err(e)) if transient(&e) => {
                    tracing::debug!(error = %e, "changelog reader");
                }
                Some(Err(e)) => return Err(e).context("reading the changelog"),
                None => self.follow_positions()?,
            }
            self.finish(state, &mut done)?;
            if Instant::now() >= until {
                break;
            }
        }
        if self.jobs.is_empty() {
            self.reader.unassign()?;
            self.reassign = false;
        }
        Ok(done)
    }

    /// Points the reader at every restore's next offset.
    fn assign(&mut self) -> anyhow::Result<()> {
        let mut tpl = TopicPartitionList::new();
        for (p, j) in &self.jobs {
            tpl.add_partition_offset(&j.changelog, *p, Offset::Offset(j.next))?;
        }
        self.reader.assign(&tpl)?;
        self.reassign = false;
        Ok(())
    }

    /// Aborted records and transaction markers are never returned, but the
    /// reader's position moves past them once their transaction is decided (a dead
    /// instance's open transaction is aborted after transaction.timeout.ms).
    fn follow_positions(&mut self) -> anyhow::Result<()> {
        let positions = self.reader.position()?;
        for (p, job) in self.jobs.iter_mut() {
            let at = positions
                .find_partition(&job.changelog, *p)
                .map(|e| e.offset());
            if let Some(Offset::Offset(o)) = at {
                if o > job.next {
                    job.next = o;
                    job.moved = Instant::now();
                }
            }
            if job.next < job.high && job.moved.elapsed() > STUCK_AFTER {
                bail!(
                    "restoring {} [{p}]: stuck at offset {} below {} for {} s",
                    job.changelog,
                    job.next,
                    job.high,
                    STUCK_AFTER.as_secs()
                );
            }
        }
        Ok(())
    }

    /// Writes and removes the restores that reached their end.
    fn finish(&mut self, state: &StateStore, done: &mut Vec<(i32, u64)>) -> anyhow::Result<()> {
        let complete: Vec<i32> = self
            .jobs
            .iter()
            .filter(|(_, j)| j.next >= j.high)
            .map(|(p, _)| *p)
            .collect();
        for p in complete {
            if let Some(mut job) = self.jobs.remove(&p) {
                job.flush(state, p)?;
                done.push((p, job.applied));
                self.reassign = true;
            }
        }
        Ok(())
    }
}

impl Job {
    /// Writes what was applied, with the checkpoint it reaches.
    fn flush(&mut self, state: &StateStore, p: i32) -> anyhow::Result<()> {
        let mut batch = std::mem::take(&mut self.batch);
        batch.set_checkpoint(p, self.next);
        state.write(&batch)?;
        Ok(())
    }
}

/// Whether a reader's error is the client losing a broker for a while, which
/// it recovers from by itself.
fn transient(e: &rdkafka::error::KafkaError) -> bool {
    use rdkafka::types::RDKafkaErrorCode::{AllBrokersDown, BrokerTransportFailure};
    matches!(
        e.rdkafka_error_code(),
        Some(BrokerTransportFailure | AllBrokersDown)
    )
}

/// Applies changelog record `m` to its partition's restore; false when it is not
/// one a restore waits for (left over from an earlier assignment of the reader).
fn apply_message(
    jobs: &mut BTreeMap<i32, Job>,
    state: &StateStore,
    m: &rdkafka::message::BorrowedMessage<'_>,
) -> anyhow::Result<bool> {
    let p = m.partition();
    let Some(job) = jobs.get_mut(&p) else {
        return Ok(false);
    };
    if m.topic() != job.changelog || m.offset() < job.next {
        return Ok(false);
    }
    job.next = m.offset() + 1;
    job.moved = Instant::now();
    apply(
        &mut job.batch,
        state,
        p,
        m.key().unwrap_or_default(),
        m.payload(),
        job.fresh,
    )?;
    job.applied += 1;
    if job.batch.len() >= BATCH_RECORDS {
        job.flush(state, p)?;
    }
    Ok(true)
}

/// Replays changelog partition `p` from the local checkpoint to its end into
/// RocksDB with `restorer`, waiting for transactions still open at the end of the
/// partition to be decided. Returns the number of records applied. (The engine
/// restores in slices from its main loop instead; this is for tools and tests.)
pub fn restore_partition(
    restorer: &mut Restorer,
    changelog: &str,
    state: &StateStore,
    p: i32,
) -> anyhow::Result<u64> {
    if !restorer.begin(changelog, state, p)? {
        return Ok(0);
    }
    loop {
        if let Some((_, n)) = restorer
            .step(state, Duration::from_millis(500))?
            .into_iter()
            .find(|(q, _)| *q == p)
        {
            return Ok(n);
        }
    }
}

/// Adds one changelog record (a profile, its deletion (an erasure's tombstone
/// too), a suppression-list entry, or the watermark) to `batch`.
fn apply(
    batch: &mut StateBatch,
    state: &StateStore,
    p: i32,
    key: &[u8],
    value: Option<&[u8]>,
    fresh: bool,
) -> anyhow::Result<()> {
    if key == TOUCH_KEY {
        return Ok(());
    }
    if key == WATERMARK_KEY {
        if let Some(v) = value.and_then(|v| <[u8; 8]>::try_from(v).ok()) {
            batch.set_watermark(p, i64::from_be_bytes(v));
        }
        return Ok(());
    }
    if let Some(hash) = crate::privacy::suppression::from_changelog_key(key) {
        // A suppression-list entry, or (a tombstone) its lifting.
        match value.and_then(|v| <[u8; 8]>::try_from(v).ok()) {
            Some(at) => batch.put_suppressed(p, &hash, i64::from_be_bytes(at)),
            None => batch.delete_suppressed(p, &hash),
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

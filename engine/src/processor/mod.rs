//! The per-record work, with Kafka and RocksDB at arm's length: records and a clock
//! in; actions, rejections and state changes out.
//!
//! decode -> key rule -> profile update -> journeys -> timers. The live engine
//! (`runtime`), `rapport replay`, the tests and the benchmarks all drive this one
//! processor; nothing re-implements the pipeline. Its state is per partition
//! ([`task`]): profiles, timers, watermark and applied offsets keyed by
//! (partition, customer), never by customer alone.

mod ahead;
mod apply;
mod encoded;
mod erase;
mod stitch;
pub(crate) mod task;
mod workers;

pub use self::ahead::AHEAD;
pub use self::erase::PrivacyRules;
pub use self::stitch::StitchRules;
pub use self::task::Lookups;

use std::sync::Arc;

use rapport_journeys::{CompiledJourneys, Decision, Outcome as Judgement};
use rapport_model::profile::Timer;
use rapport_model::seen::SeenLimits;
use rapport_model::{Action, Touchpoint};
use rayon_core::ThreadPool;

use self::workers::on_threads;

use crate::ingest::route::KeyRule;
use crate::ingest::{Decoder, Rejection, SchemaError};
use crate::metrics::Metrics;
use crate::state::{StateBatch, StateError, StateStore};

use self::apply::{change_profile, count_survey_answer, Arriving};
use self::stitch::{Routed, Seed};
use self::task::Task;

/// One input record, wherever it came from.
#[derive(Debug, Clone, Copy)]
pub struct Record<'a> {
    /// Source topic.
    pub topic: &'a str,
    /// Source partition; the task that owns the customer.
    pub partition: i32,
    /// Offset within the partition.
    pub offset: i64,
    /// The record's key.
    pub key: Option<&'a [u8]>,
    /// The record's value.
    pub value: &'a [u8],
}

/// What became of a record.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    /// Applied to its customer's profile (actions, if any, were pushed).
    Applied,
    /// Already reflected in state (a replay after a restart): nothing done.
    AlreadyApplied,
    /// Its event id was already seen by its customer's profile: nothing done.
    Duplicate,
    /// Refused: the caller dead-letters it with this reason.
    Rejected(Rejection),
    /// Its partition is not owned here (fetched just before a revocation).
    NotOwned,
}

/// Changed profiles in one commit from which their encoding is spread over
/// the worker threads; below it one thread is quicker than starting them.
const PARALLEL_ENCODE: usize = 256;

/// Decodes, applies and evaluates records for the partitions it owns.
pub struct Processor {
    shared: Shared,
    /// Bytes the cached profiles may take ([`task::slot_bytes`]) after a commit.
    profile_cache_bytes: usize,
    /// The encoded profile cache's bytes, shared out among the tasks ([`encoded`]).
    encoded_cache_bytes: usize,
    tasks: hashbrown::HashMap<i32, Task>,
    /// Threads a batch's partitions are processed on.
    workers: usize,
    /// The threads besides the caller's that work on a batch's partitions and
    /// a commit's encodings ([`on_threads`]); `None` with one worker.
    pool: Option<Arc<ThreadPool>>,
    /// Cuts taken ([`Processor::cut`]), which number the commits.
    commits: u64,
    /// The last commit whose state is in RocksDB ([`Processor::committed`]).
    written: u64,
}

/// What every partition's work reads, from any worker thread.
struct Shared {
    decoder: Decoder,
    rule: KeyRule,
    journeys: Arc<CompiledJourneys>,
    state: Arc<StateStore>,
    metrics: Metrics,
    /// How many event ids profiles remember, to skip repeats.
    seen: SeenLimits,
    /// Replaces personal identifiers by keyed hashes after the key rule; `None`: off.
    pseudonymizer: Option<Arc<crate::pseudonym::Pseudonymizer>>,
    /// Erasure commands and the suppression list; `None` when off.
    privacy: Option<PrivacyRules>,
    /// Identity stitching; `None` when off.
    stitch: Option<StitchRules>,
}

/// One record's result in a batch: what became of it, and the actions it
/// triggered (its own and those of timers its event time made due).
#[derive(Debug)]
pub struct Processed {
    /// What became of the record.
    pub outcome: Outcome,
    /// Its actions, in decision order.
    pub actions: Vec<Action>,
}

/// A profile or watermark record to write to the changelog: partition, key, value.
pub type ChangelogRecord<'a> = (i32, &'a [u8], &'a [u8]);

impl Processor {
    /// A processor reading records up to `max_record_bytes`, checking keys with
    /// `rule`, evaluating `journeys`, with state in `state` and at most about
    /// `profile_cache_bytes` of profiles kept decoded (the dirty ones of an
    /// interval come on top until they are committed; the engine commits early
    /// when they fill it, see [`Processor::changes_fill_cache`]).
    pub fn new(
        max_record_bytes: usize,
        rule: KeyRule,
        journeys: Arc<CompiledJourneys>,
        state: Arc<StateStore>,
        metrics: Metrics,
        profile_cache_bytes: usize,
    ) -> Result<Self, SchemaError> {
        Ok(Processor {
            shared: Shared {
                decoder: Decoder::new(max_record_bytes)?,
                rule,
                journeys,
                state,
                metrics,
                seen: SeenLimits::default(),
                pseudonymizer: None,
                privacy: None,
                stitch: None,
            },
            profile_cache_bytes,
            encoded_cache_bytes: 0,
            tasks: hashbrown::HashMap::new(),
            workers: 1,
            pool: None,
            commits: 0,
            written: 0,
        })
    }

    /// Processes the partitions of a batch ([`Processor::process_batch`]) on up
    /// to `workers` threads: the caller's and `workers - 1` that live as long
    /// as the processor (`rapport-worker-N`).
    ///
    /// Long-lived, not started for each batch: at 23k touchpoints/s a batch
    /// holds one or two hundred records, and a thread started for each one
    /// spanning two or more partitions (up to about 170 a second) began from
    /// an empty allocator heap and a fresh stack, faulting in its pages, and
    /// unmapped them when it ended.
    pub fn with_workers(mut self, workers: usize) -> std::io::Result<Self> {
        self.workers = workers.max(1);
        self.pool = match self.workers {
            1 => None,
            n => Some(Arc::new(workers::pool(n - 1)?)),
        };
        Ok(self)
    }

    /// Also reads Avro touchpoints in the Confluent wire format, with writer
    /// schemas from `schemas` (see [`crate::ingest::registry`]).
    pub fn with_registry(mut self, schemas: Arc<crate::ingest::registry::WriterSchemas>) -> Self {
        self.shared.decoder.set_registry(schemas);
        self
    }

    /// Remembers event ids within `limits` to skip repeated events (default:
    /// [`SeenLimits::default`]).
    pub fn with_seen_limits(mut self, limits: SeenLimits) -> Self {
        self.shared.seen = limits;
        self
    }

    /// Replaces the identifiers `p` names by keyed hashes once a record has passed
    /// the key rule (see [`crate::pseudonym`]); `None` leaves them as sent.
    pub fn with_pseudonymizer(mut self, p: Option<Arc<crate::pseudonym::Pseudonymizer>>) -> Self {
        self.shared.pseudonymizer = p;
        self
    }

    /// The state store.
    pub fn state(&self) -> &Arc<StateStore> {
        &self.shared.state
    }

    /// Keeps the encodings of committed profiles, up to `bytes` in all, to
    /// decode a profile the decoded cache no longer holds without asking
    /// RocksDB (default: none; see [`encoded`]).
    pub fn with_encoded_cache(mut self, bytes: usize) -> Self {
        self.encoded_cache_bytes = bytes;
        self
    }

    /// Starts the task of partition `p` from its committed state (restore first).
    pub fn start_partition(&mut self, p: i32) -> Result<usize, StateError> {
        let task = Task::load(&self.shared.state, p)?;
        let timers = task.timers.len();
        self.tasks.insert(p, task);
        Ok(timers)
    }

    /// The partitions whose tasks are running.
    pub fn partitions(&self) -> impl Iterator<Item = i32> + '_ {
        self.tasks.keys().copied()
    }

    /// The event-time watermark of partition `p` (the latest event time applied).
    pub fn watermark(&self, p: i32) -> Option<i64> {
        self.tasks.get(&p).map(|t| t.watermark)
    }

    /// Drops partition `p`'s task and its uncommitted changes.
    pub fn release(&mut self, p: i32) {
        self.tasks.remove(&p);
    }

    /// Drops every task and its uncommitted changes.
    pub fn clear(&mut self) {
        self.tasks.clear();
    }

    /// Whether the profiles changed since the last [`Processor::changes`] take
    /// the whole profile cache: they stay in memory until they are committed,
    /// so the engine commits then rather than at the end of the interval, and
    /// memory stays bounded by the cache's size whatever the commit interval.
    pub fn changes_fill_cache(&self) -> bool {
        self.changed_bytes() >= self.profile_cache_bytes
    }

    /// The estimated memory of the profiles changed since the last cut.
    pub fn changed_bytes(&self) -> usize {
        self.tasks
            .values()
            .map(|t| t.dirty_bytes + t.ahead_bytes)
            .sum()
    }

    /// Whether anything changed since the last [`Processor::changes`].
    pub fn has_changes(&self) -> bool {
        self.tasks
            .values()
            .any(|t| !t.dirty.is_empty() || t.watermark_dirty)
    }

    /// Processes one record; the actions it triggers (its own and those of timers
    /// its event time makes due) are pushed to `out`.
    pub fn process(
        &mut self,
        r: &Record<'_>,
        out: &mut Vec<Action>,
    ) -> Result<Outcome, StateError> {
        match self.tasks.get_mut(&r.partition) {
            Some(task) => Lane::new(&self.shared, task).process(r, out),
            None => Ok(Outcome::NotOwned),
        }
    }

    /// Decodes record `r` ahead of its turn and starts loading its customer's
    /// profile into the CPU cache ([`ahead`]): callers that know the next
    /// records call it [`AHEAD`] records before processing each. Processing is
    /// the same with or without it, only faster.
    pub fn look_ahead(&mut self, r: &Record<'_>) {
        if let Some(task) = self.tasks.get_mut(&r.partition) {
            Lane::new(&self.shared, task).look_ahead(r);
        }
    }

    /// Processes a batch of records, each partition's in order and the
    /// partitions in parallel on up to `workers` threads (a customer belongs to
    /// one partition, so each customer's records and actions keep their order).
    /// Returns one result per record, in the batch's order.
    pub fn process_batch(&mut self, records: &[Record<'_>]) -> Result<Vec<Processed>, StateError> {
        let mut groups: hashbrown::HashMap<i32, Vec<usize>> = hashbrown::HashMap::new();
        for (i, r) in records.iter().enumerate() {
            groups.entry(r.partition).or_default().push(i);
        }
        let shared = &self.shared;
        let work: Vec<(&mut Task, Vec<usize>)> = self
            .tasks
            .iter_mut()
            .filter_map(|(p, t)| groups.remove(p).map(|idx| (t, idx)))
            .collect();
        let mut results: Vec<Option<Processed>> = (0..records.len()).map(|_| None).collect();
        let run = |chunk: Vec<(&mut Task, Vec<usize>)>| {
            let mut done = Vec::new();
            for (task, idx) in chunk {
                let mut lane = Lane::new(shared, task);
                for &i in idx.iter().take(AHEAD) {
                    lane.look_ahead(&records[i]);
                }
                for (k, &i) in idx.iter().enumerate() {
                    if let Some(&next) = idx.get(k + AHEAD) {
                        lane.look_ahead(&records[next]);
                    }
                    let mut actions = Vec::new();
                    let outcome = lane.process(&records[i], &mut actions)?;
                    done.push((i, Processed { outcome, actions }));
                }
            }
            Ok::<_, StateError>(done)
        };
        let pool = self.pool.as_deref();
        let finished = on_threads(pool, work, self.workers, |(_, idx)| idx.len(), run);
        for done in finished {
            for (i, p) in done? {
                results[i] = Some(p);
            }
        }
        // Records of partitions not owned here (fetched just before a revocation).
        Ok(results
            .into_iter()
            .map(|r| {
                r.unwrap_or(Processed {
                    outcome: Outcome::NotOwned,
                    actions: Vec::new(),
                })
            })
            .collect())
    }

    /// Fires every timer of `partition` due at `now` (event time, or wall-clock time
    /// for an idle partition in live mode), pushing their actions to `out`.
    pub fn fire_timers(
        &mut self,
        partition: i32,
        now: i64,
        out: &mut Vec<Action>,
    ) -> Result<(), StateError> {
        match self.tasks.get_mut(&partition) {
            Some(task) => Lane::new(&self.shared, task).fire_timers(now, out),
            None => Ok(()),
        }
    }

    /// The decisions not to act since the last call (for the decisions topic and
    /// `rapport replay --decisions`), each partition's in decision order.
    pub fn take_decisions(&mut self) -> impl Iterator<Item = Decision> + '_ {
        self.tasks
            .values_mut()
            .flat_map(|t| t.scratch.not_sent.drain(..))
    }

    /// Fires the due timers of every partition that received nothing since the
    /// last call, at wall-clock time `now` (live mode: quiet partitions still fire).
    pub fn fire_idle(&mut self, now: i64, out: &mut Vec<Action>) -> Result<(), StateError> {
        let idle: Vec<i32> = self
            .tasks
            .values_mut()
            .filter_map(|t| {
                let idle = !t.active && t.timers.first().is_some_and(|(at, _)| *at <= now);
                t.active = false;
                idle.then_some(t.partition)
            })
            .collect();
        for p in idle {
            self.fire_timers(p, now, out)?;
        }
        Ok(())
    }

    /// Fires every timer due at `now` in every partition (the end of a replay).
    pub fn fire_all(&mut self, now: i64, out: &mut Vec<Action>) -> Result<(), StateError> {
        let mut partitions: Vec<i32> = self.tasks.keys().copied().collect();
        partitions.sort_unstable();
        for p in partitions {
            self.fire_timers(p, now, out)?;
        }
        Ok(())
    }

    /// Takes every partition's changes since the last cut for the next commit:
    /// the changed profiles, shared with the cache, which marks them clean. The
    /// engine's loop takes a cut and goes on; the commit thread encodes it
    /// ([`CommitCut::write`]), and the loop hands the written batch back to
    /// [`Processor::committed`] once the commit has ended.
    pub fn cut(&mut self) -> CommitCut {
        self.commits += 1;
        let commit = self.commits;
        self.cut_for(commit, |t| t.cut(commit))
    }

    /// Takes every partition's changes so far, like [`Processor::cut`], for
    /// the commit that will end the open interval to write ahead of its cut:
    /// numbered as that commit, so that what it wrote ahead and is unchanged
    /// at its end counts as committed by it ([`Processor::committed`]).
    pub fn cut_ahead(&mut self) -> CommitCut {
        let commit = self.commits + 1;
        self.cut_for(commit, |t| t.cut_ahead(commit))
    }

    fn cut_for(&mut self, commit: u64, cut: impl Fn(&mut Task) -> task::Cut) -> CommitCut {
        let tasks: Vec<task::Cut> = self.tasks.values_mut().map(cut).collect();
        let dirty: usize = tasks.iter().map(task::Cut::len).sum();
        CommitCut {
            tasks,
            commit,
            threads: if dirty < PARALLEL_ENCODE {
                1
            } else {
                self.workers.div_ceil(2)
            },
            pool: self.pool.clone(),
        }
    }

    /// Once the commit of `batch` (written from a [`CommitCut`]) has ended:
    /// the profiles it wrote that are still cached and unchanged are counted
    /// at their committed size and their encodings kept in the encoded cache,
    /// on this thread, the engine's (see `trim_cache`).
    ///
    /// The encodings move from `batch` into the encoded cache.
    pub fn committed(&mut self, commit: u64, batch: StateBatch) {
        self.keep_committed(commit, batch.into_encoded_profiles());
    }

    /// [`Processor::committed`] for the profiles `written` by commit
    /// `commit`: partition, id, encoding and decoded memory.
    fn keep_committed<I: Into<compact_str::CompactString>, B: Into<Box<[u8]>>>(
        &mut self,
        commit: u64,
        written: impl Iterator<Item = (i32, I, B, u32)>,
    ) {
        self.written = commit;
        let share = self.encoded_cache_bytes / self.tasks.len().max(1);
        for (p, id, bytes, memory) in written {
            if let Some(t) = self.tasks.get_mut(&p) {
                t.committed(commit, id.into(), bytes, memory, share);
            }
        }
    }

    /// Hands every change since the last call to `emit` as changelog records and
    /// moves them into `batch`, on this thread and the workers: a cut, written
    /// and committed at once (replays and tests; the engine's loop leaves the
    /// writing to its commit thread).
    pub fn changes<E: Send>(
        &mut self,
        batch: &mut StateBatch,
        emit: impl Fn(ChangelogRecord<'_>) -> Result<(), E> + Sync,
    ) -> Result<(), E> {
        let cut = self.cut();
        let commit = cut.commit();
        cut.write(batch, emit)?;
        // The caller still writes `batch`: the encodings are copied.
        self.keep_committed(commit, batch.encoded_profiles());
        Ok(())
    }

    /// After a commit: when the cached profiles take more than the cache's
    /// bytes, clean ones leave memory (their latest version is in RocksDB) until
    /// they take three quarters of it, each partition's share of the excess from
    /// its own. Returns the profiles still cached and their estimated bytes.
    ///
    /// The profiles are freed on the engine's thread: freed on the worker
    /// threads instead, when those were started for each batch, their memory
    /// stayed with those threads' pages and peak RSS at 1M customers went
    /// from 397 to 800 MiB.
    pub fn trim_cache(&mut self) -> CacheUsage {
        let bytes: usize = self.tasks.values().map(|t| t.cached_bytes).sum();
        if bytes > self.profile_cache_bytes {
            let excess = bytes - self.profile_cache_bytes / 4 * 3;
            for t in self.tasks.values_mut() {
                let share = (excess as u128 * t.cached_bytes as u128 / bytes as u128) as usize;
                t.evict(share, self.written);
            }
        }
        let mut lookups = Lookups::default();
        for t in self.tasks.values_mut() {
            lookups.add(t.take_lookups());
        }
        CacheUsage {
            lookups,
            profiles: self.tasks.values().map(|t| t.profiles.len()).sum(),
            bytes: self.tasks.values().map(|t| t.cached_bytes).sum(),
            encoded_profiles: self.tasks.values().map(|t| t.encoded.len()).sum(),
            encoded_bytes: self.tasks.values().map(|t| t.encoded.bytes()).sum(),
            waits: self.tasks.values().map(|t| t.timers.len()).sum(),
        }
    }
}

/// What one commit takes from every partition ([`Processor::cut`]).
pub struct CommitCut {
    tasks: Vec<task::Cut>,
    commit: u64,
    threads: usize,
    pool: Option<Arc<ThreadPool>>,
}

impl CommitCut {
    /// The commit's number, which [`Processor::committed`] is given back.
    pub fn commit(&self) -> u64 {
        self.commit
    }

    /// Encodes the changed profiles, hands them to `emit` as changelog records
    /// (one per changed profile, not per event, and each moved watermark) and
    /// moves them into `batch`. The partitions are spread over half the
    /// engine's worker count of threads (the workers go on processing
    /// meanwhile), or one for a small cut; each encodes a partition's profiles
    /// and emits them, in order, before the next partition, so `emit` may be
    /// called from several threads at once.
    pub fn write<E: Send>(
        self,
        batch: &mut StateBatch,
        emit: impl Fn(ChangelogRecord<'_>) -> Result<(), E> + Sync,
    ) -> Result<(), E> {
        let emit = &emit;
        let pool = self.pool.as_deref();
        let encoded = on_threads(pool, self.tasks, self.threads, task::Cut::len, |chunk| {
            let mut out = Vec::with_capacity(chunk.len());
            for cut in chunk {
                let c = cut.encode();
                c.emit(emit)?;
                out.push(c);
            }
            Ok(out)
        });
        for chunk in encoded {
            for c in chunk? {
                c.add_to(batch);
            }
        }
        Ok(())
    }
}

/// What the profile cache holds ([`Processor::trim_cache`]).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct CacheUsage {
    /// Profiles held decoded.
    pub profiles: usize,
    /// Their estimated memory, bytes.
    pub bytes: usize,
    /// Profiles whose committed encoding is kept ([`encoded`]).
    pub encoded_profiles: usize,
    /// Their memory, bytes.
    pub encoded_bytes: usize,
    /// Entries of the index of pending waits held in memory.
    pub waits: usize,
    /// Where profiles were found since the last trim.
    pub lookups: Lookups,
}

/// One partition's task at work on its records, with what every partition reads.
struct Lane<'a> {
    sh: &'a Shared,
    task: &'a mut Task,
}

impl<'a> Lane<'a> {
    fn new(sh: &'a Shared, task: &'a mut Task) -> Self {
        Lane { sh, task }
    }

    /// Processes one record of this partition; its actions go to `out`.
    fn process(&mut self, r: &Record<'_>, out: &mut Vec<Action>) -> Result<Outcome, StateError> {
        let task = &mut *self.task;
        task.active = true;
        if !task.started {
            task.started = true;
            tracing::info!(
                partition = r.partition,
                topic = r.topic,
                offset = r.offset,
                "first record of the assignment"
            );
        }
        if task
            .next_to_apply(r.topic)
            .is_some_and(|next| r.offset < next)
        {
            self.sh.metrics.skipped.inc();
            return Ok(Outcome::AlreadyApplied);
        }
        task.applied_to(r.topic, r.offset);
        if let Some(outcome) = self.erasure_record(r)? {
            return Ok(outcome);
        }
        if let Some(outcome) = self.identity_record(r, out)? {
            return Ok(outcome);
        }
        let rule = self.sh.rule;
        let pseudonymizer = self.sh.pseudonymizer.as_deref();
        let stitch = self.sh.stitch.as_ref();
        let checked = self.decode(r).and_then(|mut tp| {
            let id = tp.identity().unwrap_or_default();
            rule.check(r.key, id, r.partition)?;
            // Where a linked anonymous id lives is computed from its clear id.
            let home = stitch.and_then(|s| stitch::anonymous_home(&tp, &rule, &s.rules));
            // Producers key records by the clear id, so the key rule reads it;
            // from here on the customer is known by the pseudonym only.
            if let Some(p) = pseudonymizer {
                p.apply(&mut tp);
            }
            Ok((tp, home))
        });
        match checked {
            Ok((tp, home)) => match self.suppressed(&tp) {
                Some(rejection) => Ok(Outcome::Rejected(rejection)),
                None => {
                    let id = tp.identity().unwrap_or_default();
                    self.route_and_apply(Some(r), Seed::of(r), id, &tp, home, true, out)
                }
            },
            Err(rejection) => Ok(Outcome::Rejected(rejection)),
        }
    }

    /// Updates profile `id` with `tp`, evaluates the journeys, and fires the
    /// timers the new watermark makes due; with stitching on, the record may
    /// instead be held, or follow a link ([`stitch`]). `src` is the record read
    /// from Kafka (none for a held record released after a merge); `home` the
    /// partition of an anonymous id `tp` may link; `follow` false for a record
    /// that already followed a link.
    #[allow(clippy::too_many_arguments)]
    fn route_and_apply(
        &mut self,
        src: Option<&Record<'_>>,
        seed: Seed,
        id: &str,
        tp: &Touchpoint,
        home: Option<i32>,
        follow: bool,
        out: &mut Vec<Action>,
    ) -> Result<Outcome, StateError> {
        let sh = self.sh;
        let task = &mut *self.task;
        let mut output = std::mem::take(&mut task.scratch.output);
        let arriving = Arriving {
            from_record: src.is_some(),
            seed,
            id,
            tp,
            home,
            follow,
        };
        let (mut outcome, mut routed) = (Outcome::Applied, Routed::Apply);
        let updated = task.update(&sh.state, id, |s| {
            let changed;
            (changed, outcome, routed) = change_profile(sh, s, &arriving, &mut output);
            changed
        });
        task.scratch.output = output;
        updated?;
        if let Some(r) = src.filter(|_| outcome == Outcome::Applied) {
            self.count_event(r.topic);
        }
        if !matches!(routed, Routed::Apply | Routed::Unlinked(_)) {
            let applied = matches!(routed, Routed::Refused(_));
            self.routed(id, tp, routed);
            if !applied {
                return Ok(outcome);
            }
        }
        if outcome == Outcome::Applied {
            count_survey_answer(&sh.metrics, tp);
        }
        self.collect(out);
        self.advance_watermark(tp.event_time, out)?;
        Ok(outcome)
    }

    /// Moves the partition's watermark to `event_time` if it is later, and
    /// fires the waits due by then: also a wait that a late event scheduled
    /// already in the past fires now, so live processing and a replay's
    /// end-of-input agree.
    fn advance_watermark(
        &mut self,
        event_time: i64,
        out: &mut Vec<Action>,
    ) -> Result<(), StateError> {
        let task = &mut *self.task;
        if event_time > task.watermark {
            task.watermark = event_time;
            task.watermark_dirty = true;
        }
        let wm = task.watermark;
        if task.timers.first().is_some_and(|(at, _)| *at <= wm) {
            self.fire_timers(wm, out)?;
        }
        Ok(())
    }

    fn count_event(&mut self, topic: &str) {
        let counters = &mut self.task.scratch.event_counters;
        match counters.iter().find(|(t, _)| t == topic) {
            Some((_, c)) => c.inc(),
            None => {
                let c = self.sh.metrics.events.with_label_values(&[topic]);
                c.inc();
                counters.push((topic.to_owned(), c));
            }
        }
    }

    /// Fires every timer of this partition due at `now`, pushing their actions
    /// to `out`.
    fn fire_timers(&mut self, now: i64, out: &mut Vec<Action>) -> Result<(), StateError> {
        loop {
            let sh = self.sh;
            let task = &mut *self.task;
            let Some((at, id)) = task.timers.pop_first() else {
                return Ok(());
            };
            if at > now {
                task.timers.insert((at, id));
                return Ok(());
            }
            let journeys = &sh.journeys;
            let mut output = std::mem::take(&mut task.scratch.output);
            let mut fired = 0;
            let updated = task.update(&sh.state, &id, |s| {
                let was_due: Vec<Timer> = s
                    .profile
                    .timers
                    .iter()
                    .filter(|t| t.fire_at_ms <= now)
                    .cloned()
                    .collect();
                if was_due.is_empty() {
                    // Nothing of this profile is due (an index entry left by an
                    // erasure or a restore): nothing to change, nothing to write.
                    return false;
                }
                fired = journeys
                    .fire_due(&mut s.profile, now, &mut output)
                    .timers_fired;
                // A due timer no journey claimed (its journey was removed) is
                // dropped, so it cannot come due again and again. Waits the firing
                // scheduled (a journey's next step) stay, also when already due: a
                // flushed replay runs time on to the end, through every step.
                s.profile
                    .timers
                    .retain(|t| t.fire_at_ms > now || !was_due.contains(t));
                true
            });
            task.scratch.output = output;
            updated?;
            sh.metrics.timers_fired.inc_by(u64::from(fired));
            self.collect(out);
        }
    }

    /// Moves the record's actions to `out` and keeps its decisions not to act;
    /// counts every decision by journey and outcome.
    fn collect(&mut self, out: &mut Vec<Action>) {
        let scratch = &mut self.task.scratch;
        out.append(&mut scratch.output.actions);
        for d in scratch.output.decisions.drain(..) {
            let counter = match scratch
                .decision_counters
                .iter()
                .find(|((j, o), _)| *o == d.outcome && *j == d.journey)
            {
                Some((_, c)) => c.clone(),
                None => {
                    let c = self
                        .sh
                        .metrics
                        .decisions
                        .with_label_values(&[d.journey.as_str(), d.outcome.as_str()]);
                    scratch
                        .decision_counters
                        .push(((d.journey.to_string(), d.outcome), c.clone()));
                    c
                }
            };
            counter.inc();
            if d.outcome != Judgement::Sent {
                scratch.not_sent.push(d);
            }
        }
    }
}

/// A processor for tests: the shipped journeys, no key rule, state in `dir`
/// (small RocksDB caches), `profile_cache_bytes` of decoded profiles, and
/// partition 0 started.
#[cfg(test)]
pub(crate) fn test_processor(dir: &std::path::Path, profile_cache_bytes: usize) -> Processor {
    let state = Arc::new(
        StateStore::open(&crate::config::StateConfig {
            path: dir.to_owned(),
            block_cache_mb: 8,
            write_buffer_mb: 8,
            ..Default::default()
        })
        .expect("state opens"),
    );
    let journeys = Arc::new(CompiledJourneys::shipped().expect("shipped journeys compile"));
    let mut p = Processor::new(
        1 << 20,
        KeyRule::off(),
        journeys,
        state,
        Metrics::new(),
        profile_cache_bytes,
    )
    .expect("processor");
    p.start_partition(0).expect("partition starts");
    p
}

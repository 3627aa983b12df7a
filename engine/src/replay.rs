//! `rapport replay`: the journeys over recorded touchpoints, in event time, with an
//! embedded RocksDB in a temporary directory and no broker.
//!
//! Each line of the input is one touchpoint record (JSON, as on the touchpoint
//! topics). It goes through the same [`Processor`] as the live engine, so the
//! actions written (one JSON line each, exactly the records the engine produces to
//! the action topic) are the live engine's. The same input gives byte-identical
//! output.

use std::collections::VecDeque;
use std::io::{BufRead, Write};
use std::sync::Arc;

use anyhow::Context as _;
use rapport_model::Action;

use crate::config::Config;
use crate::ingest::route::KeyRule;
use crate::metrics::Metrics;
use crate::processor::{Outcome, Processor, Record, AHEAD};
use crate::state::{StateBatch, StateStore};

/// Records between two writes of the changed profiles to RocksDB.
const CHECKPOINT_EVERY: u64 = 50_000;

/// When pending waits fire after the last record.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Until {
    /// Only those due by the last event time (as live processing would have fired them).
    EndOfInput,
    /// Those due by this event time (epoch ms).
    At(i64),
    /// Every pending wait, as if time ran on.
    Flush,
}

/// What a replay did.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Summary {
    /// Records read.
    pub records: u64,
    /// Records applied to profiles.
    pub applied: u64,
    /// Records skipped because their event id was already applied.
    pub duplicates: u64,
    /// Records that would be dead-lettered, with the first few reasons.
    pub rejected: u64,
    /// Reasons of the first rejected records, `line: reason`.
    pub rejections: Vec<String>,
    /// Actions written.
    pub actions: u64,
    /// Decisions not to act (capped, deferred, no consent, suppressed, held out).
    pub withheld: u64,
}

/// Replays the touchpoints of `input` through the journeys of `cfg`, writing each
/// action as a JSON line to `out`; with `decisions`, also each decision not to act
/// (the records the engine writes to the decisions topic), in decision order.
pub fn replay(
    cfg: &Config,
    input: impl BufRead,
    until: Until,
    decisions: bool,
    out: &mut impl Write,
) -> anyhow::Result<Summary> {
    let dir = tempfile::tempdir().context("creating a temporary state directory")?;
    let state = Arc::new(StateStore::open_path(dir.path(), &cfg.state)?);
    let mut processor = processor(cfg, state.clone())?;
    processor.start_partition(0)?;
    let mut internal = 0i64;
    let mut summary = Summary::default();
    let mut actions: Vec<Action> = Vec::new();
    let mut lines = input.lines().enumerate();
    // The next records, already handed to the processor to look ahead at.
    let mut window: VecDeque<(usize, String)> = VecDeque::with_capacity(AHEAD + 1);
    loop {
        while window.len() <= AHEAD {
            let Some((n, line)) = lines.next() else {
                break;
            };
            let line = line.context("reading the events")?;
            if !line.trim().is_empty() {
                processor.look_ahead(&record(n, &line));
                window.push_back((n, line));
            }
        }
        let Some((n, line)) = window.pop_front() else {
            break;
        };
        let record = record(n, &line);
        let outcome = processor.process(&record, &mut actions)?;
        summary.count(n, outcome);
        stitch(&mut processor, &mut internal, &mut actions)?;
        write_actions(&mut actions, out, &mut summary)?;
        write_decisions(&mut processor, decisions, out, &mut summary)?;
        if summary.records % CHECKPOINT_EVERY == 0 {
            checkpoint(&mut processor, &state)?;
        }
    }
    let now = match until {
        Until::EndOfInput => processor.watermark(0).unwrap_or(i64::MIN),
        Until::At(t) => t,
        Until::Flush => i64::MAX,
    };
    processor.fire_all(now, &mut actions)?;
    write_actions(&mut actions, out, &mut summary)?;
    write_decisions(&mut processor, decisions, out, &mut summary)?;
    out.flush()?;
    Ok(summary)
}

/// The processor a replay runs: the live engine's, with the configuration's
/// journeys, limits, pseudonyms and identity stitching, its state in `state`.
fn processor(cfg: &Config, state: Arc<StateStore>) -> anyhow::Result<Processor> {
    let processor = Processor::new(
        cfg.engine.max_record_bytes,
        KeyRule::off(),
        cfg.journeys()?,
        state,
        Metrics::new(),
        cfg.state.profile_cache_mb << 20,
    )?
    .with_seen_limits(cfg.engine.seen_limits())
    .with_pseudonymizer(cfg.pseudonymizer.clone());
    Ok(processor.with_stitching(crate::processor::StitchRules::of(
        &cfg.identity,
        REPARTITION.into(),
    )?))
}

impl Summary {
    /// Counts what became of line `n` (0-based); the first rejections are
    /// kept with their line and reason.
    fn count(&mut self, n: usize, outcome: Outcome) {
        self.records += 1;
        match outcome {
            Outcome::Applied => self.applied += 1,
            Outcome::Rejected(r) => {
                self.rejected += 1;
                if self.rejections.len() < 20 {
                    self.rejections
                        .push(format!("line {}: {}", n + 1, r.reason));
                }
            }
            Outcome::Duplicate => self.duplicates += 1,
            Outcome::AlreadyApplied | Outcome::NotOwned => {}
        }
    }
}

/// Line `n` of the input as a record of the one partition a replay has.
fn record(n: usize, line: &str) -> Record<'_> {
    Record {
        topic: "replay",
        partition: 0,
        offset: n as i64,
        key: None,
        value: line.as_bytes(),
    }
}

/// The repartition topic of a replay: identity messages go round within the
/// one processor, in the order they are made.
const REPARTITION: &str = "replay-identity-repartition";

/// Feeds the identity messages the processor made back into it (link requests,
/// transfers, forwarded touchpoints) until none are left: a replay has one
/// partition, so the repartition topic is a queue.
fn stitch(
    processor: &mut Processor,
    offset: &mut i64,
    actions: &mut Vec<Action>,
) -> anyhow::Result<()> {
    loop {
        let messages: Vec<Vec<u8>> = processor
            .take_outbox()
            .map(|o| o.message.encode())
            .collect();
        processor.take_identity_events().for_each(drop);
        if messages.is_empty() {
            return Ok(());
        }
        for m in &messages {
            let record = Record {
                topic: REPARTITION,
                partition: 0,
                offset: *offset,
                key: None,
                value: m,
            };
            *offset += 1;
            processor.process(&record, actions)?;
        }
    }
}

fn write_actions(
    actions: &mut Vec<Action>,
    out: &mut impl Write,
    summary: &mut Summary,
) -> anyhow::Result<()> {
    for a in actions.drain(..) {
        serde_json::to_writer(&mut *out, &a)?;
        out.write_all(b"\n")?;
        summary.actions += 1;
    }
    Ok(())
}

fn write_decisions(
    processor: &mut Processor,
    write: bool,
    out: &mut impl Write,
    summary: &mut Summary,
) -> anyhow::Result<()> {
    for d in processor.take_decisions() {
        summary.withheld += 1;
        if write {
            serde_json::to_writer(&mut *out, &d)?;
            out.write_all(b"\n")?;
        }
    }
    Ok(())
}

/// Writes the changed profiles to RocksDB so the profile cache can shrink.
fn checkpoint(processor: &mut Processor, state: &StateStore) -> anyhow::Result<()> {
    let mut batch = StateBatch::default();
    processor.changes(&mut batch, |_| Ok::<(), std::convert::Infallible>(()))?;
    state.write(&batch)?;
    processor.trim_cache();
    Ok(())
}

/// Parses `--at`: epoch milliseconds or RFC 3339.
pub fn parse_time(s: &str) -> Result<i64, String> {
    if let Ok(ms) = s.parse::<i64>() {
        return Ok(ms);
    }
    chrono::DateTime::parse_from_rfc3339(s)
        .map(|t| t.timestamp_millis())
        .map_err(|e| format!("{s:?} is neither epoch milliseconds nor RFC 3339 ({e})"))
}

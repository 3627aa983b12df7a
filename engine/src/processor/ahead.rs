//! Looking a few records ahead: a record is decoded before its turn and its
//! customer's profile is asked into the CPU cache, so that the memory loads of
//! the next records overlap with the work on this one.
//!
//! With many customers the processor waits on memory more than it computes:
//! each touchpoint reads a profile that is rarely in cache (its boxed record,
//! then the lists it appends to). [`Lane::look_ahead`] decodes record `n +
//! AHEAD` and prefetches its profile record; when record `n` is processed, the
//! lists of record `n + 1` are prefetched. Decoding is pure and a prefetch only
//! moves memory earlier, so a record's outcome is the same with or without a
//! look ahead (the unit test below checks it).

use std::collections::VecDeque;

use rapport_model::Touchpoint;

use super::{Lane, Record};
use crate::ingest::Rejection;

/// How many records ahead callers look: far enough for a profile to arrive
/// from memory while the records before it are processed.
pub const AHEAD: usize = 4;

/// Entries kept at most, whatever the callers do: records looked at but never
/// processed (a partition revoked, a record skipped) are dropped from the front.
const LIMIT: usize = 4 * AHEAD;

/// Records of one partition decoded ahead of their turn, oldest first.
#[derive(Default)]
pub(crate) struct Ahead {
    queue: VecDeque<Decoded>,
    /// The partition's touchpoint topics (a few), which entries refer to by
    /// position so that looking ahead allocates nothing for the name.
    topics: Vec<Box<str>>,
}

/// One record decoded ahead.
struct Decoded {
    /// Position of the record's topic in [`Ahead::topics`].
    topic: usize,
    offset: i64,
    /// Boxed: a touchpoint is a few hundred bytes, moved in and out of the queue.
    touchpoint: Result<Box<Touchpoint>, Rejection>,
}

impl Ahead {
    /// The position of `topic` in [`Ahead::topics`], if known.
    fn topic(&self, topic: &str) -> Option<usize> {
        self.topics.iter().position(|t| **t == *topic)
    }

    /// The position of `r` in the queue, if it was looked at.
    fn find(&self, r: &Record<'_>) -> Option<usize> {
        let topic = self.topic(r.topic)?;
        self.queue
            .iter()
            .position(|d| d.offset == r.offset && d.topic == topic)
    }

    /// The decoding of `r` if it was looked at, dropping entries before it.
    fn take(&mut self, r: &Record<'_>) -> Option<Result<Box<Touchpoint>, Rejection>> {
        let at = self.find(r)?;
        self.queue.drain(..at);
        self.queue.pop_front().map(|d| d.touchpoint)
    }

    /// Queues the decoding of `r`, dropping the oldest entry when full.
    fn push(&mut self, r: &Record<'_>, touchpoint: Result<Box<Touchpoint>, Rejection>) {
        let topic = self.topic(r.topic).unwrap_or_else(|| {
            self.topics.push(r.topic.into());
            self.topics.len() - 1
        });
        if self.queue.len() == LIMIT {
            self.queue.pop_front();
        }
        self.queue.push_back(Decoded {
            topic,
            offset: r.offset,
            touchpoint,
        });
    }
}

impl Lane<'_> {
    /// Decodes touchpoint record `r` ahead of its turn and starts loading its
    /// customer's profile. Records of the privacy and repartition topics are
    /// left to their turn; so is the prefetch when ids are pseudonymized (the
    /// profile is keyed by the pseudonym, computed at the record's turn).
    pub(super) fn look_ahead(&mut self, r: &Record<'_>) {
        let sh = self.sh;
        let internal = sh.privacy.as_ref().is_some_and(|p| p.topic == r.topic)
            || sh.stitch.as_ref().is_some_and(|s| s.topic == r.topic);
        if internal || self.task.ahead.find(r).is_some() {
            return;
        }
        let touchpoint = sh.decoder.decode(r.value).map(Box::new);
        if let (Ok(tp), None) = (&touchpoint, &sh.pseudonymizer) {
            self.task.prefetch(tp.identity().unwrap_or_default(), false);
        }
        self.task.ahead.push(r, touchpoint);
    }

    /// The decoding of `r`: the one made ahead, if any, or made now. Also
    /// starts loading the lists of the next record's profile.
    pub(super) fn decode(&mut self, r: &Record<'_>) -> Result<Box<Touchpoint>, Rejection> {
        let task = &mut *self.task;
        let decoded = task.ahead.take(r);
        if let (Some(Ok(next)), None) = (
            task.ahead.queue.front().map(|d| &d.touchpoint),
            &self.sh.pseudonymizer,
        ) {
            task.prefetch(next.identity().unwrap_or_default(), true);
        }
        decoded.unwrap_or_else(|| self.sh.decoder.decode(r.value).map(Box::new))
    }
}

#[cfg(test)]
mod tests {
    use rapport_connectors::simulator::{SimConfig, Simulator};

    use super::AHEAD;
    use crate::processor::{test_processor, Outcome, Processor, Record};

    fn processor(dir: &std::path::Path) -> Processor {
        test_processor(dir, 1000)
    }

    /// Simulated records of 150 customers with malformed ones among them, and
    /// every 50th record sent twice (a producer retry: a duplicate event id).
    fn records() -> Vec<Vec<u8>> {
        let mut sim = Simulator::new(SimConfig {
            customers: 150,
            seed: 7,
            malformed_per_mille: 30,
        });
        let mut out = Vec::new();
        for i in 0..4000 {
            let value = sim.next_record(1_764_000_000_000 + i * 60_000).value;
            if i % 50 == 0 {
                out.push(value.clone());
            }
            out.push(value);
        }
        out
    }

    fn record(values: &[Vec<u8>], i: usize) -> Record<'_> {
        Record {
            topic: "touch",
            partition: 0,
            offset: i as i64,
            key: None,
            value: &values[i],
        }
    }

    /// Outcomes and actions of every record, as JSON, with or without looking ahead.
    fn run(values: &[Vec<u8>], ahead: bool) -> Vec<String> {
        let dir = tempfile::tempdir().unwrap();
        let mut p = processor(dir.path());
        let mut seen = Vec::new();
        for i in 0..values.len() {
            if ahead && i % 100 == 0 {
                // A burst of look-aheads at records processed much later: the
                // queue stays bounded and the records still come out right.
                for j in i..(i + 40).min(values.len()) {
                    p.look_ahead(&record(values, j));
                }
            }
            if ahead && i + AHEAD < values.len() {
                p.look_ahead(&record(values, i + AHEAD));
            }
            let mut actions = Vec::new();
            let outcome = p.process(&record(values, i), &mut actions).unwrap();
            seen.push(format!(
                "{i} {outcome:?} {}",
                serde_json::to_string(&actions).unwrap()
            ));
        }
        // A record fetched again after a rewind is still recognised as applied.
        let again = p.process(&record(values, 10), &mut Vec::new()).unwrap();
        assert_eq!(again, Outcome::AlreadyApplied);
        seen
    }

    #[test]
    fn looking_ahead_changes_no_outcome_and_no_action() {
        let values = records();
        let plain = run(&values, false);
        let ahead = run(&values, true);
        assert_eq!(plain.len(), ahead.len());
        for (a, b) in plain.iter().zip(&ahead) {
            assert_eq!(a, b);
        }
        let count = |what: &str| plain.iter().filter(|s| s.contains(what)).count();
        // The input exercises what the look-ahead must not change.
        assert!(count("Rejected") > 50, "{}", count("Rejected"));
        assert!(count("Duplicate") > 40, "{}", count("Duplicate"));
        assert!(count("action_id") > 100, "{}", count("action_id"));
    }
}

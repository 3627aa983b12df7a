//! The committer giving up a commit stuck in a call into the Kafka client.

use std::sync::mpsc;

use super::*;
use crate::state::test_store;

/// A committer under at-least-once on producers that reach no broker (none
/// is needed to make, abort or replace them), whose calls count as stuck as
/// soon as their timeout has passed.
fn committer(dir: &std::path::Path, metrics: &Metrics) -> Committer {
    let mut config = ClientConfig::new();
    config.set("bootstrap.servers", "127.0.0.1:9");
    let state = Arc::new(test_store(dir));
    let mut c = Committer::new(
        Arc::new(AtLeastOnce),
        config,
        "changelog".into(),
        Duration::from_secs(60),
        metrics.clone(),
        state,
    )
    .unwrap();
    c.grace = Duration::ZERO;
    c
}

/// Starts a commit whose call into the client (1 ms timeout) returns only
/// once the sender returned is used or dropped.
fn start_stuck_commit(c: &mut Committer) -> mpsc::Sender<()> {
    let (release, held) = mpsc::channel::<()>();
    let producer = c.producers[c.current].clone();
    let job = c.thread.run(move || {
        let calls = &producer.context().calls;
        calls.call(
            "adding offsets to the transaction",
            Duration::from_millis(1),
            |_| {
                let _ = held.recv();
            },
        );
        Err(CommitError::Failed("released".into()))
    });
    c.in_flight = Some(InFlight {
        job,
        interval: Interval {
            offsets: TopicPartitionList::new(),
            records: 0,
            started: Instant::now(),
            oldest_ms: None,
            erasures: Vec::new(),
            cut: 0,
            written: StateBatch::default(),
        },
        delivered: Arc::new(AtomicBool::new(false)),
        producer: c.current,
        given_up: Arc::new(AtomicBool::new(false)),
    });
    c.current = 1 - c.current;
    release
}

/// Waits (a bounded while) until `c` sees its commit's call as stuck.
fn until_stuck(c: &Committer) -> String {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        if let Some(why) = c.stuck() {
            return why;
        }
        assert!(
            Instant::now() < deadline,
            "the stuck call was never noticed"
        );
        std::thread::sleep(Duration::from_millis(5));
    }
}

#[test]
fn a_commit_in_a_call_within_its_timeout_is_not_stuck() {
    let dir = tempfile::tempdir().unwrap();
    let metrics = Metrics::new();
    let mut c = committer(dir.path(), &metrics);
    c.grace = Duration::from_secs(3600);
    let release = start_stuck_commit(&mut c);
    std::thread::sleep(Duration::from_millis(20));
    assert_eq!(c.stuck(), None);
    drop(release);
    assert!(matches!(c.finish(), Err(LoopError::Rewind(why)) if why == "released"));
}

/// A commit sitting in a call into the Kafka client past its timeout fails
/// the interval instead of holding the loop, and the abort that follows
/// gives it up: its producer is replaced (the other kept), later commits run
/// on a new thread, and the abort ends although the call never returned.
#[test]
fn a_commit_stuck_in_the_kafka_client_is_given_up_and_its_producer_replaced() {
    let dir = tempfile::tempdir().unwrap();
    let metrics = Metrics::new();
    let mut c = committer(dir.path(), &metrics);
    let stuck_on = c.current;
    let before = [c.producers[0].clone(), c.producers[1].clone()];
    let release = start_stuck_commit(&mut c);

    let why = until_stuck(&c);
    assert!(why.contains("adding offsets to the transaction"), "{why}");
    match c.finish() {
        Err(LoopError::Rewind(reason)) => assert!(reason.contains("librdkafka#5456"), "{reason}"),
        Err(LoopError::Fatal(e)) => panic!("finish failed fatally: {e:#}"),
        Ok(_) => panic!("finish returned a stuck commit as committed"),
    }

    let mut abort = Abort::default();
    let mut steps = 0;
    while !c.abort_step(&mut abort).unwrap() {
        steps += 1;
        assert!(steps < 100, "the abort waited on the stuck commit");
    }
    assert!(abort.committed.is_none());
    assert_eq!(metrics.commits_abandoned.get(), 1);
    assert!(
        !Arc::ptr_eq(&c.producers[stuck_on], &before[stuck_on]),
        "not replaced"
    );
    let other = 1 - stuck_on;
    assert!(
        Arc::ptr_eq(&c.producers[other], &before[other]),
        "the other one replaced"
    );
    assert_eq!(c.abandoned, None);
    assert!(!c.committing());
    assert_eq!(
        c.thread.run(|| 7).join().unwrap(),
        7,
        "no thread for commits"
    );

    // The stuck call returning late changes nothing.
    drop(release);
    assert_eq!(c.stuck(), None);
}

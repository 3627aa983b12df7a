//! Start-up refuses topic layouts that would break partitioned state.

use rapport::kafka::{ensure_topics, TopicSpec};
use rapport::metrics::Metrics;

use crate::support::*;

fn create(specs: &[TopicSpec]) {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap()
        .block_on(ensure_topics(&bootstrap(), specs))
        .unwrap();
}

fn start_error(cfg: &rapport::Config) -> String {
    match rapport::runtime::start(cfg.clone(), state(cfg), Metrics::new()) {
        Ok(_) => panic!("the engine started on a broken topic layout"),
        Err(e) => format!("{e:#}"),
    }
}

#[test]
fn touchpoint_topics_must_be_co_partitioned() {
    let topics = Topics::new("copart", 4);
    let other = unique("copart.other");
    create(&[TopicSpec::new(&other, 2)]);
    let dir = tempfile::tempdir().unwrap();
    let mut cfg = topics.config(dir.path(), &unique("copart"));
    cfg.kafka.touchpoint_topics.push(other.clone());
    let e = start_error(&cfg);
    assert!(
        e.contains("not co-partitioned")
            && e.contains(&other)
            && e.contains("same partition count"),
        "{e}"
    );
}

#[test]
fn a_changelog_must_be_compacted_and_partitioned_like_the_input() {
    let topics = Topics::new("changelog", 4);
    let dir = tempfile::tempdir().unwrap();
    let mut cfg = topics.config(dir.path(), &unique("changelog"));
    cfg.kafka.changelog_topic = unique("changelog.wrong-count");
    let mut spec = TopicSpec::new(&cfg.kafka.changelog_topic, 2);
    spec.configs
        .push(("cleanup.policy".into(), "compact".into()));
    create(&[spec]);
    let e = start_error(&cfg);
    assert!(e.contains("has 2 partitions") && e.contains("4"), "{e}");

    cfg.kafka.changelog_topic = unique("changelog.not-compacted");
    create(&[TopicSpec::new(&cfg.kafka.changelog_topic, 4)]);
    let e = start_error(&cfg);
    assert!(
        e.contains("cleanup.policy=delete") && e.contains("compact"),
        "{e}"
    );

    let missing = unique("missing-input");
    cfg.kafka.changelog_topic = String::new();
    cfg.kafka.touchpoint_topics = vec![missing.clone()];
    let e = start_error(&cfg);
    assert!(e.contains(&missing) && e.contains("does not exist"), "{e}");
}

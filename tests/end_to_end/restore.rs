//! Restore is a phase of its own: a partition whose changelog takes long to
//! restore is restored between polls, so the instance stays in its group, the
//! group can change meanwhile, and the partitions that are ready keep flowing.

use std::time::{Duration, Instant};

use rdkafka::config::ClientConfig;
use rdkafka::producer::{BaseProducer, BaseRecord, Producer};

use crate::crash::feed_from;
use crate::faults::{assert_like_a_clean_run, simulator};
use crate::metrics::{get, value};
use crate::support::*;

/// A transaction left open on a changelog partition, as by an instance that died
/// while committing: a read_committed restore cannot pass it until it is aborted.
struct OpenTransaction(BaseProducer);

impl OpenTransaction {
    fn on(bootstrap: &str, topic: &str, partition: i32) -> OpenTransaction {
        let p: BaseProducer = ClientConfig::new()
            .set("bootstrap.servers", bootstrap)
            .set("transactional.id", unique("dead-instance"))
            .set("transaction.timeout.ms", "300000")
            .create()
            .unwrap();
        let t = Duration::from_secs(30);
        p.init_transactions(t).unwrap();
        p.begin_transaction().unwrap();
        p.send(
            BaseRecord::to(topic)
                .partition(partition)
                .key("never-committed")
                .payload("never-committed"),
        )
        .unwrap();
        p.flush(t).unwrap();
        OpenTransaction(p)
    }

    fn abort(self) {
        self.0.abort_transaction(Duration::from_secs(30)).unwrap();
    }
}

/// Waits until `check` holds, failing (with `what`) after two minutes or when an
/// instance exits.
fn wait_until(what: &str, instances: &mut [&mut Instance], mut check: impl FnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(120);
    while !check() {
        for i in instances.iter_mut() {
            i.assert_running();
        }
        assert!(Instant::now() < deadline, "timed out waiting: {what}");
        std::thread::sleep(Duration::from_millis(100));
    }
}

#[test]
fn a_partition_restores_while_the_group_changes_and_the_others_keep_flowing() {
    let _serial = heavy();
    let topics = Topics::new("restorephase", 4);
    let (dir, group) = (tempfile::tempdir().unwrap(), unique("restorephase"));
    let changelog = format!("{group}-profiles-changelog");
    let mut sim = simulator(40_000, 62);

    // A changelog of tens of thousands of profiles.
    feed_from(&topics.bootstrap, &topics.input, &mut sim, 0..150_000);
    let mut cfg_a = group_member(&topics, dir.path(), &group, "a");
    let addr_a = format!("127.0.0.1:{}", free_port());
    cfg_a.http.listen = addr_a.clone();
    let mut a = Instance::spawn(&cfg_a, dir.path(), "a");
    wait_caught_up_on(&topics.bootstrap, &group, &topics.input, &mut [&mut a]);
    a.terminate();

    // a comes back with an empty disk; partition 0's changelog ends in a
    // transaction its previous owner never finished; more input waits meanwhile.
    std::fs::remove_dir_all(dir.path().join("a")).unwrap();
    let held = OpenTransaction::on(&topics.bootstrap, &changelog, 0);
    feed_from(&topics.bootstrap, &topics.input, &mut sim, 150_000..250_000);
    let before = committed_on(&topics.bootstrap, &group, &topics.input);
    // (The same instance, logging to a second file.)
    let mut a = Instance::spawn(&cfg_a, dir.path(), "a-again");
    a.wait_ready(3);
    // a says where the restore stands, and is not ready.
    wait_until("a reports partition 0 restoring", &mut [&mut a], || {
        let (status, body) = get(&addr_a, "/readyz");
        let (_, m) = get(&addr_a, "/metrics");
        status == 503
            && body.contains("partition 0:")
            && value(&m, "rapport_restore_remaining_records") > 0.0
            && value(&m, "rapport_ready") == 0.0
    });
    let (_, m) = get(&addr_a, "/metrics");
    assert!(
        value(&m, "rapport_restored_records_total") > 10_000.0,
        "a restored the other partitions ({} records); log:\n{}",
        value(&m, "rapport_restored_records_total"),
        a.log_text()
    );

    // The group changes while partition 0 is still restoring: b joins and takes
    // partitions from a, and both process every partition but the held one.
    let mut cfg_b = group_member(&topics, dir.path(), &group, "b");
    let addr_b = format!("127.0.0.1:{}", free_port());
    cfg_b.http.listen = addr_b.clone();
    let mut b = Instance::spawn(&cfg_b, dir.path(), "b");
    b.wait_ready(1);
    let ends = ends_on(&topics.bootstrap, &topics.input);
    wait_until(
        "partitions 1-3 processed while partition 0 restores",
        &mut [&mut a, &mut b],
        || {
            let committed = committed_on(&topics.bootstrap, &group, &topics.input);
            (1..4).all(|p| committed[p] >= ends[p])
        },
    );
    assert!(
        a.log_text().contains("partitions revoked"),
        "b's arrival rebalanced the group during the restore"
    );
    let committed = committed_on(&topics.bootstrap, &group, &topics.input);
    assert_eq!(
        committed[0], before[0],
        "nothing of partition 0 was processed before its state was restored"
    );
    assert!(committed[0] < ends[0], "partition 0 has input waiting");

    // The dead instance's transaction is aborted: the restore completes, and
    // partition 0's waiting input is processed on top of its restored state.
    held.abort();
    wait_caught_up_on(
        &topics.bootstrap,
        &group,
        &topics.input,
        &mut [&mut a, &mut b],
    );
    for addr in [&addr_a, &addr_b] {
        wait_until("both ready", &mut [&mut a, &mut b], || {
            get(addr, "/readyz").0 == 200
        });
        let (_, m) = get(addr, "/metrics");
        assert_eq!(value(&m, "rapport_ready"), 1.0);
        assert_eq!(value(&m, "rapport_restore_remaining_records"), 0.0);
    }
    // The restore itself never failed: a rebalance only moved it (a commit that
    // overlapped the rebalance may have been redone, which the comparison with a
    // clean run below covers).
    for log in [a.log_text(), b.log_text()] {
        assert!(!log.contains("stuck at offset"), "{log}");
    }
    a.terminate();
    b.terminate();
    assert_like_a_clean_run(&topics, &group, 4);
}

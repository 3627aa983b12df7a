//! What a run left: profiles in RocksDB and in the changelog, and actions
//! compared with a clean run's.

use std::collections::HashMap;
use std::path::Path;

use rapport::state::StateStore;
use rapport_model::Action;

use super::kafka::unique;

/// Every profile in the stores at `dirs`; where several hold one customer (a
/// partition that moved), the one that has seen the most events is the latest.
pub fn all_profiles(dirs: &[&Path]) -> std::collections::BTreeMap<String, rapport_model::Profile> {
    let mut out: std::collections::BTreeMap<String, rapport_model::Profile> = Default::default();
    for dir in dirs {
        let cfg = rapport::config::StateConfig {
            path: dir.to_path_buf(),
            block_cache_mb: 8,
            write_buffer_mb: 8,
            ..Default::default()
        };
        let store = StateStore::open(&cfg).unwrap();
        for p in store.partitions().unwrap() {
            for (id, s) in store.profiles(p).unwrap() {
                match out.get(&id) {
                    Some(old) if old.events >= s.profile.events => {}
                    _ => {
                        out.insert(id, s.profile);
                    }
                }
            }
        }
    }
    out
}

/// The profiles in group `group`'s changelog (of `partitions` partitions), restored
/// into a fresh store as an instance taking over every partition would.
pub fn changelog_profiles(
    bootstrap: &str,
    group: &str,
    partitions: i32,
) -> std::collections::BTreeMap<String, rapport_model::Profile> {
    let restored = tempfile::tempdir().unwrap();
    {
        let cfg = rapport::config::StateConfig {
            path: restored.path().to_owned(),
            ..Default::default()
        };
        let store = StateStore::open(&cfg).unwrap();
        let mut restorer = rapport::runtime::Restorer::new(&rapport::config::KafkaConfig {
            bootstrap_servers: bootstrap.to_owned(),
            group_id: unique("verify"),
            ..Default::default()
        })
        .unwrap();
        for p in 0..partitions {
            rapport::runtime::restore_partition(
                &mut restorer,
                &format!("{group}-profiles-changelog"),
                &store,
                p,
            )
            .unwrap();
        }
        store.flush().unwrap();
    }
    all_profiles(&[restored.path()])
}

/// Asserts that `got` holds exactly the actions of `clean`: every id once, none
/// missing, none invented, each with the same content.
pub fn assert_same_actions(got: &[Action], clean: &[Action]) {
    let clean_by_id: HashMap<&str, &Action> =
        clean.iter().map(|a| (a.action_id.as_str(), a)).collect();
    let got_ids: std::collections::BTreeSet<&str> =
        got.iter().map(|a| a.action_id.as_str()).collect();
    assert_eq!(got.len(), got_ids.len(), "exactly once: no duplicates");
    let missing: Vec<&&Action> = clean_by_id
        .iter()
        .filter(|(id, _)| !got_ids.contains(*id))
        .map(|(_, a)| a)
        .take(3)
        .collect();
    let extra: Vec<&Action> = got
        .iter()
        .filter(|a| !clean_by_id.contains_key(a.action_id.as_str()))
        .take(3)
        .collect();
    assert!(
        missing.is_empty() && extra.is_empty(),
        "{} actions missing, {} extra; missing e.g. {missing:?}; extra e.g. {extra:?}",
        clean_by_id.len()
            - got_ids
                .iter()
                .filter(|id| clean_by_id.contains_key(*id))
                .count(),
        got_ids
            .iter()
            .filter(|id| !clean_by_id.contains_key(*id))
            .count()
    );
    for a in got {
        assert_eq!(
            clean_by_id[a.action_id.as_str()],
            a,
            "same content as the clean run"
        );
    }
}

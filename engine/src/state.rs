//! Local profile state in RocksDB.
//!
//! Profiles and the source offsets they reflect are written together in one
//! `WriteBatch` per commit interval, so the store is always a consistent
//! snapshot of "every record before these offsets has been applied".

use std::collections::HashMap;
use std::path::Path;

use rapport_model::profile::DecodeError;
use rapport_model::Profile;
use rocksdb::{BlockBasedOptions, Cache, Options, WriteBatch, WriteBufferManager, DB};

use crate::config::StateConfig;

const PROFILE_PREFIX: &[u8] = b"p\0";
const OFFSET_PREFIX: &[u8] = b"o\0";

/// A state operation failed.
#[derive(Debug, thiserror::Error)]
pub enum StateError {
    /// RocksDB refused.
    #[error("rocksdb: {0}")]
    Db(#[from] rocksdb::Error),
    /// A stored profile is unreadable.
    #[error("stored profile {id:?}: {source}")]
    Profile {
        /// Profile id.
        id: String,
        /// Why.
        source: DecodeError,
    },
    /// A stored offset entry is malformed.
    #[error("malformed offset entry in state")]
    Offset,
}

/// The next offset to apply, per source topic and partition.
pub type Offsets = HashMap<(String, i32), i64>;

/// The RocksDB-backed profile store.
pub struct StateStore {
    db: DB,
}

impl StateStore {
    /// Opens (or creates) the store with memory bounded by configuration:
    /// one shared block cache and one write-buffer budget.
    pub fn open(cfg: &StateConfig) -> Result<Self, StateError> {
        Self::open_path(&cfg.path, cfg)
    }

    /// Opens the store at `path` with the memory limits of `cfg`.
    pub fn open_path(path: &Path, cfg: &StateConfig) -> Result<Self, StateError> {
        let cache = Cache::new_lru_cache(cfg.block_cache_mb << 20);
        let mut table = BlockBasedOptions::default();
        table.set_block_cache(&cache);
        table.set_bloom_filter(10.0, false);
        table.set_cache_index_and_filter_blocks(true);
        let mut opts = Options::default();
        opts.create_if_missing(true);
        opts.set_block_based_table_factory(&table);
        opts.set_write_buffer_manager(&WriteBufferManager::new_write_buffer_manager_with_cache(
            cfg.write_buffer_mb << 20,
            false,
            cache,
        ));
        opts.set_compression_type(rocksdb::DBCompressionType::Lz4);
        opts.set_max_background_jobs(2);
        Ok(StateStore {
            db: DB::open(&opts, path)?,
        })
    }

    /// The committed profile for `id`.
    pub fn profile(&self, id: &str) -> Result<Option<Profile>, StateError> {
        let key = profile_key(id);
        match self.db.get_pinned(&key)? {
            None => Ok(None),
            Some(bytes) => {
                Profile::decode(&bytes)
                    .map(Some)
                    .map_err(|source| StateError::Profile {
                        id: id.to_owned(),
                        source,
                    })
            }
        }
    }

    /// Writes a commit interval's profiles and source offsets atomically.
    pub fn commit<'a>(
        &self,
        profiles: impl IntoIterator<Item = &'a Profile>,
        offsets: &Offsets,
    ) -> Result<(), StateError> {
        let mut batch = WriteBatch::default();
        for p in profiles {
            batch.put(profile_key(&p.id), p.encode());
        }
        for ((topic, partition), next) in offsets {
            batch.put(offset_key(topic, *partition), next.to_be_bytes());
        }
        self.db.write(batch)?;
        Ok(())
    }

    /// Every stored source offset.
    pub fn offsets(&self) -> Result<Offsets, StateError> {
        let mut out = Offsets::new();
        for item in self.db.prefix_iterator(OFFSET_PREFIX) {
            let (k, v) = item?;
            if !k.starts_with(OFFSET_PREFIX) {
                break;
            }
            let rest = &k[OFFSET_PREFIX.len()..];
            if rest.len() < 5 {
                return Err(StateError::Offset);
            }
            let (topic, part) = rest.split_at(rest.len() - 4);
            let topic =
                std::str::from_utf8(&topic[..topic.len() - 1]).map_err(|_| StateError::Offset)?;
            let partition = i32::from_be_bytes(part.try_into().map_err(|_| StateError::Offset)?);
            let next = i64::from_be_bytes(v.as_ref().try_into().map_err(|_| StateError::Offset)?);
            out.insert((topic.to_owned(), partition), next);
        }
        Ok(out)
    }
}

fn profile_key(id: &str) -> Vec<u8> {
    [PROFILE_PREFIX, id.as_bytes()].concat()
}

fn offset_key(topic: &str, partition: i32) -> Vec<u8> {
    [
        OFFSET_PREFIX,
        topic.as_bytes(),
        b"\0",
        &partition.to_be_bytes(),
    ]
    .concat()
}

#[cfg(test)]
mod tests {
    use super::*;
    use rapport_model::testing::tp;
    use rapport_model::{Channel, EventType};

    #[test]
    fn profiles_and_offsets_survive_reopen() {
        let dir = tempfile::tempdir().unwrap();
        let cfg = StateConfig {
            path: dir.path().to_owned(),
            ..Default::default()
        };
        let mut p = Profile::new("c-1");
        p.apply(&tp(
            "e1",
            "c-1",
            Channel::Web,
            EventType::PageView,
            1_764_000_000_000,
        ));
        let mut offsets = Offsets::new();
        offsets.insert(("touch.points".into(), 3), 42);
        offsets.insert(("other".into(), 0), 7);
        {
            let s = StateStore::open(&cfg).unwrap();
            assert_eq!(s.profile("c-1").unwrap(), None);
            s.commit([&p], &offsets).unwrap();
        }
        let s = StateStore::open(&cfg).unwrap();
        assert_eq!(s.profile("c-1").unwrap(), Some(p));
        assert_eq!(s.offsets().unwrap(), offsets);
    }
}

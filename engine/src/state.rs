//! Local state in RocksDB, scoped by input partition.
//!
//! Every key starts with a one-byte kind and the partition number, so one task's
//! profiles, timers and offsets can be read, restored or dropped on their own.
//! A commit interval's changes go in one `WriteBatch`: profiles, the timer index,
//! the source offsets they reflect and the changelog checkpoint, so the store is
//! always a consistent snapshot.

use std::collections::HashMap;
use std::path::Path;

use compact_str::CompactString;
use rapport_model::profile::DecodeError;
use rapport_model::Profile;
use rocksdb::{
    BlockBasedOptions, Cache, Direction, IteratorMode, Options, WriteBatch, WriteBufferManager,
    WriteOptions, DB,
};

use crate::config::StateConfig;
use crate::identity::IdentityState;

const PROFILE: u8 = b'p';
const TIMER: u8 = b't';
const OFFSET: u8 = b'o';
const CHECKPOINT: u8 = b'c';
const WATERMARK: u8 = b'w';
/// Suppression-list entries: keyed hashes of erased ids (see `crate::privacy`).
const SUPPRESSED: u8 = b's';
/// Version 3 adds flags and the identity state; version 2 keeps source offsets
/// per topic and partition; version 1 (per topic) is still read.
const ENVELOPE_VERSION: u8 = 3;

/// Bytes first reserved for an encoded profile, enough for a typical one (a
/// few hundred bytes), so most are encoded into one allocation.
const ENCODED_CAPACITY: usize = 512;

/// Envelope flag: the id has been a touchpoint's customer id.
const FLAG_KNOWN: u8 = 1;
/// Envelope flag: identity state follows the source offsets.
const FLAG_IDENTITY: u8 = 2;

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
    /// A stored record's envelope is malformed.
    #[error("malformed stored record: {0}")]
    Malformed(&'static str),
}

/// The source offsets of a stored profile (see [`Stored`]).
pub type Sources = smallvec::SmallVec<[(u32, i32, i64); 2]>;

/// A profile with the source offsets it reflects: for each input topic (by
/// [`topic_hash`]) and partition, the next offset not yet applied. Replayed
/// records below it are skipped, so an event is never counted twice, even when
/// state restored from the changelog is ahead of the committed offsets.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Stored {
    /// `(topic hash, partition, next offset)` triples; one per touchpoint topic,
    /// held inline (read on every event).
    pub sources: Sources,
    /// The profile.
    pub profile: Profile,
    /// The id has been a touchpoint's customer id: a known customer, never
    /// merged into another ([`crate::identity`]).
    pub known: bool,
    /// Links, awaited merges and held records ([`crate::identity`]); none for
    /// most profiles.
    pub identity: Option<Box<IdentityState>>,
}

impl Stored {
    /// Whether the record at `offset` of topic `hash`, `partition` is already reflected.
    pub fn reflects(&self, hash: u32, partition: i32, offset: i64) -> bool {
        self.sources
            .iter()
            .any(|&(h, p, next)| h == hash && p == partition && offset < next)
    }

    /// Notes that records of topic `hash`, `partition` up to `offset` are reflected.
    pub fn advance(&mut self, hash: u32, partition: i32, offset: i64) {
        match self
            .sources
            .iter_mut()
            .find(|(h, p, _)| *h == hash && *p == partition)
        {
            Some((_, _, next)) => *next = (*next).max(offset + 1),
            None => self.sources.push((hash, partition, offset + 1)),
        }
    }

    /// An empty profile for `id`.
    pub fn fresh(id: &str) -> Self {
        Stored {
            profile: Profile::new(id),
            ..Default::default()
        }
    }

    /// The identity state, created empty if there is none.
    pub fn identity_mut(&mut self) -> &mut IdentityState {
        self.identity.get_or_insert_with(Default::default)
    }

    /// The anonymous id's link, if its history moved to a customer.
    pub fn link(&self) -> Option<&crate::identity::Link> {
        self.identity.as_ref().and_then(|i| i.linked_to.as_ref())
    }

    /// Encodes for RocksDB and the changelog: version, flags, sources, the
    /// identity state when there is one, then the profile.
    pub fn encode(&self) -> Vec<u8> {
        let identity = self
            .identity
            .as_deref()
            .filter(|i| !i.is_empty())
            .map(|i| postcard::to_allocvec(i).unwrap_or_default());
        let mut out = Vec::with_capacity(
            ENCODED_CAPACITY
                + self.sources.len() * 16
                + identity.as_ref().map_or(0, |i| 4 + i.len()),
        );
        out.push(ENVELOPE_VERSION);
        let flags = if self.known { FLAG_KNOWN } else { 0 }
            | if identity.is_some() { FLAG_IDENTITY } else { 0 };
        out.push(flags);
        out.push(self.sources.len() as u8);
        for (h, p, o) in &self.sources {
            out.extend_from_slice(&h.to_le_bytes());
            out.extend_from_slice(&p.to_le_bytes());
            out.extend_from_slice(&o.to_le_bytes());
        }
        if let Some(i) = identity {
            out.extend_from_slice(&(i.len() as u32).to_le_bytes());
            out.extend_from_slice(&i);
        }
        self.profile.encode_into(&mut out);
        out
    }

    /// Decodes what [`Stored::encode`] wrote, in this or an earlier envelope
    /// version; `partition` is the partition the record is stored under (version 1
    /// kept source offsets per topic only, all of that partition).
    pub fn decode(id: &str, partition: i32, bytes: &[u8]) -> Result<Stored, StateError> {
        let (width, flags, n, rest) = match bytes {
            [1, n, rest @ ..] => (12, 0, *n as usize, rest),
            [2, n, rest @ ..] => (16, 0, *n as usize, rest),
            [ENVELOPE_VERSION, flags, n, rest @ ..] => (16, *flags, *n as usize, rest),
            _ => return Err(StateError::Malformed("unknown envelope version")),
        };
        if rest.len() < n * width {
            return Err(StateError::Malformed("truncated source offsets"));
        }
        let (offsets, body) = rest.split_at(n * width);
        let sources = offsets
            .chunks_exact(width)
            .map(|c| {
                let le4 = |b: &[u8]| <[u8; 4]>::try_from(b).unwrap_or_default();
                let le8 = |b: &[u8]| <[u8; 8]>::try_from(b).unwrap_or_default();
                let h = u32::from_le_bytes(le4(&c[..4]));
                match width {
                    12 => (h, partition, i64::from_le_bytes(le8(&c[4..12]))),
                    _ => (
                        h,
                        i32::from_le_bytes(le4(&c[4..8])),
                        i64::from_le_bytes(le8(&c[8..16])),
                    ),
                }
            })
            .collect();
        let (identity, body) = match flags & FLAG_IDENTITY {
            0 => (None, body),
            _ => {
                let (len, rest) = body
                    .split_first_chunk::<4>()
                    .ok_or(StateError::Malformed("truncated identity state"))?;
                let len = u32::from_le_bytes(*len) as usize;
                if rest.len() < len {
                    return Err(StateError::Malformed("truncated identity state"));
                }
                let (state, rest) = rest.split_at(len);
                let state: IdentityState = postcard::from_bytes(state)
                    .map_err(|_| StateError::Malformed("unreadable identity state"))?;
                (Some(Box::new(state)), rest)
            }
        };
        let profile = Profile::decode(body).map_err(|source| StateError::Profile {
            id: id.to_owned(),
            source,
        })?;
        Ok(Stored {
            sources,
            profile,
            known: flags & FLAG_KNOWN != 0,
            identity,
        })
    }
}

/// A stable 32-bit hash of a topic name (FNV-1a), used to tag source offsets compactly.
pub fn topic_hash(topic: &str) -> u32 {
    topic.bytes().fold(0x811c_9dc5u32, |h, b| {
        (h ^ u32::from(b)).wrapping_mul(0x0100_0193)
    })
}

fn key(kind: u8, partition: i32, rest: &[u8]) -> Vec<u8> {
    let mut k = Vec::with_capacity(5 + rest.len());
    key_into(&mut k, kind, partition, rest);
    k
}

/// Appends the key of `rest` of `kind` in `partition` to `k`.
fn key_into(k: &mut Vec<u8>, kind: u8, partition: i32, rest: &[u8]) {
    k.push(kind);
    k.extend_from_slice(&(partition as u32).to_be_bytes());
    k.extend_from_slice(rest);
}

fn timer_key(partition: i32, fire_at: i64, id: &str) -> Vec<u8> {
    // Sign-flipped big-endian sorts signed times correctly.
    let t = ((fire_at as u64) ^ (1 << 63)).to_be_bytes();
    key(TIMER, partition, &[&t[..], id.as_bytes()].concat())
}

/// Raw key suffixes and values of one kind and partition.
type Entries = Vec<(Vec<u8>, Vec<u8>)>;

/// Changes to write atomically, in the order they were made (a later change
/// to a key wins).
///
/// The changes are kept as owned values and turned into one RocksDB batch only
/// when written: building it (copying every profile into one growing buffer)
/// took a sixth of the engine loop's time at commits, and the live engine
/// writes from its commit thread, so the loop only moves the encoded profiles
/// in here.
#[derive(Default)]
pub struct StateBatch {
    ops: Vec<Op>,
    /// Bytes of every key and value, to size the RocksDB batch once.
    bytes: usize,
}

/// One change of a [`StateBatch`].
enum Op {
    Put(Vec<u8>, Vec<u8>),
    Delete(Vec<u8>),
    /// A profile's stored encoding, keyed when written.
    Profile(i32, CompactString, Vec<u8>),
}

impl StateBatch {
    fn push(&mut self, op: Op) {
        self.bytes += match &op {
            Op::Put(k, v) => k.len() + v.len(),
            Op::Delete(k) => k.len(),
            Op::Profile(_, id, v) => 5 + id.len() + v.len(),
        } + 16;
        self.ops.push(op);
    }

    /// Stores a profile of `partition`.
    pub fn put_profile(&mut self, partition: i32, id: &str, encoded: &[u8]) {
        self.push(Op::Put(
            key(PROFILE, partition, id.as_bytes()),
            encoded.to_vec(),
        ));
    }

    /// Stores a profile of `partition` from its encoding, without copying it.
    pub fn put_profile_encoded(&mut self, partition: i32, id: CompactString, encoded: Vec<u8>) {
        self.push(Op::Profile(partition, id, encoded));
    }

    /// Deletes a profile of `partition`.
    pub fn delete_profile(&mut self, partition: i32, id: &str) {
        self.push(Op::Delete(key(PROFILE, partition, id.as_bytes())));
    }

    /// Indexes a pending timer of customer `id`.
    pub fn put_timer(&mut self, partition: i32, fire_at: i64, id: &str) {
        self.push(Op::Put(timer_key(partition, fire_at, id), Vec::new()));
    }

    /// Removes a timer from the index.
    pub fn delete_timer(&mut self, partition: i32, fire_at: i64, id: &str) {
        self.push(Op::Delete(timer_key(partition, fire_at, id)));
    }

    /// Records that `topic`'s `partition` is applied up to (excluding) `next`.
    pub fn set_offset(&mut self, partition: i32, topic: &str, next: i64) {
        self.put_i64(key(OFFSET, partition, topic.as_bytes()), next);
    }

    /// Records the next changelog offset to restore from.
    pub fn set_checkpoint(&mut self, partition: i32, next: i64) {
        self.put_i64(key(CHECKPOINT, partition, &[]), next);
    }

    /// Records the partition's event-time watermark.
    pub fn set_watermark(&mut self, partition: i32, at: i64) {
        self.put_i64(key(WATERMARK, partition, &[]), at);
    }

    /// Adds the keyed hash of an erased id to `partition`'s suppression list.
    pub fn put_suppressed(&mut self, partition: i32, hash: &[u8; 32], erased_at: i64) {
        self.put_i64(key(SUPPRESSED, partition, hash), erased_at);
    }

    /// Lifts a suppression (re-consent after erasure).
    pub fn delete_suppressed(&mut self, partition: i32, hash: &[u8; 32]) {
        self.push(Op::Delete(key(SUPPRESSED, partition, hash)));
    }

    fn put_i64(&mut self, key: Vec<u8>, value: i64) {
        self.push(Op::Put(key, value.to_be_bytes().to_vec()));
    }

    /// Number of changes.
    pub fn len(&self) -> usize {
        self.ops.len()
    }

    /// True when there is nothing to write.
    pub fn is_empty(&self) -> bool {
        self.ops.is_empty()
    }

    /// The RocksDB batch, sized once.
    fn into_write_batch(self) -> WriteBatch {
        let mut b = WriteBatch::with_capacity_bytes(self.bytes + 64);
        let mut k = Vec::new();
        for op in self.ops {
            match op {
                Op::Put(key, value) => b.put(key, value),
                Op::Delete(key) => b.delete(key),
                Op::Profile(partition, id, value) => {
                    k.clear();
                    key_into(&mut k, PROFILE, partition, id.as_bytes());
                    b.put(&k, value);
                }
            }
        }
        b
    }
}

/// What [`StateStore::usage`] reports.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct StoreUsage {
    /// Bytes in the block cache (shared by all partitions).
    pub block_cache_bytes: u64,
    /// Bytes in memtables.
    pub memtable_bytes: u64,
    /// Estimated bytes compaction still has to rewrite.
    pub pending_compaction_bytes: u64,
}

/// The RocksDB-backed store.
pub struct StateStore {
    db: DB,
    write: WriteOptions,
}

impl StateStore {
    /// Opens (or creates) the store with memory bounded by configuration: one
    /// shared block cache with the memtables charged to it. The write-ahead log is
    /// off: the changelog topic is the durable log.
    pub fn open(cfg: &StateConfig) -> Result<Self, StateError> {
        Self::open_path(&cfg.path, cfg)
    }

    /// Opens the store at `path` with the memory limits of `cfg`.
    pub fn open_path(path: &Path, cfg: &StateConfig) -> Result<Self, StateError> {
        let cache = Cache::new_lru_cache((cfg.block_cache_mb + cfg.write_buffer_mb) << 20);
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
        let mut write = WriteOptions::default();
        write.disable_wal(cfg.disable_wal);
        Ok(StateStore {
            db: DB::open(&opts, path)?,
            write,
        })
    }

    /// The stored profile `id` of `partition`.
    pub fn get(&self, partition: i32, id: &str) -> Result<Option<Stored>, StateError> {
        Ok(self.get_sized(partition, id)?.map(|(s, _)| s))
    }

    /// The stored profile `id` of `partition` and the length of its encoding,
    /// which the profile cache sizes it by.
    pub fn get_sized(
        &self,
        partition: i32,
        id: &str,
    ) -> Result<Option<(Stored, usize)>, StateError> {
        match self.db.get_pinned(key(PROFILE, partition, id.as_bytes()))? {
            None => Ok(None),
            Some(bytes) => Stored::decode(id, partition, &bytes).map(|s| Some((s, bytes.len()))),
        }
    }

    /// The committed profile `id`, whichever partition holds it (for the profile API).
    pub fn find_profile(&self, id: &str) -> Result<Option<Profile>, StateError> {
        Ok(self
            .find(id)?
            .filter(|s| s.link().is_none())
            .map(|s| s.profile))
    }

    /// The stored record of `id` on whichever partition holds it: a profile, or
    /// the link left by an anonymous id whose history moved to a customer.
    pub fn find(&self, id: &str) -> Result<Option<Stored>, StateError> {
        for p in self.partitions()? {
            if let Some(s) = self.get(p, id)? {
                return Ok(Some(s));
            }
        }
        Ok(None)
    }

    /// Partitions that have any profile stored.
    pub fn partitions(&self) -> Result<Vec<i32>, StateError> {
        let mut out = Vec::new();
        let mut next = key(PROFILE, 0, &[]);
        loop {
            let mut it = self
                .db
                .iterator(IteratorMode::From(&next, Direction::Forward));
            match it.next() {
                Some(Ok((k, _))) if k.first() == Some(&PROFILE) && k.len() >= 5 => {
                    let p = u32::from_be_bytes(k[1..5].try_into().unwrap_or_default());
                    out.push(p as i32);
                    if p == u32::MAX {
                        break;
                    }
                    next = key(PROFILE, (p + 1) as i32, &[]);
                }
                Some(Err(e)) => return Err(e.into()),
                _ => break,
            }
        }
        Ok(out)
    }

    /// Every profile of `partition`.
    pub fn profiles(&self, partition: i32) -> Result<Vec<(String, Stored)>, StateError> {
        let mut out = Vec::new();
        for (k, v) in self.scan(PROFILE, partition)? {
            let id = String::from_utf8_lossy(&k).into_owned();
            let s = Stored::decode(&id, partition, &v)?;
            out.push((id, s));
        }
        Ok(out)
    }

    /// The pending timers of `partition`, as `(fire_at, customer id)`.
    pub fn timers(&self, partition: i32) -> Result<Vec<(i64, String)>, StateError> {
        self.scan(TIMER, partition)?
            .into_iter()
            .map(|(k, _)| {
                if k.len() < 8 {
                    return Err(StateError::Malformed("timer key"));
                }
                let (t, id) = k.split_at(8);
                let t = (u64::from_be_bytes(t.try_into().unwrap_or_default()) ^ (1 << 63)) as i64;
                Ok((t, String::from_utf8_lossy(id).into_owned()))
            })
            .collect()
    }

    /// Applied source offsets of `partition`, by topic.
    pub fn offsets(&self, partition: i32) -> Result<HashMap<String, i64>, StateError> {
        self.scan(OFFSET, partition)?
            .into_iter()
            .map(|(k, v)| Ok((String::from_utf8_lossy(&k).into_owned(), be_i64(&v)?)))
            .collect()
    }

    /// The next changelog offset to restore `partition` from.
    pub fn checkpoint(&self, partition: i32) -> Result<Option<i64>, StateError> {
        self.db
            .get_pinned(key(CHECKPOINT, partition, &[]))?
            .map(|v| be_i64(&v))
            .transpose()
    }

    /// The event-time watermark of `partition`.
    pub fn watermark(&self, partition: i32) -> Result<Option<i64>, StateError> {
        self.db
            .get_pinned(key(WATERMARK, partition, &[]))?
            .map(|v| be_i64(&v))
            .transpose()
    }

    /// The suppression list of `partition`: keyed hashes of erased ids.
    pub fn suppressed(&self, partition: i32) -> Result<Vec<[u8; 32]>, StateError> {
        self.scan(SUPPRESSED, partition)?
            .into_iter()
            .map(|(k, _)| {
                k.as_slice()
                    .try_into()
                    .map_err(|_| StateError::Malformed("suppression key"))
            })
            .collect()
    }

    /// Compacts the ranges that held erased profiles and their timer index
    /// entries, so the deleted values do not linger in RocksDB's files.
    pub fn compact_erased(&self, partition: i32, erased: &[(String, Vec<i64>)]) {
        for (id, timers) in erased {
            let k = key(PROFILE, partition, id.as_bytes());
            self.db.compact_range(Some(&k), Some(&k));
            for t in timers {
                let k = timer_key(partition, *t, id);
                self.db.compact_range(Some(&k), Some(&k));
            }
        }
    }

    /// Writes a batch atomically.
    pub fn write(&self, batch: StateBatch) -> Result<(), StateError> {
        self.db.write_opt(batch.into_write_batch(), &self.write)?;
        Ok(())
    }

    /// Deletes everything stored for `partition`.
    pub fn drop_partition(&self, partition: i32) -> Result<(), StateError> {
        let mut b = WriteBatch::default();
        for kind in [PROFILE, TIMER, OFFSET, CHECKPOINT, WATERMARK, SUPPRESSED] {
            b.delete_range(
                key(kind, partition, &[]),
                key(kind, partition.wrapping_add(1), &[]),
            );
        }
        self.db.write(b)?;
        Ok(())
    }

    /// RocksDB's memory and compaction figures, for metrics: block cache in use,
    /// memtables, and bytes waiting for compaction.
    pub fn usage(&self) -> StoreUsage {
        let int = |name: &str| self.db.property_int_value(name).ok().flatten().unwrap_or(0);
        StoreUsage {
            block_cache_bytes: int("rocksdb.block-cache-usage"),
            memtable_bytes: int("rocksdb.cur-size-all-mem-tables"),
            pending_compaction_bytes: int("rocksdb.estimate-pending-compaction-bytes"),
        }
    }

    /// Makes everything written so far durable on disk (used at shutdown, since the WAL is off).
    pub fn flush(&self) -> Result<(), StateError> {
        self.db.flush()?;
        Ok(())
    }

    fn scan(&self, kind: u8, partition: i32) -> Result<Entries, StateError> {
        let prefix = key(kind, partition, &[]);
        let mut out = Vec::new();
        for item in self
            .db
            .iterator(IteratorMode::From(&prefix, Direction::Forward))
        {
            let (k, v) = item?;
            if !k.starts_with(&prefix) {
                break;
            }
            out.push((k[prefix.len()..].to_vec(), v.to_vec()));
        }
        Ok(out)
    }
}

fn be_i64(v: &[u8]) -> Result<i64, StateError> {
    Ok(i64::from_be_bytes(
        v.try_into()
            .map_err(|_| StateError::Malformed("offset value"))?,
    ))
}

#[cfg(test)]
mod tests {
    use super::*;
    use rapport_model::testing::tp;
    use rapport_model::{Channel, EventType};

    fn store(dir: &Path) -> StateStore {
        StateStore::open(&StateConfig {
            path: dir.to_owned(),
            block_cache_mb: 8,
            write_buffer_mb: 8,
            ..Default::default()
        })
        .unwrap()
    }

    #[test]
    fn partitions_are_separate_and_survive_reopen() {
        let dir = tempfile::tempdir().unwrap();
        let mut p = Profile::new("c-1");
        p.apply(&tp(
            "e1",
            "c-1",
            Channel::Web,
            EventType::PageView,
            1_764_000_000_000,
        ));
        let mut stored = Stored {
            sources: Sources::new(),
            profile: p,
            ..Default::default()
        };
        stored.advance(topic_hash("touch"), 3, 41);
        {
            let s = store(dir.path());
            let mut b = StateBatch::default();
            b.put_profile(3, "c-1", &stored.encode());
            b.put_timer(3, -5, "c-1");
            b.put_timer(3, 1_000, "c-9");
            b.set_offset(3, "touch", 42);
            b.set_checkpoint(3, 7);
            b.put_profile(4, "c-2", &stored.encode());
            s.write(b).unwrap();
            s.flush().unwrap();
        }
        let s = store(dir.path());
        assert_eq!(s.get(3, "c-1").unwrap(), Some(stored.clone()));
        assert_eq!(s.get(4, "c-1").unwrap(), None);
        assert_eq!(
            s.timers(3).unwrap(),
            vec![(-5, "c-1".to_owned()), (1_000, "c-9".to_owned())]
        );
        assert_eq!(
            s.offsets(3).unwrap(),
            HashMap::from([("touch".to_owned(), 42)])
        );
        assert_eq!(s.checkpoint(3).unwrap(), Some(7));
        assert_eq!(s.partitions().unwrap(), vec![3, 4]);
        assert!(stored.reflects(topic_hash("touch"), 3, 41));
        assert!(!stored.reflects(topic_hash("touch"), 3, 42));
        assert!(!stored.reflects(topic_hash("touch"), 2, 0));
        assert!(!stored.reflects(topic_hash("other"), 3, 0));

        s.drop_partition(3).unwrap();
        assert_eq!(s.get(3, "c-1").unwrap(), None);
        assert!(s.timers(3).unwrap().is_empty());
        assert_eq!(s.checkpoint(3).unwrap(), None);
        assert_eq!(s.find_profile("c-2").unwrap(), Some(stored.profile));
    }

    #[test]
    fn suppression_entries_are_per_partition_and_erased_profiles_compact_away() {
        let dir = tempfile::tempdir().unwrap();
        let s = store(dir.path());
        let stored = Stored {
            sources: Sources::new(),
            profile: Profile::new("c-1"),
            ..Default::default()
        };
        let mut b = StateBatch::default();
        b.put_profile(1, "c-1", &stored.encode());
        b.put_timer(1, 50, "c-1");
        b.put_suppressed(1, &[7; 32], 5);
        b.put_suppressed(2, &[8; 32], 5);
        s.write(b).unwrap();
        assert_eq!(s.suppressed(1).unwrap(), vec![[7; 32]]);
        let mut b = StateBatch::default();
        b.delete_profile(1, "c-1");
        b.delete_timer(1, 50, "c-1");
        b.delete_suppressed(2, &[8; 32]);
        s.write(b).unwrap();
        s.compact_erased(1, &[("c-1".to_owned(), vec![50])]);
        assert_eq!(s.get(1, "c-1").unwrap(), None);
        assert!(s.timers(1).unwrap().is_empty());
        assert!(s.suppressed(2).unwrap().is_empty());
        s.drop_partition(1).unwrap();
        assert!(s.suppressed(1).unwrap().is_empty());
    }

    #[test]
    fn corrupt_envelopes_are_errors_not_panics() {
        assert!(Stored::decode("x", 0, &[]).is_err());
        assert!(Stored::decode("x", 0, &[9, 0]).is_err());
        assert!(Stored::decode("x", 0, &[ENVELOPE_VERSION, 3, 1, 2]).is_err());
    }

    /// A profile touched by every kind of change a stored profile carries:
    /// counters, products, surveys, windows, journey runs and their waits.
    fn fixture_profile() -> Stored {
        use rapport_model::SurveyKind;
        let journeys = rapport_journeys::CompiledJourneys::shipped().unwrap();
        let mut p = Profile::new("c-fixture");
        let t0 = 1_764_000_000_000;
        let events = [
            tp("e1", "c-fixture", Channel::Web, EventType::ProductView, t0).with_sku("tv-55"),
            tp(
                "e2",
                "c-fixture",
                Channel::Web,
                EventType::ProductView,
                t0 + 60_000,
            )
            .with_sku("tv-55"),
            tp(
                "e3",
                "c-fixture",
                Channel::App,
                EventType::ProductView,
                t0 + 120_000,
            )
            .with_sku("tv-55"),
            tp(
                "e4",
                "c-fixture",
                Channel::Store,
                EventType::Purchase,
                t0 + 3_600_000,
            )
            .with_sku("tv-55")
            .with_amount(899.0)
            .with_order("o-1"),
            tp(
                "e5",
                "c-fixture",
                Channel::System,
                EventType::Delivered,
                t0 + 7_200_000,
            )
            .with_order("o-1"),
            tp(
                "e6",
                "c-fixture",
                Channel::Email,
                EventType::SurveyResponse,
                t0 + 7_300_000,
            )
            .with_survey(SurveyKind::Nps, 4),
        ];
        let mut out = rapport_journeys::Output::new();
        for e in &events {
            assert!(p.admit(e, &Default::default()));
            p.apply(e);
            journeys.on_event(&mut p, e, &mut out);
        }
        assert!(
            !out.actions.is_empty() && !p.timers.is_empty(),
            "the fixture exercises journeys"
        );
        let mut stored = Stored {
            sources: Sources::new(),
            profile: p,
            ..Default::default()
        };
        stored.advance(topic_hash("touch"), 3, 41);
        stored
    }

    /// The fixture as the current envelope stores it: known, with identity
    /// state, after an emotional-state evaluation.
    fn current_fixture() -> Stored {
        let mut stored = fixture_profile();
        rapport_model::emotion::update(
            &mut stored.profile,
            1_764_000_100_000,
            &rapport_model::emotion::EmotionConfig::default(),
        );
        stored.known = true;
        let ident = stored.identity_mut();
        ident.links.push(crate::identity::LinkEntry {
            anonymous_id: "anon-7".into(),
            at_ms: 1_764_000_000_000,
            state: crate::identity::LinkState::Requested,
            home: 2,
        });
        ident.awaiting.push(crate::identity::Awaiting {
            merge_id: "m-1".into(),
            anonymous_id: "anon-7".into(),
        });
        ident.held.push(crate::identity::Held {
            touchpoint: b"{}".to_vec(),
            home: Some(2),
        });
        stored
    }

    /// A profile stored by this release stays readable by later ones: the bytes
    /// in tests/fixtures were written by the current format and must decode to
    /// the same profile. (Regenerate only when the format version changes, with
    /// RAPPORT_WRITE_FIXTURES=1, keeping the old file for the old version.)
    #[test]
    fn the_stored_fixture_of_the_current_format_reads_back() {
        let path = Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("tests/fixtures/stored-profile-v5-envelope-v3.bin");
        let stored = current_fixture();
        if std::env::var_os("RAPPORT_WRITE_FIXTURES").is_some() {
            std::fs::write(&path, stored.encode()).unwrap();
        }
        let bytes = std::fs::read(&path).unwrap();
        assert_eq!(bytes[0], ENVELOPE_VERSION);
        assert_eq!(Stored::decode("c-fixture", 3, &bytes).unwrap(), stored);
        // And this release writes those very bytes.
        assert_eq!(stored.encode(), bytes);
    }

    /// Profiles stored with profile encoding 4 (window buckets and event ids
    /// not packed) read back whole, and the packed encoding is smaller.
    #[test]
    fn the_stored_fixture_of_version_4_reads_back() {
        let path = Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("tests/fixtures/stored-profile-v4-envelope-v3.bin");
        let bytes = std::fs::read(&path).unwrap();
        let stored = current_fixture();
        assert_eq!(Stored::decode("c-fixture", 3, &bytes).unwrap(), stored);
        assert!(
            stored.encode().len() < bytes.len(),
            "{} >= {}",
            stored.encode().len(),
            bytes.len()
        );
    }

    /// Profiles stored in envelope version 2 (before identity stitching) still
    /// read: not known, no identity state.
    #[test]
    fn the_stored_fixture_of_envelope_version_2_reads_back() {
        let path =
            Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/stored-profile-v4.bin");
        let mut stored = fixture_profile();
        rapport_model::emotion::update(
            &mut stored.profile,
            1_764_000_100_000,
            &rapport_model::emotion::EmotionConfig::default(),
        );
        let bytes = std::fs::read(&path).unwrap();
        assert_eq!(bytes[0], 2);
        assert_eq!(Stored::decode("c-fixture", 3, &bytes).unwrap(), stored);
    }

    /// Profiles stored with profile encoding 3 still read, with everything but
    /// the event ids added in version 4.
    #[test]
    fn the_stored_fixture_of_version_3_reads_back() {
        let path =
            Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/stored-profile-v3.bin");
        let bytes = std::fs::read(&path).unwrap();
        let old = Stored::decode("c-fixture", 3, &bytes).unwrap();
        let mut now = fixture_profile();
        rapport_model::emotion::update(
            &mut now.profile,
            1_764_000_100_000,
            &rapport_model::emotion::EmotionConfig::default(),
        );
        assert_eq!(now.profile.seen_events.len(), 6);
        now.profile.seen_events = Default::default();
        assert_eq!(old, now);
    }

    /// Profiles stored by an older release (profile encoding 2) still read,
    /// with the fields added since at their defaults.
    #[test]
    fn the_stored_fixture_of_the_previous_format_reads_back() {
        let path =
            Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/stored-profile-v2.bin");
        let bytes = std::fs::read(&path).unwrap();
        let (old, now) = (
            Stored::decode("c-fixture", 3, &bytes).unwrap(),
            fixture_profile(),
        );
        assert_eq!(old.sources, now.sources);
        let (o, n) = (&old.profile, &now.profile);
        assert_eq!(
            (&o.id, o.events, &o.channels, o.orders, o.nps, &o.recent),
            (&n.id, n.events, &n.channels, n.orders, n.nps, &n.recent)
        );
        assert_eq!((&o.timers, &o.journey_runs), (&n.timers, &n.journey_runs));
        assert_eq!(o.windows, n.windows);
    }

    #[test]
    fn version_1_envelopes_are_read_with_the_partition_they_are_stored_under() {
        let profile = Profile::new("c-1");
        let mut v1 = vec![1u8, 1];
        v1.extend_from_slice(&topic_hash("touch").to_le_bytes());
        v1.extend_from_slice(&41i64.to_le_bytes());
        v1.extend_from_slice(&profile.encode());
        let s = Stored::decode("c-1", 5, &v1).unwrap();
        assert_eq!(
            s.sources.as_slice(),
            [(topic_hash("touch"), 5, 41)].as_slice()
        );
        assert_eq!(s.profile, profile);
        assert_eq!(Stored::decode("c-1", 5, &s.encode()).unwrap(), s);
    }
}

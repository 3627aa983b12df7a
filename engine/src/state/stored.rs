//! How a profile is stored under its key, in RocksDB and in the changelog: a
//! versioned envelope with the source offsets the profile reflects, its
//! flags and identity state, then the profile's own versioned encoding.

use rapport_model::Profile;

use super::StateError;
use crate::identity::IdentityState;

/// Version 3 adds flags and the identity state; version 2 keeps source offsets
/// per topic and partition; version 1 (per topic) is still read.
const ENVELOPE_VERSION: u8 = 3;

/// Bytes of a thread's buffer that profiles are encoded into first: enough
/// for a busy customer's (a few KiB); one larger grows it, and after one
/// much larger it goes back to this.
const SCRATCH_CAPACITY: usize = 16 * 1024;

/// Envelope flag: the id has been a touchpoint's customer id.
const FLAG_KNOWN: u8 = 1;
/// Envelope flag: identity state follows the source offsets.
const FLAG_IDENTITY: u8 = 2;

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
    ///
    /// The result's capacity is its length: it is encoded into this thread's
    /// scratch buffer and copied out once, so a profile larger than a first
    /// guess is not moved as its buffer grows, and the encoded profile cache
    /// keeps the very allocation a commit wrote, without slack it would not
    /// count.
    pub fn encode(&self) -> Vec<u8> {
        thread_local! {
            static SCRATCH: std::cell::RefCell<Vec<u8>> =
                std::cell::RefCell::new(Vec::with_capacity(SCRATCH_CAPACITY));
        }
        SCRATCH.with_borrow_mut(|scratch| {
            scratch.clear();
            self.encode_into(scratch);
            let out = scratch.as_slice().to_vec();
            if scratch.capacity() > 16 * SCRATCH_CAPACITY {
                *scratch = Vec::with_capacity(SCRATCH_CAPACITY);
            }
            out
        })
    }

    fn encode_into(&self, out: &mut Vec<u8>) {
        let identity = self
            .identity
            .as_deref()
            .filter(|i| !i.is_empty())
            .map(|i| postcard::to_allocvec(i).unwrap_or_default());
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
        self.profile.encode_into(out);
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

#[cfg(test)]
mod tests {
    use std::path::Path;

    use super::*;
    use rapport_model::testing::tp;
    use rapport_model::{Channel, EventType};

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
        // The profile cache counts what packing saved back, to estimate the
        // decoded size from version 4's: closer to the bytes it took then.
        let packed = stored.encode().len();
        let counted = packed + stored.profile.packing_savings();
        assert!(
            counted.abs_diff(bytes.len()) < packed.abs_diff(bytes.len()),
            "{counted} (packed {packed}) against {}",
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

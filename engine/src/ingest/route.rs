//! The key rule: every record of a customer must reach the one partition, and so
//! the one profile, that owns the customer.
//!
//! State is partitioned like the input: partition *n* of the touchpoint topics owns
//! the profiles of the customers whose key maps to *n*. A record is processed only
//! when its key is its touchpoint's identity (`customer_id`, else `anonymous_id`)
//! and it sits on the partition the configured partitioner gives that key.
//! Anything else is dead-lettered with the reason, never half-applied to a second
//! profile of the same customer:
//!
//! - `key_mismatch`: the record has no key, or a key other than its identity;
//! - `wrong_partition`: the key is right but the record is on another partition
//!   (a producer that picked the partition itself, or another partitioner).

use crate::config::Partitioner;

use super::{Rejection, Stage};

/// Checks records against the key rule for topics of `partitions` partitions.
#[derive(Debug, Clone, Copy)]
pub struct KeyRule {
    partitioner: Partitioner,
    partitions: i32,
    /// Off for records that come from a file rather than a partitioned topic.
    enforced: bool,
}

impl KeyRule {
    /// The rule for topics of `partitions` partitions written with `partitioner`.
    pub fn new(partitioner: Partitioner, partitions: i32) -> Self {
        KeyRule {
            partitioner,
            partitions: partitions.max(1),
            enforced: true,
        }
    }

    /// No rule: every record is its customer's (`rapport replay` reads recorded
    /// touchpoints from a file, one stream, no keys).
    pub fn off() -> Self {
        KeyRule {
            partitioner: Partitioner::Murmur2,
            partitions: 1,
            enforced: false,
        }
    }

    /// The partition that owns `key`.
    pub fn partition_of(&self, key: &[u8]) -> i32 {
        let hash = match self.partitioner {
            Partitioner::Murmur2 => (murmur2(key) & 0x7fff_ffff) as u32,
            Partitioner::Consistent => crc32fast::hash(key),
        };
        (hash % self.partitions as u32) as i32
    }

    /// True when `key` belongs on `partition` (always, with the rule off).
    pub fn owns(&self, key: &[u8], partition: i32) -> bool {
        !self.enforced || self.partition_of(key) == partition
    }

    /// Accepts a record with `key` on `partition` whose touchpoint identity is `identity`.
    pub fn check(
        &self,
        key: Option<&[u8]>,
        identity: &str,
        partition: i32,
    ) -> Result<(), Rejection> {
        if !self.enforced {
            return Ok(());
        }
        let Some(key) = key.filter(|k| !k.is_empty()) else {
            return Err(reject(
                "key_mismatch",
                format!("the record has no key; key touchpoints by their identity ({identity:?}) so that all of a customer's records reach one partition"),
            ));
        };
        if key != identity.as_bytes() {
            return Err(reject(
                "key_mismatch",
                format!(
                    "the record's key {:?} is not its touchpoint's identity {identity:?} (customer_id, else anonymous_id); key touchpoints by that identity",
                    String::from_utf8_lossy(key)
                ),
            ));
        }
        let owner = self.partition_of(key);
        if owner != partition {
            let name = match self.partitioner {
                Partitioner::Murmur2 => "murmur2",
                Partitioner::Consistent => "consistent",
            };
            return Err(reject(
                "wrong_partition",
                format!(
                    "the record is on partition {partition}, but key {identity:?} belongs on partition {owner} ({name} partitioner, kafka.partitioner); let the producer's partitioner choose, or set kafka.partitioner to the one your producers use"
                ),
            ));
        }
        Ok(())
    }
}

fn reject(class: &'static str, reason: String) -> Rejection {
    Rejection {
        stage: Stage::Route,
        class,
        reason,
    }
}

/// Kafka's murmur2 (`org.apache.kafka.common.utils.Utils.murmur2`), the Java
/// producer's default partitioner hash.
pub fn murmur2(data: &[u8]) -> i32 {
    const M: u32 = 0x5bd1_e995;
    const R: u32 = 24;
    let mut h: u32 = 0x9747_b28c ^ data.len() as u32;
    let mut chunks = data.chunks_exact(4);
    for c in &mut chunks {
        let mut k = u32::from_le_bytes([c[0], c[1], c[2], c[3]]);
        k = k.wrapping_mul(M);
        k ^= k >> R;
        k = k.wrapping_mul(M);
        h = h.wrapping_mul(M);
        h ^= k;
    }
    let rest = chunks.remainder();
    if rest.len() >= 3 {
        h ^= u32::from(rest[2]) << 16;
    }
    if rest.len() >= 2 {
        h ^= u32::from(rest[1]) << 8;
    }
    if !rest.is_empty() {
        h ^= u32::from(rest[0]);
        h = h.wrapping_mul(M);
    }
    h ^= h >> 13;
    h = h.wrapping_mul(M);
    h ^= h >> 15;
    h as i32
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn murmur2_matches_kafkas_java_implementation() {
        // The cases of Kafka's UtilsTest.testMurmur2.
        for (input, expected) in [
            (&b"21"[..], -973_932_308),
            (b"foobar", -790_332_482),
            (b"a-little-bit-long-string", -985_981_536),
            (b"a-little-bit-longer-string", -1_486_304_829),
            (
                b"lkjh234lh9fiuh90y23oiuhsafujhadof229phr9h19h89h8",
                -58_897_971,
            ),
            (b"abc", 479_470_107),
        ] {
            assert_eq!(
                murmur2(input),
                expected,
                "{}",
                String::from_utf8_lossy(input)
            );
        }
    }

    #[test]
    fn records_off_their_customers_partition_are_refused_with_the_reason() {
        let rule = KeyRule::new(Partitioner::Murmur2, 4);
        let home = rule.partition_of(b"c-1");
        assert!(rule.check(Some(b"c-1"), "c-1", home).is_ok());
        let away = (home + 1) % 4;
        let r = rule.check(Some(b"c-1"), "c-1", away).unwrap_err();
        assert_eq!((r.stage, r.class), (Stage::Route, "wrong_partition"));
        assert!(
            r.reason.contains(&format!("partition {home}")),
            "{}",
            r.reason
        );
        let r = rule.check(None, "c-1", home).unwrap_err();
        assert_eq!(r.class, "key_mismatch");
        assert!(r.reason.contains("no key"), "{}", r.reason);
        let r = rule.check(Some(b"c-2"), "c-1", home).unwrap_err();
        assert_eq!(r.class, "key_mismatch");
        assert!(r.reason.contains("\"c-2\""), "{}", r.reason);
    }

    #[test]
    fn one_partition_takes_every_keyed_record() {
        let rule = KeyRule::new(Partitioner::Consistent, 1);
        for key in ["a", "b", "customer-123"] {
            assert!(rule.check(Some(key.as_bytes()), key, 0).is_ok());
        }
    }
}

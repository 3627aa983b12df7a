//! Which instance owns a customer: the partition their key maps to, and the group
//! member that partition is assigned to. The profile API uses it to answer a
//! request for a customer whose profile lives on another instance with that
//! instance's name (and address, with `http.advertised_url`), the way Kafka
//! Streams' interactive queries answer with the host that holds a key.

use std::time::Duration;

use rdkafka::consumer::{BaseConsumer, Consumer};

use crate::config::Config;
use crate::ingest::route::KeyRule;
use crate::kafka::client_config;

/// Looks up the owners of customers in the engine's consumer group.
pub struct Owners {
    client: BaseConsumer,
    group: String,
    /// The first touchpoint topic: co-partitioned topics share their assignment.
    topic: String,
    rule: KeyRule,
    advertised_url: Option<String>,
}

/// Errors looking up an owner.
#[derive(Debug, thiserror::Error)]
pub enum OwnerError {
    /// The group could not be described.
    #[error("describing consumer group {group}: {source}")]
    Kafka {
        /// The group.
        group: String,
        /// What Kafka said.
        source: rdkafka::error::KafkaError,
    },
}

impl Owners {
    /// An owner lookup for the engine of `cfg`, whose keys map to partitions by `rule`.
    pub fn new(cfg: &Config, rule: KeyRule) -> anyhow::Result<Owners> {
        let client = client_config(&cfg.kafka)
            .create::<BaseConsumer>()
            .map_err(|e| anyhow::anyhow!("creating the group lookup client: {e}"))?;
        Ok(Owners {
            client,
            group: cfg.kafka.group_id.clone(),
            topic: cfg
                .kafka
                .touchpoint_topics
                .first()
                .cloned()
                .unwrap_or_default(),
            rule,
            advertised_url: cfg.http.advertised_url.clone(),
        })
    }

    /// The partition customer `id`'s profile lives in.
    pub fn partition(&self, id: &str) -> i32 {
        self.rule.partition_of(id.as_bytes())
    }

    /// The instance id of the group member that owns `partition`, if any member
    /// does (none while the group rebalances). Blocks for a round trip to Kafka.
    pub fn owner(&self, partition: i32) -> Result<Option<String>, OwnerError> {
        let groups = self
            .client
            .fetch_group_list(Some(&self.group), Duration::from_secs(5))
            .map_err(|source| OwnerError::Kafka {
                group: self.group.clone(),
                source,
            })?;
        let members = groups
            .groups()
            .iter()
            .filter(|g| g.name() == self.group)
            .flat_map(|g| g.members());
        for m in members {
            let owns = m.assignment().map(parse_assignment).is_some_and(|a| {
                a.iter()
                    .any(|(t, ps)| *t == self.topic && ps.contains(&partition))
            });
            if owns {
                return Ok(Some(instance_of(m.id()).to_owned()));
            }
        }
        Ok(None)
    }

    /// Where instance `instance` serves customer `id`'s profile, from
    /// `http.advertised_url` (`{instance}` replaced), if configured.
    pub fn url(&self, instance: &str, id: &str) -> Option<String> {
        self.advertised_url.as_ref().map(|u| {
            format!(
                "{}/v1/profiles/{}",
                u.replace("{instance}", instance).trim_end_matches('/'),
                urlencode(id)
            )
        })
    }
}

/// A static member's id is its `group.instance.id` (Rapport's instance id)
/// followed by `-` and a UUID the coordinator adds.
fn instance_of(member_id: &str) -> &str {
    match member_id.len().checked_sub(37) {
        Some(cut) if member_id.as_bytes()[cut] == b'-' && member_id.is_char_boundary(cut) => {
            &member_id[..cut]
        }
        _ => member_id,
    }
}

/// The topics and partitions of a consumer-protocol assignment (version, then an
/// array of topic name and partition array; later versions add fields after).
fn parse_assignment(bytes: &[u8]) -> Vec<(String, Vec<i32>)> {
    let mut r = Reader(bytes);
    let mut out = Vec::new();
    let parsed = (|| {
        r.i16()?;
        for _ in 0..r.i32()? {
            let topic = r.string()?;
            let mut partitions = Vec::new();
            for _ in 0..r.i32()? {
                partitions.push(r.i32()?);
            }
            out.push((topic, partitions));
        }
        Some(())
    })();
    if parsed.is_none() {
        tracing::debug!("unreadable group member assignment");
    }
    out
}

/// Big-endian reads from a byte slice; `None` past its end.
struct Reader<'a>(&'a [u8]);

impl Reader<'_> {
    fn take<const N: usize>(&mut self) -> Option<[u8; N]> {
        let (head, rest) = self.0.split_first_chunk::<N>()?;
        self.0 = rest;
        Some(*head)
    }
    fn i16(&mut self) -> Option<i16> {
        self.take().map(i16::from_be_bytes)
    }
    fn i32(&mut self) -> Option<i32> {
        self.take().map(i32::from_be_bytes)
    }
    fn string(&mut self) -> Option<String> {
        let n = usize::try_from(self.i16()?).ok()?;
        let s = self.0.get(..n)?;
        self.0 = &self.0[n..];
        Some(String::from_utf8_lossy(s).into_owned())
    }
}

/// Percent-encodes what may not appear in a URL path segment.
fn urlencode(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for b in s.bytes() {
        match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => {
                out.push(b as char)
            }
            _ => out.push_str(&format!("%{b:02X}")),
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn assignment(version: i16, topics: &[(&str, &[i32])], trailing: &[u8]) -> Vec<u8> {
        let mut b = version.to_be_bytes().to_vec();
        b.extend((topics.len() as i32).to_be_bytes());
        for (t, ps) in topics {
            b.extend((t.len() as i16).to_be_bytes());
            b.extend(t.as_bytes());
            b.extend((ps.len() as i32).to_be_bytes());
            for p in *ps {
                b.extend(p.to_be_bytes());
            }
        }
        b.extend(trailing);
        b
    }

    #[test]
    fn reads_assignments_of_every_version() {
        let v0 = assignment(0, &[("touchpoints", &[0, 3])], &[]);
        assert_eq!(
            parse_assignment(&v0),
            vec![("touchpoints".to_owned(), vec![0, 3])]
        );
        // Version 1 (cooperative) adds user data after the topics.
        let v1 = assignment(1, &[("a", &[1]), ("b", &[1])], &[0, 0, 0, 2, 9, 9]);
        assert_eq!(
            parse_assignment(&v1),
            vec![("a".to_owned(), vec![1]), ("b".to_owned(), vec![1])]
        );
        // Cut short: what was read completely, nothing invented.
        assert_eq!(parse_assignment(&v0[..v0.len() - 2]), vec![]);
        assert_eq!(parse_assignment(&[]), vec![]);
    }

    #[test]
    fn a_static_members_id_names_its_instance() {
        assert_eq!(
            instance_of("rapport-1-2f1c7a57-5bb5-4a4b-9e0c-2d8f3c0b1e77"),
            "rapport-1"
        );
        assert_eq!(instance_of("short"), "short");
    }

    #[test]
    fn urls_name_the_instance_and_encode_the_id() {
        let rule = KeyRule::new(crate::config::Partitioner::Murmur2, 4);
        let mut cfg = Config::default();
        cfg.http.advertised_url = Some("http://{instance}.rapport:9464/".into());
        let o = Owners::new(&cfg, rule).unwrap();
        assert_eq!(
            o.url("rapport-2", "c 1/x").as_deref(),
            Some("http://rapport-2.rapport:9464/v1/profiles/c%201%2Fx")
        );
        cfg.http.advertised_url = None;
        assert_eq!(Owners::new(&cfg, rule).unwrap().url("x", "c"), None);
    }
}

//! Erasure everywhere: a customer's erasure request removes, in the commit
//! interval that reads it, their profile (with its journey state, caps and
//! pending waits), the timer index entries, the profiles of the anonymous ids
//! linked to them on the same partition, and the cached copies; it writes a
//! changelog tombstone for every key that held them, adds a keyed hash of each
//! id to the partition's suppression list (so replayed input cannot bring them
//! back), and confirms with a receipt on the privacy results topic.
//!
//! Requests arrive on the privacy topic (`[privacy] topic`), co-partitioned with
//! the touchpoint topics and keyed by customer id like them, so a request is
//! handled by the task that owns the profile, in order with that customer's
//! touchpoints ([`command`]). `POST /privacy/erasure` writes one ([`http`]).
//!
//! Decisions and limits:
//! - The consumer subscribes to the privacy topic beside the touchpoint topics
//!   (with the range assignor, which gives partition n of every topic to one
//!   member); start-up refuses a privacy topic of another partition count, and
//!   creates it (and the results topic) when missing.
//! - Suppression hashes are HMAC-SHA-256 keyed by `$hash_key_env`, else by
//!   `hash_salt`, else by the consumer group id: the hash must be stable for the
//!   deployment's state, and a key kept out of the configuration file keeps the
//!   list from being reversed by hashing guessed ids. The in-memory set is
//!   checked only when the partition has erased anyone; the hash is computed on
//!   the stack.
//! - An anonymous id whose key belongs to another partition cannot be erased by
//!   the customer's request (that partition's task owns it): the receipt lists
//!   its hash under `not_covered`, and a request keyed by the anonymous id
//!   (`customer_id` set to it) erases it there.
//! - The receipt is written after the erasure's transaction committed and
//!   RocksDB was compacted over the erased keys, in the next transaction; should
//!   the instance die between the two, the erasure stands but its receipt is
//!   lost, and repeating the request (harmless: nothing is left to delete)
//!   yields one.
//! - Compaction runs right after the commit over the exact erased keys, so it
//!   touches only the files that hold them.

pub mod command;
pub mod erasure;
pub mod http;
pub mod receipt;
pub mod suppression;
pub mod topics;

use serde::Deserialize;

pub use command::ErasureCommand;
pub use receipt::Receipt;
pub use suppression::{IdHash, IdHasher};

/// Seven days: how long an erased value may stay in the changelog before
/// compaction must have removed it, unless `[privacy]` says otherwise.
pub const DEFAULT_MAX_COMPACTION_LAG_MS: u64 = 7 * 24 * 3_600_000;

/// What happens to a touchpoint of an erased customer.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum AfterErasure {
    /// Dead-lettered with reason `erased`, always.
    #[default]
    DeadLetter,
    /// Dead-lettered, except a `consent_changed` touchpoint that grants consent:
    /// it lifts the suppression and starts a fresh, empty profile.
    FreshAfterConsent,
}

/// The `[privacy]` section.
#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct PrivacyConfig {
    /// The erasure-request topic; empty (the default) disables erasure requests.
    pub topic: String,
    /// Where receipts go; default `<topic>.results`.
    pub results_topic: String,
    /// What happens to touchpoints of an erased customer.
    pub after_erasure: AfterErasure,
    /// Environment variable holding the bearer token of `POST /privacy/erasure`;
    /// without one the endpoint is off.
    pub token_env: String,
    /// Environment variable holding the secret key of the suppression-list HMAC.
    pub hash_key_env: String,
    /// Used as the HMAC key when `hash_key_env` is not set: a per-deployment salt.
    pub hash_salt: String,
    /// `max.compaction.lag.ms` of the changelog topic Rapport creates: the bound
    /// on how long an erased value may survive in the changelog.
    pub changelog_max_compaction_lag_ms: u64,
}

impl Default for PrivacyConfig {
    fn default() -> Self {
        PrivacyConfig {
            topic: String::new(),
            results_topic: String::new(),
            after_erasure: AfterErasure::default(),
            token_env: String::new(),
            hash_key_env: String::new(),
            hash_salt: String::new(),
            changelog_max_compaction_lag_ms: DEFAULT_MAX_COMPACTION_LAG_MS,
        }
    }
}

impl PrivacyConfig {
    /// True when erasure requests are read.
    pub fn enabled(&self) -> bool {
        !self.topic.trim().is_empty()
    }

    /// The receipts topic.
    pub fn results(&self) -> String {
        match self.results_topic.is_empty() {
            true => format!("{}.results", self.topic),
            false => self.results_topic.clone(),
        }
    }

    /// Checks the section against the Kafka topics; the offending key and why.
    pub fn validate(&self, touchpoints: &[String]) -> Result<(), (&'static str, String)> {
        if !self.enabled() {
            return Ok(());
        }
        if touchpoints.contains(&self.topic) {
            return Err((
                "privacy.topic",
                format!(
                    "{:?} is also a touchpoint topic; name a topic of its own",
                    self.topic
                ),
            ));
        }
        if self.results() == self.topic || touchpoints.contains(&self.results()) {
            return Err((
                "privacy.results_topic",
                "is also an input topic; receipts would be read back as input".into(),
            ));
        }
        if !(60_000..=365 * 24 * 3_600_000).contains(&self.changelog_max_compaction_lag_ms) {
            return Err((
                "privacy.changelog_max_compaction_lag_ms",
                "must be between one minute and a year; 604800000 (7 days) is a good default"
                    .into(),
            ));
        }
        Ok(())
    }

    /// The suppression-list hasher: HMAC-SHA-256 keyed by `$hash_key_env`, else by
    /// `hash_salt`, else by the consumer group id (stable for a deployment, whose
    /// state belongs to that group anyway).
    pub fn hasher(&self, group_id: &str) -> Result<IdHasher, String> {
        if !self.hash_key_env.is_empty() {
            return match std::env::var(&self.hash_key_env) {
                Ok(k) if !k.is_empty() => Ok(IdHasher::new(k.as_bytes())),
                _ => Err(format!(
                    "privacy.hash_key_env names {:?}, which is not set",
                    self.hash_key_env
                )),
            };
        }
        match self.hash_salt.is_empty() {
            false => Ok(IdHasher::new(self.hash_salt.as_bytes())),
            true => Ok(IdHasher::new(group_id.as_bytes())),
        }
    }
}

#[cfg(test)]
mod tests {
    use std::path::Path;

    use super::*;
    use crate::config::Config;

    fn parse(src: &str) -> Result<Config, String> {
        Config::parse(src, Path::new("rapport.toml")).map_err(|e| e.to_string())
    }

    #[test]
    fn the_section_parses_with_defaults_and_off_by_default() {
        assert!(!parse("").unwrap().privacy.enabled());
        let c =
            parse("[privacy]\ntopic = \"p\"\nafter_erasure = \"fresh_after_consent\"\n").unwrap();
        assert_eq!(c.privacy.results(), "p.results");
        assert_eq!(c.privacy.after_erasure, AfterErasure::FreshAfterConsent);
        assert_eq!(
            c.privacy.changelog_max_compaction_lag_ms,
            DEFAULT_MAX_COMPACTION_LAG_MS
        );
    }

    #[test]
    fn bad_settings_are_refused_with_the_line() {
        let e = parse("[privacy]\ntopic = \"rapport.touchpoints\"\n").unwrap_err();
        assert!(e.contains("rapport.toml:2: privacy.topic"), "{e}");
        let e =
            parse("[privacy]\ntopic = \"p\"\nchangelog_max_compaction_lag_ms = 5\n").unwrap_err();
        assert!(e.contains("privacy.changelog_max_compaction_lag_ms"), "{e}");
        let e = parse("[privacy]\nafter_erasure = \"maybe\"\n").unwrap_err();
        assert!(e.contains("rapport.toml:2"), "{e}");
    }

    #[test]
    fn a_named_hash_key_must_be_set() {
        let p = PrivacyConfig {
            hash_key_env: "RAPPORT_TEST_UNSET_PRIVACY_KEY".into(),
            ..Default::default()
        };
        assert!(p.hasher("g").is_err());
        let salted = PrivacyConfig {
            hash_salt: "s".into(),
            ..Default::default()
        };
        let by_group = PrivacyConfig::default();
        let (a, b) = (salted.hasher("g").unwrap(), by_group.hasher("g").unwrap());
        assert_ne!(a.hash("c1"), b.hash("c1"));
    }
}

//! Pseudonymization: identifiers that are personal data (an email or phone number
//! used as a customer id, a loyalty number in an attribute) are replaced at ingest
//! by a keyed hash, so profiles, changelog records, actions and decisions never
//! hold them in clear.
//!
//! `[pseudonymize]` names the fields (`customer_id`, `anonymous_id`,
//! `attributes.<name>`) and where the secret key comes from (`secret_file` or
//! `secret_env`; a literal secret in the configuration file is refused, since
//! configuration files end up in repositories and ConfigMaps). Every listed field
//! that is present and non-empty is replaced, whatever it looks like: simple and
//! predictable, with no guessing whether a value "looks like" an email.
//!
//! A pseudonym is `h1:` followed by the first 22 characters (132 bits) of the
//! unpadded base64url encoding of HMAC-SHA-256(secret, value). The same value and
//! secret always give the same pseudonym, so a customer's events still meet in one
//! profile, and joins with other systems that share the secret still work. A value
//! that already starts with `h1:` passes unchanged: a producer that pseudonymizes
//! upstream with the same scheme is not hashed twice.
//!
//! Where it happens: the processor decodes and validates a record, checks the key
//! rule on the *clear* identity (producers key records by the id they know), and
//! only then pseudonymizes the touchpoint; the profile is keyed by the pseudonym.
//! With no fields listed nothing is hashed and nothing is allocated.
//!
//! Actions and decisions carry the customer id, which is then the pseudonym,
//! and journey payloads render the touchpoint as stored, so a listed attribute
//! reaches them hashed too: a downstream service that must contact the customer
//! looks the pseudonym up in its own records (keyed the same way), never reads
//! contact details from Rapport. Changing the secret or the identity fields gives
//! every customer a new profile.
//!
//! What it does not cover: free text (chat messages, agent notes, survey comments,
//! URLs) is kept as sent; the dead-letter topic keeps a refused record's original
//! bytes, as it must to lose nothing, so restrict who reads it.

use std::path::Path;

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine as _;
use hmac::{Hmac, Mac};
use rapport_model::Touchpoint;
use serde::Deserialize;
use sha2::Sha256;

use crate::config::{locate, ConfigError};

/// What marks a value as a pseudonym of this scheme (version 1).
pub const PREFIX: &str = "h1:";
/// Characters of the base64url digest a pseudonym keeps.
const DIGEST_CHARS: usize = 22;
/// The shortest secret accepted, bytes.
pub const MIN_SECRET_BYTES: usize = 16;

/// `[pseudonymize]`: which touchpoint fields are replaced by keyed hashes, and
/// where the key comes from. Off while `fields` is empty.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct PseudonymizeConfig {
    /// Fields to replace: `customer_id`, `anonymous_id`, `attributes.<name>`.
    pub fields: Vec<String>,
    /// A file holding the secret (surrounding whitespace trimmed), e.g. a
    /// mounted Kubernetes Secret.
    pub secret_file: Option<String>,
    /// An environment variable holding the secret.
    pub secret_env: Option<String>,
    /// Refused: only here to say why (a secret does not belong in the file).
    secret: Option<toml::Value>,
}

impl PseudonymizeConfig {
    /// True when some field is to be pseudonymized.
    pub fn enabled(&self) -> bool {
        !self.fields.is_empty()
    }

    /// Checks the section without reading the secret; returns the offending key
    /// and a message.
    pub fn validate(&self) -> Result<(), (&'static str, String)> {
        if self.secret.is_some() {
            return Err((
                "pseudonymize.secret",
                "a secret in the configuration file would be copied wherever the file goes; put it in a file (secret_file) or an environment variable (secret_env)".into(),
            ));
        }
        for f in &self.fields {
            if field_of(f).is_none() {
                return Err((
                    "pseudonymize.fields",
                    format!("{f:?} is not a pseudonymizable field; use \"customer_id\", \"anonymous_id\" or \"attributes.<name>\""),
                ));
            }
        }
        match (&self.secret_file, &self.secret_env) {
            (Some(_), Some(_)) => Err((
                "pseudonymize.secret_env",
                "set secret_file or secret_env, not both".into(),
            )),
            (None, None) if self.enabled() => Err((
                "pseudonymize.fields",
                "pseudonymizing needs a secret key: set secret_file (a mounted secret) or secret_env (an environment variable)".into(),
            )),
            _ => Ok(()),
        }
    }

    /// Reads the secret and builds the pseudonymizer (`None` when off). Errors
    /// name the key that points at the missing or empty secret.
    pub fn pseudonymizer(&self) -> Result<Option<Pseudonymizer>, (&'static str, String)> {
        if !self.enabled() {
            return Ok(None);
        }
        let (key, secret) = match (&self.secret_file, &self.secret_env) {
            (Some(path), _) => ("pseudonymize.secret_file", read_secret_file(path)?),
            (None, Some(var)) => ("pseudonymize.secret_env", read_secret_env(var)?),
            (None, None) => return Err(("pseudonymize.fields", "no secret configured".into())),
        };
        if secret.len() < MIN_SECRET_BYTES {
            return Err((
                key,
                format!("the secret has {} bytes; use at least {MIN_SECRET_BYTES} random bytes (e.g. `head -c 32 /dev/urandom | base64`)", secret.len()),
            ));
        }
        let fields = self.fields.iter().filter_map(|f| field_of(f)).collect();
        Ok(Some(Pseudonymizer::new(&secret, fields)))
    }
}

fn read_secret_file(path: &str) -> Result<Vec<u8>, (&'static str, String)> {
    let key = "pseudonymize.secret_file";
    let bytes = std::fs::read(path).map_err(|e| (key, format!("cannot read {path:?}: {e}")))?;
    let trimmed = bytes.trim_ascii();
    if trimmed.is_empty() {
        return Err((key, format!("{path:?} is empty; put the secret key in it")));
    }
    Ok(trimmed.to_vec())
}

fn read_secret_env(var: &str) -> Result<Vec<u8>, (&'static str, String)> {
    match std::env::var(var) {
        Ok(v) if !v.trim().is_empty() => Ok(v.trim().as_bytes().to_vec()),
        _ => Err((
            "pseudonymize.secret_env",
            format!("${var} is not set or empty; set it to the secret key"),
        )),
    }
}

/// Turns `(key, message)` from a check into an error naming `file` and the line.
pub(crate) fn at_line(file: &Path, (key, message): (&str, String)) -> ConfigError {
    let src = std::fs::read_to_string(file).unwrap_or_default();
    ConfigError {
        file: file.to_owned(),
        line: locate(&src, key),
        message: format!("{key}: {message}"),
    }
}

/// A touchpoint field that can be pseudonymized.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Field {
    CustomerId,
    AnonymousId,
    Attribute(String),
}

fn field_of(name: &str) -> Option<Field> {
    match name {
        "customer_id" => Some(Field::CustomerId),
        "anonymous_id" => Some(Field::AnonymousId),
        _ => name
            .strip_prefix("attributes.")
            .filter(|a| !a.is_empty())
            .map(|a| Field::Attribute(a.to_owned())),
    }
}

/// Replaces the configured fields of touchpoints by their pseudonyms.
#[derive(Clone)]
pub struct Pseudonymizer {
    /// HMAC keyed once; cloned per value.
    mac: Hmac<Sha256>,
    fields: Vec<Field>,
}

impl std::fmt::Debug for Pseudonymizer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Pseudonymizer")
            .field("fields", &self.fields)
            .finish_non_exhaustive()
    }
}

impl Pseudonymizer {
    fn new(secret: &[u8], fields: Vec<Field>) -> Self {
        // HMAC takes keys of any length; this cannot fail.
        let mac = Hmac::<Sha256>::new_from_slice(secret)
            .unwrap_or_else(|_| unreachable!("HMAC accepts keys of any length"));
        Pseudonymizer { mac, fields }
    }

    /// A pseudonymizer of `fields` (names as in the configuration; unknown names
    /// are skipped) with `secret`, for tests and tools.
    pub fn with_secret(secret: &[u8], fields: &[&str]) -> Self {
        Self::new(secret, fields.iter().filter_map(|f| field_of(f)).collect())
    }

    /// The pseudonym of `value`; a value already pseudonymized passes unchanged.
    pub fn pseudonym(&self, value: &str) -> String {
        if is_pseudonym(value) {
            return value.to_owned();
        }
        let mut mac = self.mac.clone();
        mac.update(value.as_bytes());
        let digest = URL_SAFE_NO_PAD.encode(mac.finalize().into_bytes());
        let mut out = String::with_capacity(PREFIX.len() + DIGEST_CHARS);
        out.push_str(PREFIX);
        out.push_str(&digest[..DIGEST_CHARS]);
        out
    }

    /// The id a profile of customer `id` (as producers send it) is stored under.
    pub fn profile_id(&self, id: &str) -> String {
        self.pseudonym(id)
    }

    /// Replaces every configured field of `tp` that is present and non-empty.
    pub fn apply(&self, tp: &mut Touchpoint) {
        for f in &self.fields {
            let value = match f {
                Field::CustomerId => tp.customer_id.as_mut(),
                Field::AnonymousId => tp.anonymous_id.as_mut(),
                Field::Attribute(name) => tp.attributes.get_mut(name),
            };
            if let Some(v) = value.filter(|v| !v.is_empty() && !is_pseudonym(v)) {
                *v = self.pseudonym(v);
            }
        }
    }
}

/// True when `value` is already a pseudonym of this scheme.
pub fn is_pseudonym(value: &str) -> bool {
    value.len() == PREFIX.len() + DIGEST_CHARS && value.starts_with(PREFIX)
}

#[cfg(test)]
mod tests {
    use super::*;
    use rapport_model::testing::tp;
    use rapport_model::{Channel, EventType};

    const SECRET: &[u8] = b"0123456789abcdef0123456789abcdef";

    #[test]
    fn the_pseudonym_is_stable_and_documented() {
        let p = Pseudonymizer::with_secret(SECRET, &["customer_id"]);
        // HMAC-SHA-256(SECRET, "ada@example.com"), base64url, first 22 characters;
        // the same as `printf %s ada@example.com | openssl dgst -sha256 -hmac "$SECRET" -binary | basenc --base64url | cut -c1-22`.
        let h = p.pseudonym("ada@example.com");
        assert_eq!(h, "h1:4-MLTVAiSkuhQIRgcIXQck");
        assert_eq!(p.pseudonym("ada@example.com"), h);
        assert_ne!(p.pseudonym("bob@example.com"), h);
        let other = Pseudonymizer::with_secret(b"another secret of enough bytes", &[]);
        assert_ne!(other.pseudonym("ada@example.com"), h);
    }

    #[test]
    fn a_pseudonym_is_not_hashed_twice() {
        let p = Pseudonymizer::with_secret(SECRET, &["customer_id"]);
        let h = p.pseudonym("+44 20 7946 0000");
        assert!(is_pseudonym(&h));
        assert_eq!(p.pseudonym(&h), h);
        // Only the exact shape counts: a value that merely starts with the prefix is hashed.
        assert_ne!(p.pseudonym("h1:short"), "h1:short");
    }

    #[test]
    fn only_the_listed_fields_change() {
        let p = Pseudonymizer::with_secret(
            SECRET,
            &["customer_id", "anonymous_id", "attributes.phone"],
        );
        let mut t = tp(
            "e1",
            "ada@example.com",
            Channel::Web,
            EventType::PageView,
            1,
        );
        t.anonymous_id = Some("device-1".into());
        t.attributes
            .insert("phone".into(), "+44 20 7946 0000".into());
        t.attributes.insert("plan".into(), "gold".into());
        let before = t.clone();
        p.apply(&mut t);
        assert_eq!(t.customer_id, Some(p.pseudonym("ada@example.com")));
        assert_eq!(t.anonymous_id, Some(p.pseudonym("device-1")));
        assert_eq!(t.attributes["phone"], p.pseudonym("+44 20 7946 0000"));
        assert_eq!(t.attributes["plan"], "gold");
        assert_eq!(t.event_id, before.event_id);
        let once = t.clone();
        p.apply(&mut t);
        assert_eq!(t, once, "applying twice changes nothing");
    }

    fn parse(s: &str) -> Result<crate::Config, crate::config::ConfigError> {
        crate::Config::parse(s, Path::new("rapport.toml"))
    }

    #[test]
    fn a_literal_secret_is_refused_with_file_and_line() {
        let e = parse("[pseudonymize]\nfields = [\"customer_id\"]\nsecret = \"hunter2\"\n")
            .unwrap_err();
        assert_eq!(e.line, Some(3), "{e}");
        assert!(e.to_string().starts_with("rapport.toml:3: "), "{e}");
        assert!(e.message.contains("secret_file"), "{e}");
    }

    #[test]
    fn the_section_is_checked() {
        let e = parse("[pseudonymize]\nfields = [\"email\"]\nsecret_env = \"X\"\n").unwrap_err();
        assert_eq!(e.line, Some(2), "{e}");
        assert!(e.message.contains("attributes.<name>"), "{e}");
        let e = parse("[pseudonymize]\nfields = [\"customer_id\"]\n").unwrap_err();
        assert!(e.message.contains("secret_env"), "{e}");
        let e = parse("[pseudonymize]\nsecret_file = \"a\"\nsecret_env = \"X\"\n").unwrap_err();
        assert_eq!(e.line, Some(3), "{e}");
        let c = parse("[pseudonymize]\nfields = [\"customer_id\", \"attributes.email\"]\nsecret_env = \"X\"\n")
            .unwrap();
        assert!(c.pseudonymize.enabled());
        assert!(!parse("").unwrap().pseudonymize.enabled());
    }

    #[test]
    fn a_missing_or_empty_secret_is_refused_at_start() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("rapport.toml");
        let var = "RAPPORT_TEST_PSEUDONYM_SECRET_THAT_IS_NOT_SET";
        std::fs::write(
            &file,
            format!("[pseudonymize]\nfields = [\"customer_id\"]\nsecret_env = \"{var}\"\n"),
        )
        .unwrap();
        let cfg = crate::Config::load(&file).unwrap();
        let e = at_line(&file, cfg.pseudonymize.pseudonymizer().unwrap_err());
        assert_eq!(e.line, Some(3), "{e}");
        assert!(e.message.contains(var), "{e}");

        let secret = dir.path().join("secret");
        std::fs::write(&secret, "\n").unwrap();
        let mut cfg = cfg.pseudonymize.clone();
        cfg.secret_env = None;
        cfg.secret_file = Some(secret.display().to_string());
        let (key, why) = cfg.pseudonymizer().unwrap_err();
        assert_eq!(key, "pseudonymize.secret_file");
        assert!(why.contains("empty"), "{why}");
        std::fs::write(&secret, "short\n").unwrap();
        assert!(cfg.pseudonymizer().unwrap_err().1.contains("at least 16"));
        std::fs::write(&secret, "0123456789abcdef0123456789abcdef\n").unwrap();
        let p = cfg.pseudonymizer().unwrap().unwrap();
        // The trailing newline is not part of the key.
        assert_eq!(p.pseudonym("ada@example.com"), "h1:4-MLTVAiSkuhQIRgcIXQck");
    }
}

/// The processor's use of the pseudonymizer: the key rule reads the clear id
/// (producers key by it), the profile and everything after it the pseudonym.
#[cfg(test)]
mod processor_tests {
    use std::sync::Arc;

    use rapport_model::testing::tp;
    use rapport_model::{Channel, EventType};

    use super::*;
    use crate::config::{Partitioner, StateConfig};
    use crate::ingest::route::KeyRule;
    use crate::processor::{Outcome, Processor, Record};
    use crate::state::{StateBatch, StateStore};

    #[test]
    fn the_key_rule_reads_the_clear_id_and_the_profile_is_keyed_by_the_pseudonym() {
        let dir = tempfile::tempdir().unwrap();
        let state = Arc::new(StateStore::open_path(dir.path(), &StateConfig::default()).unwrap());
        let rule = KeyRule::new(Partitioner::Murmur2, 4);
        let p = Arc::new(Pseudonymizer::with_secret(
            b"0123456789abcdef",
            &["customer_id"],
        ));
        let journeys = Arc::new(rapport_journeys::CompiledJourneys::shipped().unwrap());
        let mut processor = Processor::new(
            1 << 20,
            rule,
            journeys,
            state,
            crate::metrics::Metrics::new(),
            1 << 20,
        )
        .unwrap()
        .with_pseudonymizer(Some(p.clone()));
        let email = "ada@example.com";
        let hashed = p.pseudonym(email);
        let home = rule.partition_of(email.as_bytes());
        processor.start_partition(home).unwrap();
        let value = serde_json::to_vec(&tp(
            "e1",
            email,
            Channel::Web,
            EventType::PageView,
            1_764_000_000_000,
        ))
        .unwrap();
        fn record<'a>(partition: i32, offset: i64, key: &'a str, value: &'a [u8]) -> Record<'a> {
            Record {
                topic: "t",
                partition,
                offset,
                key: Some(key.as_bytes()),
                value,
            }
        }
        let mut out = Vec::new();
        assert_eq!(
            processor
                .process(&record(home, 0, email, &value), &mut out)
                .unwrap(),
            Outcome::Applied
        );
        // Keyed by the pseudonym, the record is not its touchpoint's: refused.
        match processor
            .process(&record(home, 1, &hashed, &value), &mut out)
            .unwrap()
        {
            Outcome::Rejected(r) => assert_eq!(r.class, "key_mismatch"),
            other => panic!("{other:?}"),
        }
        let keys = std::sync::Mutex::new(Vec::new());
        processor
            .changes(&mut StateBatch::default(), |(_, key, value)| {
                keys.lock()
                    .unwrap()
                    .push(String::from_utf8_lossy(key).into_owned());
                assert!(!value.windows(email.len()).any(|w| w == email.as_bytes()));
                Ok::<_, ()>(())
            })
            .unwrap();
        let keys = keys.into_inner().unwrap();
        assert!(keys.contains(&hashed), "{keys:?}");
        assert!(!keys.iter().any(|k| k == email), "{keys:?}");
    }
}

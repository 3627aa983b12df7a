//! The `[collector]` section of `rapport.toml`: where the collector listens, the
//! write keys it accepts, its limits, and the chat webhooks' sources.
//!
//! The section lives in the engine's file so that the collector and the engine
//! share one `[kafka]` section (bootstrap, `[kafka.client]` security, topics,
//! partitioner). `rapport run` ignores it; `rapport validate` checks it.

use std::collections::BTreeMap;
use std::net::SocketAddr;

use serde::Deserialize;

/// The collector's settings.
#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct CollectorConfig {
    /// Listen address of the collector's HTTP server.
    pub listen: String,
    /// Topic the touchpoints go to; empty: the first of `kafka.touchpoint_topics`.
    pub topic: String,
    /// Mapping file (relative to the configuration file); empty: the built-in
    /// one, `deploy/collector/segment-mapping.toml`.
    pub mapping: String,
    /// Accepted write keys (the Basic user name). A value `env:NAME` is read
    /// from the environment variable NAME when the collector starts.
    pub write_keys: Vec<String>,
    /// Largest request body, bytes, before and after gzip decompression.
    pub max_body_bytes: usize,
    /// Most calls in one `/v1/batch` request.
    pub max_batch_len: usize,
    /// How long a request waits for Kafka to acknowledge its records before it
    /// is answered 503 (the SDK then retries), ms.
    pub produce_timeout_ms: u64,
    /// Chat webhook sources by name: `POST /v1/webhooks/chat/{name}`.
    pub chat: BTreeMap<String, ChatSource>,
}

impl Default for CollectorConfig {
    fn default() -> Self {
        CollectorConfig {
            listen: "127.0.0.1:8088".into(),
            topic: String::new(),
            mapping: String::new(),
            write_keys: Vec::new(),
            // Segment's own limit for a batch is 500 KB.
            max_body_bytes: 512 * 1024,
            max_batch_len: 1000,
            produce_timeout_ms: 10_000,
            chat: BTreeMap::new(),
        }
    }
}

/// How a signature header is encoded.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum SignatureEncoding {
    /// Hexadecimal, either case.
    Hex,
    /// Standard base64.
    Base64,
}

/// One chat platform's webhook: how to check its signature and where its
/// fields are. Pointers are JSON pointers into one message event.
#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ChatSource {
    /// HMAC-SHA256 shared secret; `env:NAME` reads it from the environment.
    pub secret: String,
    /// The header carrying the signature of the raw body.
    pub signature_header: String,
    /// Text before the signature in that header, e.g. `sha256=`.
    pub signature_prefix: String,
    /// How the signature is encoded.
    pub signature_encoding: SignatureEncoding,
    /// Where the list of message events is, when a request carries several;
    /// empty: the body is one event.
    pub events: String,
    /// The customer id (required).
    pub customer: String,
    /// The event id (required; platforms resend, the id lets them be told apart).
    pub event_id: String,
    /// The conversation id.
    pub conversation: String,
    /// Who sent the message: a value in `inbound` means the customer.
    pub direction: String,
    /// Values of `direction` that mean the customer wrote.
    pub inbound: Vec<String>,
    /// Values of `direction` that mean a bot wrote.
    pub bot: Vec<String>,
    /// The message text: only its length is kept (attribute `text_length`);
    /// the text itself never reaches a touchpoint or a profile.
    pub text: String,
    /// Sentiment score, if the platform provides one.
    pub sentiment: String,
    /// The scale of that score, rescaled to -1..1 (e.g. `[0.0, 1.0]`).
    pub sentiment_range: [f64; 2],
    /// True when the bot handed the conversation to a person: a `chat_handoff`.
    pub handoff: String,
    /// Event time: RFC 3339 text, or epoch seconds or milliseconds; absent:
    /// the time it was received.
    pub timestamp: String,
}

impl Default for ChatSource {
    fn default() -> Self {
        ChatSource {
            secret: String::new(),
            signature_header: "x-signature".into(),
            signature_prefix: "sha256=".into(),
            signature_encoding: SignatureEncoding::Hex,
            events: String::new(),
            customer: String::new(),
            event_id: String::new(),
            conversation: String::new(),
            direction: String::new(),
            inbound: vec!["inbound".into(), "customer".into(), "user".into()],
            bot: vec!["bot".into()],
            text: String::new(),
            sentiment: String::new(),
            sentiment_range: [-1.0, 1.0],
            handoff: String::new(),
            timestamp: String::new(),
        }
    }
}

impl CollectorConfig {
    /// The parsed listen address.
    pub fn addr(&self) -> Option<SocketAddr> {
        self.listen.parse().ok()
    }

    /// Checks what types cannot express; returns the dotted key and what to do.
    pub fn validate(&self) -> Result<(), (String, String)> {
        let err = |k: &str, m: String| Err((format!("collector.{k}"), m));
        if self.addr().is_none() {
            return err(
                "listen",
                format!("{:?} is not an address like 127.0.0.1:8088", self.listen),
            );
        }
        if self.max_body_bytes < 1024 {
            return err(
                "max_body_bytes",
                format!(
                    "{} is too small; use at least 1024 (default 524288)",
                    self.max_body_bytes
                ),
            );
        }
        if self.max_batch_len == 0 {
            return err("max_batch_len", "must be at least 1 (default 1000)".into());
        }
        if !(100..=300_000).contains(&self.produce_timeout_ms) {
            return err(
                "produce_timeout_ms",
                format!(
                    "{} is outside 100..=300000; 10000 is a good default",
                    self.produce_timeout_ms
                ),
            );
        }
        if self.write_keys.iter().any(|k| k.trim().is_empty()) {
            return err("write_keys", "has an empty key; remove it".into());
        }
        for (name, s) in &self.chat {
            s.validate(name)?;
        }
        Ok(())
    }
}

impl ChatSource {
    fn validate(&self, name: &str) -> Result<(), (String, String)> {
        let key = |k: &str| format!("collector.chat.{name}.{k}");
        if name.is_empty()
            || !name
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
        {
            return Err((
                key("secret"),
                format!("source name {name:?} must be letters, digits, '-' or '_' (it is part of the URL)"),
            ));
        }
        if self.secret.trim().is_empty() {
            return Err((
                key("secret"),
                "is empty; set the shared secret the platform signs with (or env:NAME)".into(),
            ));
        }
        if self.signature_header.trim().is_empty() {
            return Err((
                key("signature_header"),
                "is empty; name the header that carries the signature".into(),
            ));
        }
        for (k, p, required) in [
            ("customer", &self.customer, true),
            ("event_id", &self.event_id, true),
            ("events", &self.events, false),
            ("conversation", &self.conversation, false),
            ("direction", &self.direction, false),
            ("text", &self.text, false),
            ("sentiment", &self.sentiment, false),
            ("handoff", &self.handoff, false),
            ("timestamp", &self.timestamp, false),
        ] {
            if required && p.is_empty() {
                return Err((key(k), "is required: the JSON pointer to it in a message event, e.g. \"/data/user_id\"".into()));
            }
            if !p.is_empty() && !p.starts_with('/') {
                return Err((
                    key(k),
                    format!("{p:?} is not a JSON pointer; write it like \"/data/user_id\""),
                ));
            }
        }
        let [lo, hi] = self.sentiment_range;
        if !(lo.is_finite() && hi.is_finite() && lo < hi) {
            return Err((
                key("sentiment_range"),
                format!("[{lo}, {hi}] is not a range; give [lowest, highest], e.g. [-1.0, 1.0]"),
            ));
        }
        Ok(())
    }
}

/// A secret or write key as configured: `env:NAME` is read from the environment.
pub fn resolve_secret(value: &str) -> Result<String, String> {
    match value.strip_prefix("env:") {
        Some(var) => match std::env::var(var) {
            Ok(v) if !v.is_empty() => Ok(v),
            _ => Err(format!(
                "environment variable {var} is not set (named by {value:?})"
            )),
        },
        None => Ok(value.to_owned()),
    }
}

#[cfg(test)]
mod tests {
    use std::path::Path;

    use crate::config::Config;

    fn parse(s: &str) -> Result<Config, crate::config::ConfigError> {
        Config::parse(s, Path::new("rapport.toml"))
    }

    #[test]
    fn a_collector_section_is_read_with_its_chat_sources() {
        let c = parse("[collector]\nlisten = \"0.0.0.0:8088\"\nwrite_keys = [\"k1\", \"env:KEY\"]\n\n[collector.chat.support]\nsecret = \"env:CHAT\"\ncustomer = \"/user/id\"\nevent_id = \"/id\"\n").unwrap();
        assert_eq!(c.collector.write_keys, ["k1", "env:KEY"]);
        assert_eq!(c.collector.chat["support"].signature_prefix, "sha256=");
        assert_eq!(c.collector.max_body_bytes, 512 * 1024);
    }

    #[test]
    fn a_bad_collector_section_names_the_line_and_the_fix() {
        let e = parse("[kafka]\ngroup_id = \"g\"\n\n[collector]\nlisten = \"everywhere\"\n")
            .unwrap_err();
        assert_eq!(e.line, Some(5), "{e}");
        assert!(e.message.contains("collector.listen"), "{e}");
        let e = parse("[collector]\nmax_batch_size = 5\n").unwrap_err();
        assert_eq!(e.line, Some(2), "{e}");
        assert!(e.message.contains("max_batch_size"), "{e}");
        let e = parse("[collector.chat.support]\nsecret = \"s\"\ncustomer = \"user.id\"\nevent_id = \"/id\"\n").unwrap_err();
        assert_eq!(e.line, Some(3), "{e}");
        assert!(
            e.message.contains("collector.chat.support.customer")
                && e.message.contains("JSON pointer"),
            "{e}"
        );
        let e =
            parse("[collector.chat.support]\nsecret = \"s\"\nevent_id = \"/id\"\n").unwrap_err();
        assert!(e.message.contains("customer: is required"), "{e}");
    }
}

//! Configuration: loaded from one TOML file and validated in one place.
//!
//! A bad configuration is refused at start-up with the file, the line and what to
//! change, never discovered later by a running engine.

use std::collections::BTreeMap;
use std::fmt;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use std::sync::Arc;

use rapport_journeys::CompiledJourneys;
use rapport_model::emotion::EmotionConfig;
use serde::Deserialize;

/// The environment variable that names an existing Kafka cluster.
pub const BOOTSTRAP_ENV: &str = "RAPPORT_KAFKA_BOOTSTRAP";
/// The bootstrap address of the local broker started by `deploy/kafka.sh`.
pub const LOCAL_BOOTSTRAP: &str = "127.0.0.1:19092";

/// The whole engine configuration (`rapport.toml`).
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Config {
    /// Journey files: globs relative to the configuration file's directory, e.g.
    /// `["journeys/*.toml"]`. Empty: the journeys shipped in `deploy/journeys/`
    /// (hesitation guide, recovery offer, post-delivery survey), built in.
    pub journeys: Vec<String>,
    /// Kafka connection and topics.
    pub kafka: KafkaConfig,
    /// Local state (RocksDB).
    pub state: StateConfig,
    /// Processing loop.
    pub engine: EngineConfig,
    /// Metrics, health and profile API.
    pub http: HttpConfig,
    /// Emotional-state thresholds, for journey conditions and the state each
    /// action carries.
    pub emotion: EmotionConfig,
    /// Confluent-compatible Schema Registry: Avro touchpoints in the Confluent
    /// wire format, and the action output format.
    pub schema_registry: SchemaRegistryConfig,
    /// The collector (`rapport collect`): Segment-compatible HTTP API and chat
    /// webhooks; the engine itself ignores it.
    pub collector: crate::collect::config::CollectorConfig,
    /// Identifiers replaced by keyed hashes at ingest ([`crate::pseudonym`]).
    pub pseudonymize: crate::pseudonym::PseudonymizeConfig,
    /// Erasure requests, the suppression list and receipts (see [`crate::privacy`]).
    pub privacy: crate::privacy::PrivacyConfig,
    /// Identity stitching (see [`crate::identity`]).
    pub identity: crate::identity::IdentityConfig,
    /// The journeys, compiled once when the configuration is loaded.
    #[serde(skip)]
    pub compiled: Option<Arc<CompiledJourneys>>,
    /// The pseudonymizer, once its secret is read ([`Config::resolve_pseudonymizer`]).
    #[serde(skip)]
    pub pseudonymizer: Option<Arc<crate::pseudonym::Pseudonymizer>>,
}

/// Kafka connection and topics.
#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct KafkaConfig {
    /// Bootstrap servers; defaults to `$RAPPORT_KAFKA_BOOTSTRAP`, else the local broker.
    pub bootstrap_servers: String,
    /// Consumer group shared by all instances of one deployment.
    pub group_id: String,
    /// Touchpoint topics, keyed by customer id and co-partitioned.
    pub touchpoint_topics: Vec<String>,
    /// Where actions go.
    pub action_topic: String,
    /// Where records that cannot be processed go, with the reason.
    pub dead_letter_topic: String,
    /// Where the delivery policy's decisions not to act go (capped, deferred to
    /// the end of quiet hours, no consent, suppressed, held out), each with its
    /// reason, in the same transaction as the actions; empty turns them off.
    pub decisions_topic: String,
    /// Compacted topic that makes profile state durable; default `<group_id>-profiles-changelog`.
    pub changelog_topic: String,
    /// Replication factor of topics the engine creates; -1 uses the broker's default.
    pub replication_factor: i32,
    /// librdkafka properties for every client the engine creates (consumers,
    /// producers, the changelog restorer, admin clients): security (TLS, SASL)
    /// and anything else that is about reaching the cluster.
    pub client: BTreeMap<String, String>,
    /// How producers of the touchpoint topics choose a partition for a key; a
    /// record on another partition than its key maps to is dead-lettered
    /// (`wrong_partition`), so a customer never has two profiles.
    pub partitioner: Partitioner,
    /// Extra librdkafka consumer properties.
    pub consumer: BTreeMap<String, String>,
    /// Extra librdkafka producer properties.
    pub producer: BTreeMap<String, String>,
    /// Bytes of fetched records the consumer may hold ahead of processing, MiB,
    /// with librdkafka's bookkeeping for them and the fetch on its way in
    /// (see [`crate::kafka::consumer_config`]), so the prefetch is bounded in
    /// bytes whatever the record sizes and the number of partitions.
    pub prefetch_mb: usize,
    /// Bytes each of the engine's two producers may hold unacknowledged, MiB
    /// (`queue.buffering.max.kbytes`; librdkafka's default is 1 GiB).
    pub producer_buffer_mb: usize,
}

impl KafkaConfig {
    /// The changelog topic name.
    pub fn changelog(&self) -> String {
        if self.changelog_topic.is_empty() {
            format!("{}-profiles-changelog", self.group_id)
        } else {
            self.changelog_topic.clone()
        }
    }

    /// True when `[kafka.consumer]` makes a group without committed offsets start
    /// at the end of its partitions (`auto.offset.reset = latest`) instead of the
    /// beginning.
    pub fn starts_at_end(&self) -> bool {
        matches!(
            self.consumer.get("auto.offset.reset").map(String::as_str),
            Some("latest" | "largest" | "end")
        )
    }
}

impl Default for KafkaConfig {
    fn default() -> Self {
        KafkaConfig {
            bootstrap_servers: std::env::var(BOOTSTRAP_ENV)
                .unwrap_or_else(|_| LOCAL_BOOTSTRAP.into()),
            group_id: "rapport".into(),
            touchpoint_topics: vec!["rapport.touchpoints".into()],
            action_topic: "rapport.actions".into(),
            decisions_topic: "rapport.decisions".into(),
            dead_letter_topic: "rapport.dead-letter".into(),
            changelog_topic: String::new(),
            replication_factor: -1,
            client: BTreeMap::new(),
            partitioner: Partitioner::Murmur2,
            consumer: BTreeMap::new(),
            producer: BTreeMap::new(),
            prefetch_mb: 64,
            producer_buffer_mb: 32,
        }
    }
}

/// The partitioner that producers of the touchpoint topics use.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Partitioner {
    /// Kafka's Java default (murmur2 of the key); librdkafka's `murmur2_random`.
    Murmur2,
    /// librdkafka's default `consistent_random` (CRC32 of the key).
    Consistent,
}

/// Local state.
#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct StateConfig {
    /// RocksDB directory.
    pub path: PathBuf,
    /// Shared block cache, MiB.
    pub block_cache_mb: usize,
    /// Memtable budget across all column families, MiB.
    pub write_buffer_mb: usize,
    /// Memory for profiles kept decoded between commits, MiB (estimated from
    /// each profile's stored size; see [`crate::processor::Processor::trim_cache`]).
    /// The profiles changed in one commit interval stay until it is committed,
    /// on top of this; when they alone fill it, the engine commits before the
    /// interval is up (`rapport_early_commits_total`), so memory stays bounded
    /// whatever the commit interval.
    pub profile_cache_mb: usize,
    /// Memory for the stored encodings of recently committed profiles, MiB: a
    /// profile the decoded cache no longer holds is decoded from here rather
    /// than looked up in RocksDB. An encoding takes a fraction of its decoded
    /// profile's memory, so this holds several times more profiles; 0 turns it off.
    pub encoded_cache_mb: usize,
    /// The count of cached profiles of earlier releases, now refused at
    /// start-up in favour of `profile_cache_mb`.
    #[serde(rename = "profile_cache")]
    pub profile_cache_count: Option<toml::Value>,
    /// Skip RocksDB's write-ahead log: the changelog topic is the durable log.
    pub disable_wal: bool,
}

impl Default for StateConfig {
    fn default() -> Self {
        StateConfig {
            path: PathBuf::from("rapport-state"),
            block_cache_mb: 64,
            write_buffer_mb: 64,
            profile_cache_mb: 32,
            encoded_cache_mb: 64,
            profile_cache_count: None,
            disable_wal: true,
        }
    }
}

/// Delivery guarantee.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Guarantee {
    /// Actions may repeat after a crash, always with the same id.
    AtLeastOnce,
    /// Actions, state and offsets commit atomically (Kafka transactions).
    ExactlyOnce,
}

impl Guarantee {
    /// The guarantee as the configuration names it (`engine.guarantee`).
    pub fn as_str(self) -> &'static str {
        match self {
            Guarantee::AtLeastOnce => "at_least_once",
            Guarantee::ExactlyOnce => "exactly_once",
        }
    }
}

/// The processing loop.
#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct EngineConfig {
    /// Delivery guarantee.
    pub guarantee: Guarantee,
    /// How often state, actions and offsets are committed, ms.
    pub commit_interval_ms: u64,
    /// Records larger than this go to the dead-letter topic, bytes.
    pub max_record_bytes: usize,
    /// This instance's name within the group; its transactional id is
    /// `<group_id>-<instance_id>`, so a restarted instance fences its predecessor.
    /// Default: `$RAPPORT_INSTANCE_ID`, else the host name.
    pub instance_id: String,
    /// Kafka transaction timeout, ms: how long a crashed instance's open
    /// transaction can hold back read_committed consumers.
    pub transaction_timeout_ms: u64,
    /// Also fire due timers on wall-clock time when a partition is idle (live mode).
    /// Off, timers fire on event time only, as a replay of history does.
    pub wall_clock_timers: bool,
    /// How long the engine rides out an unreachable cluster (a broker restart, a
    /// network partition) before it stops, ms. Commits that fail meanwhile are
    /// aborted and redone from the last commit.
    pub kafka_unavailable_timeout_ms: u64,
    /// How long the consumer may be out of a settled membership of its group
    /// (looking for the coordinator, joining, stuck in a rebalance) before
    /// `/healthz` answers 503, ms: an instance that left its group and does
    /// not come back processes nothing and fails nothing, and a restart joins
    /// afresh.
    pub out_of_group_timeout_ms: u64,
    /// Threads that process a batch's partitions in parallel; 0 (the default)
    /// uses every core. Commits stay one transaction per interval.
    pub worker_threads: usize,
    /// Event ids each profile remembers so that a repeated event (a file
    /// imported twice, a retried delivery) is applied once; 0 turns the check off.
    pub dedup_event_ids: usize,
    /// How far back, before a customer's newest event, event ids are
    /// remembered, ms (default: 92 days, the profile's longest window).
    pub dedup_max_age_ms: u64,
}

impl Default for EngineConfig {
    fn default() -> Self {
        EngineConfig {
            guarantee: Guarantee::ExactlyOnce,
            commit_interval_ms: 100,
            max_record_bytes: 1 << 20,
            instance_id: std::env::var("RAPPORT_INSTANCE_ID")
                .or_else(|_| std::fs::read_to_string("/etc/hostname").map(|h| h.trim().to_owned()))
                .ok()
                .filter(|s| !s.is_empty())
                .unwrap_or_else(|| "rapport-0".into()),
            transaction_timeout_ms: 10_000,
            wall_clock_timers: true,
            kafka_unavailable_timeout_ms: 300_000,
            out_of_group_timeout_ms: 300_000,
            worker_threads: 0,
            dedup_event_ids: rapport_model::seen::DEFAULT_MAX_IDS,
            dedup_max_age_ms: rapport_model::seen::DEFAULT_MAX_AGE_MS as u64,
        }
    }
}

impl EngineConfig {
    /// The bounds of each profile's record of seen event ids.
    pub fn seen_limits(&self) -> rapport_model::seen::SeenLimits {
        rapport_model::seen::SeenLimits {
            max_ids: self.dedup_event_ids,
            max_age_ms: i64::try_from(self.dedup_max_age_ms).unwrap_or(i64::MAX),
        }
    }

    /// Threads for processing: `worker_threads`, or every core when 0.
    pub fn workers(&self) -> usize {
        match self.worker_threads {
            0 => std::thread::available_parallelism().map_or(1, |n| n.get()),
            n => n,
        }
    }
}

/// How actions and decisions are written to their topics.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum OutputFormat {
    /// JSON (schemas/v1/action.schema.json).
    #[default]
    Json,
    /// Avro in the Confluent wire format: magic byte 0, the 4-byte id of
    /// schemas/v1/action.avsc (decision.avsc) registered under
    /// `<action_topic>-value` (`<decisions_topic>-value`), Avro binary.
    Avro,
}

/// A Confluent-compatible Schema Registry (Confluent, Apicurio's `ccompat` API,
/// Redpanda, Karapace). Off while `url` is empty.
#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct SchemaRegistryConfig {
    /// Base URL of the Confluent-compatible API, e.g. `http://registry:8081` or
    /// Apicurio's `http://registry:8080/apis/ccompat/v7`. Empty: no registry;
    /// Confluent-framed touchpoints are then dead-lettered.
    pub url: String,
    /// Basic-auth user, if the registry asks for one.
    pub username: String,
    /// Basic-auth password; default `$RAPPORT_SCHEMA_REGISTRY_PASSWORD`.
    pub password: String,
    /// How actions and decisions are written: `json` (default) or `avro`.
    pub output_format: OutputFormat,
    /// How long an unreachable registry is waited for (retrying with backoff)
    /// before the engine stops without committing the records it holds, ms.
    pub unavailable_timeout_ms: u64,
    /// Timeout of one HTTP request to the registry, ms.
    pub request_timeout_ms: u64,
}

impl Default for SchemaRegistryConfig {
    fn default() -> Self {
        SchemaRegistryConfig {
            url: String::new(),
            username: String::new(),
            password: std::env::var("RAPPORT_SCHEMA_REGISTRY_PASSWORD").unwrap_or_default(),
            output_format: OutputFormat::Json,
            unavailable_timeout_ms: 60_000,
            request_timeout_ms: 10_000,
        }
    }
}

impl SchemaRegistryConfig {
    /// True when a registry is configured.
    pub fn enabled(&self) -> bool {
        !self.url.trim().is_empty()
    }

    /// Checks the section; returns the offending key and a message.
    fn validate(&self) -> Result<(), (&'static str, String)> {
        let url = self.url.trim();
        if !(url.is_empty() || url.starts_with("http://") || url.starts_with("https://")) {
            return Err((
                "schema_registry.url",
                format!(
                    "{url:?} is not an http:// or https:// URL of a Confluent-compatible registry"
                ),
            ));
        }
        if url.is_empty() && self.output_format == OutputFormat::Avro {
            return Err((
                "schema_registry.output_format",
                "\"avro\" needs schema_registry.url to register schemas/v1/action.avsc; set the url or use \"json\"".into(),
            ));
        }
        if !self.username.is_empty() && self.password.is_empty() {
            return Err((
                "schema_registry.username",
                "basic auth needs a password too: set schema_registry.password or $RAPPORT_SCHEMA_REGISTRY_PASSWORD".into(),
            ));
        }
        // Waiting blocks the engine thread; past the consumer's default
        // max.poll.interval.ms (300 s) the group would evict the instance.
        if !(1_000..=240_000).contains(&self.unavailable_timeout_ms) {
            return Err((
                "schema_registry.unavailable_timeout_ms",
                format!(
                    "{} is outside 1000..=240000; 60000 is a good default",
                    self.unavailable_timeout_ms
                ),
            ));
        }
        if !(100..=60_000).contains(&self.request_timeout_ms) {
            return Err((
                "schema_registry.request_timeout_ms",
                format!(
                    "{} is outside 100..=60000; 10000 is a good default",
                    self.request_timeout_ms
                ),
            ));
        }
        Ok(())
    }
}

/// Metrics, health and profile API.
#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct HttpConfig {
    /// Listen address; empty disables the server.
    pub listen: String,
    /// Where other instances' profile APIs are reached, with `{instance}` for
    /// the instance id (e.g. `http://{instance}.rapport:9464` on Kubernetes). A
    /// profile request for a customer another instance owns is redirected there;
    /// without it the answer names the owner.
    pub advertised_url: Option<String>,
    /// A file holding the profile API's bearer token ([`crate::http_auth`]);
    /// required, or `token_env`, when `listen` is beyond loopback.
    pub token_file: Option<String>,
    /// An environment variable holding the profile API's bearer token.
    pub token_env: Option<String>,
    /// Refused: only here to say why (a token does not belong in the file).
    pub(crate) token: Option<toml::Value>,
    /// The token, once read ([`Config::resolve_http_token`]).
    #[serde(skip)]
    pub bearer: Option<Arc<crate::http_auth::BearerToken>>,
}

impl Default for HttpConfig {
    fn default() -> Self {
        HttpConfig {
            listen: "127.0.0.1:9464".into(),
            advertised_url: None,
            token_file: None,
            token_env: None,
            token: None,
            bearer: None,
        }
    }
}

impl HttpConfig {
    /// The parsed listen address, `None` when disabled.
    pub fn addr(&self) -> Option<SocketAddr> {
        self.listen.parse().ok()
    }
}

/// Why a configuration, or one of its journey files, cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum LoadError {
    /// The configuration file itself.
    #[error(transparent)]
    Config(#[from] ConfigError),
    /// Journey files: every problem of every file, each `file:line:column: ...`.
    #[error(transparent)]
    Journeys(rapport_journeys::LoadError),
}

/// A configuration that cannot be used, with where and how to fix it.
#[derive(Debug, thiserror::Error)]
pub struct ConfigError {
    /// The file.
    pub file: PathBuf,
    /// 1-based line, when known.
    pub line: Option<usize>,
    /// What is wrong and what to do.
    pub message: String,
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.line {
            Some(l) => write!(f, "{}:{}: {}", self.file.display(), l, self.message),
            None => write!(f, "{}: {}", self.file.display(), self.message),
        }
    }
}

impl Config {
    /// Reads, parses and validates a configuration file, then loads and checks
    /// every journey file it names (paths relative to its directory).
    pub fn load(path: &Path) -> Result<Config, LoadError> {
        let src = std::fs::read_to_string(path).map_err(|e| ConfigError {
            file: path.to_owned(),
            line: None,
            message: format!("cannot read the configuration file: {e}"),
        })?;
        let mut cfg = Config::parse(&src, path)?;
        let base = path.parent().unwrap_or(Path::new("."));
        cfg.compile_journeys(base)?;
        Ok(cfg)
    }

    /// Loads and checks the journey files named by `journeys`, relative to `base`.
    pub fn compile_journeys(&mut self, base: &Path) -> Result<(), LoadError> {
        let compiled = if self.journeys.is_empty() {
            CompiledJourneys::shipped()
        } else {
            let patterns: Vec<&str> = self.journeys.iter().map(String::as_str).collect();
            CompiledJourneys::load(base, &patterns)
        };
        let compiled = compiled.map_err(LoadError::Journeys)?;
        self.compiled = Some(Arc::new(compiled.with_emotion(self.emotion.clone())));
        Ok(())
    }

    /// The compiled journeys: those loaded with the configuration, else the
    /// shipped ones.
    pub fn journeys(&self) -> Result<Arc<CompiledJourneys>, LoadError> {
        match &self.compiled {
            Some(c) => Ok(c.clone()),
            None => {
                let shipped = CompiledJourneys::shipped().map_err(LoadError::Journeys)?;
                Ok(Arc::new(shipped.with_emotion(self.emotion.clone())))
            }
        }
    }

    /// Parses and validates configuration text; `file` names it in errors.
    pub fn parse(src: &str, file: &Path) -> Result<Config, ConfigError> {
        let cfg: Config = toml::from_str(src).map_err(|e| ConfigError {
            file: file.to_owned(),
            line: e.span().map(|s| line_of(src, s.start)),
            message: e.message().trim().to_owned(),
        })?;
        cfg.validate().map_err(|(key, message)| ConfigError {
            file: file.to_owned(),
            line: locate(src, key),
            message: format!("{key}: {message}"),
        })?;
        cfg.collector
            .validate()
            .map_err(|(key, message)| ConfigError {
                file: file.to_owned(),
                line: locate(src, &key),
                message: format!("{key}: {message}"),
            })?;
        cfg.pseudonymize
            .validate()
            .and_then(|()| crate::http_auth::validate(&cfg.http))
            .map_err(|(key, message)| ConfigError {
                file: file.to_owned(),
                line: locate(src, key),
                message: format!("{key}: {message}"),
            })?;
        Ok(cfg)
    }

    /// Reads the pseudonymization secret named by `[pseudonymize]` (at start-up,
    /// not in `rapport validate`, which may run where the secret is not mounted);
    /// errors name `file` and the line of the key.
    pub fn resolve_pseudonymizer(&mut self, file: &Path) -> Result<(), ConfigError> {
        let mut section = self.pseudonymize.clone();
        section.secret_file = section.secret_file.map(|f| beside(file, &f));
        let p = section
            .pseudonymizer()
            .map_err(|e| crate::pseudonym::at_line(file, e))?;
        self.pseudonymizer = p.map(Arc::new);
        Ok(())
    }

    /// Reads the profile API's bearer token named by `[http]`; errors name
    /// `file` and the line of the key.
    pub fn resolve_http_token(&mut self, file: &Path) -> Result<(), ConfigError> {
        let mut http = self.http.clone();
        http.token_file = http.token_file.map(|f| beside(file, &f));
        let t = crate::http_auth::load(&http).map_err(|e| crate::pseudonym::at_line(file, e))?;
        self.http.bearer = t.map(Arc::new);
        Ok(())
    }

    /// Checks the rules types cannot express; returns the offending key and a message.
    pub fn validate(&self) -> Result<(), (&'static str, String)> {
        self.validate_kafka()?;
        self.validate_engine()?;
        self.validate_state()?;
        if !self.http.listen.is_empty() && self.http.addr().is_none() {
            return Err((
                "http.listen",
                format!(
                    "{:?} is not an address like 127.0.0.1:9464 (empty disables the server)",
                    self.http.listen
                ),
            ));
        }
        self.privacy.validate(&self.kafka.touchpoint_topics)?;
        self.identity.validate(&self.kafka.touchpoint_topics)?;
        self.schema_registry.validate()
    }

    /// The `kafka` section: a broker and a group, distinct input and output
    /// topics, and client buffers that hold what the engine sends.
    fn validate_kafka(&self) -> Result<(), (&'static str, String)> {
        let k = &self.kafka;
        if k.bootstrap_servers.trim().is_empty() {
            return Err((
                "kafka.bootstrap_servers",
                "is empty; set it to host:port of a broker, or set RAPPORT_KAFKA_BOOTSTRAP".into(),
            ));
        }
        if k.group_id.trim().is_empty() {
            return Err((
                "kafka.group_id",
                "is empty; every deployment needs a consumer group id, e.g. \"rapport\"".into(),
            ));
        }
        if k.touchpoint_topics.is_empty() || k.touchpoint_topics.iter().any(|t| t.trim().is_empty())
        {
            return Err((
                "kafka.touchpoint_topics",
                "must list at least one non-empty topic name".into(),
            ));
        }
        if k.prefetch_mb == 0 || k.producer_buffer_mb == 0 {
            return Err((
                "kafka.prefetch_mb",
                "kafka.prefetch_mb and kafka.producer_buffer_mb must be at least 1 (MiB)".into(),
            ));
        }
        if k.producer_buffer_mb * 1024 * 1024 < 2 * self.engine.max_record_bytes {
            return Err((
                "kafka.producer_buffer_mb",
                format!(
                    "{} MiB cannot hold two records of engine.max_record_bytes = {}; raise it",
                    k.producer_buffer_mb, self.engine.max_record_bytes
                ),
            ));
        }
        self.validate_output_topics()
    }

    /// The topics the engine writes: named, and none of them read back as
    /// input or shared with the changelog.
    fn validate_output_topics(&self) -> Result<(), (&'static str, String)> {
        let k = &self.kafka;
        for (key, topic) in [
            ("kafka.action_topic", &k.action_topic),
            ("kafka.dead_letter_topic", &k.dead_letter_topic),
        ] {
            if topic.trim().is_empty() {
                return Err((key, "is empty; name the topic to write to".into()));
            }
            if k.touchpoint_topics.contains(topic) {
                return Err((
                    key,
                    format!(
                        "{topic:?} is also a touchpoint topic; output would be read back as input"
                    ),
                ));
            }
        }
        if k.touchpoint_topics.contains(&k.decisions_topic) {
            return Err((
                "kafka.decisions_topic",
                format!(
                    "{:?} is also a touchpoint topic; output would be read back as input",
                    k.decisions_topic
                ),
            ));
        }
        let changelog = k.changelog();
        if k.touchpoint_topics.contains(&changelog)
            || changelog == k.action_topic
            || changelog == k.dead_letter_topic
        {
            return Err((
                "kafka.changelog_topic",
                format!("{changelog:?} is also an input or output topic; name a topic of its own"),
            ));
        }
        Ok(())
    }

    /// The `engine` section: an instance name, and intervals and timeouts
    /// within what Kafka and the engine's loop allow.
    fn validate_engine(&self) -> Result<(), (&'static str, String)> {
        if self.engine.instance_id.trim().is_empty() {
            return Err((
                "engine.instance_id",
                "is empty; give each instance of the group a distinct, stable name".into(),
            ));
        }
        if self.engine.transaction_timeout_ms < 1_000
            || self.engine.transaction_timeout_ms < 10 * self.engine.commit_interval_ms
        {
            return Err((
                "engine.transaction_timeout_ms",
                format!(
                    "{} is too short: use at least 1000 and ten commit intervals (default 10000)",
                    self.engine.transaction_timeout_ms
                ),
            ));
        }
        if !(1_000..=86_400_000).contains(&self.engine.kafka_unavailable_timeout_ms) {
            return Err((
                "engine.kafka_unavailable_timeout_ms",
                format!(
                    "{} is outside 1000..=86400000; 300000 (five minutes) is a good default",
                    self.engine.kafka_unavailable_timeout_ms
                ),
            ));
        }
        if !(5_000..=86_400_000).contains(&self.engine.out_of_group_timeout_ms) {
            return Err((
                "engine.out_of_group_timeout_ms",
                format!(
                    "{} is outside 5000..=86400000; 300000 (five minutes, longer than a rebalance with a group session of 45 s) is a good default",
                    self.engine.out_of_group_timeout_ms
                ),
            ));
        }
        if !(10..=60_000).contains(&self.engine.commit_interval_ms) {
            return Err((
                "engine.commit_interval_ms",
                format!(
                    "{} is outside 10..=60000; 100 is a good default",
                    self.engine.commit_interval_ms
                ),
            ));
        }
        if self.engine.max_record_bytes < 256 {
            return Err((
                "engine.max_record_bytes",
                format!(
                    "{} is too small for any touchpoint; use at least 256 (default 1048576)",
                    self.engine.max_record_bytes
                ),
            ));
        }
        Ok(())
    }

    /// The `state` section: a directory for RocksDB and memory settings in MiB.
    fn validate_state(&self) -> Result<(), (&'static str, String)> {
        if self.state.path.as_os_str().is_empty() {
            return Err((
                "state.path",
                "is empty; name a directory for RocksDB".into(),
            ));
        }
        if self.state.profile_cache_count.is_some() {
            return Err((
                "state.profile_cache",
                "the profile cache is bounded in memory now, not in profiles: remove profile_cache and set state.profile_cache_mb (default 32; profiles take about 1-3 KiB each)".into(),
            ));
        }
        if self.state.block_cache_mb == 0 || self.state.write_buffer_mb == 0 {
            return Err((
                "state.block_cache_mb",
                "block_cache_mb and write_buffer_mb must be at least 1".into(),
            ));
        }
        Ok(())
    }
}

/// `path` relative to the directory of the configuration `file` (absolute paths unchanged).
fn beside(file: &Path, path: &str) -> String {
    let base = file.parent().unwrap_or(Path::new("."));
    base.join(path).display().to_string()
}

/// 1-based line of byte offset `at`.
pub(crate) fn line_of(src: &str, at: usize) -> usize {
    src[..at.min(src.len())]
        .bytes()
        .filter(|&b| b == b'\n')
        .count()
        + 1
}

/// Finds the line that sets dotted `key` (`table.sub.key`), if the file sets it.
pub(crate) fn locate(src: &str, key: &str) -> Option<usize> {
    let (table, leaf) = key.rsplit_once('.').unwrap_or(("", key));
    let mut current = String::new();
    for (i, raw) in src.lines().enumerate() {
        let line = raw.trim();
        if let Some(h) = line.strip_prefix('[').and_then(|l| l.split(']').next()) {
            current = h.trim().to_owned();
            continue;
        }
        if let Some((k, _)) = line.split_once('=') {
            let k = k.trim().trim_matches('"');
            let full = if current.is_empty() {
                k.to_owned()
            } else {
                format!("{current}.{k}")
            };
            if full == key || (current == table && k == leaf) {
                return Some(i + 1);
            }
        }
    }
    // The key is not set: point at its table, if present.
    src.lines()
        .position(|l| l.trim() == format!("[{table}]"))
        .map(|i| i + 1)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(s: &str) -> Result<Config, ConfigError> {
        Config::parse(s, Path::new("rapport.toml"))
    }

    #[test]
    fn a_guarantee_is_named_as_the_configuration_names_it() {
        for g in [Guarantee::AtLeastOnce, Guarantee::ExactlyOnce] {
            let c = parse(&format!("[engine]\nguarantee = {:?}\n", g.as_str())).unwrap();
            assert_eq!(c.engine.guarantee, g);
        }
    }

    #[test]
    fn defaults_are_valid() {
        let c = parse("").unwrap();
        assert_eq!(c.engine.commit_interval_ms, 100);
        assert_eq!(c.kafka.touchpoint_topics, vec!["rapport.touchpoints"]);
    }

    #[test]
    fn the_shipped_example_is_valid_and_matches_the_defaults() {
        let path = Path::new(concat!(env!("CARGO_MANIFEST_DIR"), "/deploy/rapport.toml"));
        let c = Config::load(path).unwrap();
        let d = Config::default();
        assert_eq!(c.emotion, d.emotion);
        let ids: Vec<&str> = c
            .compiled
            .as_ref()
            .unwrap()
            .journeys()
            .iter()
            .map(|j| j.id.as_str())
            .collect();
        assert!(
            ids.contains(&"hesitation_guide") && ids.contains(&"closed_loop_alert"),
            "{ids:?}"
        );
        assert_eq!(c.engine.commit_interval_ms, d.engine.commit_interval_ms);
        assert_eq!(c.state.block_cache_mb, d.state.block_cache_mb);
    }

    #[test]
    fn syntax_errors_name_file_and_line() {
        let e = parse("[kafka]\ngroup_id = \"g\"\n\n[engine]\ncommit_interval_ms = \"fast\"\n")
            .unwrap_err();
        assert_eq!(e.line, Some(5), "{e}");
        assert!(e.to_string().starts_with("rapport.toml:5: "), "{e}");
    }

    #[test]
    fn unknown_keys_are_refused() {
        let e = parse("[engine]\ncommit_interval = 5\n").unwrap_err();
        assert_eq!(e.line, Some(2));
        assert!(e.message.contains("commit_interval"), "{e}");
    }

    #[test]
    fn semantic_errors_name_the_key_line_and_fix() {
        let e = parse("[kafka]\ngroup_id = \"g\"\n[engine]\n# fast\ncommit_interval_ms = 0\n")
            .unwrap_err();
        assert_eq!(e.line, Some(5), "{e}");
        assert!(e.message.contains("engine.commit_interval_ms"), "{e}");
        assert!(e.message.contains("100"), "{e}");

        let e = parse("[kafka]\ntouchpoint_topics = [\"a\"]\naction_topic = \"a\"\n").unwrap_err();
        assert_eq!(e.line, Some(3), "{e}");
    }

    #[test]
    fn the_profile_cache_is_set_in_mebibytes_and_the_old_count_is_refused() {
        assert_eq!(parse("").unwrap().state.profile_cache_mb, 32);
        let c = parse("[state]\nprofile_cache_mb = 16\n").unwrap();
        assert_eq!(c.state.profile_cache_mb, 16);
        let e = parse("[state]\npath = \"s\"\nprofile_cache = 100000\n").unwrap_err();
        assert_eq!(e.line, Some(3), "{e}");
        assert!(e.message.contains("state.profile_cache_mb"), "{e}");
    }

    #[test]
    fn schema_registry_settings_are_checked() {
        let c = parse("[schema_registry]\nurl = \"http://127.0.0.1:8080/apis/ccompat/v7\"\noutput_format = \"avro\"\n").unwrap();
        assert!(c.schema_registry.enabled());
        assert_eq!(c.schema_registry.output_format, OutputFormat::Avro);
        assert!(!parse("").unwrap().schema_registry.enabled());

        let e = parse("[schema_registry]\n\noutput_format = \"avro\"\n").unwrap_err();
        assert_eq!(e.line, Some(3), "{e}");
        assert!(e.message.contains("schema_registry.url"), "{e}");
        let e = parse("[schema_registry]\nurl = \"registry:8081\"\n").unwrap_err();
        assert_eq!(e.line, Some(2), "{e}");
        let e = parse("[schema_registry]\nurl = \"http://r\"\nusername = \"u\"\npassword = \"\"\n")
            .unwrap_err();
        assert!(e.message.contains("password"), "{e}");
        let e = parse("[schema_registry]\noutput_format = \"xml\"\n").unwrap_err();
        assert_eq!(e.line, Some(2), "{e}");
    }
}

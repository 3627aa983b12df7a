//! Rapport: an event-streaming customer-journey engine.
//!
//! Touchpoints arrive on Kafka topics, update a per-customer profile in RocksDB,
//! and trigger actions that go back to Kafka. The domain rules live in
//! [`rapport_model`]; this crate holds the edges around them:
//!
//! - [`config`]: load and validate `rapport.toml`
//! - [`ingest`]: decode and validate records (JSON, Avro single-object, Avro in the
//!   Confluent wire format through a schema registry), the key rule
//! - [`processor`]: records in, actions and state changes out; the one pipeline
//!   that the live engine, `rapport replay`, the tests and the benchmarks drive
//! - [`state`]: profiles and offsets in RocksDB
//! - [`kafka`]: client settings, topic admin, header names
//! - [`memory`]: the C allocator's settings for librdkafka and RocksDB
//! - [`runtime`]: the consume / update / evaluate / produce / commit loop, and the
//!   output encodings (JSON, or Avro under schemas registered at start-up)
//! - [`http`]: metrics, health, readiness, the profile API ([`profile_view`]),
//!   behind a bearer token beyond loopback ([`http_auth`])
//! - [`pseudonym`]: personal identifiers replaced by keyed hashes at ingest
//! - [`broker`]: the local development broker (`deploy/kafka.sh`)
//! - [`demo`]: the guided demo
//! - [`import`]: `rapport import`, store and call-center exports into the touchpoint topic
//! - [`privacy`]: erasure requests, the suppression list, receipts
//! - [`identity`]: identity stitching across partitions (the merge protocol)
//! - [`collect`]: `rapport collect`, the Segment-compatible collector and chat webhooks
#![warn(missing_docs)]

pub mod broker;
pub mod collect;
pub mod config;
pub mod demo;
pub mod http;
pub mod http_auth;
pub mod identity;
pub mod import;
pub mod ingest;
pub mod kafka;
pub mod memory;
pub mod metrics;
pub mod owners;
pub mod privacy;
pub mod processor;
pub mod profile_view;
pub mod pseudonym;
pub mod replay;
pub mod runtime;
pub mod state;

pub use config::Config;

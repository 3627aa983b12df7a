//! End-to-end tests against a real Kafka broker and real RocksDB.
//!
//! The broker is `RAPPORT_KAFKA_BOOTSTRAP` if set, else the local one that
//! `deploy/kafka.sh` starts (or reuses). Every test uses its own topics and
//! consumer group, so they run in parallel.

mod cli;
mod collector;
mod crash;
mod dead_letter;
mod erasure;
mod faults;
mod import;
mod journeys;
mod kcat;
mod kubernetes;
mod memory;
mod metrics;
mod policy_replay;
mod privacy;
mod profiles;
mod prometheus;
mod replay;
mod restart;
mod restore;
mod schema_registry;
mod schemas;
mod stitching;
mod support;
mod timers;
mod topics;

//! Sources that write touchpoints to Rapport's Kafka topics.
//!
//! [`simulator`] generates a population of customers moving across web, app,
//! call center, store and chat, with personas that exercise every journey;
//! [`publish`] writes any record source to a topic at a given rate.
#![warn(missing_docs)]

pub mod publish;
pub mod simulator;

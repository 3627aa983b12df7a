//! Rapport's domain model: touchpoints, actions, the 360-degree customer profile,
//! emotional state, and the journey state each profile carries.
//!
//! Nothing here knows that Kafka, RocksDB or a network exist, so every rule of the
//! customer-experience domain is unit-tested in milliseconds.
#![warn(missing_docs)]

pub mod action;
pub mod duration;
pub mod emotion;
pub mod policy;
pub mod prefetch;
pub mod profile;
pub mod seen;
pub mod testing;
pub mod touchpoint;
pub mod window;

pub use action::{Action, ActionKind, DeliveryChannel, EmotionalState, Reason};
pub use policy::Purpose;
pub use profile::Profile;
pub use touchpoint::{Channel, EventType, Invalid, SurveyKind, Touchpoint};

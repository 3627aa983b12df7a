//! Test support: the real broker, unique topics, producing, draining topics,
//! running the engine until it has committed what was produced, `rapport run`
//! processes, and what a run left behind. One module per concern; every helper
//! is reached as `support::name`.

mod broker;
mod engine;
mod instance;
mod journeys;
mod kafka;
mod outcomes;
pub use broker::*;
pub use engine::*;
pub use instance::*;
pub use journeys::*;
pub use kafka::*;
pub use outcomes::*;

//! The records everything else is about: calls, agents, imported numbers, and the country
//! table that numbers are checked against.
//!
//! This is the bottom layer with `config` and `metrics`: the store persists these records,
//! the API reads and writes them, the call engine and the agent bridge act on them. It
//! depends on none of those, so any of them can use it.

pub mod agent;
pub mod call;
pub mod country;
pub mod number;

pub use agent::{Agent, AudioEncoding, ResponseEngine};
pub use call::{Call, CallStatus, Direction, DisconnectionReason};

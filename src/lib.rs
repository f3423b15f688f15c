//! dialtone: a standalone SIP back-to-back user agent that bridges phone calls to AI voice
//! agents over websockets.
//!
//! The path of a message: a transport ([`sip::transport`]) checks the allowlist and frames
//! bytes into whole messages; [`sip::message`] parses and validates them; the transaction
//! layer ([`sip::transaction`], sans-IO state machines driven by [`sip::endpoint`]) absorbs
//! retransmissions and runs the RFC 3261 timers; the endpoint answers what it serves.
//! The HTTP server ([`http`]) carries the API, health and metrics. Control flows down,
//! events flow up, and no layer reaches around the one below it.

pub mod agent;
pub mod call;
pub mod config;
pub mod http;
pub mod media;
pub mod metrics;
pub mod model;
pub mod sdp;
pub mod server;
pub mod sip;
pub mod store;
pub mod sync;
pub mod webhook;

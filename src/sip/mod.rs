//! The SIP stack: transports, framing, messages, transactions and the endpoint that ties
//! them together.

pub mod auth;
pub mod dialog;
pub mod driver;
pub mod endpoint;
pub mod framing;
mod lex;
pub mod message;
pub mod resolve;
pub mod route;
pub mod transaction;
pub mod transport;
pub mod ua;
pub mod uri;

//! RFC 3261 §17 transactions (with RFC 6026's Accepted states) as sans-IO state machines.

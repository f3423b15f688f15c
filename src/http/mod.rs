//! The HTTP server: API (bearer-key auth), health and metrics.

//! RFC 3263 server location (placeholder, filled in next).

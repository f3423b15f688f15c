//! Bearer-key authentication (`Authorization: Bearer <key>`) for every API route.
//!
//! Keys are compared in constant time against every configured key, so neither which key
//! matched nor how many leading bytes were right shows in the response time. Keys never
//! reach a log line. With no keys configured nothing authenticates: an API left open by a
//! missing setting is worse than one that refuses everyone.

use axum::extract::{Request, State};
use axum::http::header;
use axum::middleware::Next;
use axum::response::Response;

use super::error::ApiError;
use super::AppState;

/// Middleware: passes the request on only if it carries one of the configured keys.
pub async fn require_api_key(
    State(state): State<AppState>,
    request: Request,
    next: Next,
) -> Result<Response, ApiError> {
    let token = request
        .headers()
        .get(header::AUTHORIZATION)
        .and_then(|value| bearer_token(value.as_bytes()));
    match token {
        Some(token) if key_matches(token, &state.keys) => Ok(next.run(request).await),
        _ => Err(ApiError::Unauthorized),
    }
}

/// The credentials of a `Bearer` authorization value. The scheme is case-insensitive
/// (RFC 9110 §11.1); anything but a single non-empty token after it is rejected.
fn bearer_token(value: &[u8]) -> Option<&[u8]> {
    const SCHEME: &[u8] = b"bearer ";
    if value.len() <= SCHEME.len() || !value[..SCHEME.len()].eq_ignore_ascii_case(SCHEME) {
        return None;
    }
    let token = value[SCHEME.len()..].trim_ascii();
    if token.is_empty() || token.iter().any(|b| b.is_ascii_whitespace()) {
        return None;
    }
    Some(token)
}

/// True if `token` equals any key. Every key is compared in full, with no early exit.
pub(crate) fn key_matches(token: &[u8], keys: &[Box<[u8]>]) -> bool {
    let mut found = false;
    for key in keys {
        // `|` rather than `||`: keep comparing after a match.
        found |= constant_time_eq(token, key);
    }
    found
}

/// Byte equality whose running time depends only on the lengths, not on the contents.
/// The loop runs over the presented token (whose length the client already knows), so a
/// key's length shows only as the one length check, which cannot be avoided.
fn constant_time_eq(presented: &[u8], key: &[u8]) -> bool {
    if key.is_empty() {
        return false;
    }
    let mut diff = u8::from(presented.len() != key.len());
    for (i, byte) in presented.iter().enumerate() {
        // Wrapping the index keeps every access in bounds without a data-dependent branch.
        diff |= byte ^ key[i % key.len()];
    }
    // Stops the optimiser from turning the fold into an early-exit comparison.
    std::hint::black_box(diff) == 0
}

#[cfg(test)]
mod tests {
    use super::*;

    fn keys(list: &[&str]) -> Vec<Box<[u8]>> {
        list.iter().map(|k| k.as_bytes().into()).collect()
    }

    #[test]
    fn parses_bearer_tokens() {
        assert_eq!(bearer_token(b"Bearer abc"), Some(&b"abc"[..]));
        assert_eq!(bearer_token(b"bearer   abc "), Some(&b"abc"[..]));
        assert_eq!(bearer_token(b"BEARER abc"), Some(&b"abc"[..]));
        assert_eq!(bearer_token(b"Bearer "), None);
        assert_eq!(bearer_token(b"Bearer"), None);
        assert_eq!(bearer_token(b"Basic abc"), None);
        assert_eq!(bearer_token(b"Bearerabc"), None);
        assert_eq!(bearer_token(b"Bearer a b"), None);
    }

    #[test]
    fn compares_whole_keys() {
        let k = keys(&["key-one-1234", "key-two-5678"]);
        assert!(key_matches(b"key-one-1234", &k));
        assert!(key_matches(b"key-two-5678", &k));
        assert!(!key_matches(b"key-one-123", &k));
        assert!(!key_matches(b"key-one-12345", &k));
        assert!(!key_matches(b"key-one-1234key-one-1234", &k));
        assert!(!key_matches(b"", &k));
        assert!(!key_matches(b"key-one-1234", &[]));
        assert!(!key_matches(b"", &keys(&[""])));
    }
}

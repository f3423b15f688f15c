//! One error type for every HTTP answer that is not a success, so clients (the Retell SDK,
//! curl, load balancers) always get the same JSON shape:
//! `{"status": 400, "error": "bad_request", "message": "...", "field": "agent_id"}`.
//! `field` appears only when a request body names a bad field.
//!
//! [`ApiJson`] is the body extractor handlers use instead of `axum::Json`, so a body that
//! does not deserialize becomes a 400 naming the field rather than axum's plain-text 422.

use axum::body::Bytes;
use axum::extract::rejection::BytesRejection;
use axum::extract::{FromRequest, Request};
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use serde::de::DeserializeOwned;
use serde::Serialize;

/// Every error the HTTP layer answers with. The `Display` text is what the client sees,
/// except for [`ApiError::Internal`], whose cause is logged and never sent.
#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    #[error("missing or invalid API key")]
    Unauthorized,
    #[error("{0}")]
    NotFound(String),
    #[error("method not allowed")]
    MethodNotAllowed,
    /// The request is valid but the resource's state forbids it (a live call cannot be
    /// deleted, an ended call cannot be stopped).
    #[error("{0}")]
    Conflict(String),
    /// A request the client must fix; `field` names the offending field when known.
    #[error("{message}")]
    BadRequest {
        field: Option<String>,
        message: String,
    },
    #[error("request body must be JSON (Content-Type: application/json)")]
    UnsupportedMediaType,
    #[error("request body is too large")]
    PayloadTooLarge,
    /// A fault on our side. The cause goes to the log only.
    #[error("internal error: {0}")]
    Internal(Box<dyn std::error::Error + Send + Sync>),
}

impl ApiError {
    /// A 400 about one named field.
    pub fn bad_field(field: impl Into<String>, message: impl Into<String>) -> Self {
        ApiError::BadRequest {
            field: Some(field.into()),
            message: message.into(),
        }
    }

    /// Wraps any error as a 500 whose details stay in the log.
    pub fn internal(cause: impl Into<Box<dyn std::error::Error + Send + Sync>>) -> Self {
        ApiError::Internal(cause.into())
    }

    pub fn status(&self) -> StatusCode {
        match self {
            ApiError::Unauthorized => StatusCode::UNAUTHORIZED,
            ApiError::NotFound(_) => StatusCode::NOT_FOUND,
            ApiError::MethodNotAllowed => StatusCode::METHOD_NOT_ALLOWED,
            ApiError::Conflict(_) => StatusCode::CONFLICT,
            ApiError::BadRequest { .. } => StatusCode::BAD_REQUEST,
            ApiError::UnsupportedMediaType => StatusCode::UNSUPPORTED_MEDIA_TYPE,
            ApiError::PayloadTooLarge => StatusCode::PAYLOAD_TOO_LARGE,
            ApiError::Internal(_) => StatusCode::INTERNAL_SERVER_ERROR,
        }
    }

    /// The stable machine-readable code in the `error` field.
    pub fn code(&self) -> &'static str {
        match self {
            ApiError::Unauthorized => "unauthorized",
            ApiError::NotFound(_) => "not_found",
            ApiError::MethodNotAllowed => "method_not_allowed",
            ApiError::Conflict(_) => "conflict",
            ApiError::BadRequest { .. } => "bad_request",
            ApiError::UnsupportedMediaType => "unsupported_media_type",
            ApiError::PayloadTooLarge => "payload_too_large",
            ApiError::Internal(_) => "internal",
        }
    }
}

#[derive(Serialize)]
struct ErrorBody<'a> {
    status: u16,
    error: &'static str,
    message: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    field: Option<&'a str>,
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let status = self.status();
        let message = match &self {
            ApiError::Internal(cause) => {
                tracing::error!(cause = %cause, "internal error answering an HTTP request");
                "internal server error".to_owned()
            }
            other => other.to_string(),
        };
        let field = match &self {
            ApiError::BadRequest { field, .. } => field.as_deref(),
            _ => None,
        };
        let body = ErrorBody {
            status: status.as_u16(),
            error: self.code(),
            message,
            field,
        };
        let mut response = (status, axum::Json(body)).into_response();
        if matches!(self, ApiError::Unauthorized) {
            // RFC 6750 §3: a 401 for a bearer-protected resource names the scheme.
            response
                .headers_mut()
                .insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
        }
        if matches!(self, ApiError::Conflict(_)) {
            // The official SDKs retry 409s by default; repeating cannot help here.
            response
                .headers_mut()
                .insert("x-should-retry", HeaderValue::from_static("false"));
        }
        response
    }
}

impl From<crate::store::StoreError> for ApiError {
    fn from(err: crate::store::StoreError) -> Self {
        use crate::store::StoreError;
        match err {
            StoreError::UnknownCursor => {
                ApiError::bad_field("pagination_key", "pagination_key does not name a record")
            }
            StoreError::Duplicate(what) => ApiError::Conflict(format!("{what} already exists")),
            other => ApiError::internal(other),
        }
    }
}

/// A JSON request body. Rejections become [`ApiError`]s: a body that does not match `T`
/// is a 400 whose `field` is the path to the bad value (`direction`, `agents[0].weight`)
/// and whose message is serde's.
#[derive(Debug, Clone, Copy, Default)]
pub struct ApiJson<T>(pub T);

impl<T, S> FromRequest<S> for ApiJson<T>
where
    T: DeserializeOwned,
    S: Send + Sync,
{
    type Rejection = ApiError;

    async fn from_request(req: Request, state: &S) -> Result<Self, Self::Rejection> {
        if !is_json(req.headers()) {
            return Err(ApiError::UnsupportedMediaType);
        }
        let bytes = Bytes::from_request(req, state)
            .await
            .map_err(bytes_rejection)?;
        decode(&bytes).map(ApiJson)
    }
}

/// For `#[serde(default, deserialize_with = "nullable")]` on an `Option<Option<T>>`:
/// `Some(None)` for an explicit `null` (an update clears the field), `None` when absent.
pub fn nullable<'de, D, T>(deserializer: D) -> Result<Option<Option<T>>, D::Error>
where
    D: serde::Deserializer<'de>,
    T: serde::Deserialize<'de>,
{
    <Option<T> as serde::Deserialize>::deserialize(deserializer).map(Some)
}

fn bytes_rejection(rejection: BytesRejection) -> ApiError {
    if rejection.status() == StatusCode::PAYLOAD_TOO_LARGE {
        ApiError::PayloadTooLarge
    } else {
        ApiError::BadRequest {
            field: None,
            message: "could not read the request body".to_owned(),
        }
    }
}

/// `application/json`, or any `application/*+json`, with or without parameters.
fn is_json(headers: &HeaderMap) -> bool {
    let Some(value) = headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
    else {
        return false;
    };
    let essence = value
        .split(';')
        .next()
        .unwrap_or_default()
        .trim()
        .to_ascii_lowercase();
    match essence.strip_prefix("application/") {
        Some(sub) => sub == "json" || sub.ends_with("+json"),
        None => false,
    }
}

/// Deserializes tracking the path, so the 400 can name the field and not just a column.
pub(crate) fn decode<T: DeserializeOwned>(bytes: &[u8]) -> Result<T, ApiError> {
    let mut de = serde_json::Deserializer::from_slice(bytes);
    let value = serde_path_to_error::deserialize(&mut de).map_err(path_error)?;
    // Trailing garbage after the value is a malformed body too.
    de.end().map_err(|e| ApiError::BadRequest {
        field: None,
        message: e.to_string(),
    })?;
    Ok(value)
}

fn path_error(err: serde_path_to_error::Error<serde_json::Error>) -> ApiError {
    let path = err.path().to_string();
    let inner = err.into_inner();
    let message = inner.to_string();
    if inner.is_syntax() || inner.is_eof() {
        return ApiError::BadRequest {
            field: None,
            message,
        };
    }
    // A missing field is reported at its parent's path; serde's message names it.
    let missing = message
        .strip_prefix("missing field `")
        .and_then(|rest| rest.split_once('`'))
        .map(|(name, _)| name.to_owned());
    let (field, message) = match (path.as_str(), missing) {
        (".", missing) => (missing, message),
        (parent, Some(name)) => (Some(format!("{parent}.{name}")), message),
        // serde's own text does not say where a bad value was; lead with the path.
        (at, None) => (Some(at.to_owned()), format!("{at}: {message}")),
    };
    ApiError::BadRequest { field, message }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde::Deserialize;

    #[derive(Debug, Deserialize)]
    #[allow(dead_code)]
    struct Inner {
        weight: f64,
    }

    #[derive(Debug, Deserialize)]
    #[allow(dead_code)]
    struct Body {
        agent_id: String,
        #[serde(default)]
        agents: Vec<Inner>,
    }

    fn field_of(json: &str) -> Option<String> {
        match decode::<Body>(json.as_bytes()) {
            Err(ApiError::BadRequest { field, .. }) => field,
            other => panic!("expected a 400, got {other:?}"),
        }
    }

    #[test]
    fn names_the_field_at_fault() {
        assert_eq!(field_of("{}").as_deref(), Some("agent_id"));
        assert_eq!(field_of(r#"{"agent_id": 5}"#).as_deref(), Some("agent_id"));
        assert_eq!(
            field_of(r#"{"agent_id": "a", "agents": [{"weight": "x"}]}"#).as_deref(),
            Some("agents[0].weight")
        );
        assert_eq!(
            field_of(r#"{"agent_id": "a", "agents": [{}]}"#).as_deref(),
            Some("agents[0].weight")
        );
        assert_eq!(field_of("{").as_deref(), None);
        assert_eq!(field_of(r#"{"agent_id": "a"} x"#).as_deref(), None);
    }

    #[test]
    fn unknown_fields_are_ignored() {
        let body: Body = decode(br#"{"agent_id": "a", "voice_id": "none"}"#).unwrap();
        assert_eq!(body.agent_id, "a");
    }

    #[test]
    fn json_content_types() {
        let with = |v: &'static str| {
            let mut h = HeaderMap::new();
            h.insert(header::CONTENT_TYPE, HeaderValue::from_static(v));
            is_json(&h)
        };
        assert!(with("application/json"));
        assert!(with("Application/JSON; charset=utf-8"));
        assert!(with("application/merge-patch+json"));
        assert!(!with("text/json"));
        assert!(!with("text/plain"));
        assert!(!is_json(&HeaderMap::new()));
    }

    #[tokio::test]
    async fn internal_errors_do_not_leak() {
        let response = ApiError::internal("db password is hunter2").into_response();
        assert_eq!(response.status(), StatusCode::INTERNAL_SERVER_ERROR);
        let body = axum::body::to_bytes(response.into_body(), 4096)
            .await
            .unwrap();
        let json: serde_json::Value = serde_json::from_slice(&body).unwrap();
        assert_eq!(json["status"], 500);
        assert_eq!(json["error"], "internal");
        assert!(!String::from_utf8_lossy(&body).contains("hunter2"));
    }
}

//! Agents: `POST /create-agent`, `GET /get-agent/{agent_id}`, `GET /list-agents`,
//! `POST /v2/list-agents`, `PATCH /update-agent/{agent_id}`, `DELETE /delete-agent/{agent_id}`.
//!
//! The only response engine is this server's own `audio-websocket`. Retell's other agent
//! fields (`voice_id`, `language`, …) are accepted and ignored, so SDK code written for
//! Retell runs unchanged.
//!
//! Header values of the response engine often carry credentials (`Authorization` for the
//! agent's websocket), so responses show header names with every value replaced by
//! [`REDACTED`]. Sending [`REDACTED`] back as a value in an update keeps the stored value,
//! so a read-modify-write round trip does not destroy secrets it cannot see.

use std::collections::{BTreeMap, HashMap};

use axum::body::Bytes;
use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde::Deserialize;
use serde_json::{json, Value};

use super::error::{decode, nullable};
use super::{ApiError, ApiJson, AppState};
use crate::model::{Agent, AudioEncoding, ResponseEngine};
use crate::store::{new_id, now_ms, SortOrder};

/// What a response shows instead of an agent header's value.
pub const REDACTED: &str = "***";

/// The one response engine type this server runs.
pub const ENGINE_TYPE: &str = "audio-websocket";

const DEFAULT_MAX_CALL_DURATION_MS: i64 = 3_600_000;
const DEFAULT_END_CALL_AFTER_SILENCE_MS: i64 = 600_000;
const DEFAULT_RING_DURATION_MS: i64 = 30_000;
/// Retell's documented bounds.
const MAX_CALL_DURATION_RANGE: (i64, i64) = (60_000, 7_200_000);
const END_CALL_AFTER_SILENCE_RANGE: (i64, i64) = (10_000, 7_200_000);
const RING_DURATION_RANGE: (i64, i64) = (5_000, 300_000);
const MAX_URL_LEN: usize = 2048;
const MAX_HEADERS: usize = 32;
const MAX_NAME_LEN: usize = 256;

/// Headers the websocket client sets itself; letting an agent override them would break
/// the upgrade handshake.
const RESERVED_HEADERS: &[&str] = &[
    "host",
    "connection",
    "upgrade",
    "content-length",
    "transfer-encoding",
    "sec-websocket-key",
    "sec-websocket-version",
    "sec-websocket-extensions",
    "sec-websocket-accept",
];

/// `response_engine` as a request carries it; checked by [`EngineIn::validate`].
#[derive(Debug, Clone, Deserialize)]
pub struct EngineIn {
    #[serde(rename = "type")]
    kind: String,
    url: Option<String>,
    audio_encoding: Option<AudioEncoding>,
    #[serde(default)]
    headers: Option<BTreeMap<String, String>>,
}

impl EngineIn {
    /// The engine to store, or a 400 naming the field at fault. `previous` supplies the
    /// values of headers sent back as [`REDACTED`].
    fn validate(self, previous: Option<&ResponseEngine>) -> Result<ResponseEngine, ApiError> {
        if self.kind != ENGINE_TYPE {
            return Err(ApiError::bad_field(
                "response_engine.type",
                format!(
                    "response_engine.type must be \"{ENGINE_TYPE}\" (got \"{}\"): this server \
                     bridges calls to your own websocket",
                    self.kind
                ),
            ));
        }
        let url = self.url.ok_or_else(|| {
            ApiError::bad_field("response_engine.url", "response_engine.url is required")
        })?;
        check_url(&url, &["ws://", "wss://"], "response_engine.url")?;
        let mut headers = BTreeMap::new();
        let given = self.headers.unwrap_or_default();
        if given.len() > MAX_HEADERS {
            return Err(ApiError::bad_field(
                "response_engine.headers",
                format!("at most {MAX_HEADERS} headers"),
            ));
        }
        for (name, value) in given {
            let field = format!("response_engine.headers.{name}");
            if axum::http::HeaderName::from_bytes(name.as_bytes()).is_err() {
                return Err(ApiError::bad_field(field, "not a valid HTTP header name"));
            }
            if RESERVED_HEADERS.contains(&name.to_ascii_lowercase().as_str()) {
                return Err(ApiError::bad_field(
                    field,
                    format!(
                        "header {name} is set by the websocket client and cannot be overridden"
                    ),
                ));
            }
            let value = if value == REDACTED {
                previous
                    .and_then(|engine| engine.headers.get(&name))
                    .cloned()
                    .ok_or_else(|| {
                        ApiError::bad_field(
                            field.clone(),
                            format!("\"{REDACTED}\" keeps a stored value, but {name} has none"),
                        )
                    })?
            } else {
                value
            };
            if axum::http::HeaderValue::from_str(&value).is_err() {
                // The value itself is never echoed: it may be a secret.
                return Err(ApiError::bad_field(field, "not a valid HTTP header value"));
            }
            headers.insert(name, value);
        }
        Ok(ResponseEngine {
            kind: ENGINE_TYPE.to_owned(),
            url,
            audio_encoding: self.audio_encoding.unwrap_or_default(),
            headers,
        })
    }
}

/// Checks an absolute URL with one of `schemes` and a host; length-bounded, no spaces.
pub(crate) fn check_url(url: &str, schemes: &[&str], field: &str) -> Result<(), ApiError> {
    let bad = |why: &str| ApiError::bad_field(field, format!("{field} {why}"));
    if url.len() > MAX_URL_LEN {
        return Err(bad(&format!("is longer than {MAX_URL_LEN} bytes")));
    }
    let Some(rest) = schemes.iter().find_map(|s| {
        url.get(..s.len())
            .filter(|p| p.eq_ignore_ascii_case(s))
            .map(|_| &url[s.len()..])
    }) else {
        return Err(bad(&format!("must start with {}", schemes.join(" or "))));
    };
    let host = rest.split(['/', '?', '#']).next().unwrap_or_default();
    if host.is_empty() || host.starts_with(':') {
        return Err(bad("has no host"));
    }
    if url.chars().any(|c| c.is_whitespace() || c.is_control()) {
        return Err(bad("must not contain spaces or control characters"));
    }
    Ok(())
}

fn check_range(field: &str, value: i64, (lo, hi): (i64, i64)) -> Result<i64, ApiError> {
    if (lo..=hi).contains(&value) {
        Ok(value)
    } else {
        Err(ApiError::bad_field(
            field,
            format!("{field} must be between {lo} and {hi}"),
        ))
    }
}

fn check_name(name: Option<String>) -> Result<Option<String>, ApiError> {
    match name {
        Some(n) if n.len() > MAX_NAME_LEN => Err(ApiError::bad_field(
            "agent_name",
            format!("agent_name is longer than {MAX_NAME_LEN} bytes"),
        )),
        other => Ok(other),
    }
}

fn check_webhook(url: Option<String>) -> Result<Option<String>, ApiError> {
    if let Some(url) = &url {
        check_url(url, &["http://", "https://"], "webhook_url")?;
    }
    Ok(url)
}

#[derive(Debug, Deserialize)]
pub struct CreateAgent {
    response_engine: EngineIn,
    agent_name: Option<String>,
    webhook_url: Option<String>,
    max_call_duration_ms: Option<i64>,
    end_call_after_silence_ms: Option<i64>,
    ring_duration_ms: Option<i64>,
    forward_early_media: Option<bool>,
}

#[derive(Debug, Deserialize)]
pub struct UpdateAgent {
    #[serde(default, deserialize_with = "nullable")]
    agent_name: Option<Option<String>>,
    response_engine: Option<EngineIn>,
    #[serde(default, deserialize_with = "nullable")]
    webhook_url: Option<Option<String>>,
    max_call_duration_ms: Option<i64>,
    end_call_after_silence_ms: Option<i64>,
    ring_duration_ms: Option<i64>,
    forward_early_media: Option<bool>,
}

/// The agent object of responses: the record with header values redacted, plus the
/// `channel` Retell's SDK reads.
pub fn agent_json(agent: &Agent) -> Value {
    let headers: BTreeMap<&str, &str> = agent
        .response_engine
        .headers
        .keys()
        .map(|name| (name.as_str(), REDACTED))
        .collect();
    json!({
        "agent_id": agent.agent_id,
        "agent_name": agent.agent_name,
        "version": agent.version,
        "response_engine": {
            "type": agent.response_engine.kind,
            "url": agent.response_engine.url,
            "audio_encoding": agent.response_engine.audio_encoding,
            "headers": headers,
        },
        "webhook_url": agent.webhook_url,
        "max_call_duration_ms": agent.max_call_duration_ms,
        "end_call_after_silence_ms": agent.end_call_after_silence_ms,
        "ring_duration_ms": agent.ring_duration_ms,
        "forward_early_media": agent.forward_early_media,
        "last_modification_timestamp": agent.last_modification_timestamp,
        "channel": "voice",
        "is_published": false,
    })
}

fn not_found(agent_id: &str) -> ApiError {
    ApiError::NotFound(format!("agent {agent_id} not found"))
}

/// `POST /create-agent` → 201 with the agent.
pub async fn create(
    State(state): State<AppState>,
    ApiJson(body): ApiJson<CreateAgent>,
) -> Result<Response, ApiError> {
    let response_engine = body.response_engine.validate(None)?;
    let agent = Agent {
        agent_id: new_id("agent_"),
        agent_name: check_name(body.agent_name)?,
        version: 0,
        response_engine,
        webhook_url: check_webhook(body.webhook_url)?,
        max_call_duration_ms: check_range(
            "max_call_duration_ms",
            body.max_call_duration_ms
                .unwrap_or(DEFAULT_MAX_CALL_DURATION_MS),
            MAX_CALL_DURATION_RANGE,
        )?,
        end_call_after_silence_ms: check_range(
            "end_call_after_silence_ms",
            body.end_call_after_silence_ms
                .unwrap_or(DEFAULT_END_CALL_AFTER_SILENCE_MS),
            END_CALL_AFTER_SILENCE_RANGE,
        )?,
        ring_duration_ms: check_range(
            "ring_duration_ms",
            body.ring_duration_ms.unwrap_or(DEFAULT_RING_DURATION_MS),
            RING_DURATION_RANGE,
        )?,
        forward_early_media: body.forward_early_media.unwrap_or(false),
        last_modification_timestamp: now_ms(),
    };
    state.store().create_agent(&agent).await?;
    tracing::info!(agent_id = %agent.agent_id, "agent created");
    Ok((StatusCode::CREATED, Json(agent_json(&agent))).into_response())
}

/// `GET /get-agent/{agent_id}`. A `version` query parameter is accepted; only the latest
/// version is kept, so it is what every request gets.
pub async fn retrieve(
    State(state): State<AppState>,
    Path(agent_id): Path<String>,
) -> Result<Json<Value>, ApiError> {
    let agent = state
        .store()
        .get_agent(&agent_id)
        .await?
        .ok_or_else(|| not_found(&agent_id))?;
    Ok(Json(agent_json(&agent)))
}

/// `GET /list-agents`: every agent, oldest first, as a bare array (Retell's v1 listing).
pub async fn list(State(state): State<AppState>) -> Result<Json<Value>, ApiError> {
    let page = state
        .store()
        .list_agents(SortOrder::Ascending, None, None)
        .await?;
    Ok(Json(Value::Array(
        page.items.iter().map(agent_json).collect(),
    )))
}

/// `POST /v2/list-agents?limit=&pagination_key=&sort_order=` (what the current SDK's
/// `client.agent.list()` calls): one page, `{"items", "has_more", "pagination_key"}`.
/// `filter_criteria` in the body is not supported and is refused rather than ignored, so
/// nobody mistakes an unfiltered page for a filtered one.
pub async fn list_v2(
    State(state): State<AppState>,
    Query(query): Query<HashMap<String, String>>,
    body: Bytes,
) -> Result<Json<Value>, ApiError> {
    if !body.iter().all(u8::is_ascii_whitespace) {
        let body: Value = decode(&body)?;
        let filtered = body
            .get("filter_criteria")
            .is_some_and(|f| !f.is_null() && f.as_object().is_none_or(|o| !o.is_empty()));
        if filtered {
            return Err(ApiError::bad_field(
                "filter_criteria",
                "filter_criteria is not supported when listing agents",
            ));
        }
    }
    let (limit, sort_order) = super::paging::from_query(&query)?;
    let page = state
        .store()
        .list_agents(
            sort_order,
            Some(limit),
            query.get("pagination_key").map(String::as_str),
        )
        .await?;
    let items: Vec<Value> = page
        .items
        .iter()
        .map(|agent| {
            let mut item = agent_json(agent);
            item["is_suspended"] = json!(false);
            item["tags"] = json!({});
            item["user_modified_timestamp"] = json!(agent.last_modification_timestamp);
            item
        })
        .collect();
    let next = page
        .has_more
        .then(|| page.items.last().map(|a| a.agent_id.clone()))
        .flatten();
    Ok(Json(json!({
        "items": items,
        "has_more": page.has_more,
        "pagination_key": next,
    })))
}

/// `PATCH /update-agent/{agent_id}`: changes the fields present; `null` clears
/// `agent_name` and `webhook_url`. A new `response_engine` replaces the old one whole
/// (with [`REDACTED`] header values kept). Bumps `version`.
pub async fn update(
    State(state): State<AppState>,
    Path(agent_id): Path<String>,
    ApiJson(body): ApiJson<UpdateAgent>,
) -> Result<Json<Value>, ApiError> {
    // Everything that does not depend on the stored agent is checked before any write.
    let agent_name = body.agent_name.map(check_name).transpose()?;
    let webhook_url = body.webhook_url.map(check_webhook).transpose()?;
    let max = body
        .max_call_duration_ms
        .map(|v| check_range("max_call_duration_ms", v, MAX_CALL_DURATION_RANGE))
        .transpose()?;
    let silence = body
        .end_call_after_silence_ms
        .map(|v| check_range("end_call_after_silence_ms", v, END_CALL_AFTER_SILENCE_RANGE))
        .transpose()?;
    let ring = body
        .ring_duration_ms
        .map(|v| check_range("ring_duration_ms", v, RING_DURATION_RANGE))
        .transpose()?;
    let engine_in = body.response_engine;
    let updated = state
        .store()
        .update_agent(&agent_id, now_ms(), |agent: &mut Agent| {
            if let Some(engine) = &engine_in {
                // Validated on every attempt: `***` headers resolve against the latest.
                agent.response_engine = engine.clone().validate(Some(&agent.response_engine))?;
            }
            if let Some(name) = &agent_name {
                agent.agent_name = name.clone();
            }
            if let Some(url) = &webhook_url {
                agent.webhook_url = url.clone();
            }
            if let Some(v) = max {
                agent.max_call_duration_ms = v;
            }
            if let Some(v) = silence {
                agent.end_call_after_silence_ms = v;
            }
            if let Some(v) = ring {
                agent.ring_duration_ms = v;
            }
            if let Some(v) = body.forward_early_media {
                agent.forward_early_media = v;
            }
            Ok::<(), ApiError>(())
        })
        .await?
        .ok_or_else(|| not_found(&agent_id))?;
    tracing::info!(agent_id = %agent_id, version = updated.version, "agent updated");
    Ok(Json(agent_json(&updated)))
}

/// `DELETE /delete-agent/{agent_id}` → 204.
pub async fn remove(
    State(state): State<AppState>,
    Path(agent_id): Path<String>,
) -> Result<StatusCode, ApiError> {
    if state.store().delete_agent(&agent_id).await? {
        tracing::info!(agent_id = %agent_id, "agent deleted");
        Ok(StatusCode::NO_CONTENT)
    } else {
        Err(not_found(&agent_id))
    }
}

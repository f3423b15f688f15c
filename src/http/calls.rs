//! Calls: `POST /v2/register-phone-call`, `GET /v2/get-call/{call_id}`,
//! `POST /v3/list-calls`, `PATCH /v2/update-call/{call_id}`,
//! `DELETE /v2/delete-call/{call_id}`, `POST /v2/stop-call/{call_id}`.
//!
//! A registered call is a promise: dial `sip:{call_id}@{sip.public_host}` before
//! `registered_until` and the call engine bridges it to the agent. Responses are the call
//! object of [`Call`], whose field names are Retell's.

use std::collections::BTreeMap;

use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde::Deserialize;
use serde_json::{json, Value};

use super::error::nullable;
use super::{ApiError, ApiJson, AppState};
use crate::model::country::{admits, country_of};
use crate::model::number::PhoneNumber;
use crate::model::{Call, CallStatus, Direction, DisconnectionReason};
use crate::sip::uri::host_for_uri;
use crate::store::{
    new_id, now_ms, AgentMatch, CallFilter, CallUpdate, DeleteCall, NumberMatch, SortOrder,
    TextMatch,
};

/// Retell's limit on `metadata`; the same bound holds the dynamic variables.
const MAX_JSON_BYTES: usize = 50 * 1024;
const MAX_NUMBER_LEN: usize = 64;

fn not_found(call_id: &str) -> ApiError {
    ApiError::NotFound(format!("call {call_id} not found"))
}

/// `agent_version`: the SDK types it as a string or an integer.
#[derive(Debug, Deserialize)]
#[serde(untagged)]
enum Version {
    Number(i64),
    Text(String),
}

#[derive(Debug, Deserialize)]
pub struct RegisterPhoneCall {
    agent_id: String,
    agent_version: Option<Version>,
    from_number: Option<String>,
    to_number: Option<String>,
    direction: Option<Direction>,
    metadata: Option<Value>,
    retell_llm_dynamic_variables: Option<BTreeMap<String, String>>,
}

/// A call's `metadata` and dynamic variables, each within Retell's size limit.
fn check_context(
    metadata: Option<&Value>,
    variables: Option<&BTreeMap<String, String>>,
) -> Result<(), ApiError> {
    check_size("metadata", metadata)?;
    check_size("retell_llm_dynamic_variables", variables)
}

fn check_size<T: serde::Serialize>(field: &str, value: Option<&T>) -> Result<(), ApiError> {
    let size = value
        .map(|v| serde_json::to_vec(v).map(|b| b.len()).unwrap_or(usize::MAX))
        .unwrap_or(0);
    if size > MAX_JSON_BYTES {
        return Err(ApiError::bad_field(
            field,
            format!("{field} is larger than {MAX_JSON_BYTES} bytes"),
        ));
    }
    Ok(())
}

fn check_number(field: &str, number: Option<String>) -> Result<Option<String>, ApiError> {
    match number {
        Some(n) if n.len() > MAX_NUMBER_LEN || n.chars().any(char::is_control) => Err(
            ApiError::bad_field(field, format!("{field} is not a phone number")),
        ),
        other => Ok(other),
    }
}

/// `sip:{user}@{host}`, bracketing an IPv6 host.
fn sip_uri(user: &str, host: &str) -> String {
    format!("sip:{user}@{}", host_for_uri(host))
}

/// `POST /v2/register-phone-call` → 201 with the call, `call_status: "registered"`.
/// `agent_override` is ignored (it tunes Retell-hosted LLMs, which this server has none of).
pub async fn register_phone_call(
    State(state): State<AppState>,
    ApiJson(body): ApiJson<RegisterPhoneCall>,
) -> Result<Response, ApiError> {
    check_context(
        body.metadata.as_ref(),
        body.retell_llm_dynamic_variables.as_ref(),
    )?;
    let from_number = check_number("from_number", body.from_number)?;
    let to_number = check_number("to_number", body.to_number)?;
    let agent = state
        .store()
        .get_agent(&body.agent_id)
        .await?
        .ok_or_else(|| ApiError::NotFound(format!("agent {} not found", body.agent_id)))?;
    if let Some(version) = body.agent_version {
        let asked = match version {
            Version::Number(n) => Some(n),
            Version::Text(t) => t.trim().parse().ok(),
        };
        if asked != Some(agent.version) {
            return Err(ApiError::bad_field(
                "agent_version",
                format!(
                    "only the latest version of agent {} ({}) can take calls",
                    agent.agent_id, agent.version
                ),
            ));
        }
    }
    let now = now_ms();
    let window = i64::try_from(state.registered_call_timeout.as_millis()).unwrap_or(i64::MAX);
    let call_id = new_id("call_");
    let call = Call {
        sip_uri: Some(sip_uri(&call_id, &state.public_host)),
        from_number,
        to_number,
        metadata: body.metadata.filter(|m| !m.is_null()),
        retell_llm_dynamic_variables: body.retell_llm_dynamic_variables,
        registered_until: Some(now.saturating_add(window)),
        ..Call::new(call_id, &agent, body.direction.unwrap_or_default(), now)
    };
    state.store().insert_call(&call).await?;
    tracing::info!(call_id = %call.call_id, agent_id = %call.agent_id, "call registered");
    Ok((StatusCode::CREATED, Json(call)).into_response())
}

/// `GET /v2/get-call/{call_id}`.
pub async fn retrieve(
    State(state): State<AppState>,
    Path(call_id): Path<String>,
) -> Result<Json<Call>, ApiError> {
    let call = state
        .store()
        .get_call(&call_id)
        .await?
        .ok_or_else(|| not_found(&call_id))?;
    Ok(Json(call))
}

/// `filter_criteria` of `/v3/list-calls`, in the SDK's shape
/// (`{"call_status": {"op": "in", "type": "enum", "value": [...]}}`). Retell filters that
/// mean nothing here (cost, sentiment, latency, …) are refused by name instead of being
/// silently ignored.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct FilterIn {
    agent: Option<Vec<AgentIn>>,
    call_id: Option<TextIn>,
    call_status: Option<EnumIn>,
    call_type: Option<EnumIn>,
    direction: Option<EnumIn>,
    disconnection_reason: Option<EnumIn>,
    from_number: Option<TextIn>,
    to_number: Option<TextIn>,
    start_timestamp: Option<NumberIn>,
    end_timestamp: Option<NumberIn>,
    duration_ms: Option<NumberIn>,
}

#[derive(Debug, Deserialize)]
struct AgentIn {
    agent_id: String,
    #[serde(default)]
    version: Option<Vec<f64>>,
}

#[derive(Debug, Deserialize)]
struct EnumIn {
    op: String,
    value: Vec<String>,
}

#[derive(Debug, Deserialize)]
#[serde(untagged)]
enum OneOrMany<T> {
    One(T),
    Many(Vec<T>),
}

#[derive(Debug, Deserialize)]
struct TextIn {
    op: String,
    value: OneOrMany<String>,
}

#[derive(Debug, Deserialize)]
struct NumberIn {
    op: String,
    value: OneOrMany<f64>,
}

fn bad_op(field: &str, op: &str, allowed: &str) -> ApiError {
    ApiError::bad_field(
        format!("filter_criteria.{field}.op"),
        format!("filter_criteria.{field}.op \"{op}\" is not one of {allowed}"),
    )
}

fn bad_value(field: &str, expected: &str) -> ApiError {
    ApiError::bad_field(
        format!("filter_criteria.{field}.value"),
        format!("filter_criteria.{field}.value must be {expected}"),
    )
}

/// Values of an `in` filter that name something this server knows; unknown ones (Retell
/// reasons this gateway never produces) can match no call, so they are dropped.
fn one_of<T>(
    field: &str,
    filter: Option<EnumIn>,
    parse: impl Fn(&str) -> Option<T>,
) -> Result<Option<Vec<T>>, ApiError> {
    let Some(filter) = filter else {
        return Ok(None);
    };
    if filter.op != "in" {
        return Err(bad_op(field, &filter.op, "in"));
    }
    Ok(Some(filter.value.iter().filter_map(|v| parse(v)).collect()))
}

fn text_match(field: &str, filter: Option<TextIn>) -> Result<Option<TextMatch>, ApiError> {
    let Some(filter) = filter else {
        return Ok(None);
    };
    let m = match (filter.op.as_str(), filter.value) {
        ("in", OneOrMany::Many(values)) => TextMatch::In(values),
        ("in", OneOrMany::One(_)) => return Err(bad_value(field, "a list of strings")),
        (_, OneOrMany::Many(_)) => return Err(bad_value(field, "a string")),
        ("eq", OneOrMany::One(v)) => TextMatch::Eq(v),
        ("ne", OneOrMany::One(v)) => TextMatch::Ne(v),
        ("sw", OneOrMany::One(v)) => TextMatch::StartsWith(v),
        ("ew", OneOrMany::One(v)) => TextMatch::EndsWith(v),
        ("co", OneOrMany::One(v)) => TextMatch::Contains(v),
        (op, _) => return Err(bad_op(field, op, "eq, ne, sw, ew, co, in")),
    };
    Ok(Some(m))
}

fn number_match(field: &str, filter: Option<NumberIn>) -> Result<Option<NumberMatch>, ApiError> {
    let Some(filter) = filter else {
        return Ok(None);
    };
    let m = match (filter.op.as_str(), filter.value) {
        ("bt", OneOrMany::Many(v)) if v.len() == 2 => NumberMatch::Between(v[0], v[1]),
        ("bt", _) => return Err(bad_value(field, "[lower_bound, upper_bound]")),
        (_, OneOrMany::Many(_)) => return Err(bad_value(field, "a number")),
        ("eq", OneOrMany::One(v)) => NumberMatch::Eq(v),
        ("ne", OneOrMany::One(v)) => NumberMatch::Ne(v),
        ("gt", OneOrMany::One(v)) => NumberMatch::Gt(v),
        ("ge", OneOrMany::One(v)) => NumberMatch::Ge(v),
        ("lt", OneOrMany::One(v)) => NumberMatch::Lt(v),
        ("le", OneOrMany::One(v)) => NumberMatch::Le(v),
        (op, _) => return Err(bad_op(field, op, "eq, ne, gt, ge, lt, le, bt")),
    };
    Ok(Some(m))
}

fn call_filter(f: FilterIn) -> Result<CallFilter, ApiError> {
    let direction = |s: &str| match s {
        "inbound" => Some(Direction::Inbound),
        "outbound" => Some(Direction::Outbound),
        _ => None,
    };
    Ok(CallFilter {
        agents: f
            .agent
            .unwrap_or_default()
            .into_iter()
            .map(|a| AgentMatch {
                agent_id: a.agent_id,
                versions: a
                    .version
                    .unwrap_or_default()
                    .into_iter()
                    .map(|v| v as i64)
                    .collect(),
            })
            .collect(),
        call_id: text_match("call_id", f.call_id)?,
        call_status: one_of("call_status", f.call_status, CallStatus::parse)?,
        call_type: one_of("call_type", f.call_type, |s| Some(s.to_owned()))?,
        direction: one_of("direction", f.direction, direction)?,
        disconnection_reason: one_of(
            "disconnection_reason",
            f.disconnection_reason,
            DisconnectionReason::parse,
        )?,
        from_number: text_match("from_number", f.from_number)?,
        to_number: text_match("to_number", f.to_number)?,
        start_timestamp: number_match("start_timestamp", f.start_timestamp)?,
        end_timestamp: number_match("end_timestamp", f.end_timestamp)?,
        duration_ms: number_match("duration_ms", f.duration_ms)?,
    })
}

#[derive(Debug, Deserialize)]
pub struct ListCalls {
    filter_criteria: Option<FilterIn>,
    sort_order: Option<SortOrder>,
    limit: Option<i64>,
    pagination_key: Option<String>,
    skip: Option<i64>,
    #[serde(default)]
    include_total: Option<bool>,
}

/// `POST /v3/list-calls` → `{"items", "has_more", "pagination_key", "total"?}`. Calls are
/// ordered by creation time (newest first by default); `pagination_key` is the last
/// `call_id` of the previous page. `skip` is refused: cursors do not drift when calls
/// arrive between pages, offsets do.
pub async fn list(
    State(state): State<AppState>,
    ApiJson(body): ApiJson<ListCalls>,
) -> Result<Json<Value>, ApiError> {
    let limit = super::paging::limit(body.limit)?;
    if body.skip.is_some_and(|s| s != 0) {
        return Err(ApiError::bad_field(
            "skip",
            "skip is not supported; page with pagination_key",
        ));
    }
    let filter = call_filter(body.filter_criteria.unwrap_or_default())?;
    let page = state
        .store()
        .list_calls(
            &filter,
            body.sort_order.unwrap_or_default(),
            limit,
            body.pagination_key.as_deref(),
        )
        .await?;
    let next = page
        .has_more
        .then(|| page.items.last().map(|c| c.call_id.clone()))
        .flatten();
    let mut out = json!({
        "items": page.items,
        "has_more": page.has_more,
        "pagination_key": next,
    });
    if body.include_total == Some(true) {
        out["total"] = json!(state.store().count_calls(&filter).await?);
    }
    Ok(Json(out))
}

/// `PATCH /v2/update-call/{call_id}` body. Retell's `data_storage_setting` and
/// `custom_attributes` are accepted and ignored (nothing here records audio or
/// transcripts).
#[derive(Debug, Deserialize)]
pub struct UpdateCall {
    #[serde(default, deserialize_with = "nullable")]
    metadata: Option<Option<Value>>,
    #[serde(default, deserialize_with = "nullable")]
    retell_llm_dynamic_variables: Option<Option<BTreeMap<String, String>>>,
}

/// `PATCH /v2/update-call/{call_id}` → the updated call.
pub async fn update(
    State(state): State<AppState>,
    Path(call_id): Path<String>,
    ApiJson(body): ApiJson<UpdateCall>,
) -> Result<Json<Call>, ApiError> {
    check_size("metadata", body.metadata.as_ref().and_then(Option::as_ref))?;
    check_size(
        "retell_llm_dynamic_variables",
        body.retell_llm_dynamic_variables
            .as_ref()
            .and_then(Option::as_ref),
    )?;
    let update = CallUpdate {
        metadata: body.metadata.map(|m| m.filter(|m| !m.is_null())),
        retell_llm_dynamic_variables: body.retell_llm_dynamic_variables,
    };
    let call = state
        .store()
        .update_call_metadata(&call_id, &update)
        .await?
        .ok_or_else(|| not_found(&call_id))?;
    Ok(Json(call))
}

/// `DELETE /v2/delete-call/{call_id}` → 204; a call in progress is a 409.
pub async fn remove(
    State(state): State<AppState>,
    Path(call_id): Path<String>,
) -> Result<StatusCode, ApiError> {
    match state.store().delete_call(&call_id).await? {
        DeleteCall::Deleted => {
            tracing::info!(call_id = %call_id, "call record deleted");
            Ok(StatusCode::NO_CONTENT)
        }
        DeleteCall::NotFound => Err(not_found(&call_id)),
        DeleteCall::Live => Err(ApiError::Conflict(format!(
            "call {call_id} is in progress; stop it before deleting it"
        ))),
    }
}

/// `POST /v2/stop-call/{call_id}` → 204. A live call is ended by the call engine
/// (`manual_stopped`). A registered call nobody has dialled yet is ended in the store, so
/// a later INVITE for it is refused. An ended call is a 409. A call recorded as ongoing
/// that the engine here does not know (another node's, or one left by a crash) is a 409
/// too: marking it ended from here could contradict a call still in progress.
pub async fn stop(
    State(state): State<AppState>,
    Path(call_id): Path<String>,
) -> Result<StatusCode, ApiError> {
    let call = state
        .store()
        .get_call(&call_id)
        .await?
        .ok_or_else(|| not_found(&call_id))?;
    let ended = || ApiError::Conflict(format!("call {call_id} has already ended"));
    if call.call_status.is_final() {
        return Err(ended());
    }
    if state.calls.stop(&call_id) {
        tracing::info!(call_id = %call_id, "stop requested for a live call");
        return Ok(StatusCode::NO_CONTENT);
    }
    if call.call_status == CallStatus::Registered
        && state
            .store()
            .stop_registered_call(&call_id, now_ms())
            .await?
    {
        tracing::info!(call_id = %call_id, "registered call stopped before it was answered");
        state.events.call_ended(&call_id);
        return Ok(StatusCode::NO_CONTENT);
    }
    // Ongoing, or it moved on while we looked: answered just now (ask the engine once
    // more), or ended.
    match state.store().get_call(&call_id).await? {
        Some(c) if c.call_status == CallStatus::Ongoing => {
            if state.calls.stop(&call_id) {
                Ok(StatusCode::NO_CONTENT)
            } else {
                Err(ApiError::Conflict(format!(
                    "call {call_id} is ongoing but not live on this server"
                )))
            }
        }
        Some(_) => Err(ended()),
        None => Err(not_found(&call_id)),
    }
}

/// The body of `POST /v2/create-phone-call`.
#[derive(Debug, Deserialize)]
pub struct CreatePhoneCall {
    from_number: String,
    to_number: String,
    #[serde(default)]
    override_agent_id: Option<String>,
    #[serde(default)]
    metadata: Option<Value>,
    #[serde(default)]
    retell_llm_dynamic_variables: Option<BTreeMap<String, String>>,
    /// Extra SIP headers on the INVITE; `X-` headers only.
    #[serde(default)]
    custom_sip_headers: Option<BTreeMap<String, String>>,
    #[serde(default)]
    ignore_e164_validation: Option<bool>,
}

/// A 400 when `from`'s `allowed_outbound_country_list` is set and does not name the
/// country of `to_number` (a number of no known country is never in a list).
fn check_outbound_country(from: &PhoneNumber, to_number: &str) -> Result<(), ApiError> {
    let list = from.allowed_outbound_country_list.as_deref();
    let country = country_of(to_number);
    if admits(list, country) {
        return Ok(());
    }
    Err(ApiError::bad_field(
        "to_number",
        format!(
            "to_number {to_number} is in {}, not in {}'s allowed_outbound_country_list [{}]",
            country.unwrap_or("no known country"),
            from.phone_number,
            list.unwrap_or_default().join(", ")
        ),
    ))
}

/// `POST /v2/create-phone-call` → 201 with the call (`registered` until the trunk answers):
/// dials `to_number` through the trunk of the imported `from_number`.
pub async fn create_phone_call(
    State(state): State<AppState>,
    ApiJson(body): ApiJson<CreatePhoneCall>,
) -> Result<Response, ApiError> {
    check_context(
        body.metadata.as_ref(),
        body.retell_llm_dynamic_variables.as_ref(),
    )?;
    let ignore_e164 = body.ignore_e164_validation.unwrap_or(false);
    if !ignore_e164 && !crate::model::number::is_e164(&body.to_number) {
        return Err(ApiError::bad_field(
            "to_number",
            format!(
                "'{}' is not an E.164 number (+ then digits)",
                body.to_number
            ),
        ));
    }
    if ignore_e164 && !crate::model::number::is_pseudo_number(&body.to_number) {
        return Err(ApiError::bad_field(
            "to_number",
            "to_number has characters a SIP user part cannot hold",
        ));
    }
    let mut headers = BTreeMap::new();
    for (name, value) in body.custom_sip_headers.unwrap_or_default() {
        let token = name.len() > 2
            && name[..2].eq_ignore_ascii_case("x-")
            && name.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-');
        if !token {
            return Err(ApiError::bad_field(
                "custom_sip_headers",
                format!("'{name}' is not an X- header name"),
            ));
        }
        if value.chars().any(char::is_control) || value.len() > 1024 {
            return Err(ApiError::bad_field(
                "custom_sip_headers",
                format!("the value of {name} has control characters or is too long"),
            ));
        }
        headers.insert(name, value);
    }
    let number = state
        .store()
        .get_number(&body.from_number)
        .await?
        .ok_or_else(|| {
            ApiError::NotFound(format!(
                "from_number {} is not an imported number",
                body.from_number
            ))
        })?;
    check_outbound_country(&number, &body.to_number)?;
    let agent_id = match body.override_agent_id {
        Some(id) => id,
        None => crate::model::number::pick_agent(&number.outbound_agents, rand::random::<f64>())
            .map(str::to_owned)
            .ok_or_else(|| {
                ApiError::bad_field(
                    "override_agent_id",
                    format!(
                        "{} has no outbound agent; give override_agent_id",
                        number.phone_number
                    ),
                )
            })?,
    };
    let agent = state
        .store()
        .get_agent(&agent_id)
        .await?
        .ok_or_else(|| ApiError::NotFound(format!("agent {agent_id} not found")))?;
    let now = now_ms();
    let call = Call {
        from_number: Some(number.phone_number.clone()),
        to_number: Some(body.to_number),
        metadata: body.metadata.filter(|m| !m.is_null()),
        retell_llm_dynamic_variables: body.retell_llm_dynamic_variables,
        custom_sip_headers: (!headers.is_empty()).then_some(headers),
        ..Call::new(new_id("call_"), &agent, Direction::Outbound, now)
    };
    state.store().insert_call(&call).await?;
    if !state.calls.dial(call.clone(), number) {
        let ended = state
            .store()
            .finish_call(
                &call.call_id,
                DisconnectionReason::DialFailed,
                now_ms(),
                None,
            )
            .await?;
        if ended {
            state.events.call_ended(&call.call_id);
        }
        return Err(ApiError::internal(
            "no call engine is running to dial the call",
        ));
    }
    tracing::info!(call_id = %call.call_id, agent_id = %call.agent_id, "outbound call created");
    Ok((StatusCode::CREATED, Json(call)).into_response())
}

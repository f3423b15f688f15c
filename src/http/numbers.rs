//! Imported phone numbers (elastic SIP trunking): `POST /import-phone-number`,
//! `GET /get-phone-number/{phone_number}`, `GET /v2/list-phone-numbers`,
//! `GET /list-phone-numbers`, `PATCH /update-phone-number/{phone_number}`,
//! `DELETE /delete-phone-number/{phone_number}`.
//!
//! Field names follow the official SDK: import takes `sip_trunk_auth_username` /
//! `sip_trunk_auth_password`, update takes `auth_username` / `auth_password`; each accepts
//! the other spelling too. The trunk password is stored (outbound calls need it for digest
//! authentication) but never returned and never logged: responses carry only
//! `sip_outbound_trunk_config.auth_username`.
//!
//! `{phone_number}` in a path may be `%2B14155550100`, `+14155550100` or `14155550100`:
//! the `+` is optional in every lookup. Retell makes users re-import to change a number;
//! here `PATCH` works on every field but the number itself.

use std::collections::HashMap;

use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde::Deserialize;
use serde_json::{json, Value};

use super::agents::check_url;
use super::error::nullable;
use super::{ApiError, ApiJson, AppState};
use crate::media::codec::Codec;
use crate::model::number::{
    is_country_code, is_e164, is_pseudo_number, AgentVersion, PhoneNumber, Secret, Transport,
    WeightedAgent,
};
use crate::sip::route::Destination;
use crate::sip::transport::Kind;
use crate::sip::uri::{Uri, UriError};
use crate::store::{now_ms, SortOrder, Store};

const MAX_NICKNAME_LEN: usize = 256;
const MAX_URI_LEN: usize = 512;
const MAX_CREDENTIAL_LEN: usize = 256;
const MAX_AGENTS: usize = 32;
/// Every country there is, with room for duplicates that are dropped.
const MAX_COUNTRIES: usize = 300;
const MAX_TAG_LEN: usize = 64;
/// How far a list's weights may stray from 1 (clients compute them in floating point).
const WEIGHT_TOLERANCE: f64 = 0.001;

fn not_found(number: &str) -> ApiError {
    ApiError::NotFound(format!("phone number {number} not found"))
}

/// One entry of `inbound_agents` / `outbound_agents` as a request carries it.
#[derive(Debug, Clone, Deserialize)]
pub struct WeightedAgentIn {
    agent_id: String,
    weight: f64,
    #[serde(default)]
    agent_version: Option<AgentVersion>,
}

/// `POST /import-phone-number`. `Secret` keeps the password out of this type's `Debug`.
#[derive(Debug, Deserialize)]
pub struct ImportNumber {
    phone_number: String,
    termination_uri: String,
    /// Defaults to false: numbers are E.164 unless the caller says otherwise.
    #[serde(default)]
    ignore_e164_validation: Option<bool>,
    #[serde(alias = "auth_username")]
    sip_trunk_auth_username: Option<String>,
    #[serde(alias = "auth_password")]
    sip_trunk_auth_password: Option<Secret>,
    /// Retell's older single-agent fields; the same as a one-entry list with weight 1.
    inbound_agent_id: Option<String>,
    outbound_agent_id: Option<String>,
    inbound_agents: Option<Vec<WeightedAgentIn>>,
    outbound_agents: Option<Vec<WeightedAgentIn>>,
    nickname: Option<String>,
    inbound_webhook_url: Option<String>,
    transport: Option<String>,
    allowed_inbound_country_list: Option<Vec<String>>,
    allowed_outbound_country_list: Option<Vec<String>>,
    codecs: Option<Vec<String>>,
}

/// `PATCH /update-phone-number/{phone_number}`: absent fields stay, `null` clears (or
/// restores the default of `transport` and `codecs`).
#[derive(Debug, Default, Deserialize)]
pub struct UpdateNumber {
    #[serde(default, deserialize_with = "nullable")]
    nickname: Option<Option<String>>,
    #[serde(default, deserialize_with = "nullable")]
    inbound_agent_id: Option<Option<String>>,
    #[serde(default, deserialize_with = "nullable")]
    outbound_agent_id: Option<Option<String>>,
    #[serde(default, deserialize_with = "nullable")]
    inbound_agents: Option<Option<Vec<WeightedAgentIn>>>,
    #[serde(default, deserialize_with = "nullable")]
    outbound_agents: Option<Option<Vec<WeightedAgentIn>>>,
    #[serde(default, deserialize_with = "nullable")]
    inbound_webhook_url: Option<Option<String>>,
    #[serde(default, deserialize_with = "nullable")]
    termination_uri: Option<Option<String>>,
    #[serde(
        default,
        deserialize_with = "nullable",
        alias = "sip_trunk_auth_username"
    )]
    auth_username: Option<Option<String>>,
    #[serde(
        default,
        deserialize_with = "nullable",
        alias = "sip_trunk_auth_password"
    )]
    auth_password: Option<Option<Secret>>,
    #[serde(default, deserialize_with = "nullable")]
    transport: Option<Option<String>>,
    #[serde(default, deserialize_with = "nullable")]
    allowed_inbound_country_list: Option<Option<Vec<String>>>,
    #[serde(default, deserialize_with = "nullable")]
    allowed_outbound_country_list: Option<Option<Vec<String>>>,
    #[serde(default, deserialize_with = "nullable")]
    codecs: Option<Option<Vec<String>>>,
}

/// The phone number object of the API. The password is never part of it.
pub fn number_json(number: &PhoneNumber) -> Value {
    json!({
        "phone_number": number.phone_number,
        "phone_number_type": "custom",
        "phone_number_pretty": number.pretty(),
        "nickname": number.nickname,
        "inbound_agent_id": number.inbound_agent_id(),
        "outbound_agent_id": number.outbound_agent_id(),
        "inbound_agents": number.inbound_agents,
        "outbound_agents": number.outbound_agents,
        "inbound_webhook_url": number.inbound_webhook_url,
        "allowed_inbound_country_list": number.allowed_inbound_country_list,
        "allowed_outbound_country_list": number.allowed_outbound_country_list,
        "sip_outbound_trunk_config": {
            "termination_uri": number.termination_uri,
            "auth_username": number.sip_trunk_auth_username,
            "transport": number.transport.as_str(),
            "codecs": number.codecs,
        },
        "last_modification_timestamp": number.last_modification_timestamp,
    })
}

/// The key of a new number: E.164, or (with `ignore_e164_validation`) anything safe in a
/// URL path and a SIP user part.
fn check_phone_number(number: &str, ignore_e164: bool) -> Result<String, ApiError> {
    let number = number.trim();
    if is_e164(number) || (ignore_e164 && is_pseudo_number(number)) {
        return Ok(number.to_owned());
    }
    let message = if ignore_e164 {
        "phone_number must be an optional + then 1 to 32 letters, digits, '-', '.', '_' or '*'"
    } else {
        "phone_number must be E.164: + then 1 to 15 digits, the first not 0 (e.g. \
         +14155550100); set ignore_e164_validation to import another form"
    };
    Err(ApiError::bad_field("phone_number", message))
}

/// A termination URI: `host`, `host:port`, optionally `;transport=…`, optionally written
/// as a `sip:` / `sips:` URI. Returns it trimmed, with the transport it names explicitly.
fn check_termination_uri(raw: &str) -> Result<(String, Option<Transport>), ApiError> {
    const FIELD: &str = "termination_uri";
    let bad = |why: String| ApiError::bad_field(FIELD, why);
    let uri = raw.trim();
    if uri.is_empty() {
        return Err(bad("termination_uri must not be empty".to_owned()));
    }
    if uri.len() > MAX_URI_LEN {
        return Err(bad(format!(
            "termination_uri is longer than {MAX_URI_LEN} bytes"
        )));
    }
    if uri
        .chars()
        .any(|c| c.is_whitespace() || c.is_control() || matches!(c, '<' | '>' | '"'))
    {
        return Err(bad(
            "termination_uri must not contain spaces, control characters, <, > or \"".to_owned(),
        ));
    }
    let trunk = Uri::parse_trunk(uri).map_err(|e| match e {
        UriError::Host(host) => bad(format!("termination_uri has an invalid host '{host}'")),
        e => bad(format!("termination_uri is not usable: '{uri}' {e}")),
    })?;
    // A password in the URI (`user:pass@host`) would be shown back in every response.
    if trunk.password.is_some() {
        return Err(bad(
            "termination_uri must not carry a password; use sip_trunk_auth_password".to_owned(),
        ));
    }
    let dest =
        Destination::of(&trunk).map_err(|e| bad(format!("termination_uri is not usable: {e}")))?;
    // The grammar lets `_` and edge hyphens through for peers; a host we dial is a DNS
    // name or an address.
    if let Some(host) = trunk.host.as_ref().filter(|h| !h.is_dns_name()) {
        return Err(bad(format!(
            "termination_uri has an invalid host '{}'",
            host.unbracketed()
        )));
    }
    let explicit = dest.transport_explicit.then_some(match dest.kind {
        Kind::Udp => Transport::Udp,
        Kind::Tcp => Transport::Tcp,
        Kind::Tls => Transport::Tls,
    });
    Ok((uri.to_owned(), explicit))
}

fn check_transport(value: &str) -> Result<Transport, ApiError> {
    Transport::parse(value).ok_or_else(|| {
        ApiError::bad_field("transport", "transport must be \"TCP\", \"UDP\" or \"TLS\"")
    })
}

/// The transport a number ends up with: the one asked for, else the one its URI names,
/// else `fallback`. Asking for one that the URI contradicts is a 400.
fn settle_transport(
    asked: Option<Transport>,
    in_uri: Option<Transport>,
    fallback: Transport,
) -> Result<Transport, ApiError> {
    match (asked, in_uri) {
        (Some(a), Some(u)) if a != u => Err(ApiError::bad_field(
            "transport",
            format!(
                "transport {} contradicts the termination_uri, which asks for {}",
                a.as_str(),
                u.as_str()
            ),
        )),
        (Some(a), _) => Ok(a),
        (None, Some(u)) => Ok(u),
        (None, None) => Ok(fallback),
    }
}

fn check_nickname(nickname: Option<String>) -> Result<Option<String>, ApiError> {
    match nickname {
        Some(n) if n.len() > MAX_NICKNAME_LEN => Err(ApiError::bad_field(
            "nickname",
            format!("nickname is longer than {MAX_NICKNAME_LEN} bytes"),
        )),
        Some(n) if n.chars().any(char::is_control) => Err(ApiError::bad_field(
            "nickname",
            "nickname must not contain control characters",
        )),
        other => Ok(other),
    }
}

fn check_webhook(url: Option<String>) -> Result<Option<String>, ApiError> {
    if let Some(url) = &url {
        check_url(url, &["http://", "https://"], "inbound_webhook_url")?;
    }
    Ok(url)
}

/// A trunk username or password: empty means none. The value itself is never echoed.
fn check_credential(field: &str, value: Option<&str>) -> Result<Option<String>, ApiError> {
    match value {
        None | Some("") => Ok(None),
        Some(v) if v.len() > MAX_CREDENTIAL_LEN => Err(ApiError::bad_field(
            field,
            format!("{field} is longer than {MAX_CREDENTIAL_LEN} bytes"),
        )),
        Some(v) if v.chars().any(char::is_control) => Err(ApiError::bad_field(
            field,
            format!("{field} must not contain control characters"),
        )),
        Some(v) => Ok(Some(v.to_owned())),
    }
}

/// A weighted agent list: each weight in (0, 1], together 1 (± [`WEIGHT_TOLERANCE`]),
/// each agent once. Whether the agents exist is checked separately ([`agents_exist`]).
fn check_agents(field: &str, agents: Vec<WeightedAgentIn>) -> Result<Vec<WeightedAgent>, ApiError> {
    if agents.len() > MAX_AGENTS {
        return Err(ApiError::bad_field(
            field,
            format!("{field} has more than {MAX_AGENTS} agents"),
        ));
    }
    let mut out: Vec<WeightedAgent> = Vec::with_capacity(agents.len());
    for (i, agent) in agents.into_iter().enumerate() {
        let at = |name: &str| format!("{field}[{i}].{name}");
        let agent_id = agent.agent_id.trim().to_owned();
        if agent_id.is_empty() {
            return Err(ApiError::bad_field(at("agent_id"), "agent_id is required"));
        }
        if out.iter().any(|a| a.agent_id == agent_id) {
            return Err(ApiError::bad_field(
                at("agent_id"),
                format!("agent {agent_id} appears twice in {field}"),
            ));
        }
        if !(agent.weight > 0.0 && agent.weight <= 1.0) {
            return Err(ApiError::bad_field(
                at("weight"),
                format!("{} must be greater than 0 and at most 1", at("weight")),
            ));
        }
        match &agent.agent_version {
            Some(AgentVersion::Number(n)) if *n < 0 => {
                return Err(ApiError::bad_field(
                    at("agent_version"),
                    "agent_version must not be negative",
                ))
            }
            Some(AgentVersion::Tag(t)) if t.is_empty() || t.len() > MAX_TAG_LEN => {
                return Err(ApiError::bad_field(
                    at("agent_version"),
                    format!("agent_version must be 1 to {MAX_TAG_LEN} characters"),
                ))
            }
            _ => {}
        }
        out.push(WeightedAgent {
            agent_id,
            weight: agent.weight,
            agent_version: agent.agent_version,
        });
    }
    let total: f64 = out.iter().map(|a| a.weight).sum();
    if !out.is_empty() && (total - 1.0).abs() > WEIGHT_TOLERANCE {
        return Err(ApiError::bad_field(
            field,
            format!("the weights of {field} must add up to 1 (they add up to {total})"),
        ));
    }
    Ok(out)
}

/// The agents bound by a request that gives the single-agent field, the list, or
/// neither. Giving both is ambiguous and refused.
fn binding(
    single_field: &str,
    single: Option<String>,
    list_field: &str,
    list: Option<Vec<WeightedAgentIn>>,
) -> Result<Option<Vec<WeightedAgent>>, ApiError> {
    match (single, list) {
        (Some(_), Some(_)) => Err(ApiError::bad_field(
            single_field,
            format!("give {single_field} or {list_field}, not both"),
        )),
        (Some(id), None) => check_agents(
            single_field,
            vec![WeightedAgentIn {
                agent_id: id,
                weight: 1.0,
                agent_version: None,
            }],
        )
        .map(Some),
        (None, Some(list)) => check_agents(list_field, list).map(Some),
        (None, None) => Ok(None),
    }
}

/// 404 naming the first agent that does not exist.
async fn agents_exist(
    store: &Store,
    lists: &[Option<&Vec<WeightedAgent>>],
) -> Result<(), ApiError> {
    for agent in lists.iter().flatten().flat_map(|l| l.iter()) {
        if store.get_agent(&agent.agent_id).await?.is_none() {
            return Err(ApiError::NotFound(format!(
                "agent {} not found",
                agent.agent_id
            )));
        }
    }
    Ok(())
}

/// Upper-case ISO 3166-1 alpha-2 codes, duplicates dropped.
fn check_countries(field: &str, codes: Vec<String>) -> Result<Vec<String>, ApiError> {
    if codes.len() > MAX_COUNTRIES {
        return Err(ApiError::bad_field(
            field,
            format!("{field} has more than {MAX_COUNTRIES} entries"),
        ));
    }
    let mut out: Vec<String> = Vec::with_capacity(codes.len());
    for (i, code) in codes.into_iter().enumerate() {
        if !is_country_code(&code) {
            return Err(ApiError::bad_field(
                format!("{field}[{i}]"),
                format!(
                    "{field}[{i}] must be an upper-case ISO 3166-1 alpha-2 country code such \
                     as \"US\""
                ),
            ));
        }
        if !out.contains(&code) {
            out.push(code);
        }
    }
    Ok(out)
}

/// Codec preferences among the codecs the media layer runs ([`Codec::ALL`]), any case, each
/// once; empty (or `None`) means all of them in the default order.
fn check_codecs(codecs: Option<Vec<String>>) -> Result<Vec<String>, ApiError> {
    let codecs = codecs.unwrap_or_default();
    let mut out: Vec<String> = Vec::new();
    for (i, name) in codecs.iter().enumerate() {
        let canonical = Codec::from_name(name.trim()).ok_or_else(|| {
            ApiError::bad_field(
                format!("codecs[{i}]"),
                format!(
                    "codecs[{i}] is not a supported codec; supported: {}",
                    Codec::ALL.map(Codec::encoding_name).join(", ")
                ),
            )
        })?;
        let canonical = canonical.encoding_name();
        if !out.iter().any(|c| c == canonical) {
            out.push(canonical.to_owned());
        }
    }
    if out.is_empty() {
        out = Codec::ALL.map(|c| c.encoding_name().to_owned()).to_vec();
    }
    Ok(out)
}

/// A password needs a username to go with it (digest authentication sends both).
fn check_auth_pair(number: &PhoneNumber, password_field: &str) -> Result<(), ApiError> {
    if number.sip_trunk_auth_password.is_some() && number.sip_trunk_auth_username.is_none() {
        return Err(ApiError::bad_field(
            password_field,
            "a trunk password needs a trunk username too",
        ));
    }
    Ok(())
}

/// `POST /import-phone-number` → 201 with the number.
pub async fn import(
    State(state): State<AppState>,
    ApiJson(body): ApiJson<ImportNumber>,
) -> Result<Response, ApiError> {
    let phone_number = check_phone_number(
        &body.phone_number,
        body.ignore_e164_validation == Some(true),
    )?;
    let (termination_uri, uri_transport) = check_termination_uri(&body.termination_uri)?;
    let asked = body.transport.as_deref().map(check_transport).transpose()?;
    let transport = settle_transport(asked, uri_transport, Transport::default())?;
    let inbound_agents = binding(
        "inbound_agent_id",
        body.inbound_agent_id,
        "inbound_agents",
        body.inbound_agents,
    )?
    .unwrap_or_default();
    let outbound_agents = binding(
        "outbound_agent_id",
        body.outbound_agent_id,
        "outbound_agents",
        body.outbound_agents,
    )?
    .unwrap_or_default();
    let username = check_credential(
        "sip_trunk_auth_username",
        body.sip_trunk_auth_username.as_deref(),
    )?;
    let password = check_credential(
        "sip_trunk_auth_password",
        body.sip_trunk_auth_password.as_ref().map(Secret::expose),
    )?
    .map(Secret::new);
    let now = now_ms();
    let number = PhoneNumber {
        phone_number,
        nickname: check_nickname(body.nickname)?,
        inbound_agents,
        outbound_agents,
        inbound_webhook_url: check_webhook(body.inbound_webhook_url)?,
        termination_uri,
        sip_trunk_auth_username: username,
        sip_trunk_auth_password: password,
        transport,
        allowed_inbound_country_list: body
            .allowed_inbound_country_list
            .map(|l| check_countries("allowed_inbound_country_list", l))
            .transpose()?,
        allowed_outbound_country_list: body
            .allowed_outbound_country_list
            .map(|l| check_countries("allowed_outbound_country_list", l))
            .transpose()?,
        codecs: check_codecs(body.codecs)?,
        version: 0,
        created_timestamp: now,
        last_modification_timestamp: now,
    };
    check_auth_pair(&number, "sip_trunk_auth_password")?;
    agents_exist(
        state.store(),
        &[Some(&number.inbound_agents), Some(&number.outbound_agents)],
    )
    .await?;
    state.store().create_number(&number).await?;
    tracing::info!(phone_number = %number.phone_number, "phone number imported");
    Ok((StatusCode::CREATED, Json(number_json(&number))).into_response())
}

/// `GET /get-phone-number/{phone_number}`.
pub async fn retrieve(
    State(state): State<AppState>,
    Path(number): Path<String>,
) -> Result<Json<Value>, ApiError> {
    let found = state
        .store()
        .get_number(&number)
        .await?
        .ok_or_else(|| not_found(&number))?;
    Ok(Json(number_json(&found)))
}

/// `GET /list-phone-numbers`: every number, oldest first, as a bare array (Retell's v1
/// listing).
pub async fn list(State(state): State<AppState>) -> Result<Json<Value>, ApiError> {
    let page = state
        .store()
        .list_numbers(SortOrder::Ascending, None, None)
        .await?;
    Ok(Json(Value::Array(
        page.items.iter().map(number_json).collect(),
    )))
}

/// `GET /v2/list-phone-numbers?limit=&pagination_key=&sort_order=` (what the SDK's
/// `client.phone_number.list()` calls): one page, `{"items", "has_more",
/// "pagination_key"}`, newest first unless `sort_order=ascending`.
pub async fn list_v2(
    State(state): State<AppState>,
    Query(query): Query<HashMap<String, String>>,
) -> Result<Json<Value>, ApiError> {
    let (limit, sort_order) = super::paging::from_query(&query)?;
    let page = state
        .store()
        .list_numbers(
            sort_order,
            Some(limit),
            query.get("pagination_key").map(String::as_str),
        )
        .await?;
    let next = page
        .has_more
        .then(|| page.items.last().map(|n| n.phone_number.clone()))
        .flatten();
    Ok(Json(json!({
        "items": page.items.iter().map(number_json).collect::<Vec<_>>(),
        "has_more": page.has_more,
        "pagination_key": next,
    })))
}

/// `PATCH /update-phone-number/{phone_number}`: changes the fields present. Everything
/// that does not depend on the stored number is checked before any read; the rest inside
/// the conditional update, so an error writes nothing.
pub async fn update(
    State(state): State<AppState>,
    Path(number): Path<String>,
    ApiJson(body): ApiJson<UpdateNumber>,
) -> Result<Json<Value>, ApiError> {
    let nickname = body.nickname.map(check_nickname).transpose()?;
    let webhook = body.inbound_webhook_url.map(check_webhook).transpose()?;
    // `null` for either form of a binding clears it.
    let inbound = update_binding(
        "inbound_agent_id",
        body.inbound_agent_id,
        "inbound_agents",
        body.inbound_agents,
    )?;
    let outbound = update_binding(
        "outbound_agent_id",
        body.outbound_agent_id,
        "outbound_agents",
        body.outbound_agents,
    )?;
    let termination = match body.termination_uri {
        None => None,
        Some(None) => {
            return Err(ApiError::bad_field(
                "termination_uri",
                "termination_uri cannot be removed",
            ))
        }
        Some(Some(uri)) => Some(check_termination_uri(&uri)?),
    };
    let transport = match body.transport {
        None => None,
        Some(None) => Some(Transport::default()),
        Some(Some(t)) => Some(check_transport(&t)?),
    };
    let username = body
        .auth_username
        .map(|u| check_credential("auth_username", u.as_deref()))
        .transpose()?;
    let password = body
        .auth_password
        .map(|p| check_credential("auth_password", p.as_ref().map(Secret::expose)))
        .transpose()?
        .map(|p| p.map(Secret::new));
    let allowed_in = body
        .allowed_inbound_country_list
        .map(|l| {
            l.map(|l| check_countries("allowed_inbound_country_list", l))
                .transpose()
        })
        .transpose()?;
    let allowed_out = body
        .allowed_outbound_country_list
        .map(|l| {
            l.map(|l| check_countries("allowed_outbound_country_list", l))
                .transpose()
        })
        .transpose()?;
    let codecs = body.codecs.map(check_codecs).transpose()?;
    agents_exist(state.store(), &[inbound.as_ref(), outbound.as_ref()]).await?;

    let updated = state
        .store()
        .update_number(&number, now_ms(), |record: &mut PhoneNumber| {
            if let Some(n) = &nickname {
                record.nickname = n.clone();
            }
            if let Some(url) = &webhook {
                record.inbound_webhook_url = url.clone();
            }
            if let Some(list) = &inbound {
                record.inbound_agents = list.clone();
            }
            if let Some(list) = &outbound {
                record.outbound_agents = list.clone();
            }
            let uri_transport = match &termination {
                Some((uri, in_uri)) => {
                    record.termination_uri = uri.clone();
                    *in_uri
                }
                // The stored URI passed this check when it was written.
                None => check_termination_uri(&record.termination_uri)?.1,
            };
            record.transport = settle_transport(transport, uri_transport, record.transport)?;
            if let Some(u) = &username {
                record.sip_trunk_auth_username = u.clone();
            }
            if let Some(p) = &password {
                record.sip_trunk_auth_password = p.clone();
            }
            check_auth_pair(record, "auth_password")?;
            if let Some(l) = &allowed_in {
                record.allowed_inbound_country_list = l.clone();
            }
            if let Some(l) = &allowed_out {
                record.allowed_outbound_country_list = l.clone();
            }
            if let Some(c) = &codecs {
                record.codecs = c.clone();
            }
            Ok::<(), ApiError>(())
        })
        .await?
        .ok_or_else(|| not_found(&number))?;
    tracing::info!(phone_number = %updated.phone_number, "phone number updated");
    Ok(Json(number_json(&updated)))
}

/// A binding in an update: `None` leaves it, `Some(list)` replaces it (empty clears).
fn update_binding(
    single_field: &str,
    single: Option<Option<String>>,
    list_field: &str,
    list: Option<Option<Vec<WeightedAgentIn>>>,
) -> Result<Option<Vec<WeightedAgent>>, ApiError> {
    match (single, list) {
        (Some(Some(_)), Some(Some(_))) => Err(ApiError::bad_field(
            single_field,
            format!("give {single_field} or {list_field}, not both"),
        )),
        (Some(Some(id)), _) => binding(single_field, Some(id), list_field, None),
        (_, Some(Some(list))) => binding(single_field, None, list_field, Some(list)),
        (Some(None), _) | (_, Some(None)) => Ok(Some(Vec::new())),
        (None, None) => Ok(None),
    }
}

/// `DELETE /delete-phone-number/{phone_number}` → 204.
pub async fn remove(
    State(state): State<AppState>,
    Path(number): Path<String>,
) -> Result<StatusCode, ApiError> {
    if state.store().delete_number(&number).await? {
        tracing::info!(phone_number = %number, "phone number deleted");
        Ok(StatusCode::NO_CONTENT)
    } else {
        Err(not_found(&number))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn termination_uris() {
        for (uri, transport) in [
            ("example.pstn.twilio.com", None),
            ("trunk.example.com:5080", None),
            ("trunk.example.com;transport=udp", Some(Transport::Udp)),
            ("10.0.0.1:5070;transport=TLS", Some(Transport::Tls)),
            ("sip:trunk.example.com", None),
            ("sips:trunk.example.com", Some(Transport::Tls)),
            ("SIP:[2001:db8::1]:5060", None),
            ("sip:+14155550100@trunk.example.com", None),
            (
                "sip:a;b=c@trunk.example.com:5060;transport=tcp",
                Some(Transport::Tcp),
            ),
        ] {
            let (kept, t) = check_termination_uri(uri).unwrap_or_else(|e| panic!("{uri}: {e}"));
            assert_eq!(kept, uri);
            assert_eq!(t, transport, "{uri}");
        }
        for bad in [
            "",
            " ",
            "tel:+14155550100",
            "tel:+1",
            "trunk.example.com:+5060",
            "[2001:db8::1]:+5060",
            "http://trunk.example.com",
            "trunk.example.com:99999",
            "trunk.example.com;transport=sctp",
            "trunk example.com",
            "bad_host!.com",
            "-x.example.com",
            "user:secret@trunk.example.com",
            "sips:trunk.example.com;transport=udp",
        ] {
            assert!(check_termination_uri(bad).is_err(), "{bad:?} accepted");
        }
        for (bad, message) in [
            (
                "bad_host!.com",
                "termination_uri has an invalid host 'bad_host!.com'",
            ),
            (
                "-x.example.com:5060",
                "termination_uri has an invalid host '-x.example.com'",
            ),
            (
                "1.2.3.4.5",
                "termination_uri has an invalid host '1.2.3.4.5'",
            ),
            (
                "user:secret@trunk.example.com",
                "termination_uri must not carry a password; use sip_trunk_auth_password",
            ),
            (
                "trunk.example.com:99999",
                "termination_uri is not usable: 'trunk.example.com:99999' has a bad port '99999'",
            ),
            (
                "trunk.example.com:0",
                "termination_uri is not usable: 'sip:trunk.example.com:0' has a bad port '0'",
            ),
            (
                "sips:t.example.com;transport=udp",
                "termination_uri is not usable: 'sips:t.example.com;transport=udp' asks for \
                 TLS with transport=udp",
            ),
        ] {
            let e = check_termination_uri(bad).unwrap_err();
            assert_eq!(e.to_string(), message, "{bad}");
        }
    }

    #[test]
    fn transport_settles() {
        use Transport::*;
        assert_eq!(settle_transport(None, None, Tcp).unwrap(), Tcp);
        assert_eq!(settle_transport(None, Some(Udp), Tcp).unwrap(), Udp);
        assert_eq!(settle_transport(Some(Tls), None, Tcp).unwrap(), Tls);
        assert_eq!(settle_transport(Some(Udp), Some(Udp), Tcp).unwrap(), Udp);
        assert!(settle_transport(Some(Tcp), Some(Udp), Tcp).is_err());
    }

    fn w(id: &str, weight: f64) -> WeightedAgentIn {
        WeightedAgentIn {
            agent_id: id.to_owned(),
            weight,
            agent_version: None,
        }
    }

    fn field_of(err: ApiError) -> String {
        match err {
            ApiError::BadRequest { field, .. } => field.unwrap_or_default(),
            other => panic!("expected a 400, got {other:?}"),
        }
    }

    #[test]
    fn weights() {
        assert!(check_agents("inbound_agents", vec![]).unwrap().is_empty());
        assert_eq!(
            check_agents(
                "inbound_agents",
                vec![w("a", 0.3333), w("b", 0.3333), w("c", 0.3334)]
            )
            .unwrap()
            .len(),
            3
        );
        assert!(check_agents("x", vec![w("a", 0.5), w("b", 0.4995)]).is_ok());
        let e = check_agents("inbound_agents", vec![w("a", 0.5), w("b", 0.4)]).unwrap_err();
        assert_eq!(field_of(e), "inbound_agents");
        let e = check_agents("inbound_agents", vec![w("a", 0.0), w("b", 1.0)]).unwrap_err();
        assert_eq!(field_of(e), "inbound_agents[0].weight");
        let e = check_agents("inbound_agents", vec![w("a", 1.5)]).unwrap_err();
        assert_eq!(field_of(e), "inbound_agents[0].weight");
        let e = check_agents("outbound_agents", vec![w("a", 0.5), w("a", 0.5)]).unwrap_err();
        assert_eq!(field_of(e), "outbound_agents[1].agent_id");
        let e = binding(
            "inbound_agent_id",
            Some("a".into()),
            "inbound_agents",
            Some(vec![]),
        )
        .unwrap_err();
        assert_eq!(field_of(e), "inbound_agent_id");
    }

    #[test]
    fn countries_codecs_numbers() {
        assert_eq!(
            check_countries("c", vec!["US".into(), "CA".into(), "US".into()]).unwrap(),
            vec!["US", "CA"]
        );
        assert_eq!(
            field_of(check_countries("c", vec!["US".into(), "us".into()]).unwrap_err()),
            "c[1]"
        );
        assert_eq!(
            check_codecs(Some(vec!["pcma".into(), "PCMU".into()])).unwrap(),
            vec!["PCMA", "PCMU"]
        );
        assert_eq!(check_codecs(None).unwrap(), vec!["PCMU", "PCMA", "G722"]);
        assert_eq!(
            check_codecs(Some(vec![])).unwrap(),
            vec!["PCMU", "PCMA", "G722"]
        );
        assert_eq!(
            field_of(check_codecs(Some(vec!["opus".into()])).unwrap_err()),
            "codecs[0]"
        );
        assert_eq!(
            check_phone_number(" +14155550100 ", false).unwrap(),
            "+14155550100"
        );
        assert!(check_phone_number("14155550100", false).is_err());
        assert_eq!(check_phone_number("1001", true).unwrap(), "1001");
        assert!(check_phone_number("a/b", true).is_err());
    }

    #[test]
    fn request_debug_redacts_the_password() {
        let body: ImportNumber = crate::http::error::decode(
            br#"{"phone_number": "+14155550100", "termination_uri": "t.example.com",
                 "sip_trunk_auth_username": "u", "sip_trunk_auth_password": "pw-d3bug"}"#,
        )
        .unwrap();
        assert!(!format!("{body:?}").contains("pw-d3bug"));
        let body: UpdateNumber =
            crate::http::error::decode(br#"{"auth_password": "pw-d3bug"}"#).unwrap();
        assert!(!format!("{body:?}").contains("pw-d3bug"));
    }
}

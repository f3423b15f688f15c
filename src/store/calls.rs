//! Call records: what the API reads and writes, and the state changes the call engine
//! makes, each a single conditional statement.

use std::collections::BTreeMap;

use sqlx::any::AnyRow;
use sqlx::Row;

use super::{is_unique_violation, Bind, Keyset, Page, SortOrder, Sql, Store, StoreError};
use crate::model::{Call, CallStatus, Direction, DisconnectionReason};

const COLUMNS: &str = "call_id, call_type, agent_id, agent_name, agent_version, call_status, \
     direction, from_number, to_number, metadata, retell_llm_dynamic_variables, \
     custom_sip_headers, start_timestamp, end_timestamp, duration_ms, disconnection_reason, \
     telephony_identifier, transfer_destination, sip_uri, codec, sip_status, registered_until, \
     created_timestamp, claimed";

/// The statuses a call can still leave (SQL list).
const LIVE_STATUSES: &str = "('registered', 'ongoing')";

/// What [`Store::claim_registered_call`] found.
#[derive(Debug, Clone, PartialEq)]
pub enum Claim {
    /// This caller owns the call now (the record as claimed).
    Claimed(Box<Call>),
    /// No call has this id.
    Unknown,
    /// Someone claimed it first, or it was stopped or has ended.
    AlreadyClaimed,
    /// The registration window closed before anyone dialled.
    Expired,
}

/// What [`Store::delete_call`] did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DeleteCall {
    Deleted,
    NotFound,
    /// The call is in progress (ongoing, or claimed and being set up); it was kept.
    Live,
}

/// Changes to a call's caller-supplied data. `None` leaves a field alone; `Some(None)`
/// clears it.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct CallUpdate {
    pub metadata: Option<Option<serde_json::Value>>,
    pub retell_llm_dynamic_variables: Option<Option<BTreeMap<String, String>>>,
}

/// A condition on a text column (Retell's string filter ops, plus `in`).
#[derive(Debug, Clone, PartialEq)]
pub enum TextMatch {
    Eq(String),
    Ne(String),
    StartsWith(String),
    EndsWith(String),
    Contains(String),
    In(Vec<String>),
}

/// A condition on a number column (Retell's number and range filter ops).
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum NumberMatch {
    Eq(f64),
    Ne(f64),
    Gt(f64),
    Ge(f64),
    Lt(f64),
    Le(f64),
    /// Inclusive on both ends.
    Between(f64, f64),
}

/// One agent (and optionally only some of its versions) in a call filter.
#[derive(Debug, Clone, PartialEq)]
pub struct AgentMatch {
    pub agent_id: String,
    /// Empty means every version.
    pub versions: Vec<i64>,
}

/// Which calls a listing returns: every present condition must hold (AND); within
/// `agents` any one may match (OR); a list-valued condition means "one of".
#[derive(Debug, Clone, Default, PartialEq)]
pub struct CallFilter {
    pub agents: Vec<AgentMatch>,
    pub call_id: Option<TextMatch>,
    pub call_status: Option<Vec<CallStatus>>,
    pub call_type: Option<Vec<String>>,
    pub direction: Option<Vec<Direction>>,
    pub disconnection_reason: Option<Vec<DisconnectionReason>>,
    pub from_number: Option<TextMatch>,
    pub to_number: Option<TextMatch>,
    pub start_timestamp: Option<NumberMatch>,
    pub end_timestamp: Option<NumberMatch>,
    pub duration_ms: Option<NumberMatch>,
}

impl Store {
    /// Inserts a new call record. A `registered` call with a `registered_until` waits to be
    /// claimed by an INVITE; any other call (no registration window, e.g. one the engine
    /// dials itself) is owned by the engine from the start.
    pub async fn insert_call(&self, call: &Call) -> Result<(), StoreError> {
        let claimed = i64::from(
            !(call.call_status == CallStatus::Registered && call.registered_until.is_some()),
        );
        let mut sql = Sql::new(&format!("INSERT INTO calls ({COLUMNS}) VALUES ("));
        let values = [
            Bind::Text(call.call_id.clone()),
            Bind::Text(call.call_type.clone()),
            Bind::Text(call.agent_id.clone()),
            Bind::OptText(call.agent_name.clone()),
            Bind::Int(call.agent_version),
            Bind::Text(call.call_status.as_str().to_owned()),
            Bind::Text(call.direction.as_str().to_owned()),
            Bind::OptText(call.from_number.clone()),
            Bind::OptText(call.to_number.clone()),
            Bind::OptText(json_text(call.metadata.as_ref())?),
            Bind::OptText(json_text(call.retell_llm_dynamic_variables.as_ref())?),
            Bind::OptText(json_text(call.custom_sip_headers.as_ref())?),
            Bind::OptInt(call.start_timestamp),
            Bind::OptInt(call.end_timestamp),
            Bind::OptInt(call.duration_ms),
            Bind::OptText(call.disconnection_reason.map(|r| r.as_str().to_owned())),
            Bind::OptText(json_text(call.telephony_identifier.as_ref())?),
            Bind::OptText(call.transfer_destination.clone()),
            Bind::OptText(call.sip_uri.clone()),
            Bind::OptText(call.codec.clone()),
            Bind::OptInt(call.sip_status.map(i64::from)),
            Bind::OptInt(call.registered_until),
            Bind::Int(call.created_timestamp),
            Bind::Int(claimed),
        ];
        let placeholders: Vec<String> = values.into_iter().map(|v| sql.bind(v)).collect();
        sql.push(&placeholders.join(", ")).push(")");
        match sql.query().execute(&self.pool).await {
            Ok(_) => Ok(()),
            Err(err) if is_unique_violation(&err) => {
                Err(StoreError::Duplicate(format!("call {}", call.call_id)))
            }
            Err(err) => Err(err.into()),
        }
    }

    pub async fn get_call(&self, call_id: &str) -> Result<Option<Call>, StoreError> {
        let row = sqlx::query(&format!("SELECT {COLUMNS} FROM calls WHERE call_id = $1"))
            .bind(call_id)
            .fetch_optional(&self.pool)
            .await?;
        row.as_ref().map(call_from_row).transpose()
    }

    /// Calls matching `filter`, in creation order (`created_timestamp`, then `call_id`),
    /// at most `limit`. `pagination_key` is the last `call_id` of the previous page.
    pub async fn list_calls(
        &self,
        filter: &CallFilter,
        sort_order: SortOrder,
        limit: u32,
        pagination_key: Option<&str>,
    ) -> Result<Page<Call>, StoreError> {
        let keyset = Keyset {
            key_column: "call_id",
            sort_order,
            cursor: self.cursor("calls", "call_id", pagination_key).await?,
            limit: Some(limit),
        };
        let mut sql = Sql::new(&format!("SELECT {COLUMNS} FROM calls WHERE "));
        let mut clauses = filter_clauses(filter, &mut sql);
        clauses.extend(keyset.after(&mut sql));
        sql.push(&where_text(&clauses));
        keyset.order_and_limit(&mut sql);
        let rows = sql.query().fetch_all(&self.pool).await?;
        let items = rows
            .iter()
            .map(call_from_row)
            .collect::<Result<Vec<_>, _>>()?;
        Ok(keyset.page(items))
    }

    /// How many calls match `filter` (for `include_total`).
    pub async fn count_calls(&self, filter: &CallFilter) -> Result<i64, StoreError> {
        let mut sql = Sql::new("SELECT COUNT(*) AS n FROM calls WHERE ");
        let clauses = filter_clauses(filter, &mut sql);
        sql.push(&where_text(&clauses));
        let row = sql.query().fetch_one(&self.pool).await?;
        Ok(row.try_get::<i64, _>("n")?)
    }

    /// Changes caller-supplied data (any call status). Returns the updated call, or `None`
    /// if there is no such call.
    pub async fn update_call_metadata(
        &self,
        call_id: &str,
        update: &CallUpdate,
    ) -> Result<Option<Call>, StoreError> {
        let mut sets = Vec::new();
        let mut sql = Sql::new("UPDATE calls SET ");
        if let Some(metadata) = &update.metadata {
            let p = sql.bind(Bind::OptText(json_text(metadata.as_ref())?));
            sets.push(format!("metadata = {p}"));
        }
        if let Some(vars) = &update.retell_llm_dynamic_variables {
            let p = sql.bind(Bind::OptText(json_text(vars.as_ref())?));
            sets.push(format!("retell_llm_dynamic_variables = {p}"));
        }
        if !sets.is_empty() {
            let id = sql.bind(Bind::Text(call_id.to_owned()));
            sql.push(&sets.join(", "))
                .push(&format!(" WHERE call_id = {id}"));
            if sql.query().execute(&self.pool).await?.rows_affected() == 0 {
                return Ok(None);
            }
        }
        self.get_call(call_id).await
    }

    /// Deletes a call record unless the call is in progress. Decided in one statement, so
    /// a call cannot start between the check and the delete.
    pub async fn delete_call(&self, call_id: &str) -> Result<DeleteCall, StoreError> {
        let result = sqlx::query(
            "DELETE FROM calls WHERE call_id = $1 AND NOT (call_status = 'ongoing' \
             OR (call_status = 'registered' AND claimed = 1))",
        )
        .bind(call_id)
        .execute(&self.pool)
        .await?;
        if result.rows_affected() > 0 {
            return Ok(DeleteCall::Deleted);
        }
        Ok(match self.get_call(call_id).await? {
            Some(_) => DeleteCall::Live,
            None => DeleteCall::NotFound,
        })
    }

    /// Takes ownership of a registered call for the INVITE that dialled it. Exactly one
    /// caller can ever get [`Claim::Claimed`] for a call: the claim is a single conditional
    /// `UPDATE … RETURNING`, decided by the database even across nodes.
    pub async fn claim_registered_call(
        &self,
        call_id: &str,
        now_ms: i64,
    ) -> Result<Claim, StoreError> {
        let row = sqlx::query(&format!(
            "UPDATE calls SET claimed = 1 WHERE call_id = $1 AND claimed = 0 \
             AND call_status = 'registered' AND registered_until > $2 RETURNING {COLUMNS}"
        ))
        .bind(call_id)
        .bind(now_ms)
        .fetch_optional(&self.pool)
        .await?;
        if let Some(row) = row {
            return Ok(Claim::Claimed(Box::new(call_from_row(&row)?)));
        }
        // Lost, or never could win: read the row to say why.
        let Some(row) = sqlx::query(&format!("SELECT {COLUMNS} FROM calls WHERE call_id = $1"))
            .bind(call_id)
            .fetch_optional(&self.pool)
            .await?
        else {
            return Ok(Claim::Unknown);
        };
        let claimed: i64 = row.try_get("claimed")?;
        let call = call_from_row(&row)?;
        let window_passed = call.registered_until.is_some_and(|until| until <= now_ms);
        Ok(match call.call_status {
            CallStatus::Registered if claimed == 0 && window_passed => Claim::Expired,
            _ if call.disconnection_reason == Some(DisconnectionReason::RegisteredCallTimeout) => {
                Claim::Expired
            }
            _ => Claim::AlreadyClaimed,
        })
    }

    /// The call was answered: `ongoing` from `start_ms`, with the negotiated codec, the
    /// caller leg's identifier and the SIP status sent. Only a `registered` call moves;
    /// returns whether this one did (false: unknown, or already ended).
    pub async fn mark_ongoing(
        &self,
        call_id: &str,
        start_ms: i64,
        codec: &str,
        telephony_identifier: Option<&serde_json::Value>,
        sip_status: Option<u16>,
    ) -> Result<bool, StoreError> {
        let result = sqlx::query(
            "UPDATE calls SET call_status = 'ongoing', claimed = 1, start_timestamp = $2, \
             codec = $3, telephony_identifier = $4, sip_status = COALESCE($5, sip_status) \
             WHERE call_id = $1 AND call_status = 'registered'",
        )
        .bind(call_id)
        .bind(start_ms)
        .bind(codec)
        .bind(json_text(telephony_identifier)?)
        .bind(sip_status.map(i64::from))
        .execute(&self.pool)
        .await?;
        Ok(result.rows_affected() > 0)
    }

    /// Records the codec once it is known: for a call answered with our offer, only the
    /// answer in the ACK (or a renegotiation) settles it.
    pub async fn set_codec(&self, call_id: &str, codec: &str) -> Result<bool, StoreError> {
        let result = sqlx::query("UPDATE calls SET codec = $2 WHERE call_id = $1")
            .bind(call_id)
            .bind(codec)
            .execute(&self.pool)
            .await?;
        Ok(result.rows_affected() > 0)
    }

    /// Ends a call: status from `reason`, `end_timestamp`, `duration_ms` (from the start,
    /// or 0 if it never started). Idempotent: the first reason a call ends for is kept and
    /// later calls change nothing; returns whether this call did.
    pub async fn finish_call(
        &self,
        call_id: &str,
        reason: DisconnectionReason,
        end_ms: i64,
        sip_status: Option<u16>,
    ) -> Result<bool, StoreError> {
        let result = sqlx::query(&format!(
            "UPDATE calls SET call_status = $2, disconnection_reason = $3, end_timestamp = $4, \
             duration_ms = CASE WHEN start_timestamp IS NOT NULL AND start_timestamp < $4 \
             THEN $4 - start_timestamp ELSE 0 END, \
             sip_status = COALESCE($5, sip_status) \
             WHERE call_id = $1 AND call_status IN {LIVE_STATUSES}"
        ))
        .bind(call_id)
        .bind(reason.call_status().as_str())
        .bind(reason.as_str())
        .bind(end_ms)
        .bind(sip_status.map(i64::from))
        .execute(&self.pool)
        .await?;
        Ok(result.rows_affected() > 0)
    }

    /// Ends a call that has not been answered yet as `manual_stopped` (the API's stop when
    /// no engine here has the call live). A claimed call being set up is ended too; its
    /// engine learns it from [`Store::mark_ongoing`] returning false. An answered or ended
    /// call is left alone; returns whether this call was ended.
    pub async fn stop_registered_call(
        &self,
        call_id: &str,
        end_ms: i64,
    ) -> Result<bool, StoreError> {
        let reason = DisconnectionReason::ManualStopped;
        let result = sqlx::query(
            "UPDATE calls SET call_status = $2, disconnection_reason = $3, end_timestamp = $4, \
             duration_ms = 0 WHERE call_id = $1 AND call_status = 'registered'",
        )
        .bind(call_id)
        .bind(reason.call_status().as_str())
        .bind(reason.as_str())
        .bind(end_ms)
        .execute(&self.pool)
        .await?;
        Ok(result.rows_affected() > 0)
    }

    /// Ends every registration nobody dialled before its window closed, as
    /// `registered_call_timeout`. Returns the ids it ended. A claim racing this sweep
    /// either wins (and the call is not touched) or loses (and gets [`Claim::Expired`]).
    pub async fn expire_registrations(&self, now_ms: i64) -> Result<Vec<String>, StoreError> {
        let reason = DisconnectionReason::RegisteredCallTimeout;
        let rows = sqlx::query(
            "UPDATE calls SET call_status = $1, disconnection_reason = $2, end_timestamp = $3, \
             duration_ms = 0 WHERE call_status = 'registered' AND claimed = 0 \
             AND registered_until IS NOT NULL AND registered_until <= $3 RETURNING call_id",
        )
        .bind(reason.call_status().as_str())
        .bind(reason.as_str())
        .bind(now_ms)
        .fetch_all(&self.pool)
        .await?;
        rows.iter()
            .map(|r| r.try_get::<String, _>("call_id").map_err(StoreError::from))
            .collect()
    }
}

fn where_text(clauses: &[String]) -> String {
    if clauses.is_empty() {
        "1 = 1".to_owned()
    } else {
        clauses.join(" AND ")
    }
}

/// SQL conditions for `filter`, binding its values into `sql`.
fn filter_clauses(filter: &CallFilter, sql: &mut Sql) -> Vec<String> {
    let mut clauses = Vec::new();
    if !filter.agents.is_empty() {
        let mut any = Vec::new();
        for agent in &filter.agents {
            let id = sql.bind(Bind::Text(agent.agent_id.clone()));
            if agent.versions.is_empty() {
                any.push(format!("agent_id = {id}"));
            } else {
                let versions: Vec<String> = agent
                    .versions
                    .iter()
                    .map(|v| sql.bind(Bind::Int(*v)))
                    .collect();
                any.push(format!(
                    "(agent_id = {id} AND agent_version IN ({}))",
                    versions.join(", ")
                ));
            }
        }
        clauses.push(format!("({})", any.join(" OR ")));
    }
    let mut one_of = |column: &str, values: Vec<String>, sql: &mut Sql| {
        if values.is_empty() {
            // "One of nothing" matches nothing.
            clauses.push("1 = 0".to_owned());
        } else {
            let ps: Vec<String> = values
                .into_iter()
                .map(|v| sql.bind(Bind::Text(v)))
                .collect();
            clauses.push(format!("{column} IN ({})", ps.join(", ")));
        }
    };
    if let Some(statuses) = &filter.call_status {
        one_of(
            "call_status",
            statuses.iter().map(|s| s.as_str().to_owned()).collect(),
            sql,
        );
    }
    if let Some(types) = &filter.call_type {
        one_of("call_type", types.clone(), sql);
    }
    if let Some(directions) = &filter.direction {
        one_of(
            "direction",
            directions.iter().map(|d| d.as_str().to_owned()).collect(),
            sql,
        );
    }
    if let Some(reasons) = &filter.disconnection_reason {
        one_of(
            "disconnection_reason",
            reasons.iter().map(|r| r.as_str().to_owned()).collect(),
            sql,
        );
    }
    for (column, m) in [
        ("call_id", &filter.call_id),
        ("from_number", &filter.from_number),
        ("to_number", &filter.to_number),
    ] {
        if let Some(m) = m {
            clauses.push(text_clause(column, m, sql));
        }
    }
    for (column, m) in [
        ("start_timestamp", &filter.start_timestamp),
        ("end_timestamp", &filter.end_timestamp),
        ("duration_ms", &filter.duration_ms),
    ] {
        if let Some(m) = m {
            clauses.push(number_clause(column, *m, sql));
        }
    }
    clauses
}

/// Escapes `%`, `_` and the escape character itself for a `LIKE … ESCAPE '\'` pattern.
/// SQLite runs with `case_sensitive_like`, so both backends compare case-sensitively.
fn like_escape(value: &str) -> String {
    let mut out = String::with_capacity(value.len());
    for c in value.chars() {
        if matches!(c, '%' | '_' | '\\') {
            out.push('\\');
        }
        out.push(c);
    }
    out
}

fn text_clause(column: &str, m: &TextMatch, sql: &mut Sql) -> String {
    let like = |pattern: String, sql: &mut Sql| {
        let p = sql.bind(Bind::Text(pattern));
        format!("{column} LIKE {p} ESCAPE '\\'")
    };
    match m {
        TextMatch::Eq(v) => format!("{column} = {}", sql.bind(Bind::Text(v.clone()))),
        TextMatch::Ne(v) => {
            let p = sql.bind(Bind::Text(v.clone()));
            format!("({column} IS NULL OR {column} <> {p})")
        }
        TextMatch::StartsWith(v) => like(format!("{}%", like_escape(v)), sql),
        TextMatch::EndsWith(v) => like(format!("%{}", like_escape(v)), sql),
        TextMatch::Contains(v) => like(format!("%{}%", like_escape(v)), sql),
        TextMatch::In(values) if values.is_empty() => "1 = 0".to_owned(),
        TextMatch::In(values) => {
            let ps: Vec<String> = values
                .iter()
                .map(|v| sql.bind(Bind::Text(v.clone())))
                .collect();
            format!("{column} IN ({})", ps.join(", "))
        }
    }
}

fn number_clause(column: &str, m: NumberMatch, sql: &mut Sql) -> String {
    let cmp = |op: &str, v: f64, sql: &mut Sql| {
        let p = sql.bind(Bind::Float(v));
        format!("{column} {op} {p}")
    };
    match m {
        NumberMatch::Eq(v) => cmp("=", v, sql),
        NumberMatch::Ne(v) => format!("({column} IS NULL OR {})", cmp("<>", v, sql)),
        NumberMatch::Gt(v) => cmp(">", v, sql),
        NumberMatch::Ge(v) => cmp(">=", v, sql),
        NumberMatch::Lt(v) => cmp("<", v, sql),
        NumberMatch::Le(v) => cmp("<=", v, sql),
        NumberMatch::Between(lo, hi) => {
            format!("({} AND {})", cmp(">=", lo, sql), cmp("<=", hi, sql))
        }
    }
}

fn json_text<T: serde::Serialize>(value: Option<&T>) -> Result<Option<String>, StoreError> {
    value
        .map(serde_json::to_string)
        .transpose()
        .map_err(|e| StoreError::Corrupt {
            column: "calls (JSON column)",
            detail: e.to_string(),
        })
}

fn json_column<T: serde::de::DeserializeOwned>(
    row: &AnyRow,
    column: &'static str,
) -> Result<Option<T>, StoreError> {
    let text: Option<String> = row.try_get(column)?;
    text.map(|t| serde_json::from_str(&t))
        .transpose()
        .map_err(|e| StoreError::Corrupt {
            column,
            detail: e.to_string(),
        })
}

fn call_from_row(row: &AnyRow) -> Result<Call, StoreError> {
    let status: String = row.try_get("call_status")?;
    let call_status = CallStatus::parse(&status).ok_or_else(|| StoreError::Corrupt {
        column: "call_status",
        detail: format!("unknown status {status:?}"),
    })?;
    let direction: String = row.try_get("direction")?;
    let direction = match direction.as_str() {
        "inbound" => Direction::Inbound,
        "outbound" => Direction::Outbound,
        other => {
            return Err(StoreError::Corrupt {
                column: "direction",
                detail: format!("unknown direction {other:?}"),
            })
        }
    };
    let reason: Option<String> = row.try_get("disconnection_reason")?;
    let disconnection_reason = reason
        .map(|r| {
            DisconnectionReason::parse(&r).ok_or_else(|| StoreError::Corrupt {
                column: "disconnection_reason",
                detail: format!("unknown reason {r:?}"),
            })
        })
        .transpose()?;
    let sip_status: Option<i64> = row.try_get("sip_status")?;
    let sip_status = sip_status
        .map(|s| {
            u16::try_from(s).map_err(|_| StoreError::Corrupt {
                column: "sip_status",
                detail: format!("{s} is not a status code"),
            })
        })
        .transpose()?;
    Ok(Call {
        call_id: row.try_get("call_id")?,
        call_type: row.try_get("call_type")?,
        agent_id: row.try_get("agent_id")?,
        agent_name: row.try_get("agent_name")?,
        agent_version: row.try_get("agent_version")?,
        call_status,
        direction,
        from_number: row.try_get("from_number")?,
        to_number: row.try_get("to_number")?,
        metadata: json_column(row, "metadata")?,
        retell_llm_dynamic_variables: json_column(row, "retell_llm_dynamic_variables")?,
        custom_sip_headers: json_column(row, "custom_sip_headers")?,
        start_timestamp: row.try_get("start_timestamp")?,
        end_timestamp: row.try_get("end_timestamp")?,
        duration_ms: row.try_get("duration_ms")?,
        disconnection_reason,
        telephony_identifier: json_column(row, "telephony_identifier")?,
        transfer_destination: row.try_get("transfer_destination")?,
        sip_uri: row.try_get("sip_uri")?,
        codec: row.try_get("codec")?,
        sip_status,
        registered_until: row.try_get("registered_until")?,
        created_timestamp: row.try_get("created_timestamp")?,
    })
}

//! Agents: create, read, list, partial update (with a version bump), delete.

use sqlx::any::AnyRow;
use sqlx::Row;

use super::{is_unique_violation, Keyset, Page, SortOrder, Store, StoreError};
use crate::model::{Agent, ResponseEngine};

const COLUMNS: &str = "agent_id, agent_name, version, response_engine, webhook_url, \
     max_call_duration_ms, end_call_after_silence_ms, ring_duration_ms, forward_early_media, \
     created_timestamp, last_modification_timestamp";

/// How many times an update is retried when another writer changed the agent between our
/// read and our write.
const UPDATE_ATTEMPTS: usize = 32;

impl Store {
    /// Inserts a new agent. Its `last_modification_timestamp` doubles as its creation time
    /// (the listing order). An existing `agent_id` is [`StoreError::Duplicate`].
    pub async fn create_agent(&self, agent: &Agent) -> Result<(), StoreError> {
        let engine = engine_json(&agent.response_engine)?;
        let result = sqlx::query(&format!(
            "INSERT INTO agents ({COLUMNS}) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $10)"
        ))
        .bind(agent.agent_id.as_str())
        .bind(agent.agent_name.as_deref())
        .bind(agent.version)
        .bind(engine)
        .bind(agent.webhook_url.as_deref())
        .bind(agent.max_call_duration_ms)
        .bind(agent.end_call_after_silence_ms)
        .bind(agent.ring_duration_ms)
        .bind(i64::from(agent.forward_early_media))
        .bind(agent.last_modification_timestamp)
        .execute(&self.pool)
        .await;
        match result {
            Ok(_) => Ok(()),
            Err(err) if is_unique_violation(&err) => {
                Err(StoreError::Duplicate(format!("agent {}", agent.agent_id)))
            }
            Err(err) => Err(err.into()),
        }
    }

    pub async fn get_agent(&self, agent_id: &str) -> Result<Option<Agent>, StoreError> {
        let row = sqlx::query(&format!("SELECT {COLUMNS} FROM agents WHERE agent_id = $1"))
            .bind(agent_id)
            .fetch_optional(&self.pool)
            .await?;
        row.as_ref().map(agent_from_row).transpose()
    }

    /// Agents in creation order. `limit` of `None` lists them all; `pagination_key` is the
    /// last `agent_id` of the previous page ([`StoreError::UnknownCursor`] if unknown).
    pub async fn list_agents(
        &self,
        sort_order: SortOrder,
        limit: Option<u32>,
        pagination_key: Option<&str>,
    ) -> Result<Page<Agent>, StoreError> {
        let keyset = Keyset {
            key_column: "agent_id",
            sort_order,
            cursor: self.cursor("agents", "agent_id", pagination_key).await?,
            limit,
        };
        self.list_page(&keyset, COLUMNS, "agents", agent_from_row)
            .await
    }

    /// Applies `edit` to the stored agent and writes it back with `version` + 1 and
    /// `last_modification_timestamp = now_ms`. Returns the new agent, or `None` if there is
    /// no such agent. The write is conditional on the version read, so concurrent updates
    /// never lose each other's changes: a loser re-reads and re-applies `edit` (hence
    /// `FnMut`). An error from `edit` aborts without writing anything.
    pub async fn update_agent<E, F>(
        &self,
        agent_id: &str,
        now_ms: i64,
        mut edit: F,
    ) -> Result<Option<Agent>, E>
    where
        E: From<StoreError>,
        F: FnMut(&mut Agent) -> Result<(), E>,
    {
        for _ in 0..UPDATE_ATTEMPTS {
            let Some(mut agent) = self.get_agent(agent_id).await? else {
                return Ok(None);
            };
            let read_version = agent.version;
            edit(&mut agent)?;
            agent.agent_id = agent_id.to_owned();
            agent.version = read_version + 1;
            // Never move backwards, even if the clock did.
            agent.last_modification_timestamp = now_ms.max(agent.last_modification_timestamp);
            let engine = engine_json(&agent.response_engine)?;
            let result = sqlx::query(
                "UPDATE agents SET agent_name = $1, version = $2, response_engine = $3, \
                 webhook_url = $4, max_call_duration_ms = $5, end_call_after_silence_ms = $6, \
                 ring_duration_ms = $7, forward_early_media = $8, \
                 last_modification_timestamp = $9 WHERE agent_id = $10 AND version = $11",
            )
            .bind(agent.agent_name.as_deref())
            .bind(agent.version)
            .bind(engine)
            .bind(agent.webhook_url.as_deref())
            .bind(agent.max_call_duration_ms)
            .bind(agent.end_call_after_silence_ms)
            .bind(agent.ring_duration_ms)
            .bind(i64::from(agent.forward_early_media))
            .bind(agent.last_modification_timestamp)
            .bind(agent_id)
            .bind(read_version)
            .execute(&self.pool)
            .await
            .map_err(StoreError::from)?;
            if result.rows_affected() == 1 {
                return Ok(Some(agent));
            }
        }
        Err(StoreError::Database(sqlx::Error::Protocol(format!(
            "agent {agent_id} kept changing under {UPDATE_ATTEMPTS} update attempts"
        )))
        .into())
    }

    /// Deletes an agent; false if there was none. Calls keep their `agent_id`.
    pub async fn delete_agent(&self, agent_id: &str) -> Result<bool, StoreError> {
        let result = sqlx::query("DELETE FROM agents WHERE agent_id = $1")
            .bind(agent_id)
            .execute(&self.pool)
            .await?;
        Ok(result.rows_affected() > 0)
    }
}

fn engine_json(engine: &ResponseEngine) -> Result<String, StoreError> {
    serde_json::to_string(engine).map_err(|e| StoreError::Corrupt {
        column: "agents.response_engine",
        detail: e.to_string(),
    })
}

fn agent_from_row(row: &AnyRow) -> Result<Agent, StoreError> {
    let engine: String = row.try_get("response_engine")?;
    let response_engine = serde_json::from_str(&engine).map_err(|e| StoreError::Corrupt {
        column: "agents.response_engine",
        detail: e.to_string(),
    })?;
    Ok(Agent {
        agent_id: row.try_get("agent_id")?,
        agent_name: row.try_get("agent_name")?,
        version: row.try_get("version")?,
        response_engine,
        webhook_url: row.try_get("webhook_url")?,
        max_call_duration_ms: row.try_get("max_call_duration_ms")?,
        end_call_after_silence_ms: row.try_get("end_call_after_silence_ms")?,
        ring_duration_ms: row.try_get("ring_duration_ms")?,
        forward_early_media: row.try_get::<i64, _>("forward_early_media")? != 0,
        last_modification_timestamp: row.try_get("last_modification_timestamp")?,
    })
}

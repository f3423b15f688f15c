//! Imported phone numbers: create, read (with or without the `+`), list, partial update,
//! delete, and the lookup the call engine makes for an inbound INVITE.

use serde::de::DeserializeOwned;
use sqlx::any::AnyRow;
use sqlx::Row;

use super::{is_unique_violation, Keyset, Page, SortOrder, Store, StoreError};
use crate::model::number::{lookup_key, PhoneNumber, Secret, Transport, WeightedAgent};

const COLUMNS: &str = "phone_number, lookup_key, nickname, inbound_agents, outbound_agents, \
     inbound_webhook_url, termination_uri, auth_username, auth_password, transport, \
     allowed_inbound_country_list, allowed_outbound_country_list, codecs, version, \
     created_timestamp, last_modification_timestamp";

/// How many times an update is retried when another writer changed the number between
/// our read and our write.
const UPDATE_ATTEMPTS: usize = 32;

/// Characters a SIP user part may carry as visual separators in a telephone number
/// (RFC 3966 `visual-separator`); an inbound lookup ignores them.
const VISUAL_SEPARATORS: [char; 4] = ['-', '.', '(', ')'];

impl Store {
    /// Inserts a new number. One that exists already, spelled with or without the `+`, is
    /// [`StoreError::Duplicate`].
    pub async fn create_number(&self, number: &PhoneNumber) -> Result<(), StoreError> {
        let columns = Columns::of(number)?;
        let result = sqlx::query(&format!(
            "INSERT INTO phone_numbers ({COLUMNS}) \
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14, $15, $16)"
        ))
        .bind(number.phone_number.as_str())
        .bind(lookup_key(&number.phone_number))
        .bind(number.nickname.as_deref())
        .bind(columns.inbound_agents)
        .bind(columns.outbound_agents)
        .bind(number.inbound_webhook_url.as_deref())
        .bind(number.termination_uri.as_str())
        .bind(number.sip_trunk_auth_username.as_deref())
        .bind(number.sip_trunk_auth_password.as_ref().map(Secret::expose))
        .bind(number.transport.as_str())
        .bind(columns.allowed_inbound)
        .bind(columns.allowed_outbound)
        .bind(columns.codecs)
        .bind(number.version)
        .bind(number.created_timestamp)
        .bind(number.last_modification_timestamp)
        .execute(&self.pool)
        .await;
        match result {
            Ok(_) => Ok(()),
            Err(err) if is_unique_violation(&err) => Err(StoreError::Duplicate(format!(
                "phone number {}",
                number.phone_number
            ))),
            Err(err) => Err(err.into()),
        }
    }

    /// The number stored as `number`, `+number`, or `number` without its `+`.
    pub async fn get_number(&self, number: &str) -> Result<Option<PhoneNumber>, StoreError> {
        let row = sqlx::query(&format!(
            "SELECT {COLUMNS} FROM phone_numbers WHERE lookup_key = $1"
        ))
        .bind(lookup_key(number))
        .fetch_optional(&self.pool)
        .await?;
        row.as_ref().map(number_from_row).transpose()
    }

    /// The number an inbound call is for, from the user part of its Request-URI (or To):
    /// `+14155550100`, `14155550100`, also with URI parameters (`;npdi`) or visual
    /// separators (`1-415-555-0100`), which are ignored.
    pub async fn find_number_for_inbound(
        &self,
        user: &str,
    ) -> Result<Option<PhoneNumber>, StoreError> {
        let user = user.split(';').next().unwrap_or_default().trim();
        if user.is_empty() {
            return Ok(None);
        }
        if let Some(found) = self.get_number(user).await? {
            return Ok(Some(found));
        }
        let bare: String = user
            .chars()
            .filter(|c| !VISUAL_SEPARATORS.contains(c))
            .collect();
        if bare == user || bare.is_empty() {
            return Ok(None);
        }
        self.get_number(&bare).await
    }

    /// Numbers in import order. `limit` of `None` lists them all; `pagination_key` is the
    /// last `phone_number` of the previous page ([`StoreError::UnknownCursor`] if unknown).
    pub async fn list_numbers(
        &self,
        sort_order: SortOrder,
        limit: Option<u32>,
        pagination_key: Option<&str>,
    ) -> Result<Page<PhoneNumber>, StoreError> {
        let keyset = Keyset {
            key_column: "phone_number",
            sort_order,
            // The cursor is found as any number is, with or without its `+`.
            cursor: match pagination_key {
                Some(key) => {
                    let n = self
                        .get_number(key)
                        .await?
                        .ok_or(StoreError::UnknownCursor)?;
                    Some((n.created_timestamp, n.phone_number))
                }
                None => None,
            },
            limit,
        };
        self.list_page(&keyset, COLUMNS, "phone_numbers", number_from_row)
            .await
    }

    /// Applies `edit` to the stored number and writes it back with
    /// `last_modification_timestamp = now_ms`. Returns the new record, or `None` if there
    /// is no such number. Like [`Store::update_agent`], the write is conditional on the
    /// version read, so concurrent updates never lose each other's changes: a loser
    /// re-reads and re-applies `edit`. An error from `edit` aborts without writing. The
    /// key (`phone_number`) cannot change.
    pub async fn update_number<E, F>(
        &self,
        number: &str,
        now_ms: i64,
        mut edit: F,
    ) -> Result<Option<PhoneNumber>, E>
    where
        E: From<StoreError>,
        F: FnMut(&mut PhoneNumber) -> Result<(), E>,
    {
        for _ in 0..UPDATE_ATTEMPTS {
            let Some(mut record) = self.get_number(number).await? else {
                return Ok(None);
            };
            let key = record.phone_number.clone();
            let read_version = record.version;
            edit(&mut record)?;
            record.phone_number = key;
            record.version = read_version + 1;
            // Never move backwards, even if the clock did.
            record.last_modification_timestamp = now_ms.max(record.last_modification_timestamp);
            let columns = Columns::of(&record)?;
            let result = sqlx::query(
                "UPDATE phone_numbers SET nickname = $1, inbound_agents = $2, \
                 outbound_agents = $3, inbound_webhook_url = $4, termination_uri = $5, \
                 auth_username = $6, auth_password = $7, transport = $8, \
                 allowed_inbound_country_list = $9, allowed_outbound_country_list = $10, \
                 codecs = $11, version = $12, last_modification_timestamp = $13 \
                 WHERE phone_number = $14 AND version = $15",
            )
            .bind(record.nickname.as_deref())
            .bind(columns.inbound_agents)
            .bind(columns.outbound_agents)
            .bind(record.inbound_webhook_url.as_deref())
            .bind(record.termination_uri.as_str())
            .bind(record.sip_trunk_auth_username.as_deref())
            .bind(record.sip_trunk_auth_password.as_ref().map(Secret::expose))
            .bind(record.transport.as_str())
            .bind(columns.allowed_inbound)
            .bind(columns.allowed_outbound)
            .bind(columns.codecs)
            .bind(record.version)
            .bind(record.last_modification_timestamp)
            .bind(record.phone_number.as_str())
            .bind(read_version)
            .execute(&self.pool)
            .await
            .map_err(StoreError::from)?;
            if result.rows_affected() == 1 {
                return Ok(Some(record));
            }
        }
        Err(StoreError::Database(sqlx::Error::Protocol(format!(
            "phone number {number} kept changing under {UPDATE_ATTEMPTS} update attempts"
        )))
        .into())
    }

    /// Deletes a number (spelled with or without the `+`); false if there was none.
    /// Calls keep their `from_number` / `to_number`.
    pub async fn delete_number(&self, number: &str) -> Result<bool, StoreError> {
        let result = sqlx::query("DELETE FROM phone_numbers WHERE lookup_key = $1")
            .bind(lookup_key(number))
            .execute(&self.pool)
            .await?;
        Ok(result.rows_affected() > 0)
    }
}

/// The JSON-text columns of a record.
struct Columns {
    inbound_agents: String,
    outbound_agents: String,
    allowed_inbound: Option<String>,
    allowed_outbound: Option<String>,
    codecs: String,
}

impl Columns {
    fn of(number: &PhoneNumber) -> Result<Columns, StoreError> {
        Ok(Columns {
            inbound_agents: to_json("phone_numbers.inbound_agents", &number.inbound_agents)?,
            outbound_agents: to_json("phone_numbers.outbound_agents", &number.outbound_agents)?,
            allowed_inbound: number
                .allowed_inbound_country_list
                .as_ref()
                .map(|l| to_json("phone_numbers.allowed_inbound_country_list", l))
                .transpose()?,
            allowed_outbound: number
                .allowed_outbound_country_list
                .as_ref()
                .map(|l| to_json("phone_numbers.allowed_outbound_country_list", l))
                .transpose()?,
            codecs: to_json("phone_numbers.codecs", &number.codecs)?,
        })
    }
}

fn to_json<T: serde::Serialize>(column: &'static str, value: &T) -> Result<String, StoreError> {
    serde_json::to_string(value).map_err(|e| StoreError::Corrupt {
        column,
        detail: e.to_string(),
    })
}

fn from_json<T: DeserializeOwned>(column: &'static str, text: &str) -> Result<T, StoreError> {
    serde_json::from_str(text).map_err(|e| StoreError::Corrupt {
        column,
        detail: e.to_string(),
    })
}

fn number_from_row(row: &AnyRow) -> Result<PhoneNumber, StoreError> {
    let inbound: String = row.try_get("inbound_agents")?;
    let outbound: String = row.try_get("outbound_agents")?;
    let allowed_in: Option<String> = row.try_get("allowed_inbound_country_list")?;
    let allowed_out: Option<String> = row.try_get("allowed_outbound_country_list")?;
    let codecs: String = row.try_get("codecs")?;
    let transport: String = row.try_get("transport")?;
    let password: Option<String> = row.try_get("auth_password")?;
    Ok(PhoneNumber {
        phone_number: row.try_get("phone_number")?,
        nickname: row.try_get("nickname")?,
        inbound_agents: from_json::<Vec<WeightedAgent>>("phone_numbers.inbound_agents", &inbound)?,
        outbound_agents: from_json::<Vec<WeightedAgent>>(
            "phone_numbers.outbound_agents",
            &outbound,
        )?,
        inbound_webhook_url: row.try_get("inbound_webhook_url")?,
        termination_uri: row.try_get("termination_uri")?,
        sip_trunk_auth_username: row.try_get("auth_username")?,
        sip_trunk_auth_password: password.map(Secret::new),
        transport: Transport::parse(&transport).ok_or_else(|| StoreError::Corrupt {
            column: "phone_numbers.transport",
            detail: format!("unknown transport {transport:?}"),
        })?,
        allowed_inbound_country_list: allowed_in
            .map(|t| from_json("phone_numbers.allowed_inbound_country_list", &t))
            .transpose()?,
        allowed_outbound_country_list: allowed_out
            .map(|t| from_json("phone_numbers.allowed_outbound_country_list", &t))
            .transpose()?,
        codecs: from_json("phone_numbers.codecs", &codecs)?,
        version: row.try_get("version")?,
        created_timestamp: row.try_get("created_timestamp")?,
        last_modification_timestamp: row.try_get("last_modification_timestamp")?,
    })
}

//! Durable state: agents, imported phone numbers and call records, in SQLite (one node)
//! or PostgreSQL (several nodes sharing one database), through one set of queries.
//!
//! Both backends run the same SQL through `sqlx::Any`: placeholders are written `$1`, `$2`,
//! … (PostgreSQL's syntax, which SQLite also accepts), columns are TEXT or BIGINT, JSON is
//! kept as TEXT and flags as 0/1. Every state change a call goes through is one conditional
//! `UPDATE`, so the database, not this process, decides races: two INVITEs for one
//! registered call, even on two nodes, cannot both claim it, and the first reason a call
//! ends for is the one that stays.
//!
//! Migrations are embedded in the binary and run at [`Store::connect`], under sqlx's
//! migration lock, so nodes starting together do not trip over each other.

mod agents;
mod calls;
mod numbers;
mod sweeper;

#[cfg(test)]
mod tests;

use std::borrow::Cow;
use std::future::Future;
use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::time::Duration;

use sqlx::any::{AnyConnectOptions, AnyPoolOptions};
use sqlx::migrate::{Migration, MigrationSource, MigrationType, Migrator};
use sqlx::{AnyPool, Executor, Row as _};

pub use calls::{AgentMatch, CallFilter, CallUpdate, Claim, DeleteCall, NumberMatch, TextMatch};
pub use sweeper::spawn_registration_sweeper;

/// How long a SQLite writer waits for another writer before giving up. Writes here are
/// single short statements, so anything near this means the disk is in trouble.
const SQLITE_BUSY_TIMEOUT_MS: u64 = 10_000;
/// Connections in the pool. SQLite serialises writers anyway; extra connections serve
/// readers in parallel (WAL).
const SQLITE_POOL: u32 = 8;
const POSTGRES_POOL: u32 = 16;
/// How long a query waits for a free connection before failing.
const ACQUIRE_TIMEOUT: Duration = Duration::from_secs(10);

/// Every failure of the store. Messages never contain the database URL (it may carry a
/// password).
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("unsupported database URL: must start with sqlite: or postgres://")]
    UnsupportedUrl,
    #[error("cannot create the database directory {path}: {source}")]
    CreateDir {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("database error: {0}")]
    Database(#[from] sqlx::Error),
    #[error("database migration failed: {0}")]
    Migrate(#[from] sqlx::migrate::MigrateError),
    /// A stored value that this version cannot read (hand-edited row, newer schema).
    #[error("unreadable {column} in the database: {detail}")]
    Corrupt {
        column: &'static str,
        detail: String,
    },
    /// A `pagination_key` that names no stored row (a typo, or the row was deleted).
    #[error("pagination_key does not name a stored record")]
    UnknownCursor,
    /// An insert whose key is taken.
    #[error("{0} already exists")]
    Duplicate(String),
}

/// Which database is behind the store.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Backend {
    Sqlite,
    Postgres,
}

/// `sort_order` of list requests.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum SortOrder {
    Ascending,
    #[default]
    Descending,
}

impl SortOrder {
    fn sql(self) -> &'static str {
        match self {
            SortOrder::Ascending => "ASC",
            SortOrder::Descending => "DESC",
        }
    }

    /// The comparison that selects rows after a cursor in this order.
    fn after(self) -> &'static str {
        match self {
            SortOrder::Ascending => ">",
            SortOrder::Descending => "<",
        }
    }
}

/// One page of a listing: the rows and whether more follow.
#[derive(Debug, Clone, PartialEq)]
pub struct Page<T> {
    pub items: Vec<T>,
    pub has_more: bool,
}

/// Keyset pagination over `(created_timestamp, key)`, the order every listing uses: rows
/// strictly after the cursor (the previous page's last row) in the sort order, and one row
/// more than the page holds, to tell whether another page follows.
struct Keyset {
    /// The table's key column (`agent_id`, `call_id`, ...). Never user input.
    key_column: &'static str,
    sort_order: SortOrder,
    /// The previous page's last row: its creation time and key.
    cursor: Option<(i64, String)>,
    /// `None` lists every row.
    limit: Option<u32>,
}

impl Keyset {
    /// The condition selecting rows after the cursor (its values bound into `sql`), or
    /// `None` on the first page.
    fn after(&self, sql: &mut Sql) -> Option<String> {
        let (created, key) = self.cursor.clone()?;
        let ts = sql.bind(Bind::Int(created));
        let id = sql.bind(Bind::Text(key));
        let (cmp, col) = (self.sort_order.after(), self.key_column);
        Some(format!(
            "(created_timestamp {cmp} {ts} OR (created_timestamp = {ts} AND {col} {cmp} {id}))"
        ))
    }

    /// `ORDER BY` and `LIMIT`, appended to `sql`.
    fn order_and_limit(&self, sql: &mut Sql) {
        let (dir, col) = (self.sort_order.sql(), self.key_column);
        sql.push(&format!(" ORDER BY created_timestamp {dir}, {col} {dir}"));
        if let Some(limit) = self.limit {
            let n = sql.bind(Bind::Int(i64::from(limit) + 1));
            sql.push(&format!(" LIMIT {n}"));
        }
    }

    /// The page from the rows fetched (one more than the page holds, when there are more).
    fn page<T>(&self, mut items: Vec<T>) -> Page<T> {
        let has_more = self.limit.is_some_and(|l| items.len() > l as usize);
        if let Some(limit) = self.limit {
            items.truncate(limit as usize);
        }
        Page { items, has_more }
    }
}

/// The database handle. Cheap to clone: clones share one connection pool.
#[derive(Clone)]
pub struct Store {
    pool: AnyPool,
    backend: Backend,
}

impl std::fmt::Debug for Store {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Store")
            .field("backend", &self.backend)
            .finish_non_exhaustive()
    }
}

impl Store {
    /// Opens the database at `url` and brings its schema up to date.
    ///
    /// - `sqlite://path/to/file.db` (or `sqlite:path`): the file and its directory are
    ///   created when missing; WAL journal (readers do not block the writer), a busy
    ///   timeout for writers, `synchronous=FULL` so a committed write survives a power cut.
    /// - `sqlite::memory:`: a private in-memory database on a single connection, for tests.
    /// - `postgres://user:pass@host:port/db` (or `postgresql://`).
    pub async fn connect(url: &str) -> Result<Store, StoreError> {
        sqlx::any::install_default_drivers();
        let url = url.trim();
        let (backend, url, pool) = if let Some(path) = sqlite_path(url) {
            let memory = path.is_none();
            let url = match &path {
                Some(path) => {
                    create_parent_dir(path)?;
                    // `mode=rwc`: create the file when missing.
                    if url.contains('?') {
                        url.to_owned()
                    } else {
                        format!("{url}?mode=rwc")
                    }
                }
                None => url.to_owned(),
            };
            let options = AnyPoolOptions::new().acquire_timeout(ACQUIRE_TIMEOUT);
            let options = if memory {
                // An in-memory database lives as long as its one connection.
                options
                    .max_connections(1)
                    .min_connections(1)
                    .idle_timeout(None)
                    .max_lifetime(None)
            } else {
                options.max_connections(SQLITE_POOL)
            };
            if !memory {
                set_wal(&url).await?;
            }
            let pool = options.after_connect(|conn, _meta| {
                Box::pin(async move {
                    conn.execute(
                        format!(
                            "PRAGMA busy_timeout = {SQLITE_BUSY_TIMEOUT_MS}; \
                             PRAGMA synchronous = FULL; \
                             PRAGMA case_sensitive_like = ON;"
                        )
                        .as_str(),
                    )
                    .await?;
                    Ok(())
                })
            });
            (Backend::Sqlite, url, pool)
        } else if url.starts_with("postgres://") || url.starts_with("postgresql://") {
            let pool = AnyPoolOptions::new()
                .acquire_timeout(ACQUIRE_TIMEOUT)
                .max_connections(POSTGRES_POOL);
            (Backend::Postgres, url.to_owned(), pool)
        } else {
            return Err(StoreError::UnsupportedUrl);
        };
        let options: AnyConnectOptions = url.parse()?;
        let pool = pool.connect_with(options).await?;
        let migrator = Migrator::new(Embedded).await?;
        migrator.run(&pool).await?;
        Ok(Store { pool, backend })
    }

    pub fn backend(&self) -> Backend {
        self.backend
    }

    /// Closes every connection; pending queries finish first.
    pub async fn close(&self) {
        self.pool.close().await;
    }
}

/// For a SQLite URL: `Some(None)` for an in-memory database, `Some(Some(path))` for a file.
fn sqlite_path(url: &str) -> Option<Option<PathBuf>> {
    let rest = url
        .strip_prefix("sqlite://")
        .or_else(|| url.strip_prefix("sqlite:"))?;
    let file = rest.split('?').next().unwrap_or_default();
    let memory = file.is_empty() || file == ":memory:" || rest.contains("mode=memory");
    Some(if memory {
        None
    } else {
        Some(PathBuf::from(file))
    })
}

fn create_parent_dir(path: &Path) -> Result<(), StoreError> {
    match path.parent() {
        Some(dir) if !dir.as_os_str().is_empty() => {
            std::fs::create_dir_all(dir).map_err(|source| StoreError::CreateDir {
                path: dir.to_owned(),
                source,
            })
        }
        _ => Ok(()),
    }
}

/// Switches the file to WAL once, on a connection of its own: the switch needs an exclusive
/// lock that the busy timeout does not wait for, so it must not race pool connections.
/// WAL is a property of the file, so it holds for every later connection.
async fn set_wal(url: &str) -> Result<(), StoreError> {
    use sqlx::Connection;
    let mut conn = sqlx::AnyConnection::connect(url).await?;
    conn.execute("PRAGMA journal_mode = WAL").await?;
    conn.close().await?;
    Ok(())
}

/// The migrations compiled into the binary. Their text is the same for both backends, so
/// the checksums sqlx records agree wherever the schema was created.
#[derive(Debug)]
struct Embedded;

const MIGRATIONS: &[(i64, &str, &str)] = &[
    (
        1,
        "agents and calls",
        include_str!("migrations/0001_agents_calls.sql"),
    ),
    (
        2,
        "phone numbers",
        include_str!("migrations/0002_phone_numbers.sql"),
    ),
    (
        3,
        "agent early media",
        include_str!("migrations/0003_agent_early_media.sql"),
    ),
];

impl MigrationSource<'static> for Embedded {
    fn resolve(
        self,
    ) -> Pin<
        Box<dyn Future<Output = Result<Vec<Migration>, sqlx::error::BoxDynError>> + Send + 'static>,
    > {
        Box::pin(async {
            Ok(MIGRATIONS
                .iter()
                .map(|(version, description, sql)| {
                    Migration::new(
                        *version,
                        Cow::Borrowed(*description),
                        MigrationType::Simple,
                        Cow::Borrowed(*sql),
                        false,
                    )
                })
                .collect())
        })
    }
}

/// Milliseconds since the Unix epoch: the unit of every timestamp in the API.
pub fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX))
        .unwrap_or(0)
}

/// A fresh random identifier: `prefix` then 32 lowercase hex digits (128 bits). Hex and
/// `_` are unreserved in URLs and in the user part of a SIP URI, so the id is usable
/// verbatim in `/v2/get-call/{call_id}` and in `sip:{call_id}@host`.
pub fn new_id(prefix: &str) -> String {
    use std::fmt::Write;
    let bytes: [u8; 16] = rand::random();
    let mut id = String::with_capacity(prefix.len() + 32);
    id.push_str(prefix);
    for b in bytes {
        // cannot fail: writing to a String
        let _ = write!(id, "{b:02x}");
    }
    id
}

/// Values bound to `$n` placeholders of a query built at run time.
#[derive(Debug, Clone)]
enum Bind {
    Text(String),
    OptText(Option<String>),
    Int(i64),
    OptInt(Option<i64>),
    Float(f64),
}

/// A query under construction: SQL text plus its bound values, numbered in order.
#[derive(Debug, Default)]
struct Sql {
    text: String,
    binds: Vec<Bind>,
}

impl Sql {
    fn new(text: &str) -> Sql {
        Sql {
            text: text.to_owned(),
            binds: Vec::new(),
        }
    }

    fn push(&mut self, text: &str) -> &mut Self {
        self.text.push_str(text);
        self
    }

    /// Adds a value and returns its placeholder (`$n`).
    fn bind(&mut self, value: Bind) -> String {
        self.binds.push(value);
        format!("${}", self.binds.len())
    }

    fn query(&self) -> sqlx::query::Query<'_, sqlx::Any, sqlx::any::AnyArguments<'_>> {
        let mut query = sqlx::query(&self.text);
        for bind in &self.binds {
            query = match bind {
                Bind::Text(v) => query.bind(v.as_str()),
                Bind::OptText(v) => query.bind(v.as_deref()),
                Bind::Int(v) => query.bind(*v),
                Bind::OptInt(v) => query.bind(*v),
                Bind::Float(v) => query.bind(*v),
            };
        }
        query
    }
}

impl Store {
    /// The cursor for a page after `key` in `table`: its creation time, or
    /// [`StoreError::UnknownCursor`] when no such row exists. `table` and `key_column` are
    /// ours, never user input.
    async fn cursor(
        &self,
        table: &'static str,
        key_column: &'static str,
        key: Option<&str>,
    ) -> Result<Option<(i64, String)>, StoreError> {
        let Some(key) = key else { return Ok(None) };
        let row = sqlx::query(&format!(
            "SELECT created_timestamp FROM {table} WHERE {key_column} = $1"
        ))
        .bind(key)
        .fetch_optional(&self.pool)
        .await?
        .ok_or(StoreError::UnknownCursor)?;
        Ok(Some((
            row.try_get::<i64, _>("created_timestamp")?,
            key.to_owned(),
        )))
    }
}

impl Store {
    /// One page of `SELECT {columns} FROM {table}` in keyset order, each row read by `read`.
    async fn list_page<T>(
        &self,
        keyset: &Keyset,
        columns: &str,
        table: &str,
        read: fn(&sqlx::any::AnyRow) -> Result<T, StoreError>,
    ) -> Result<Page<T>, StoreError> {
        let mut sql = Sql::new(&format!("SELECT {columns} FROM {table}"));
        if let Some(after) = keyset.after(&mut sql) {
            sql.push(&format!(" WHERE {after}"));
        }
        keyset.order_and_limit(&mut sql);
        let rows = sql.query().fetch_all(&self.pool).await?;
        let items = rows.iter().map(read).collect::<Result<Vec<_>, _>>()?;
        Ok(keyset.page(items))
    }
}

/// Whether an error is a primary-key or unique violation (both backends).
fn is_unique_violation(err: &sqlx::Error) -> bool {
    match err {
        sqlx::Error::Database(db) => db.is_unique_violation(),
        _ => false,
    }
}

//! Database connections and write transactions.
//!
//! SQLite allows one writer at a time and answers a second with "database is
//! locked" rather than waiting, so writes on SQLite take a process-wide lock
//! for the length of their transaction; reads run concurrently (WAL). On
//! PostgreSQL writes run concurrently.
//!
//! On PostgreSQL a write transaction runs on sqlx directly rather than
//! through sea-orm's transaction, which deep-copies every statement's
//! parameters before binding them (array parameters element by element:
//! 7 % of the server's CPU in a bulk import, and as much again freeing the
//! copies). It also gives the writer `COPY`.

use std::ops::Deref;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use sea_orm::sqlx::{self, Postgres};
use sea_orm::{
    ConnectOptions, ConnectionTrait, Database, DatabaseBackend, DatabaseConnection, DatabaseTransaction, DbErr,
    ExecResult, QueryResult, RuntimeErr, Statement, TransactionTrait,
};
use sea_query_binder::SqlxValues;
use tokio::sync::{Mutex, OwnedMutexGuard};

/// A service's database: a pool, plus the write lock on SQLite and the
/// connections kept for single-statement writes on PostgreSQL.
#[derive(Clone, Debug)]
pub struct Db {
    conn: DatabaseConnection,
    write_lock: Option<Arc<Mutex<()>>>,
    single_writers: Option<Arc<SingleWriters>>,
}

impl Db {
    /// Connects to `url` (`postgres://...` or `sqlite://...`) with a pool of
    /// `max_connections`. SQLite files and their folder are created.
    pub async fn connect(url: &str, max_connections: u32) -> anyhow::Result<Db> {
        let is_sqlite = url.starts_with("sqlite:");
        if is_sqlite {
            if let Some(path) = sqlite_path(url) {
                if let Some(dir) = std::path::Path::new(&path).parent() {
                    if !dir.as_os_str().is_empty() {
                        std::fs::create_dir_all(dir)
                            .with_context(|| format!("cannot create the data folder {}", dir.display()))?;
                    }
                }
            }
        }
        let mut options = ConnectOptions::new(url.to_string());
        options
            .max_connections(max_connections)
            .min_connections(if is_sqlite { 1 } else { 0 })
            .acquire_timeout(Duration::from_secs(5))
            .connect_timeout(Duration::from_secs(5))
            .sqlx_logging(false)
            .map_sqlx_sqlite_opts(|o| {
                o.journal_mode(sea_orm::sqlx::sqlite::SqliteJournalMode::Wal)
                    .synchronous(sea_orm::sqlx::sqlite::SqliteSynchronous::Normal)
                    .busy_timeout(Duration::from_secs(10))
                    .foreign_keys(true)
            });
        let conn = if url.starts_with("postgres://") {
            postgres_pool(url, options).await
        } else {
            Database::connect(options).await
        }
        .with_context(|| format!("cannot connect to the database at {}", redact(url)))?;
        let single_writers = (conn.get_database_backend() == DatabaseBackend::Postgres).then(|| {
            Arc::new(SingleWriters {
                options: conn.get_postgres_connection_pool().connect_options(),
                idle: std::sync::Mutex::new(Vec::new()),
            })
        });
        Ok(Db {
            write_lock: is_sqlite.then(|| Arc::new(Mutex::new(()))),
            conn,
            single_writers,
        })
    }

    /// The pool, for reads.
    pub fn conn(&self) -> &DatabaseConnection {
        &self.conn
    }

    pub fn backend(&self) -> DatabaseBackend {
        self.conn.get_database_backend()
    }

    /// Starts a write transaction (holding the SQLite write lock, if any,
    /// until it ends).
    pub async fn begin_write(&self) -> Result<WriteTxn, DbErr> {
        let guard = match &self.write_lock {
            Some(lock) => Some(lock.clone().lock_owned().await),
            None => None,
        };
        let conn = match self.backend() {
            DatabaseBackend::Postgres => {
                let txn = self
                    .conn
                    .get_postgres_connection_pool()
                    .begin()
                    .await
                    .map_err(conn_err)?;
                TxnConn::Postgres(Mutex::new(txn))
            }
            _ => TxnConn::SeaOrm(self.conn.begin().await?),
        };
        Ok(WriteTxn { conn, _guard: guard })
    }

    /// Starts a write of exactly one statement, which commits on its own
    /// (PostgreSQL runs a statement outside `BEGIN` as its own
    /// transaction): no `BEGIN` and no `COMMIT` round trip. A second
    /// statement is refused, so a caller cannot lose atomicity by mistake;
    /// `commit` does nothing. Falls back to [`Db::begin_write`] on SQLite.
    ///
    /// It runs on a connection kept outside the pool: sqlx pings every
    /// pooled connection when it goes back to the pool, one more round trip
    /// per write (measured on unary ingestion at 16 clients: PostgreSQL's
    /// CPU per call 46-55 µs with the ping, 34-39 µs without).
    pub async fn begin_single_write(&self) -> Result<WriteTxn, DbErr> {
        let Some(writers) = &self.single_writers else {
            return self.begin_write().await;
        };
        let conn = writers.take().await?;
        Ok(WriteTxn {
            conn: TxnConn::Single(Mutex::new(SingleStatement {
                conn: Some(conn),
                writers: writers.clone(),
                state: SingleState::Unused,
            })),
            _guard: None,
        })
    }

    /// Whether the database answers a trivial query.
    pub async fn ping(&self) -> bool {
        self.conn.ping().await.is_ok()
    }
}

/// A pooled connection idle at least this long is checked with a ping
/// before it is handed out; busier ones are not. sqlx pings every
/// connection it hands out by default: a round trip to PostgreSQL before
/// each read and each transaction, while under load a connection has been
/// idle for microseconds. A connection that broke while idle (the server
/// restarted, a failover) is still found and replaced before use.
const PING_IF_IDLE_FOR: Duration = Duration::from_secs(1);

/// The PostgreSQL pool, built as sea-orm builds it but with the ping on
/// acquire limited to connections that have been idle ([`PING_IF_IDLE_FOR`]).
async fn postgres_pool(url: &str, options: ConnectOptions) -> Result<DatabaseConnection, DbErr> {
    use sqlx::ConnectOptions as _;
    use sqlx::Connection as _;
    let connect = url
        .parse::<sqlx::postgres::PgConnectOptions>()
        .map_err(conn_err)?
        .disable_statement_logging();
    let pool = options
        .sqlx_pool_options::<Postgres>()
        .test_before_acquire(false)
        .before_acquire(|conn, meta| {
            Box::pin(async move {
                if meta.idle_for >= PING_IF_IDLE_FOR {
                    conn.ping().await?;
                }
                Ok(true)
            })
        })
        .connect_with(connect)
        .await
        .map_err(conn_err)?;
    Ok(DatabaseConnection::from(pool))
}

/// Single-statement writes keep at most this many connections between
/// writes (group commit runs two unary and two bulk writers); more at once
/// open connections of their own and close them afterwards.
const KEPT_SINGLE_WRITERS: usize = 4;

/// How long a single-statement write waits for a kept connection's ping
/// or a new connection, as the pool waits to connect: a half-open socket
/// after a failover must not hold a writer for minutes.
const SINGLE_WRITER_WAIT: Duration = Duration::from_secs(5);

/// PostgreSQL connections kept, outside the pool, for single-statement
/// writes.
#[derive(Debug)]
struct SingleWriters {
    options: Arc<sqlx::postgres::PgConnectOptions>,
    /// Idle connections, and since when.
    idle: std::sync::Mutex<Vec<(sqlx::PgConnection, std::time::Instant)>>,
}

impl SingleWriters {
    /// A kept connection (pinged first if it has been idle, as the pool
    /// does), or a new one.
    async fn take(&self) -> Result<sqlx::PgConnection, DbErr> {
        use sqlx::Connection as _;
        loop {
            let kept = self.idle.lock().unwrap_or_else(|e| e.into_inner()).pop();
            let Some((mut conn, since)) = kept else {
                break;
            };
            if since.elapsed() < PING_IF_IDLE_FOR
                || matches!(tokio::time::timeout(SINGLE_WRITER_WAIT, conn.ping()).await, Ok(Ok(())))
            {
                return Ok(conn);
            }
            // Broken while idle (the server restarted, a failover): dropped.
        }
        match tokio::time::timeout(SINGLE_WRITER_WAIT, sqlx::PgConnection::connect_with(&self.options)).await {
            Ok(connected) => connected.map_err(conn_err),
            Err(_) => Err(conn_err(sqlx::Error::PoolTimedOut)),
        }
    }

    fn keep(&self, conn: sqlx::PgConnection) {
        let mut idle = self.idle.lock().unwrap_or_else(|e| e.into_inner());
        if idle.len() < KEPT_SINGLE_WRITERS {
            idle.push((conn, std::time::Instant::now()));
        }
    }
}

/// Where a single-statement write is.
#[derive(Clone, Copy, PartialEq, Eq)]
enum SingleState {
    Unused,
    /// Its statement was sent and has not finished: were the call
    /// cancelled now, the connection would be in the middle of an exchange.
    Running,
    /// Its statement finished (committed or failed): the connection is
    /// ready for another write.
    Done,
}

/// The connection of a single-statement write; kept for the next one when
/// its statement finished.
pub struct SingleStatement {
    conn: Option<sqlx::PgConnection>,
    writers: Arc<SingleWriters>,
    state: SingleState,
}

impl SingleStatement {
    /// Runs the write's one statement.
    async fn run<T>(
        &mut self,
        statement: impl AsyncFnOnce(&mut sqlx::PgConnection) -> Result<T, sqlx::Error>,
    ) -> Result<T, sqlx::Error> {
        if self.state != SingleState::Unused {
            return Err(sqlx::Error::Protocol(
                "a single-statement write runs one statement; use a transaction for more".to_string(),
            ));
        }
        let Some(conn) = self.conn.as_mut() else {
            return Err(sqlx::Error::PoolClosed);
        };
        self.state = SingleState::Running;
        let outcome = statement(conn).await;
        // A database error (a violated constraint, a refusal) leaves the
        // connection ready; a broken connection is not kept, nor one the
        // server is ending (class 57: shutdown, terminated; 08: connection).
        let ready = match &outcome {
            Ok(_) => true,
            Err(sqlx::Error::Database(e)) => !e.code().is_some_and(|c| c.starts_with("57") || c.starts_with("08")),
            Err(_) => false,
        };
        if ready {
            self.state = SingleState::Done;
        }
        outcome
    }
}

impl Drop for SingleStatement {
    fn drop(&mut self) {
        if matches!(self.state, SingleState::Unused | SingleState::Done) {
            if let Some(conn) = self.conn.take() {
                self.writers.keep(conn);
            }
        }
    }
}

/// A write transaction. Dropping it without `commit` rolls it back (a
/// single-statement write's statement committed when it ran).
pub struct WriteTxn {
    conn: TxnConn,
    _guard: Option<OwnedMutexGuard<()>>,
}

impl WriteTxn {
    pub async fn commit(self) -> Result<(), DbErr> {
        match self.conn {
            TxnConn::Postgres(txn) => txn.into_inner().commit().await.map_err(query_err),
            TxnConn::SeaOrm(txn) => txn.commit().await,
            // Its statement committed when it ran.
            TxnConn::Single(_) => Ok(()),
        }
    }
}

impl Deref for WriteTxn {
    type Target = TxnConn;

    fn deref(&self) -> &TxnConn {
        &self.conn
    }
}

/// The connection of a write transaction.
pub enum TxnConn {
    /// PostgreSQL, on sqlx's transaction.
    Postgres(Mutex<sqlx::Transaction<'static, Postgres>>),
    /// SQLite, on sea-orm's.
    SeaOrm(DatabaseTransaction),
    /// PostgreSQL, one statement outside a transaction block
    /// ([`Db::begin_single_write`]).
    Single(Mutex<SingleStatement>),
}

impl TxnConn {
    /// Runs `statement` on the PostgreSQL connection: inside the
    /// transaction, or as a single-statement write's one statement. The
    /// callers handle SQLite's sea-orm transaction themselves.
    async fn on_postgres<T>(
        &self,
        statement: impl AsyncFnOnce(&mut sqlx::PgConnection) -> Result<T, sqlx::Error>,
    ) -> Result<T, sqlx::Error> {
        match self {
            TxnConn::Postgres(txn) => statement(&mut **txn.lock().await).await,
            TxnConn::Single(single) => single.lock().await.run(statement).await,
            TxnConn::SeaOrm(_) => Err(sqlx::Error::Protocol("not a PostgreSQL connection".to_string())),
        }
    }

    /// Runs `COPY ... FROM STDIN` with `data` as its input (PostgreSQL
    /// only) and returns the number of rows copied.
    pub async fn copy_in(&self, statement: &str, data: &[u8]) -> Result<u64, DbErr> {
        let TxnConn::Postgres(txn) = self else {
            return Err(DbErr::Custom("COPY needs a PostgreSQL transaction".to_string()));
        };
        let mut txn = txn.lock().await;
        let mut copy = txn.copy_in_raw(statement).await.map_err(exec_err)?;
        if let Err(e) = copy.send(data).await {
            let _ = copy.abort("the input could not be sent").await;
            return Err(exec_err(e));
        }
        copy.finish().await.map_err(exec_err)
    }
}

/// sqlx's errors wrapped as sea-orm wraps them, so `DbErr::sql_err` still
/// tells a unique violation and its constraint.
fn exec_err(e: sqlx::Error) -> DbErr {
    DbErr::Exec(RuntimeErr::SqlxError(e))
}

fn query_err(e: sqlx::Error) -> DbErr {
    DbErr::Query(RuntimeErr::SqlxError(e))
}

fn conn_err(e: sqlx::Error) -> DbErr {
    DbErr::Conn(RuntimeErr::SqlxError(e))
}

/// A statement's parameters, moved to the driver.
fn pg_query(stmt: Statement) -> (String, SqlxValues) {
    let values = stmt.values.unwrap_or(sea_orm::Values(Vec::new()));
    (stmt.sql, SqlxValues(values))
}

#[async_trait::async_trait]
impl ConnectionTrait for TxnConn {
    fn get_database_backend(&self) -> DatabaseBackend {
        match self {
            TxnConn::Postgres(_) | TxnConn::Single(_) => DatabaseBackend::Postgres,
            TxnConn::SeaOrm(txn) => txn.get_database_backend(),
        }
    }

    async fn execute(&self, stmt: Statement) -> Result<ExecResult, DbErr> {
        if let TxnConn::SeaOrm(txn) = self {
            return txn.execute(stmt).await;
        }
        let (sql, values) = pg_query(stmt);
        let done = self
            .on_postgres(async |conn| sqlx::query_with(&sql, values).execute(conn).await)
            .await;
        done.map(Into::into).map_err(exec_err)
    }

    async fn execute_unprepared(&self, sql: &str) -> Result<ExecResult, DbErr> {
        if let TxnConn::SeaOrm(txn) = self {
            return txn.execute_unprepared(sql).await;
        }
        let done = self
            .on_postgres(async |conn| sqlx::Executor::execute(conn, sql).await)
            .await;
        done.map(Into::into).map_err(exec_err)
    }

    async fn query_one(&self, stmt: Statement) -> Result<Option<QueryResult>, DbErr> {
        if let TxnConn::SeaOrm(txn) = self {
            return txn.query_one(stmt).await;
        }
        let (sql, values) = pg_query(stmt);
        let row = self
            .on_postgres(async |conn| sqlx::query_with(&sql, values).fetch_optional(conn).await)
            .await;
        row.map(|r| r.map(Into::into)).map_err(query_err)
    }

    async fn query_all(&self, stmt: Statement) -> Result<Vec<QueryResult>, DbErr> {
        if let TxnConn::SeaOrm(txn) = self {
            return txn.query_all(stmt).await;
        }
        let (sql, values) = pg_query(stmt);
        let rows = self
            .on_postgres(async |conn| sqlx::query_with(&sql, values).fetch_all(conn).await)
            .await;
        rows.map(|rows| rows.into_iter().map(Into::into).collect())
            .map_err(query_err)
    }
}

/// Applies `M`'s pending migrations to `service`'s database, one process at
/// a time: replicas starting together, or the migration Job beside them,
/// each wait their turn and then find nothing left to do. On PostgreSQL the
/// migrations run in one transaction that first takes an advisory lock
/// (DDL is transactional there, so a failure leaves nothing half-applied);
/// on SQLite in one transaction that writes first, taking the file's write
/// lock.
pub async fn migrate<M: sea_orm_migration::MigratorTrait>(db: &Db, service: &str) -> anyhow::Result<()> {
    let applied = match db.backend() {
        DatabaseBackend::Postgres => {
            let txn = db.conn.begin().await?;
            txn.execute(Statement::from_sql_and_values(
                DatabaseBackend::Postgres,
                "SELECT pg_advisory_xact_lock($1)",
                [migration_lock_key(service).into()],
            ))
            .await?;
            match M::up(&txn, None).await {
                Ok(()) => txn.commit().await,
                Err(e) => Err(e),
            }
        }
        _ => {
            // Writing first makes the transaction take SQLite's write lock
            // at once, so a second process waits (busy timeout) instead of
            // failing when it upgrades from reading.
            db.conn
                .execute_unprepared("CREATE TABLE IF NOT EXISTS migration_locks (service TEXT PRIMARY KEY)")
                .await?;
            let _guard = match &db.write_lock {
                Some(lock) => Some(lock.clone().lock_owned().await),
                None => None,
            };
            let txn = db.conn.begin().await?;
            txn.execute(Statement::from_sql_and_values(
                DatabaseBackend::Sqlite,
                "INSERT OR REPLACE INTO migration_locks (service) VALUES ($1)",
                [service.into()],
            ))
            .await?;
            match M::up(&txn, None).await {
                Ok(()) => txn.commit().await,
                Err(e) => Err(e),
            }
        }
    };
    applied.map_err(|e| anyhow::anyhow!("{service} migrations failed: {e}"))
}

/// The advisory-lock key of `service`'s migrations: FNV-1a of its name, so
/// it is stable across versions and distinct from the feeds' keys.
fn migration_lock_key(service: &str) -> i64 {
    let mut hash: u64 = 0xcbf2_9ce4_8422_2325;
    for b in format!("milestones-migrations-{service}").bytes() {
        hash ^= u64::from(b);
        hash = hash.wrapping_mul(0x0100_0000_01b3);
    }
    hash as i64
}

/// Runs a schema script (statements separated by `;`) written once for
/// both backends: `{SEQ}` becomes the log's sequence column and `{BLOB}` the
/// binary column type of the connected backend.
pub async fn run_schema(db: &impl ConnectionTrait, script: &str) -> Result<(), DbErr> {
    let (seq, blob) = match db.get_database_backend() {
        DatabaseBackend::Postgres => ("BIGSERIAL PRIMARY KEY", "BYTEA"),
        _ => ("INTEGER PRIMARY KEY AUTOINCREMENT", "BLOB"),
    };
    let sql = script.replace("{SEQ}", seq).replace("{BLOB}", blob);
    for statement in sql.split(';').map(str::trim).filter(|s| !s.is_empty()) {
        db.execute_unprepared(statement).await?;
    }
    Ok(())
}

fn sqlite_path(url: &str) -> Option<String> {
    let rest = url.strip_prefix("sqlite://").or_else(|| url.strip_prefix("sqlite:"))?;
    let path = rest.split('?').next()?;
    (!path.is_empty() && path != ":memory:").then(|| path.to_string())
}

/// The URL without its password, for messages.
pub fn redact(url: &str) -> String {
    match (url.find("://"), url.find('@')) {
        (Some(scheme), Some(at)) if at > scheme => {
            let creds = &url[scheme + 3..at];
            match creds.split_once(':') {
                Some((user, _)) => format!("{}{user}:***{}", &url[..scheme + 3], &url[at..]),
                None => url.to_string(),
            }
        }
        _ => url.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Passwords never appear in messages about URLs.
    #[test]
    fn redacts_passwords() {
        assert_eq!(redact("postgres://app:hunter2@db/goal"), "postgres://app:***@db/goal");
        assert_eq!(
            redact("sqlite://data/goal.db?mode=rwc"),
            "sqlite://data/goal.db?mode=rwc"
        );
        assert_eq!(
            sqlite_path("sqlite://data/goal.db?mode=rwc").as_deref(),
            Some("data/goal.db")
        );
    }
}

//! Change feeds: a transactional outbox and its gapless, resumable reads.
//!
//! Events are appended to a log table in the same transaction as the change
//! that caused them. A reader must never see sequence 7 before 6 commits,
//! or it would advance past 6 forever. Appends are therefore serialised for
//! the length of their transaction: on PostgreSQL by a transaction-scoped
//! advisory lock taken before the sequence is drawn, on SQLite by the single
//! writer. Sequence order is then commit order, and "everything after my
//! cursor" is a prefix that only grows. Sequences stay strictly increasing
//! but may have holes (a rolled-back append), which consumers must accept.

use std::time::Duration;

use futures::Stream;
use sea_orm::{ConnectionTrait, DatabaseBackend, Statement, Value};
use tokio::sync::{mpsc, watch};
use tokio_stream::wrappers::ReceiverStream;

use crate::db::Db;
use crate::ApiError;

/// Most events read from the log in one query.
const READ_BATCH: i64 = 500;

/// A log table: its name and the advisory-lock key that serialises appends.
#[derive(Debug, Clone, Copy)]
pub struct FeedTable {
    pub table: &'static str,
    pub lock_key: i64,
}

/// One stored event.
#[derive(Debug, Clone, PartialEq)]
pub struct StoredEvent {
    pub sequence: i64,
    pub create_time: i64,
    pub payload: Vec<u8>,
}

impl StoredEvent {
    /// The payload decoded as `E`. A stored payload that does not decode is
    /// a bug, reported as INTERNAL.
    pub fn decode<E: prost::Message + Default>(&self) -> Result<E, ApiError> {
        E::decode(self.payload.as_slice())
            .map_err(|err| ApiError::Internal(anyhow::anyhow!("stored event {} does not decode: {err}", self.sequence)))
    }
}

/// What a feed stream yields.
#[derive(Debug, Clone, PartialEq)]
pub enum FeedItem {
    Event(StoredEvent),
    /// Nothing new for a while; the newest sequence visible.
    Heartbeat {
        head_sequence: i64,
    },
}

/// Wakes feed streams when this process commits an event. Writes by other
/// replicas are picked up by polling.
#[derive(Clone, Debug)]
pub struct FeedNotifier {
    tx: watch::Sender<u64>,
}

impl Default for FeedNotifier {
    fn default() -> Self {
        Self {
            tx: watch::channel(0).0,
        }
    }
}

impl FeedNotifier {
    /// Call after a transaction that appended events has committed.
    pub fn notify(&self) {
        self.tx.send_modify(|n| *n = n.wrapping_add(1));
    }

    fn subscribe(&self) -> watch::Receiver<u64> {
        self.tx.subscribe()
    }
}

impl FeedTable {
    /// Appends events, in order, inside `txn`: one lock and one statement
    /// per 1,000 events rather than two round trips each.
    pub async fn append_all(
        &self,
        txn: &impl ConnectionTrait,
        events: Vec<(String, Vec<u8>)>,
        now_micros: i64,
    ) -> Result<(), ApiError> {
        if events.is_empty() {
            return Ok(());
        }
        let backend = txn.get_database_backend();
        if backend == DatabaseBackend::Postgres {
            txn.execute(Statement::from_sql_and_values(
                backend,
                "SELECT pg_advisory_xact_lock($1)",
                [Value::from(self.lock_key)],
            ))
            .await?;
        }
        let mut events = events.into_iter().peekable();
        while events.peek().is_some() {
            let mut values: Vec<Value> = Vec::new();
            let mut tuples: Vec<String> = Vec::new();
            for (tenant_id, payload) in events.by_ref().take(1_000) {
                let n = values.len();
                tuples.push(if backend == DatabaseBackend::Postgres {
                    format!("(${}, ${}, ${})", n + 1, n + 2, n + 3)
                } else {
                    "(?, ?, ?)".to_string()
                });
                values.extend([Value::from(tenant_id), Value::from(payload), Value::from(now_micros)]);
            }
            // Multi-row VALUES insert in list order on both backends, so
            // sequences follow the order given.
            let sql = format!(
                "INSERT INTO {} (tenant_id, payload, create_time) VALUES {}",
                self.table,
                tuples.join(", ")
            );
            txn.execute(Statement::from_sql_and_values(backend, sql, values))
                .await?;
        }
        Ok(())
    }

    /// Appends an event inside `txn` and returns its sequence.
    pub async fn append(
        &self,
        txn: &impl ConnectionTrait,
        tenant_id: &str,
        payload: Vec<u8>,
        now_micros: i64,
    ) -> Result<i64, ApiError> {
        let backend = txn.get_database_backend();
        if backend == DatabaseBackend::Postgres {
            txn.execute(Statement::from_sql_and_values(
                backend,
                "SELECT pg_advisory_xact_lock($1)",
                [Value::from(self.lock_key)],
            ))
            .await?;
        }
        let sql = format!(
            "INSERT INTO {} (tenant_id, payload, create_time) VALUES ($1, $2, $3) RETURNING seq",
            self.table
        );
        let row = txn
            .query_one(Statement::from_sql_and_values(
                backend,
                sql,
                [Value::from(tenant_id), Value::from(payload), Value::from(now_micros)],
            ))
            .await?
            .ok_or_else(|| ApiError::Internal(anyhow::anyhow!("insert into {} returned no sequence", self.table)))?;
        Ok(row.try_get("", "seq")?)
    }

    /// Events of the tenant (or of every tenant, for `None`) after `after`,
    /// oldest first, at most `limit`.
    pub async fn read_after(
        &self,
        conn: &impl ConnectionTrait,
        tenant_id: Option<&str>,
        after: i64,
        limit: i64,
    ) -> Result<Vec<StoredEvent>, ApiError> {
        let backend = conn.get_database_backend();
        let stmt = match tenant_id {
            Some(tenant) => Statement::from_sql_and_values(
                backend,
                format!(
                    "SELECT seq, create_time, payload FROM {} WHERE tenant_id = $1 AND seq > $2 ORDER BY seq LIMIT $3",
                    self.table
                ),
                [Value::from(tenant), Value::from(after), Value::from(limit)],
            ),
            None => Statement::from_sql_and_values(
                backend,
                format!(
                    "SELECT seq, create_time, payload FROM {} WHERE seq > $1 ORDER BY seq LIMIT $2",
                    self.table
                ),
                [Value::from(after), Value::from(limit)],
            ),
        };
        let rows = conn.query_all(stmt).await?;
        rows.into_iter()
            .map(|r| {
                Ok(StoredEvent {
                    sequence: r.try_get("", "seq")?,
                    create_time: r.try_get("", "create_time")?,
                    payload: r.try_get("", "payload")?,
                })
            })
            .collect::<Result<_, sea_orm::DbErr>>()
            .map_err(ApiError::from)
    }

    /// The newest sequence of the tenant (or of all, for `None`), 0 if none.
    pub async fn head(&self, conn: &impl ConnectionTrait, tenant_id: Option<&str>) -> Result<i64, ApiError> {
        let backend = conn.get_database_backend();
        let stmt = match tenant_id {
            Some(tenant) => Statement::from_sql_and_values(
                backend,
                format!(
                    "SELECT COALESCE(MAX(seq), 0) AS head FROM {} WHERE tenant_id = $1",
                    self.table
                ),
                [Value::from(tenant)],
            ),
            None => Statement::from_string(
                backend,
                format!("SELECT COALESCE(MAX(seq), 0) AS head FROM {}", self.table),
            ),
        };
        let row = conn.query_one(stmt).await?;
        Ok(match row {
            Some(r) => r.try_get("", "head")?,
            None => 0,
        })
    }

    /// Streams the feed of `tenant_id` (every tenant for `None`, which only
    /// the suite's own services may ask for) after `after`: replay, then tail, with
    /// heartbeats when idle. OUT_OF_RANGE (CURSOR_AHEAD) if the cursor is
    /// beyond the head. The stream ends with UNAVAILABLE when `shutdown`
    /// flips to true.
    pub async fn watch(
        self,
        db: Db,
        tenant_id: Option<String>,
        after: i64,
        notifier: FeedNotifier,
        timing: FeedTiming,
        mut shutdown: watch::Receiver<bool>,
    ) -> Result<impl Stream<Item = Result<FeedItem, ApiError>>, ApiError> {
        if after < 0 {
            return Err(ApiError::invalid("after_sequence", "must not be negative"));
        }
        let head = self.head(db.conn(), tenant_id.as_deref()).await?;
        if after > head {
            return Err(ApiError::OutOfRange {
                reason: "CURSOR_AHEAD",
                message: format!(
                    "after_sequence {after} is beyond the newest event {head}; was the cursor taken from another deployment?"
                ),
            });
        }
        let (tx, rx) = mpsc::channel(64);
        let mut wake = notifier.subscribe();
        tokio::spawn(async move {
            let mut cursor = after;
            let mut last_sent = tokio::time::Instant::now();
            let unavailable = || ApiError::Unavailable {
                message: "the server is shutting down; reconnect with your cursor".to_string(),
            };
            loop {
                if *shutdown.borrow() {
                    let _ = tx.try_send(Err(unavailable()));
                    return;
                }
                wake.borrow_and_update();
                let batch = match self
                    .read_after(db.conn(), tenant_id.as_deref(), cursor, READ_BATCH)
                    .await
                {
                    Ok(b) => b,
                    Err(e) => {
                        let _ = tx.send(Err(e)).await;
                        return;
                    }
                };
                let full = batch.len() as i64 == READ_BATCH;
                for event in batch {
                    let sequence = event.sequence;
                    // A slow consumer must not hold shutdown up.
                    tokio::select! {
                        sent = tx.send(Ok(FeedItem::Event(event))) => {
                            if sent.is_err() {
                                return; // the client went away
                            }
                        }
                        _ = async { let _ = shutdown.wait_for(|stop| *stop).await; } => {
                            let _ = tx.try_send(Err(unavailable()));
                            return;
                        }
                    }
                    cursor = sequence;
                    last_sent = tokio::time::Instant::now();
                }
                if full {
                    continue;
                }
                let heartbeat_at = last_sent + timing.heartbeat;
                tokio::select! {
                    _ = wake.changed() => {}
                    _ = tokio::time::sleep(timing.poll) => {}
                    _ = tokio::time::sleep_until(heartbeat_at) => {
                        // The cursor, not a fresh MAX(seq): an event committed
                        // since the last read must not be reported as passed.
                        if tx.send(Ok(FeedItem::Heartbeat { head_sequence: cursor })).await.is_err() {
                            return;
                        }
                        last_sent = tokio::time::Instant::now();
                    }
                    _ = async { let _ = shutdown.wait_for(|stop| *stop).await; } => {
                        let _ = tx.try_send(Err(unavailable()));
                        return;
                    }
                    _ = tx.closed() => return,
                }
            }
        });
        Ok(ReceiverStream::new(rx))
    }
}

/// How often a feed polls and sends heartbeats.
#[derive(Debug, Clone, Copy)]
pub struct FeedTiming {
    pub poll: Duration,
    pub heartbeat: Duration,
}

impl FeedTiming {
    pub fn from_settings(s: &crate::config::GrpcSettings) -> Self {
        Self {
            poll: Duration::from_millis(s.feed_poll_ms),
            heartbeat: Duration::from_millis(s.feed_heartbeat_ms),
        }
    }
}

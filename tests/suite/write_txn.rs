//! Write transactions, on the backend the tests run against: what a
//! transaction dropped without committing leaves behind (nothing), that its
//! connection serves the next one, that a unique violation still names its
//! index, and `COPY`. On PostgreSQL they run on sqlx directly, not on
//! sea-orm's transaction, so these are the guarantees that must not move.

use milestones_runtime::db::Db;
use milestones_suite::{backend, fresh_database_url, Backend};
use sea_orm::{ConnectionTrait, DatabaseBackend, SqlErr, Statement, Value};

/// A fresh database with an empty `deals` table, on one connection, so each
/// transaction reuses the one before it.
async fn deals_db() -> Db {
    let db = Db::connect(&fresh_database_url().await, 1).await.expect("connect");
    db.conn()
        .execute_unprepared("CREATE TABLE deals (id TEXT PRIMARY KEY, amount BIGINT NOT NULL)")
        .await
        .expect("table");
    db
}

async fn count(db: &Db) -> i64 {
    let row = db
        .conn()
        .query_one(Statement::from_string(db.backend(), "SELECT COUNT(*) AS n FROM deals"))
        .await
        .expect("count")
        .expect("a row");
    row.try_get("", "n").expect("n")
}

fn insert(db: &Db, id: &str) -> Statement {
    Statement::from_sql_and_values(
        db.backend(),
        "INSERT INTO deals (id, amount) VALUES ($1, $2)",
        [Value::from(id), Value::from(5i64)],
    )
}

/// The PostgreSQL backend process serving `conn`'s next statement.
async fn backend_pid(conn: &impl ConnectionTrait) -> i32 {
    let row = conn
        .query_one(Statement::from_string(
            DatabaseBackend::Postgres,
            "SELECT pg_backend_pid() AS pid",
        ))
        .await
        .expect("pid")
        .expect("a row");
    row.try_get::<i32>("", "pid").expect("pid")
}

/// Ends backend `pid` (as a server restart would), then waits past the
/// idle time after which a connection is pinged before use.
async fn terminate_and_idle(conn: &impl ConnectionTrait, pid: i32) {
    conn.execute(Statement::from_sql_and_values(
        DatabaseBackend::Postgres,
        "SELECT pg_terminate_backend($1)",
        [Value::from(pid)],
    ))
    .await
    .expect("terminate");
    tokio::time::sleep(std::time::Duration::from_millis(1_200)).await;
}

#[tokio::test]
async fn write_transactions_are_all_or_nothing() {
    let db = deals_db().await;

    // Dropped without commit: nothing stays.
    let txn = db.begin_write().await.expect("begin");
    txn.execute(insert(&db, "d1")).await.expect("insert");
    let rows = txn
        .query_all(Statement::from_string(db.backend(), "SELECT id FROM deals"))
        .await
        .expect("read inside");
    assert_eq!(rows.len(), 1, "the transaction sees its own row");
    drop(txn);
    assert_eq!(count(&db).await, 0);

    // A unique violation names its index, and the failed transaction's
    // connection serves the next one.
    let txn = db.begin_write().await.expect("begin");
    txn.execute(insert(&db, "d1")).await.expect("insert");
    txn.commit().await.expect("commit");
    let txn = db.begin_write().await.expect("begin");
    let err = txn.execute(insert(&db, "d1")).await.expect_err("duplicate id");
    match err.sql_err() {
        Some(SqlErr::UniqueConstraintViolation(text)) => {
            assert!(text.contains("deals"), "names the table or index: {text}")
        }
        other => panic!("a unique violation, got {other:?} from {err}"),
    }
    drop(txn);
    let txn = db.begin_write().await.expect("begin after a failure");
    txn.execute(insert(&db, "d2")).await.expect("insert");
    txn.commit().await.expect("commit");
    assert_eq!(count(&db).await, 2);
}

#[tokio::test]
async fn copy_inserts_rows_within_the_transaction() {
    let db = deals_db().await;
    let txn = db.begin_write().await.expect("begin");
    let copy = "COPY deals (id, amount) FROM STDIN (FORMAT text)";
    if backend() == Backend::Sqlite {
        assert_eq!(db.backend(), DatabaseBackend::Sqlite);
        txn.copy_in(copy, b"d1\t5\n").await.expect_err("COPY needs PostgreSQL");
        return;
    }
    assert_eq!(txn.copy_in(copy, b"d1\t5\nd2\t7\n").await.expect("copy"), 2);
    // A row that breaks a constraint fails the COPY, and with it the
    // transaction: nothing is kept.
    txn.copy_in(copy, b"d3\t1\nd1\t9\n").await.expect_err("duplicate id");
    drop(txn);
    assert_eq!(count(&db).await, 0);
    let txn = db.begin_write().await.expect("begin");
    txn.copy_in(copy, b"d1\t5\nd2\t7\n").await.expect("copy");
    txn.commit().await.expect("commit");
    assert_eq!(count(&db).await, 2);
}

/// Pooled connections are not pinged before every use, but one that broke
/// while idle (the server restarted, a failover) is found and replaced
/// before it is handed out.
#[tokio::test]
async fn a_connection_broken_while_idle_is_replaced() {
    if backend() == Backend::Sqlite {
        return;
    }
    let url = fresh_database_url().await;
    let db = Db::connect(&url, 1).await.expect("connect");
    let before = backend_pid(db.conn()).await;
    let admin = Db::connect(&url, 1).await.expect("connect again");
    terminate_and_idle(admin.conn(), before).await;
    let after = backend_pid(db.conn()).await;
    assert_ne!(before, after, "a new connection replaced the broken one");
    let txn = db.begin_write().await.expect("a write transaction too");
    txn.commit().await.expect("commit");
}

/// A single-statement write commits its one statement by itself, refuses a
/// second one (which would not be atomic with the first), and keeps its
/// connection for the next write, even after its statement failed.
#[tokio::test]
async fn a_single_statement_write_runs_one_statement() {
    let db = deals_db().await;
    if db.backend() == DatabaseBackend::Sqlite {
        // A transaction there: it commits on `commit`.
        let txn = db.begin_single_write().await.expect("begin");
        txn.execute(insert(&db, "d1")).await.expect("insert");
        txn.commit().await.expect("commit");
        assert_eq!(count(&db).await, 1);
        return;
    }
    let first = backend_pid(&*db.begin_single_write().await.expect("begin")).await;

    // Committed without `commit`, on the same kept connection.
    let single = db.begin_single_write().await.expect("begin");
    single.execute(insert(&db, "d1")).await.expect("insert");
    let second = single.execute(insert(&db, "d2")).await;
    assert!(second.is_err(), "a second statement is refused");
    drop(single);
    assert_eq!(count(&db).await, 1, "the first statement committed alone");

    // A failed statement leaves nothing, and its connection serves on.
    let single = db.begin_single_write().await.expect("begin");
    let err = single.execute(insert(&db, "d1")).await.expect_err("a duplicate id");
    assert!(
        matches!(err.sql_err(), Some(SqlErr::UniqueConstraintViolation(_))),
        "{err:?}"
    );
    drop(single);
    assert_eq!(count(&db).await, 1);
    let again = backend_pid(&*db.begin_single_write().await.expect("begin")).await;
    assert_eq!(first, again, "the kept connection serves every single write");
}

/// A connection kept for single-statement writes that broke while idle is
/// found and replaced before use.
#[tokio::test]
async fn a_kept_single_writer_broken_while_idle_is_replaced() {
    if backend() == Backend::Sqlite {
        return;
    }
    let db = deals_db().await;
    let before = backend_pid(&*db.begin_single_write().await.expect("begin")).await;
    terminate_and_idle(db.conn(), before).await;
    let single = db.begin_single_write().await.expect("begin");
    single
        .execute(insert(&db, "d1"))
        .await
        .expect("insert on a new connection");
    drop(single);
    assert_eq!(count(&db).await, 1);
}

//! The database schema, created and migrated by the server at start.
//!
//! Migrations are embedded, numbered, and applied in order inside one transaction that first
//! takes a transaction-level advisory lock, so several servers starting together apply each
//! migration once and none sees a half-made schema.
//!
//! - `locker_meta`: one row; the table's revision (tokens come from it), the id of the latest
//!   history entry, and `seq`, which counts the commits that wrote locks. Every batch locks this
//!   row first (`FOR UPDATE`): that serialises the batches of all servers, as the file
//!   backend's one writer serialises its own.
//! - `locker_locks`: one row per lock, the lock as the state file stores it (JSON), the `seq`
//!   of the commit that last wrote it (how a server finds what others changed), and its next
//!   deadline (a lease's end), indexed.
//! - `locker_history`: the history entries, by id.

use tokio_postgres::Client;

/// The advisory lock key that serialises migrations: "locker" in ASCII.
const MIGRATION_LOCK: i64 = 0x6c6f_636b_6572;

/// The migrations, in order; the schema version is the number applied.
const MIGRATIONS: &[&str] = &[
    // 1: the tables.
    "CREATE TABLE locker_meta (
        id int PRIMARY KEY CHECK (id = 1),
        revision bigint NOT NULL,
        history_id bigint NOT NULL,
        seq bigint NOT NULL
    );
    INSERT INTO locker_meta (id, revision, history_id, seq) VALUES (1, 0, 0, 0);
    CREATE TABLE locker_locks (
        name text PRIMARY KEY,
        seq bigint NOT NULL,
        lock jsonb NOT NULL,
        deadline timestamptz
    );
    CREATE INDEX locker_locks_seq ON locker_locks (seq);
    CREATE INDEX locker_locks_deadline ON locker_locks (deadline) WHERE deadline IS NOT NULL;
    CREATE TABLE locker_history (
        id bigint PRIMARY KEY,
        lock_name text NOT NULL,
        entry jsonb NOT NULL
    );
    CREATE INDEX locker_history_lock ON locker_history (lock_name, id);",
];

/// Brings the schema up to date; returns the migrations applied now (none if it was).
pub async fn migrate(client: &mut Client) -> Result<usize, String> {
    let failed = |e: tokio_postgres::Error| format!("could not create or migrate the schema: {e}");
    let tx = client.transaction().await.map_err(failed)?;
    tx.execute("SELECT pg_advisory_xact_lock($1)", &[&MIGRATION_LOCK])
        .await
        .map_err(failed)?;
    tx.batch_execute(
        "CREATE TABLE IF NOT EXISTS locker_schema (version int NOT NULL);
         INSERT INTO locker_schema (version) SELECT 0 WHERE NOT EXISTS (SELECT 1 FROM locker_schema);",
    )
    .await
    .map_err(failed)?;
    let version: i32 = tx
        .query_one("SELECT version FROM locker_schema", &[])
        .await
        .map_err(failed)?
        .get(0);
    let known = i32::try_from(MIGRATIONS.len()).unwrap_or(i32::MAX);
    if version > known {
        return Err(format!(
            "the database's schema is at version {version}, made by a newer locker server; this one knows versions up to {known}. Upgrade this server"
        ));
    }
    let done = usize::try_from(version).unwrap_or(0);
    for migration in MIGRATIONS.iter().skip(done) {
        tx.batch_execute(migration).await.map_err(failed)?;
    }
    if known > version {
        tx.execute("UPDATE locker_schema SET version = $1", &[&known])
            .await
            .map_err(failed)?;
    }
    tx.commit().await.map_err(failed)?;
    Ok(MIGRATIONS.len().saturating_sub(done))
}

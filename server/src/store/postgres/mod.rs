//! The PostgreSQL backend: several servers share one database, and with it their locks.
//!
//! Each server keeps the whole table in memory, as the file backend does (reads never wait for
//! the database), and decides each batch of requests in one transaction:
//!
//! 1. It locks `locker_meta`'s one row (`SELECT ... FOR UPDATE`), which serialises the batches
//!    of every server on the database, and reads the database's clock: leases start and end on
//!    it, whichever server decides.
//! 2. It catches up: the locks other servers wrote since this one last looked (their `seq` is
//!    above the one it knows) and their history entries are read into the table in memory. A
//!    lock another server freed goes to the first of its queue here.
//! 3. It decides the batch with the same pure rules as the file backend
//!    ([`crate::domain::Batch`]), on a table that is now exactly the database's, writes what
//!    changed (locks, history entries, the meta row) with a `NOTIFY` to the other servers, and
//!    commits. Only then are the requests answered (a 200 means committed; the server asks for
//!    synchronous commit).
//!
//! A server hears the others' commits on a `LISTEN` connection ([`listen`]) and decides an empty
//! batch to catch up, so its readers and its queues follow within milliseconds; the wake-up is
//! only a hint, the transaction re-reads what changed. Revisions, tokens and history ids come
//! from the meta row and only grow. Queues (waiting requests) live in each server's memory, as
//! with the file backend: a waiter is not an acknowledged change.
//!
//! When the database cannot be reached, a batch fails as a whole (503, nothing changed), the
//! pool connects again by itself, and `/healthz` says so (see [`Health`]).

mod connect;
mod import;
mod schema;

use std::future::Future;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use deadpool_postgres::Pool;
use serde_json::Value;
use tokio_postgres::types::Json;

pub use connect::Target;
pub use import::import_state_file;

use super::backend::{Backend, CommitError, Committed, Health, Request, Wake};
use super::file::codec::{StoredEntry, StoredLock, StoredLockView};
use crate::clock::{Clock, OffsetClock};
use crate::domain::{Changes, Entry, Lock, LockTable};

/// The channel servers notify each other on.
const CHANNEL: &str = "locker";
/// The longest one batch's transaction may take before it is given up (and answered 503).
const TRANSACTION_TIMEOUT: Duration = Duration::from_secs(10);
/// How often the listening connection checks that the database still answers.
const PING_EVERY: Duration = Duration::from_secs(2);
/// How long to wait before connecting again after the listening connection failed.
const RECONNECT_AFTER: Duration = Duration::from_secs(1);

/// The lock table, held in memory and made durable in PostgreSQL.
pub struct PgBackend {
    runtime: tokio::runtime::Handle,
    pool: Pool,
    target: Target,
    table: LockTable,
    /// The commit counter the table in memory is current with.
    seq: i64,
    /// This server's name in notifications, so it does not wake itself.
    server: String,
    history_max: usize,
    health: Arc<Health>,
    listener: Option<tokio::task::JoinHandle<()>>,
    /// Told the database's time at every transaction (see [`PgBackend::clock`]).
    clock: OffsetClock,
}

impl std::fmt::Debug for PgBackend {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PgBackend")
            .field("database", &self.target.describe())
            .field("seq", &self.seq)
            .finish_non_exhaustive()
    }
}

impl PgBackend {
    /// Connects to the database at `url`, creates or migrates its schema, and loads the
    /// table, keeping the latest `history_max` history entries in memory. `base` is the
    /// server's clock (see [`PgBackend::clock`]).
    pub async fn open(
        url: &str,
        history_max: usize,
        base: Arc<dyn Clock>,
    ) -> Result<PgBackend, String> {
        let target = Target::parse(url)?;
        let pool = target.pool()?;
        let where_ = target.describe();
        let mut client = pool
            .get()
            .await
            .map_err(|e| format!("could not connect to the database {where_}: {e}"))?;
        let applied = schema::migrate(&mut client).await?;
        if applied > 0 {
            tracing::info!(database = %where_, migrations = applied, "created or migrated the schema");
        }
        let (table, seq, database_now) = load(&mut client, history_max).await?;
        drop(client);
        let clock = OffsetClock::new(base);
        clock.observe(database_now);
        Ok(PgBackend {
            runtime: tokio::runtime::Handle::current(),
            pool,
            target,
            table,
            seq,
            server: format!("{:016x}", rand::random::<u64>()),
            history_max,
            health: Arc::new(Health::default()),
            listener: None,
            clock,
        })
    }

    /// The database's clock as this server reads it: the server's clock moved by the
    /// difference the last transaction saw. The server reads locks and times its expiries by
    /// it, as the database decides them by its own.
    pub fn clock(&self) -> OffsetClock {
        self.clock.clone()
    }

    /// Where the database is, without credentials.
    pub fn describe(&self) -> String {
        self.target.describe()
    }

    /// Decides and commits one batch in one transaction (see the module's documentation).
    async fn transact(&mut self, requests: &[Request]) -> Result<Committed, String> {
        let mut client = self.pool.get().await.map_err(|e| e.to_string())?;
        let statements = Statements::prepare(&client).await?;
        let tx = client.transaction().await.map_err(|e| e.to_string())?;
        // Sent together (one round trip); the database runs them in order, so the clock is
        // read once the meta row is ours.
        let (meta, clock) = tokio::try_join!(
            tx.query_one(&statements.lock_meta, &[]),
            tx.query_one(&statements.clock, &[]),
        )
        .map_err(|e| e.to_string())?;
        let now: SystemTime = clock.get(0);
        self.clock.observe(now);
        let (revision, history_id, seq): (i64, i64, i64) = (meta.get(0), meta.get(1), meta.get(2));

        // Catch up with what other servers committed.
        let mut caught_up = Vec::new();
        if seq > self.seq {
            let history_id = to_i64(self.table.history_id());
            let (since, after): (Params<1>, Params<1>) = ([&self.seq], [&history_id]);
            let (rows, entries) = tokio::try_join!(
                tx.query(&statements.changed_locks, &since),
                tx.query(&statements.new_entries, &after),
            )
            .map_err(|e| e.to_string())?;
            for row in rows {
                let (name, lock) = read_lock(&row, revision)?;
                self.table.load(&name, lock);
                caught_up.push(name);
            }
            let entries = entries
                .iter()
                .map(read_entry)
                .collect::<Result<Vec<_>, _>>()?;
            self.table.load_history(entries, self.history_max);
            self.table.revision = to_u64(revision);
            self.seq = seq;
        }
        if self.table.revision != to_u64(revision) || to_i64(self.table.history_id()) != history_id
        {
            return Err(format!(
                "the database's revision {revision} (history {history_id}) does not match this server's {} ({}); another program changed the tables",
                self.table.revision,
                self.table.history_id()
            ));
        }

        let mut batch = self.table.batch();
        batch.expire_due(now);
        for name in &caught_up {
            batch.hand_over(name, now);
        }
        let decisions = requests
            .iter()
            .map(|r| batch.apply(&r.name, r.op, &r.claim, now))
            .collect();
        let mut changes = batch.into_changes();
        if !changes.locks.is_empty() {
            write(
                &tx,
                &statements,
                &changes,
                seq + 1,
                &self.server,
                self.history_max,
            )
            .await?;
            tx.commit().await.map_err(|e| e.to_string())?;
            self.seq = seq + 1;
        } else {
            // Nothing to write: end the transaction, which releases the meta row.
            tx.rollback().await.map_err(|e| e.to_string())?;
        }
        let answers = std::mem::take(&mut changes.answers);
        let changed = !changes.is_empty() || !caught_up.is_empty();
        let history = if changes.is_empty() {
            Vec::new()
        } else {
            self.table.commit(changes)
        };
        Ok(Committed {
            decisions,
            answers,
            changed,
            history,
        })
    }
}

impl Backend for PgBackend {
    fn table(&self) -> &LockTable {
        &self.table
    }

    /// Decides the batch in one transaction on the database (the `now` given is not used:
    /// the database's clock is, so that every server decides leases on the same clock).
    fn decide_and_commit(
        &mut self,
        requests: &[Request],
        _now: SystemTime,
    ) -> Result<Committed, CommitError> {
        let runtime = self.runtime.clone();
        let outcome = block_on(&runtime, async {
            tokio::time::timeout(TRANSACTION_TIMEOUT, self.transact(requests)).await
        });
        match outcome {
            Ok(Ok(committed)) => {
                self.health.set(None);
                Ok(committed)
            }
            Ok(Err(e)) => {
                let problem = format!("the database {} failed: {e}", self.target.describe());
                self.health.set(Some(problem.clone()));
                Err(CommitError(format!(
                    "the change could not be saved to the database ({e})"
                )))
            }
            Err(_) => {
                let problem = format!(
                    "the database {} did not answer within {} s",
                    self.target.describe(),
                    TRANSACTION_TIMEOUT.as_secs()
                );
                self.health.set(Some(problem.clone()));
                Err(CommitError(problem))
            }
        }
    }

    fn attach(&mut self, wake: Wake) {
        let listener = listen(
            self.target.clone(),
            self.server.clone(),
            wake,
            self.health.clone(),
        );
        self.listener = Some(self.runtime.spawn(listener));
    }

    fn health(&self) -> Option<Arc<Health>> {
        Some(self.health.clone())
    }

    fn finish(&mut self) -> std::io::Result<()> {
        if let Some(listener) = self.listener.take() {
            listener.abort();
        }
        Ok(())
    }
}

/// Runs `future` to completion on `runtime` from a thread that may or may not be one of the
/// runtime's (the writer thread is not; the start-up expiry runs on a runtime thread).
fn block_on<F: Future + Send>(runtime: &tokio::runtime::Handle, future: F) -> F::Output
where
    F::Output: Send,
{
    if tokio::runtime::Handle::try_current().is_ok() {
        std::thread::scope(|s| {
            s.spawn(|| runtime.block_on(future))
                .join()
                .unwrap_or_else(|panic| std::panic::resume_unwind(panic))
        })
    } else {
        runtime.block_on(future)
    }
}

/// Reads the whole table in one consistent snapshot; returns it and the commit counter it is
/// current with.
async fn load(
    client: &mut deadpool_postgres::Client,
    history_max: usize,
) -> Result<(LockTable, i64, SystemTime), String> {
    let failed = |e: tokio_postgres::Error| format!("could not read the locks: {e}");
    let tx = client
        .build_transaction()
        .isolation_level(tokio_postgres::IsolationLevel::RepeatableRead)
        .read_only(true)
        .start()
        .await
        .map_err(failed)?;
    let meta = tx
        .query_one(
            "SELECT revision, history_id, seq, clock_timestamp() FROM locker_meta WHERE id = 1",
            &[],
        )
        .await
        .map_err(failed)?;
    let (revision, seq): (i64, i64) = (meta.get(0), meta.get(2));
    let mut locks = Vec::new();
    for row in tx
        .query("SELECT name, lock FROM locker_locks", &[])
        .await
        .map_err(failed)?
    {
        locks.push(read_lock(&row, revision)?);
    }
    let limit = i64::try_from(history_max).unwrap_or(i64::MAX);
    let mut entries = tx
        .query(
            "SELECT entry FROM locker_history ORDER BY id DESC LIMIT $1",
            &[&limit],
        )
        .await
        .map_err(failed)?
        .iter()
        .map(read_entry)
        .collect::<Result<Vec<_>, _>>()?;
    entries.reverse();
    tx.commit().await.map_err(failed)?;
    let mut table = LockTable::new(to_u64(revision), locks);
    table.load_history(entries, history_max);
    // The ids go on from the meta row's count, also when entries were deleted by hand.
    table.continue_history_after(to_u64(meta.get(1)));
    Ok((table, seq, meta.get(3)))
}

/// The parameters of one statement.
type Params<'a, const N: usize> = [&'a (dyn tokio_postgres::types::ToSql + Sync); N];

/// The statements of a batch, prepared once per connection (deadpool keeps them with it).
struct Statements {
    lock_meta: tokio_postgres::Statement,
    clock: tokio_postgres::Statement,
    changed_locks: tokio_postgres::Statement,
    new_entries: tokio_postgres::Statement,
    upsert_locks: tokio_postgres::Statement,
    insert_entries: tokio_postgres::Statement,
    update_meta: tokio_postgres::Statement,
    notify: tokio_postgres::Statement,
}

impl Statements {
    async fn prepare(client: &deadpool_postgres::Client) -> Result<Statements, String> {
        let prepare = |sql: &'static str| client.prepare_cached(sql);
        let (lock_meta, clock, changed_locks, new_entries) = tokio::try_join!(
            prepare("SELECT revision, history_id, seq FROM locker_meta WHERE id = 1 FOR UPDATE"),
            prepare("SELECT clock_timestamp()"),
            prepare("SELECT name, lock FROM locker_locks WHERE seq > $1"),
            prepare("SELECT entry FROM locker_history WHERE id > $1 ORDER BY id"),
        )
        .map_err(|e| e.to_string())?;
        let (upsert_locks, insert_entries, update_meta, notify) = tokio::try_join!(
            prepare(
                "INSERT INTO locker_locks (name, seq, lock, deadline)
                 SELECT name, $2, lock, deadline FROM UNNEST($1::text[], $3::jsonb[], $4::timestamptz[]) AS u(name, lock, deadline)
                 ON CONFLICT (name) DO UPDATE SET seq = EXCLUDED.seq, lock = EXCLUDED.lock, deadline = EXCLUDED.deadline"
            ),
            prepare(
                "INSERT INTO locker_history (id, lock_name, entry)
                 SELECT * FROM UNNEST($1::bigint[], $2::text[], $3::jsonb[])"
            ),
            prepare(
                "UPDATE locker_meta SET revision = $1, history_id = COALESCE($2, history_id), seq = $3 WHERE id = 1"
            ),
            prepare("SELECT pg_notify($1, $2)"),
        )
        .map_err(|e| e.to_string())?;
        Ok(Statements {
            lock_meta,
            clock,
            changed_locks,
            new_entries,
            upsert_locks,
            insert_entries,
            update_meta,
            notify,
        })
    }
}

/// Writes a batch's changes in `tx`: the locks, their history entries, the meta row, and a
/// notification for the other servers (sent when the transaction commits). The statements go
/// out together, one round trip.
async fn write(
    tx: &deadpool_postgres::Transaction<'_>,
    statements: &Statements,
    changes: &Changes,
    seq: i64,
    server: &str,
    history_max: usize,
) -> Result<(), String> {
    let mut names = Vec::with_capacity(changes.locks.len());
    let mut locks = Vec::with_capacity(changes.locks.len());
    let mut deadlines = Vec::with_capacity(changes.locks.len());
    for (name, lock) in &changes.locks {
        names.push(name.as_str());
        locks.push(serde_json::to_value(StoredLockView(lock)).map_err(|e| e.to_string())?);
        deadlines.push(lock.next_deadline());
    }
    let ids: Vec<i64> = changes.history.iter().map(|e| to_i64(e.id)).collect();
    let lock_names: Vec<&str> = changes.history.iter().map(|e| e.lock.as_str()).collect();
    let entries = changes
        .history
        .iter()
        .map(|e| serde_json::to_value(StoredEntry::of(e)))
        .collect::<Result<Vec<Value>, _>>()
        .map_err(|e| e.to_string())?;
    let history_id = changes.history.last().map(|e| to_i64(e.id));
    let revision = to_i64(changes.revision);
    let channel = CHANNEL;
    let upsert: Params<4> = [&names, &seq, &locks, &deadlines];
    let insert: Params<3> = [&ids, &lock_names, &entries];
    let update: Params<3> = [&revision, &history_id, &seq];
    let notify: Params<2> = [&channel, &server];
    tokio::try_join!(
        tx.execute(&statements.upsert_locks, &upsert),
        async {
            if ids.is_empty() {
                Ok(0)
            } else {
                tx.execute(&statements.insert_entries, &insert).await
            }
        },
        tx.execute(&statements.update_meta, &update),
        tx.execute(&statements.notify, &notify),
    )
    .map_err(|e| e.to_string())?;
    // Retention: now and then, the entries beyond the newest `history_max` go.
    if let Some(last) = history_id
        && changes.history.iter().any(|e| e.id % 1000 == 0)
    {
        let keep_from = last - i64::try_from(history_max).unwrap_or(i64::MAX);
        tx.execute("DELETE FROM locker_history WHERE id <= $1", &[&keep_from])
            .await
            .map_err(|e| e.to_string())?;
    }
    Ok(())
}

fn read_lock(row: &tokio_postgres::Row, revision: i64) -> Result<(String, Lock), String> {
    let name: String = row.try_get(0).map_err(|e| e.to_string())?;
    let Json(stored): Json<StoredLock> = row
        .try_get(1)
        .map_err(|e| format!("lock '{name}' in locker_locks is damaged: {e}"))?;
    let lock = stored
        .into_lock(to_u64(revision))
        .map_err(|e| format!("lock '{name}' in locker_locks is damaged: {e}"))?;
    Ok((name, lock))
}

fn read_entry(row: &tokio_postgres::Row) -> Result<Entry, String> {
    let Json(stored): Json<StoredEntry> = row
        .try_get(0)
        .map_err(|e| format!("an entry of locker_history is damaged: {e}"))?;
    stored.into_entry()
}

/// Listens for the other servers' commits and wakes the writer to catch up; keeps `health`
/// up to date (the connection is checked every [`PING_EVERY`]), and connects again when the
/// connection fails. Runs until aborted.
async fn listen(target: Target, server: String, wake: Wake, health: Arc<Health>) {
    let mut down_since_logged = false;
    loop {
        match target.config.connect(target.tls.clone()).await {
            Ok((client, mut connection)) => {
                let (notified, mut notifications) = tokio::sync::mpsc::unbounded_channel();
                let driver = tokio::spawn(async move {
                    loop {
                        match std::future::poll_fn(|cx| connection.poll_message(cx)).await {
                            Some(Ok(tokio_postgres::AsyncMessage::Notification(n))) => {
                                if notified.send(n.payload().to_owned()).is_err() {
                                    break;
                                }
                            }
                            Some(Ok(_)) => {}
                            Some(Err(_)) | None => break,
                        }
                    }
                });
                if client
                    .batch_execute(&format!("LISTEN {CHANNEL}"))
                    .await
                    .is_ok()
                {
                    if down_since_logged {
                        tracing::info!(database = %target.describe(), "the database answers again");
                        down_since_logged = false;
                    }
                    health.set(None);
                    // Whatever was committed while this server did not listen.
                    wake.wake();
                    let mut ping = tokio::time::interval(PING_EVERY);
                    loop {
                        tokio::select! {
                            payload = notifications.recv() => match payload {
                                Some(payload) if payload != server => wake.wake(),
                                Some(_) => {}
                                None => break,
                            },
                            _ = ping.tick() => {
                                let answered = tokio::time::timeout(PING_EVERY, client.simple_query("SELECT 1")).await;
                                if !matches!(answered, Ok(Ok(_))) {
                                    break;
                                }
                            }
                        }
                    }
                }
                driver.abort();
                let problem = format!("the database {} cannot be reached", target.describe());
                health.set(Some(problem));
            }
            Err(e) => {
                health.set(Some(format!(
                    "the database {} cannot be reached: {e}",
                    target.describe()
                )));
                if !down_since_logged {
                    tracing::error!(database = %target.describe(), error = %e, "the database cannot be reached; requests that change locks are answered 503 until it can");
                    down_since_logged = true;
                }
            }
        }
        tokio::time::sleep(RECONNECT_AFTER).await;
    }
}

fn to_i64(n: u64) -> i64 {
    i64::try_from(n).unwrap_or(i64::MAX)
}

fn to_u64(n: i64) -> u64 {
    u64::try_from(n).unwrap_or(0)
}

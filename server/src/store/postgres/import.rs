//! `locker import STATE_FILE`: copies a file backend's locks (this server's state file with its
//! journal, or the original server's JSON) into the database, in one transaction.
//!
//! It refuses, changing nothing, when any of the file's locks already exists in the database:
//! an import never overwrites. The database's revision is raised to the file's if that is
//! higher, so that every token given after the import is above the imported ones. History
//! stays in the file's history file (its ids would collide with the database's).

use tokio_postgres::types::Json;

use super::connect::Target;
use super::{CHANNEL, schema, to_i64};
use crate::domain::LockTable;
use crate::store::file::codec::StoredLockView;

/// `locker import STATE_FILE`: opens the file (taking its lock, as a server would, so a file a
/// running server holds is refused), and copies its locks into the database of `url`; returns
/// what to tell the user.
pub fn import_state_file(file: &std::path::Path, url: &str) -> Result<String, String> {
    if !file.exists() {
        return Err(format!("{} does not exist", file.display()));
    }
    let (backend, _) =
        crate::store::file::FileBackend::open_keeping(file, crate::domain::DEFAULT_HISTORY_MAX)
            .map_err(|e| e.to_string())?;
    let table = crate::store::Backend::table(&backend).clone();
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .map_err(|e| format!("cannot start the async runtime: {e}"))?;
    let n = runtime.block_on(import(url, &table))?;
    Ok(format!(
        "imported {n} locks from {} into {}",
        file.display(),
        Target::parse(url)?.describe()
    ))
}

/// How many clashing names an error lists.
const NAMES_SHOWN: usize = 10;

/// Copies `table`'s locks into the database at `url`; returns how many were copied.
pub async fn import(url: &str, table: &LockTable) -> Result<usize, String> {
    let target = Target::parse(url)?;
    let (mut client, connection) =
        target
            .config
            .connect(target.tls.clone())
            .await
            .map_err(|e| {
                format!(
                    "could not connect to the database {}: {e}",
                    target.describe()
                )
            })?;
    let driver = tokio::spawn(connection);
    schema::migrate(&mut client).await?;
    let failed = |e: tokio_postgres::Error| format!("the import failed, nothing was changed: {e}");
    let tx = client.transaction().await.map_err(failed)?;
    let meta = tx
        .query_one(
            "SELECT revision, seq FROM locker_meta WHERE id = 1 FOR UPDATE",
            &[],
        )
        .await
        .map_err(failed)?;
    let (revision, seq): (i64, i64) = (meta.get(0), meta.get(1));
    let names: Vec<&str> = table.locks.keys().map(|name| &**name).collect();
    let clashes: Vec<String> = tx
        .query(
            "SELECT name FROM locker_locks WHERE name = ANY($1) ORDER BY name",
            &[&names],
        )
        .await
        .map_err(failed)?
        .iter()
        .map(|row| row.get(0))
        .collect();
    if !clashes.is_empty() {
        let shown: Vec<&str> = clashes
            .iter()
            .take(NAMES_SHOWN)
            .map(String::as_str)
            .collect();
        let more = clashes.len().saturating_sub(NAMES_SHOWN);
        return Err(format!(
            "{} of the file's locks exist in the database already ({}{}); nothing was imported. An import never overwrites: remove those locks from the file or the database first",
            clashes.len(),
            shown.join(", "),
            if more > 0 {
                format!(" and {more} more")
            } else {
                String::new()
            }
        ));
    }
    let mut locks = Vec::with_capacity(names.len());
    let mut deadlines = Vec::with_capacity(names.len());
    for lock in table.locks.values() {
        locks.push(Json(
            serde_json::to_value(StoredLockView(lock)).map_err(|e| e.to_string())?,
        ));
        deadlines.push(lock.next_deadline());
    }
    tx.execute(
        "INSERT INTO locker_locks (name, seq, lock, deadline)
         SELECT name, $2, lock, deadline FROM UNNEST($1::text[], $3::jsonb[], $4::timestamptz[]) AS u(name, lock, deadline)",
        &[&names, &(seq + 1), &locks, &deadlines],
    )
    .await
    .map_err(failed)?;
    tx.execute(
        "UPDATE locker_meta SET revision = GREATEST(revision, $1), seq = $2 WHERE id = 1",
        &[&to_i64(table.revision).max(revision), &(seq + 1)],
    )
    .await
    .map_err(failed)?;
    tx.execute("SELECT pg_notify($1, 'import')", &[&CHANNEL])
        .await
        .map_err(failed)?;
    tx.commit().await.map_err(failed)?;
    drop(client);
    let _ = driver.await;
    Ok(names.len())
}

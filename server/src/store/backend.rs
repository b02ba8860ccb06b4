//! The seam between the lock rules and storage: a backend decides a batch of requests and
//! commits it as one durable unit.

use std::io;
use std::sync::Arc;
use std::time::SystemTime;

use crate::domain::{Claim, Decision, Entry, LockTable, Op, PollAnswer};

/// Where batches are decided and made durable: the seam between the lock rules and storage.
///
/// A backend decides with [`crate::domain`]'s rules inside its own unit of durability (the
/// file backend on its in-memory table; a database inside a transaction, on the rows it has
/// locked), so every backend has the same rules.
pub trait Backend: Send + 'static {
    /// The table as last committed.
    fn table(&self) -> &LockTable;

    /// Releases the claims whose deadline is at or before `now` (and the places and grants
    /// whose grace ran out), decides `requests` in order at `now`, and commits what they change
    /// as one durable unit; returns one decision per request, only once the batch would
    /// survive a crash. On error nothing of the batch is committed, its queue changes neither.
    fn decide_and_commit(
        &mut self,
        requests: &[Request],
        now: SystemTime,
    ) -> Result<Committed, CommitError>;

    /// True when a commit may run on the thread of the request that asked for it, an async
    /// runtime's worker: it blocks no longer than a local write and fsync, and never enters an
    /// async runtime itself. Then a request that finds the writer idle commits at once instead
    /// of waking the writer thread and being woken by it (see [`super::LockStore::submit`]).
    fn commits_inline(&self) -> bool {
        false
    }

    /// Called once when the writer stops.
    fn finish(&mut self) -> io::Result<()> {
        Ok(())
    }

    /// Called once when the writer starts, with a handle that makes the writer decide a batch
    /// (with no requests, if none came) soon: for a backend whose table can change under it
    /// (a database that other servers write to), to catch up when told of a change.
    fn attach(&mut self, wake: Wake) {
        let _ = wake;
    }

    /// The storage's health, for a backend whose storage can be out of reach while the
    /// server runs (a database); none for one that is always there (a local file).
    fn health(&self) -> Option<std::sync::Arc<Health>> {
        None
    }
}

/// What a backend knows of its storage's health, for `/healthz`: set by the backend, read by
/// the HTTP layer.
#[derive(Debug, Default)]
pub struct Health(std::sync::Mutex<Option<String>>);

impl Health {
    /// Why the storage cannot be used now, if it cannot.
    pub fn problem(&self) -> Option<String> {
        self.0.lock().map(|p| p.clone()).unwrap_or(None)
    }

    /// Records that the storage cannot be used, and why (`None`: it can again).
    pub fn set(&self, problem: Option<String>) {
        if let Ok(mut p) = self.0.lock() {
            *p = problem;
        }
    }
}

/// Makes the writer decide a batch soon, whether or not a request came; cheap to clone.
#[derive(Clone)]
pub struct Wake(pub(super) std::sync::Arc<dyn Fn() + Send + Sync>);

impl Wake {
    /// Asks for a batch; does nothing once the writer has stopped.
    pub fn wake(&self) {
        (self.0)();
    }
}

/// Why a batch was not committed, worded for the client (what could not be done, and why).
#[derive(Debug, Clone, thiserror::Error)]
#[error("{0}")]
pub struct CommitError(pub String);

/// What a committed batch decided.
#[derive(Debug, Default)]
pub struct Committed {
    /// One decision per request, in order.
    pub decisions: Vec<Decision>,
    /// Answers for polls waiting in queues (grants, ends of waits, withdrawals).
    pub answers: Vec<PollAnswer>,
    /// True when the table changed (a lock or a queue): there is a new table to publish.
    pub changed: bool,
    /// The history entries of the batch's changes, in order (for the metrics).
    pub history: Vec<Arc<Entry>>,
}

/// One request to change a lock.
#[derive(Debug, Clone)]
pub struct Request {
    pub name: String,
    pub op: Op,
    pub claim: Claim,
}

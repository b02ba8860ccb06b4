//! The lock store: one writer thread that makes every change durable before anyone sees it.
//!
//! Requests queue on a channel. The writer takes everything queued (a batch), decides each
//! request with the lock rules on top of the published table, persists the batch's changes
//! with one write, and only then publishes them and answers the whole batch: group commit,
//! so throughput is not bounded by one fsync per request. If the write fails, the batch is
//! discarded and every request in it is told so; nothing was published.
//!
//! Readers see only the published table, so no answer ever shows a lock that is not on disk.
//! The table sits behind a `std::sync::RwLock`: critical sections are short and never await,
//! and the writer is a plain thread because fsync blocks.

use std::io;
use std::sync::{Arc, RwLock, mpsc};
use std::thread;
use std::time::SystemTime;

use tokio::sync::oneshot;

use crate::rules::{Changes, Claim, Decision, LockTable, Op};
use crate::state_file::StateFile;

/// The most requests one batch takes; bounds the latency a single write adds.
const MAX_BATCH: usize = 4096;

/// Where batches are made durable: the seam for other storage backends.
pub trait Persist: Send + 'static {
    /// Durably records `changes` on top of `table`; returns only once they survive a crash.
    fn persist(&mut self, table: &LockTable, changes: &Changes) -> io::Result<()>;

    /// Called once when the writer stops, with the final table.
    fn finish(&mut self, _table: &LockTable) -> io::Result<()> {
        Ok(())
    }
}

impl Persist for StateFile {
    fn persist(&mut self, table: &LockTable, changes: &Changes) -> io::Result<()> {
        self.commit(table, changes)
    }

    /// Folds the journal into the state file, so that after a clean stop the state file
    /// alone holds everything (for backups, and for going back to the original server).
    fn finish(&mut self, table: &LockTable) -> io::Result<()> {
        self.compact(table)
    }
}

/// One request to change a lock.
#[derive(Debug, Clone)]
pub struct Request {
    pub name: String,
    pub op: Op,
    pub claim: Claim,
}

/// Why a request got no decision.
#[derive(Debug, Clone, thiserror::Error)]
pub enum StoreError {
    #[error("the change could not be saved to the state file ({0}); nothing was changed")]
    NotPersisted(String),
    #[error("the server is shutting down")]
    Stopped,
}

struct Job {
    request: Request,
    reply: oneshot::Sender<Result<Decision, StoreError>>,
}

/// A cheap, cloneable handle on the lock table and its writer.
#[derive(Clone)]
pub struct LockStore {
    table: Arc<RwLock<LockTable>>,
    jobs: mpsc::Sender<Job>,
}

impl LockStore {
    /// Starts the writer thread. It stops once every handle is dropped, after answering
    /// what was queued; join the returned handle to wait for that.
    pub fn start(
        table: LockTable,
        backend: impl Persist,
    ) -> io::Result<(LockStore, thread::JoinHandle<()>)> {
        let table = Arc::new(RwLock::new(table));
        let (jobs, queue) = mpsc::channel();
        let writer = {
            let table = table.clone();
            thread::Builder::new()
                .name("locker-writer".into())
                .spawn(move || run_writer(&table, queue, backend))?
        };
        Ok((LockStore { table, jobs }, writer))
    }

    /// Decides a request; the answer comes once the change (if any) is durable.
    pub async fn submit(&self, request: Request) -> Result<Decision, StoreError> {
        let (reply, answer) = oneshot::channel();
        self.jobs
            .send(Job { request, reply })
            .map_err(|_| StoreError::Stopped)?;
        answer.await.map_err(|_| StoreError::Stopped)?
    }

    /// Runs `f` on the published (durable) table.
    pub fn read<R>(&self, f: impl FnOnce(&LockTable) -> R) -> R {
        let table = self.table.read().unwrap_or_else(|e| e.into_inner());
        f(&table)
    }
}

fn run_writer(table: &RwLock<LockTable>, queue: mpsc::Receiver<Job>, mut backend: impl Persist) {
    write_batches(table, &queue, &mut backend);
    let table = table.read().unwrap_or_else(|e| e.into_inner());
    if let Err(e) = backend.finish(&table) {
        tracing::warn!(error = %e, "could not fold the journal into the state file at shutdown; it is replayed at the next start");
    }
}

fn write_batches(
    table: &RwLock<LockTable>,
    queue: &mpsc::Receiver<Job>,
    backend: &mut impl Persist,
) {
    while let Ok(first) = queue.recv() {
        let mut jobs = vec![first];
        while jobs.len() < MAX_BATCH {
            match queue.try_recv() {
                Ok(job) => jobs.push(job),
                Err(_) => break,
            }
        }
        let now = SystemTime::now();
        let guard = table.read().unwrap_or_else(|e| e.into_inner());
        let mut batch = guard.batch();
        let decisions: Vec<Decision> = jobs
            .iter()
            .map(|job| {
                let r = &job.request;
                batch.apply(&r.name, r.op, &r.claim, now)
            })
            .collect();
        let changes = batch.into_changes();
        let saved = if changes.is_empty() {
            Ok(())
        } else {
            backend.persist(&guard, &changes)
        };
        drop(guard);
        match saved {
            Ok(()) => {
                if !changes.is_empty() {
                    table
                        .write()
                        .unwrap_or_else(|e| e.into_inner())
                        .commit(changes);
                }
                for (job, decision) in jobs.into_iter().zip(decisions) {
                    let _ = job.reply.send(Ok(decision));
                }
            }
            Err(e) => {
                tracing::error!(error = %e, requests = jobs.len(), "could not save the state file; answering 503");
                let error = StoreError::NotPersisted(e.to_string());
                for job in jobs {
                    let _ = job.reply.send(Err(error.clone()));
                }
            }
        }
    }
}

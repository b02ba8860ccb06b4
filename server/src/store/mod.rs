//! The lock store: decides requests in batches, makes each batch durable before anyone sees
//! it, and publishes every committed table as an immutable snapshot.
//!
//! Requests queue on a channel. One writer thread takes everything queued (a batch) and hands
//! it to the [`Backend`], which decides each request with the lock rules and commits what the
//! batch changed as one durable unit (the file backend: one journal append and fsync): group
//! commit, so throughput is not bounded by one fsync per request. Only then is the new table
//! published and the batch answered. If the commit fails, every request in the batch is told
//! so and nothing was published.
//!
//! Leases: every batch first releases the claims whose deadline has passed. When no request
//! comes, the writer wakes at the next deadline (and at least once a second while one is
//! pending, so a clock that jumps is followed) to commit the expiry by itself; at start-up it
//! expires what lapsed while the server was down before anything is served.
//!
//! Readers take the latest published table: a clone that shares everything with the writer's
//! but the paths changed since (see [`crate::domain::Locks`]), so a reader that serializes
//! 100,000 locks holds nothing the writer needs. Subscribers are woken by each new table (a
//! `watch` channel). The writer is a plain thread because fsync blocks.

mod backend;
pub mod file;

pub use backend::{Backend, CommitError, Request};

use std::io;
use std::sync::{Arc, mpsc};
use std::thread;
use std::time::Duration;

use tokio::sync::{oneshot, watch};

use crate::clock::Clock;
use crate::domain::{Decision, LockTable};

/// The most requests one batch takes; bounds the latency a single commit adds.
const MAX_BATCH: usize = 4096;
/// The longest the writer sleeps while a deadline is pending.
const EXPIRY_CHECK: Duration = Duration::from_secs(1);
/// How long the writer waits before trying again after a commit failed.
const RETRY_AFTER_FAILURE: Duration = Duration::from_secs(1);

/// Why a request got no decision.
#[derive(Debug, Clone, thiserror::Error)]
pub enum StoreError {
    #[error("{0}; nothing was changed")]
    NotCommitted(CommitError),
    #[error("the server is shutting down")]
    Stopped,
}

struct Job {
    request: Request,
    reply: oneshot::Sender<Result<Decision, StoreError>>,
}

/// A cheap, cloneable handle on the published table and the writer.
#[derive(Clone)]
pub struct LockStore {
    jobs: mpsc::Sender<Job>,
    published: watch::Receiver<LockTable>,
}

impl LockStore {
    /// Starts the writer thread. It stops once every handle is dropped, after answering what
    /// was queued; join the returned handle to wait for that.
    pub fn start(
        mut backend: impl Backend,
        clock: Arc<dyn Clock>,
    ) -> io::Result<(LockStore, thread::JoinHandle<()>)> {
        // Claims that lapsed while the server was down are released before anything is read.
        let now = clock.now();
        if backend.table().next_deadline().is_some_and(|at| at <= now) {
            match backend.decide_and_commit(&[], now) {
                Ok(_) => tracing::info!(
                    "released the claims whose lease ended while the server was down"
                ),
                Err(e) => {
                    tracing::warn!(error = %e, "could not release the claims whose lease ended while the server was down; retrying")
                }
            }
        }
        let (publish, published) = watch::channel(backend.table().clone());
        let (jobs, queue) = mpsc::channel();
        let writer = thread::Builder::new()
            .name("locker-writer".into())
            .spawn(move || {
                let written = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
                    run_writer(backend, &queue, &publish, &*clock)
                }));
                if written.is_err() {
                    // Nothing can be written any more: better a restart from the state file,
                    // which holds everything acknowledged, than a server that refuses writes.
                    tracing::error!("the writer thread panicked; exiting so that the server is restarted from its state file");
                    std::process::exit(70);
                }
            })?;
        Ok((LockStore { jobs, published }, writer))
    }

    /// Decides a request; the answer comes once the change (if any) is durable.
    pub async fn submit(&self, request: Request) -> Result<Decision, StoreError> {
        let (reply, answer) = oneshot::channel();
        self.jobs
            .send(Job { request, reply })
            .map_err(|_| StoreError::Stopped)?;
        answer.await.map_err(|_| StoreError::Stopped)?
    }

    /// The latest published (durable) table; holding it blocks nobody.
    pub fn snapshot(&self) -> LockTable {
        self.published.borrow().clone()
    }

    /// A receiver that is told of every newly published table: the wake-up for waiters.
    #[cfg_attr(
        not(test),
        expect(
            dead_code,
            reason = "the queue's waiters (issue 12) are its first users"
        )
    )]
    pub fn subscribe(&self) -> watch::Receiver<LockTable> {
        self.published.clone()
    }
}

fn run_writer(
    mut backend: impl Backend,
    queue: &mpsc::Receiver<Job>,
    publish: &watch::Sender<LockTable>,
    clock: &dyn Clock,
) {
    let mut last_failed = false;
    loop {
        // Sleep until a request comes or the next lease ends.
        let wait = backend.table().next_deadline().map(|at| {
            let until = at.duration_since(clock.now()).unwrap_or_default();
            let until = until.min(EXPIRY_CHECK);
            if last_failed {
                until.max(RETRY_AFTER_FAILURE)
            } else {
                until
            }
        });
        let first = match wait {
            None => match queue.recv() {
                Ok(job) => Some(job),
                Err(_) => break,
            },
            Some(wait) => match queue.recv_timeout(wait) {
                Ok(job) => Some(job),
                Err(mpsc::RecvTimeoutError::Timeout) => None,
                Err(mpsc::RecvTimeoutError::Disconnected) => break,
            },
        };
        let mut jobs: Vec<Job> = first.into_iter().collect();
        while !jobs.is_empty() && jobs.len() < MAX_BATCH {
            match queue.try_recv() {
                Ok(job) => jobs.push(job),
                Err(_) => break,
            }
        }
        let now = clock.now();
        if jobs.is_empty() && backend.table().next_deadline().is_none_or(|at| at > now) {
            continue;
        }
        let (requests, replies): (Vec<Request>, Vec<_>) =
            jobs.into_iter().map(|job| (job.request, job.reply)).unzip();
        let revision = backend.table().revision;
        match backend.decide_and_commit(&requests, now) {
            Ok(decisions) => {
                last_failed = false;
                if backend.table().revision != revision {
                    publish.send_replace(backend.table().clone());
                }
                for (reply, decision) in replies.into_iter().zip(decisions) {
                    let _ = reply.send(Ok(decision));
                }
            }
            Err(e) => {
                last_failed = true;
                tracing::error!(error = %e, requests = replies.len(), "could not save a batch; answering 503");
                let error = StoreError::NotCommitted(e);
                for reply in replies {
                    let _ = reply.send(Err(error.clone()));
                }
            }
        }
    }
    if let Err(e) = backend.finish() {
        tracing::warn!(error = %e, "could not fold the journal into the state file at shutdown; it is replayed at the next start");
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::file::FileBackend;
    use super::*;
    use crate::clock::ManualClock;
    use crate::domain::{Claim, Op};
    use std::time::SystemTime;

    fn lock_request(name: &str, key: &str) -> Request {
        Request {
            name: name.into(),
            op: Op::Lock,
            claim: Claim::new(key, key),
        }
    }

    #[tokio::test]
    async fn commits_are_published_to_subscribers_and_old_snapshots_stay_as_they_were() {
        let dir = tempfile::tempdir().unwrap();
        let (backend, _) = FileBackend::open(&dir.path().join("locks.yml")).unwrap();
        let start = SystemTime::UNIX_EPOCH + Duration::from_secs(1_800_000_000);
        let clock = ManualClock::new(start);
        let (store, writer) = LockStore::start(backend, Arc::new(clock.clone())).unwrap();
        let before = store.snapshot();
        let mut changes = store.subscribe();

        clock.advance(Duration::from_secs(5));
        let decision = store.submit(lock_request("env", "a")).await.unwrap();
        assert_eq!(
            decision.lock.locked_at,
            Some(start + Duration::from_secs(5))
        );
        changes
            .changed()
            .await
            .expect("the writer publishes the commit");
        assert_eq!(changes.borrow_and_update().lock("env").key, "a");
        assert_eq!(store.snapshot().revision, 1);
        assert!(
            before.lock("env").is_free() && before.revision == 0,
            "a snapshot taken before the commit is not changed by it"
        );

        let refused = store.submit(lock_request("env", "b")).await.unwrap();
        assert!(refused.verdict.is_conflict());
        assert!(
            !changes.has_changed().unwrap(),
            "a batch that changes nothing publishes nothing"
        );
        drop((store, changes));
        writer.join().unwrap();
    }
}

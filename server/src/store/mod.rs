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
//! Without load there is nothing to group: a request that finds no other request waiting for
//! a decision, after a batch of one, commits on its own thread, when the backend
//! allows it (a local file, not a database), and saves the two thread wake-ups of the hand-off
//! (see [`LockStore::submit`]). Both paths go through the same [`Writer`], behind one mutex.
//!
//! Leases: every batch first releases the claims whose deadline has passed. When no request
//! comes, the writer wakes at the next deadline (and at least once a second while one is
//! pending, so a clock that jumps is followed) to commit the expiry by itself; at start-up it
//! expires what lapsed while the server was down before anything is served.
//!
//! Readers take the latest published table: a clone that shares everything with the writer's
//! but the paths changed since (see [`crate::domain::Locks`]), so a reader that serializes
//! 100,000 locks holds nothing the writer needs. Subscribers are woken by each new table (a
//! `watch` channel). The writer is a plain thread because fsync blocks; an inline commit
//! blocks its runtime worker for one fsync, and is done only when no request waits for the writer.

mod backend;
pub mod file;
pub mod postgres;

pub use backend::{Backend, CommitError, Committed, Health, Request, Wake};

use std::collections::HashMap;
use std::io;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, mpsc};
use std::thread;
use std::time::{Duration, Instant, SystemTime};

use tokio::sync::{oneshot, watch};

use crate::clock::Clock;
use crate::domain::{Claim, Decision, LockTable, Op, Verdict};
use crate::metrics::Metrics;

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

type Reply = oneshot::Sender<Result<Decision, StoreError>>;

/// What the writer is sent.
#[expect(
    clippy::large_enum_variant,
    reason = "all messages but one (at shutdown) are jobs: boxing them would cost an allocation each"
)]
enum Message {
    /// A request, and where its decision goes; none for the store's own requests (the end of
    /// a poll), which nobody waits for.
    Job {
        request: Request,
        reply: Option<Reply>,
    },
    /// The server is stopping: every waiting poll is answered now, and none waits any more.
    StopWaiters,
    /// The backend asks for a batch even if no request comes (see [`Backend::attach`]).
    Wake,
}

/// The writer's channel, counting what is queued on it, so that a request can tell that
/// nothing it must come after is waiting (see [`LockStore::submit`]).
struct Jobs {
    sender: mpsc::Sender<Message>,
    queued: AtomicUsize,
}

impl Jobs {
    fn send(&self, message: Message) -> Result<(), StoreError> {
        self.queued.fetch_add(1, Ordering::AcqRel);
        self.sender.send(message).map_err(|_| {
            self.queued.fetch_sub(1, Ordering::AcqRel);
            StoreError::Stopped
        })
    }
}

/// A cheap, cloneable handle on the published table and the writer.
#[derive(Clone)]
pub struct LockStore {
    jobs: Arc<Jobs>,
    /// The writer's state, for requests to commit inline; none when the backend's commits
    /// must stay off the async runtime.
    inline: Option<Arc<dyn CommitInline>>,
    published: watch::Receiver<LockTable>,
    polls: Arc<AtomicU64>,
    /// Requests in [`LockStore::submit`], waiting for their decision.
    deciding: Arc<AtomicUsize>,
    /// Set when the server stops: long-lived answers (waits, event streams) end.
    stopping: Arc<watch::Sender<bool>>,
    /// The backend's storage health, when it can fail while the server runs.
    health: Option<Arc<Health>>,
}

impl LockStore {
    /// Starts the writer thread, which counts what it commits in `metrics`. It stops once
    /// every handle is dropped, after answering what was queued; join the returned handle to
    /// wait for that.
    pub fn start(
        mut backend: impl Backend,
        clock: Arc<dyn Clock>,
        metrics: Arc<Metrics>,
    ) -> io::Result<(LockStore, thread::JoinHandle<()>)> {
        // Claims that lapsed while the server was down are released before anything is read.
        let now = clock.now();
        if backend.table().next_deadline().is_some_and(|at| at <= now) {
            match decide_and_commit(&mut backend, &[], now, &metrics) {
                Ok(_) => tracing::info!(
                    "released the claims whose lease ended while the server was down"
                ),
                Err(e) => {
                    tracing::warn!(error = %e, "could not release the claims whose lease ended while the server was down; retrying")
                }
            }
        }
        let health = backend.health();
        let (publish, published) = watch::channel(backend.table().clone());
        let (sender, queue) = mpsc::channel();
        // Weak: the writer (which owns the backend) must still see the channel close once
        // every handle is dropped.
        let jobs = Arc::new(Jobs {
            sender,
            queued: AtomicUsize::new(0),
        });
        let waker = Arc::downgrade(&jobs);
        backend.attach(Wake(Arc::new(move || {
            if let Some(jobs) = waker.upgrade() {
                let _ = jobs.send(Message::Wake);
            }
        })));
        let inline = backend.commits_inline();
        let shared = Arc::new(Shared {
            writer: Mutex::new(Writer::new(backend, publish, clock, metrics)),
            jobs: Arc::downgrade(&jobs),
        });
        let writer = {
            let shared = shared.clone();
            thread::Builder::new()
                .name("locker-writer".into())
                .spawn(move || exit_on_panic(|| shared.run(&queue)))?
        };
        let polls = Arc::new(AtomicU64::new(1));
        let stopping = Arc::new(watch::channel(false).0);
        Ok((
            LockStore {
                jobs,
                inline: inline.then_some(shared as Arc<dyn CommitInline>),
                published,
                polls,
                deciding: Arc::new(AtomicUsize::new(0)),
                stopping,
                health,
            },
            writer,
        ))
    }

    /// Decides a request; the answer comes once the change (if any) is durable.
    ///
    /// When the backend allows it, no other request waits for a decision (none is queued for
    /// the writer, none is being decided) and the last batch was a single request, the
    /// request is committed on this thread at once: two thread wake-ups fewer. Under load the
    /// writer thread groups the requests into one commit, as an inline commit would block this
    /// runtime worker meanwhile.
    pub async fn submit(&self, request: Request) -> Result<Decision, StoreError> {
        let deciding = Deciding::enter(&self.deciding);
        let request = match &self.inline {
            Some(inline)
                if deciding.alone
                    && self.jobs.queued.load(Ordering::Acquire) == 0
                    && !self.hands_over(&request.name) =>
            {
                match inline.try_commit(request) {
                    Inline::Answered(answer) => return answer,
                    Inline::Busy(request) => request,
                }
            }
            _ => request,
        };
        let (reply, answer) = oneshot::channel();
        self.send(request, Some(reply))?;
        answer.await.map_err(|_| StoreError::Stopped)?
    }

    /// Claims `name` for `claim`, or waits in its queue for at most `wait`: the answer is the
    /// grant (once durable) or, when the wait runs out, the place in the queue ([`Verdict::Queued`]).
    /// The place outlives the wait by `grace` if the claim has a request id. If this future is
    /// dropped first (the client went away), the place is left, and a grant made meanwhile is
    /// released (or, with a request id, kept for a retry to collect within the grace).
    pub async fn wait(
        &self,
        name: String,
        claim: Claim,
        wait: Duration,
        grace: Duration,
    ) -> Result<Decision, StoreError> {
        let poll = self.polls.fetch_add(1, Ordering::Relaxed);
        let (reply, mut answer) = oneshot::channel();
        let request = Request {
            name: name.clone(),
            op: Op::Wait { poll, grace },
            claim,
        };
        self.send(request, Some(reply))?;
        let mut pending = PendingPoll {
            jobs: &self.jobs,
            name,
            poll,
            answered: false,
        };
        let answer = tokio::select! {
            answer = &mut answer => answer,
            () = tokio::time::sleep(wait) => {
                pending.send(Op::StopWaiting { poll });
                answer.await
            }
        };
        let decision = answer.map_err(|_| StoreError::Stopped)??;
        pending.answered = true;
        Ok(decision)
    }

    /// Answers every waiting poll with [`StoreError::Stopped`], and every later one at once:
    /// the server is stopping.
    pub fn stop_waiters(&self) {
        self.stopping.send_replace(true);
        let _ = self.jobs.send(Message::StopWaiters);
    }

    /// Completes once the server is stopping ([`LockStore::stop_waiters`]).
    pub fn stopping(&self) -> impl std::future::Future<Output = ()> + Send + 'static {
        let mut stopping = self.stopping.subscribe();
        async move {
            let _ = stopping.wait_for(|stopping| *stopping).await;
        }
    }

    /// Why the storage cannot be used now, if the backend knows it cannot (a database out of
    /// reach); `None` when it can, or when the backend cannot tell.
    pub fn storage_problem(&self) -> Option<String> {
        self.health.as_ref().and_then(|h| h.problem())
    }

    /// True when the backend can report its storage's health (a database).
    pub fn reports_storage(&self) -> bool {
        self.health.is_some()
    }

    /// The latest published (durable) table; holding it blocks nobody.
    pub fn snapshot(&self) -> LockTable {
        self.published.borrow().clone()
    }

    /// A receiver that is told of every newly published table.
    pub fn subscribe(&self) -> watch::Receiver<LockTable> {
        self.published.clone()
    }

    /// True when others wait in `name`'s queue: a change to it may grant one of them, whose
    /// answer should not wait for this runtime worker to finish the request that freed it. The
    /// writer thread wakes it on whichever worker is free.
    fn hands_over(&self, name: &str) -> bool {
        self.published.borrow().queue(name).is_some()
    }

    fn send(&self, request: Request, reply: Option<Reply>) -> Result<(), StoreError> {
        self.jobs.send(Message::Job { request, reply })
    }
}

/// A request counted among those waiting for a decision, while it lives.
struct Deciding<'a> {
    count: &'a AtomicUsize,
    /// True when no other request was waiting for one as it came.
    alone: bool,
}

impl<'a> Deciding<'a> {
    fn enter(count: &'a AtomicUsize) -> Self {
        let before = count.fetch_add(1, Ordering::AcqRel);
        Deciding {
            count,
            alone: before == 0,
        }
    }
}

impl Drop for Deciding<'_> {
    fn drop(&mut self) {
        self.count.fetch_sub(1, Ordering::AcqRel);
    }
}

/// A poll in a queue whose answer has not been taken: dropped so, it tells the writer that
/// nobody will take it.
struct PendingPoll<'a> {
    jobs: &'a Jobs,
    name: String,
    poll: u64,
    answered: bool,
}

impl PendingPoll<'_> {
    fn send(&self, op: Op) {
        let request = Request {
            name: self.name.clone(),
            op,
            claim: Claim::default(),
        };
        let _ = self.jobs.send(Message::Job {
            request,
            reply: None,
        });
    }
}

impl Drop for PendingPoll<'_> {
    fn drop(&mut self) {
        if !self.answered {
            self.send(Op::Abandon { poll: self.poll });
        }
    }
}

/// Decides and commits one batch with `backend`, and counts it in `metrics`.
fn decide_and_commit(
    backend: &mut impl Backend,
    requests: &[Request],
    now: SystemTime,
    metrics: &Metrics,
) -> Result<Committed, CommitError> {
    // Cheap: the table's clone shares all but its root with the table (and the published
    // snapshot shares it already).
    let before = backend.table().clone();
    let started = Instant::now();
    let committed = backend.decide_and_commit(requests, now);
    metrics.batch(requests.len(), started.elapsed());
    if let Ok(committed) = &committed {
        metrics.committed(&before, &committed.history, backend.table());
    }
    committed
}

/// Runs `f`; if it panics, exits the process. Nothing can be written any more after a panic in
/// the writer: better a restart from the state file, which holds everything acknowledged, than
/// a server that refuses writes.
fn exit_on_panic<T>(f: impl FnOnce() -> T) -> T {
    match std::panic::catch_unwind(std::panic::AssertUnwindSafe(f)) {
        Ok(value) => value,
        Err(_) => {
            tracing::error!(
                "the writer panicked; exiting so that the server is restarted from its state file"
            );
            std::process::exit(70);
        }
    }
}

/// What the writer thread and the requests that commit inline share.
struct Shared<B> {
    writer: Mutex<Writer<B>>,
    /// The writer's channel: to wake the writer thread after an inline commit, and to count
    /// what it takes (weak: the channel closes when the last [`LockStore`] is dropped).
    jobs: std::sync::Weak<Jobs>,
}

/// A request committed on its own thread (type-erased, so that [`LockStore`] is not generic).
trait CommitInline: Send + Sync {
    /// Decides and commits `request` now if nobody holds the writer and its last batch was a
    /// single request; gives the request back otherwise.
    fn try_commit(&self, request: Request) -> Inline;

    /// True when nobody holds the writer's state (for tests).
    #[cfg(test)]
    fn unheld(&self) -> bool;
}

/// What became of a request offered to [`CommitInline::try_commit`].
enum Inline {
    Answered(Result<Decision, StoreError>),
    /// The writer is busy, or was: the request goes to the writer thread.
    Busy(Request),
}

impl<B: Backend> CommitInline for Shared<B> {
    #[cfg(test)]
    fn unheld(&self) -> bool {
        self.writer.try_lock().is_ok()
    }

    fn try_commit(&self, request: Request) -> Inline {
        // Busy (or poisoned, and the process is exiting): the writer thread takes it.
        let Ok(mut writer) = self.writer.try_lock() else {
            return Inline::Busy(request);
        };
        // A lull in load: this request came alone, but the last batch was grouped. The writer
        // thread takes it, so that a short gap between loaded batches does not block a
        // runtime worker.
        if writer.last_batch > 1 {
            return Inline::Busy(request);
        }
        let (reply, mut answer) = oneshot::channel();
        exit_on_panic(|| {
            // The writer thread wakes at least once a second, and so sees a deadline this
            // commit set.
            writer.commit(vec![request], vec![Some(reply)]);
        });
        drop(writer);
        Inline::Answered(answer.try_recv().unwrap_or(Err(StoreError::Stopped)))
    }
}

impl<B: Backend> Shared<B> {
    /// The writer thread: takes whatever is queued as one batch and commits it, and commits
    /// the expiry of leases when their deadline comes.
    fn run(&self, queue: &mpsc::Receiver<Message>) {
        let taken = |n: usize| {
            if let Some(jobs) = self.jobs.upgrade() {
                jobs.queued.fetch_sub(n, Ordering::AcqRel);
            }
        };
        loop {
            // Sleep until a request comes or the next lease ends.
            let wait = self.lock().sleep();
            let first = match queue.recv_timeout(wait) {
                Ok(message) => Some(message),
                Err(mpsc::RecvTimeoutError::Timeout) => None,
                Err(mpsc::RecvTimeoutError::Disconnected) => break,
            };
            // What came while an inline commit held the writer joins the batch too.
            let mut writer = self.lock();
            let mut messages = Vec::new();
            let mut next = first;
            while let Some(message) = next {
                messages.push(message);
                next = if messages.len() < MAX_BATCH {
                    queue.try_recv().ok()
                } else {
                    None
                };
            }
            taken(messages.len());
            writer.take(messages);
        }
        let mut writer = self.lock();
        if let Err(e) = writer.backend.finish() {
            tracing::warn!(error = %e, "could not fold the journal into the state file at shutdown; it is replayed at the next start");
        }
    }

    fn lock(&self) -> MutexGuard<'_, Writer<B>> {
        // Poisoned only by a panic in a commit, after which the process exits.
        self.writer
            .lock()
            .unwrap_or_else(|_| exit_on_panic(|| panic!("the writer's state is poisoned")))
    }
}

/// The writer's state.
struct Writer<B> {
    backend: B,
    publish: watch::Sender<LockTable>,
    clock: Arc<dyn Clock>,
    metrics: Arc<Metrics>,
    /// Where the answers of the polls waiting in queues go, by poll.
    polls: HashMap<u64, Reply>,
    /// The store's own requests of a batch that failed, to try again: the end of a poll must
    /// not be lost, or its place would never lapse.
    retry: Vec<Request>,
    /// True once the server is stopping: no poll waits any more.
    stopping: bool,
    last_failed: bool,
    /// The requests of the last batch that had any: more than one means load.
    last_batch: usize,
}

impl<B: Backend> Writer<B> {
    fn new(
        backend: B,
        publish: watch::Sender<LockTable>,
        clock: Arc<dyn Clock>,
        metrics: Arc<Metrics>,
    ) -> Self {
        Writer {
            backend,
            publish,
            clock,
            metrics,
            polls: HashMap::new(),
            retry: Vec::new(),
            stopping: false,
            last_failed: false,
            last_batch: 0,
        }
    }

    /// How long the writer thread may sleep: until the next lease ends (checked at least every
    /// second), or after a failure until it is time to retry; without either, a second.
    fn sleep(&mut self) -> Duration {
        let now = self.clock.now();
        match self.backend.table().next_deadline() {
            Some(at) => {
                let until = at.duration_since(now).unwrap_or_default();
                let until = until.min(EXPIRY_CHECK);
                if self.last_failed {
                    until.max(RETRY_AFTER_FAILURE)
                } else {
                    until
                }
            }
            None if !self.retry.is_empty() => RETRY_AFTER_FAILURE,
            // Still once a second: an inline commit may have set a deadline meanwhile.
            None => EXPIRY_CHECK,
        }
    }

    /// Takes what the writer thread received: commits its requests (and the retries) as one
    /// batch, or an empty one if a lease is due or the backend asked for it.
    fn take(&mut self, messages: Vec<Message>) {
        let mut requests = std::mem::take(&mut self.retry);
        let mut replies: Vec<Option<Reply>> = requests.iter().map(|_| None).collect();
        let mut woken = false;
        for message in messages {
            match message {
                Message::Job { request, reply } => {
                    requests.push(request);
                    replies.push(reply);
                }
                Message::StopWaiters => self.stop_waiters(),
                Message::Wake => woken = true,
            }
        }
        let now = self.clock.now();
        if requests.is_empty()
            && !woken
            && self
                .backend
                .table()
                .next_deadline()
                .is_none_or(|at| at > now)
        {
            return;
        }
        self.commit(requests, replies);
    }

    /// Decides and commits one batch, publishes the new table, and answers.
    fn commit(&mut self, requests: Vec<Request>, replies: Vec<Option<Reply>>) {
        if !requests.is_empty() {
            self.last_batch = requests.len();
        }
        let now = self.clock.now();
        match decide_and_commit(&mut self.backend, &requests, now, &self.metrics) {
            Ok(committed) => {
                self.last_failed = false;
                if committed.changed {
                    self.publish.send_replace(self.backend.table().clone());
                }
                for ((request, reply), decision) in
                    requests.iter().zip(replies).zip(committed.decisions)
                {
                    let Some(reply) = reply else { continue };
                    match (request.op, decision.verdict) {
                        (Op::Wait { poll, .. }, Verdict::Queued) if !self.stopping => {
                            self.polls.insert(poll, reply);
                        }
                        (Op::Wait { .. }, Verdict::Queued) => {
                            let _ = reply.send(Err(StoreError::Stopped));
                        }
                        _ => {
                            let _ = reply.send(Ok(decision));
                        }
                    }
                }
                for answer in committed.answers {
                    if let Some(reply) = self.polls.remove(&answer.poll) {
                        let _ = reply.send(Ok(answer.decision));
                    }
                }
            }
            Err(e) => {
                self.last_failed = true;
                tracing::error!(error = %e, requests = replies.len(), "could not save a batch; answering 503");
                let error = StoreError::NotCommitted(e);
                for (request, reply) in requests.into_iter().zip(replies) {
                    match reply {
                        Some(reply) => {
                            let _ = reply.send(Err(error.clone()));
                        }
                        None => self.retry.push(request),
                    }
                }
            }
        }
    }

    fn stop_waiters(&mut self) {
        self.stopping = true;
        for (_, reply) in self.polls.drain() {
            let _ = reply.send(Err(StoreError::Stopped));
        }
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

    /// A file backend that records on which thread each batch was committed, and how many
    /// requests it had, and that can hold a commit until told to go on.
    struct Recording {
        inner: FileBackend,
        commits: Arc<Mutex<Vec<(String, usize)>>>,
        gate: Arc<Mutex<Option<mpsc::Receiver<()>>>>,
    }

    impl Backend for Recording {
        fn table(&self) -> &LockTable {
            self.inner.table()
        }

        fn decide_and_commit(
            &mut self,
            requests: &[Request],
            now: SystemTime,
        ) -> Result<Committed, CommitError> {
            let gate = self.gate.lock().unwrap().take();
            if let Some(gate) = gate {
                gate.recv().unwrap();
            }
            let thread = std::thread::current().name().unwrap_or("").to_owned();
            self.commits.lock().unwrap().push((thread, requests.len()));
            self.inner.decide_and_commit(requests, now)
        }

        fn commits_inline(&self) -> bool {
            self.inner.commits_inline()
        }
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_lone_request_commits_on_its_own_thread_and_requests_under_load_or_hand_overs_go_to_the_writer()
     {
        let dir = tempfile::tempdir().unwrap();
        let (inner, _) = FileBackend::open_keeping(&dir.path().join("locks.yml"), 100).unwrap();
        let commits = Arc::new(Mutex::new(Vec::new()));
        let gate = Arc::new(Mutex::new(None));
        let backend = Recording {
            inner,
            commits: commits.clone(),
            gate: gate.clone(),
        };
        let clock = ManualClock::new(SystemTime::UNIX_EPOCH + Duration::from_secs(1_800_000_000));
        let (store, writer) =
            LockStore::start(backend, Arc::new(clock), Arc::new(Metrics::new())).unwrap();

        // Alone: committed on the request's own thread.
        assert_eq!(
            store.submit(lock_request("a", "k")).await.unwrap().verdict,
            Verdict::Acquired
        );

        // A commit that takes long (held at the gate): the requests that come meanwhile queue
        // for the writer thread, which takes them as one batch.
        let (open, held) = mpsc::channel();
        *gate.lock().unwrap() = Some(held);
        let slow = tokio::spawn({
            let store = store.clone();
            async move { store.submit(lock_request("slow", "k")).await }
        });
        while gate.lock().unwrap().is_some() {
            tokio::task::yield_now().await;
        }
        let queued: Vec<_> = ["b", "c", "d"]
            .into_iter()
            .map(|name| {
                let store = store.clone();
                tokio::spawn(async move { store.submit(lock_request(name, "k")).await })
            })
            .collect();
        while store.jobs.queued.load(Ordering::Acquire) < 3 {
            tokio::task::yield_now().await;
        }
        open.send(()).unwrap();
        for request in std::iter::once(slow).chain(queued) {
            assert_eq!(request.await.unwrap().unwrap().verdict, Verdict::Acquired);
        }

        // Alone again, but right after a grouped batch: still the writer thread. After that
        // batch of one, inline again. (The writer thread answers before it lets go of the
        // writer's state.)
        for name in ["e", "f"] {
            while !store.inline.as_ref().unwrap().unheld() {
                tokio::task::yield_now().await;
            }
            store.submit(lock_request(name, "k")).await.unwrap();
        }

        // Alone, but others wait for the lock: the writer thread frees it, and wakes the
        // granted waiter on whichever worker is free.
        let waiter = tokio::spawn({
            let store = store.clone();
            let claim = Claim::new("w", "w");
            async move {
                let wait = Duration::from_secs(60);
                store.wait("f".into(), claim, wait, Duration::ZERO).await
            }
        });
        while store.snapshot().queue("f").is_none() || !store.inline.as_ref().unwrap().unheld() {
            tokio::task::yield_now().await;
        }
        let unlock = Request {
            name: "f".into(),
            op: Op::Unlock,
            claim: Claim::new("k", "k"),
        };
        assert_eq!(
            store.submit(unlock).await.unwrap().verdict,
            Verdict::Released
        );
        assert_eq!(waiter.await.unwrap().unwrap().verdict, Verdict::Acquired);

        let commits = commits.lock().unwrap().clone();
        let writer_thread = |thread: &str| thread == "locker-writer";
        // (Batches of no request are the writer's own: the granted place's grace ending.)
        let seen: Vec<(bool, usize)> = commits
            .iter()
            .filter(|(_, n)| *n > 0)
            .map(|(thread, n)| (writer_thread(thread), *n))
            .collect();
        assert_eq!(
            seen,
            [
                (false, 1),
                (false, 1),
                (true, 3),
                (true, 1),
                (false, 1),
                (true, 1),
                (true, 1)
            ],
            "(committed by the writer thread, requests) of each batch: {commits:?}"
        );
        assert_eq!(store.snapshot().revision, 9, "every change was committed");
        drop(store);
        writer.join().unwrap();
    }

    #[tokio::test]
    async fn commits_are_published_to_subscribers_and_old_snapshots_stay_as_they_were() {
        let dir = tempfile::tempdir().unwrap();
        let (backend, _) = FileBackend::open_keeping(&dir.path().join("locks.yml"), 100).unwrap();
        let start = SystemTime::UNIX_EPOCH + Duration::from_secs(1_800_000_000);
        let clock = ManualClock::new(start);
        let metrics = Arc::new(Metrics::new());
        let (store, writer) =
            LockStore::start(backend, Arc::new(clock.clone()), metrics.clone()).unwrap();
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
        let counted = metrics.encode(&store.snapshot()).unwrap();
        for line in [
            "locker_grants_total 1\n",
            "locker_commit_batch_size_count 2\n",
            "locker_commit_duration_seconds_count 2\n",
        ] {
            assert!(
                counted.contains(line),
                "the writer counts every batch it decides and every grant it commits: expected {line:?} in\n{counted}"
            );
        }
        drop((store, changes));
        writer.join().unwrap();
    }
}

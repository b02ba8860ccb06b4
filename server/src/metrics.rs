//! The server's numbers for monitoring, written out in the Prometheus text format for
//! `GET /metrics`.
//!
//! Counters and histograms are cells that the HTTP layer and the writer thread add to as they
//! go (atomics, and the histograms' own short locks; nothing is held across an await). The
//! gauges (locks known, held, waiting) are read from the published table when a scrape comes,
//! so keeping them costs the lock requests nothing. What a batch committed (grants, expiries,
//! force-releases, how long a lock was held) is read from the history entries it recorded, so
//! it counts exactly what became durable.
//!
//! No label carries a lock name or anything else a client chooses freely: a route is a
//! template (`/lock/{name}`), a method one of a short list, a status a number. The number of
//! series stays small whatever clients send.

use std::collections::HashMap;
use std::fmt;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use prometheus_client::encoding::{EncodeLabelSet, prometheus_text};
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::registry::{Registry, Unit};

use crate::domain::{Action, Entry, LockTable};

/// The `Content-Type` of what [`Metrics::encode`] writes.
pub const CONTENT_TYPE: &str = prometheus_text::CONTENT_TYPE;

/// Bounds of `locker_lock_wait_seconds`: a hand-over takes about a millisecond, a wait at
/// most `LOCKER_MAX_WAIT` (at most an hour).
const WAIT_BUCKETS: [f64; 12] = [
    0.001, 0.005, 0.025, 0.1, 0.5, 1.0, 5.0, 15.0, 60.0, 300.0, 900.0, 3600.0,
];
/// Bounds of `locker_lock_held_seconds`: from a second to a week (the default `LOCKER_MAX_TTL`).
const HELD_BUCKETS: [f64; 12] = [
    1.0, 10.0, 60.0, 300.0, 900.0, 1800.0, 3600.0, 10800.0, 21600.0, 43200.0, 86400.0, 604800.0,
];
/// Bounds of `locker_commit_batch_size`: up to the writer's largest batch (4,096).
const BATCH_BUCKETS: [f64; 13] = [
    0.0, 1.0, 2.0, 4.0, 8.0, 16.0, 32.0, 64.0, 128.0, 256.0, 512.0, 1024.0, 4096.0,
];
/// Bounds of `locker_commit_duration_seconds`: an fsync takes from tens of microseconds to
/// (on a struggling disk) seconds.
const COMMIT_BUCKETS: [f64; 13] = [
    0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 1.0, 5.0,
];
/// Bounds of `locker_http_request_duration_seconds`: most answers take a millisecond or two;
/// a lock request waiting in a queue up to `LOCKER_MAX_WAIT`.
const REQUEST_BUCKETS: [f64; 13] = [
    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 1.0, 5.0, 60.0, 3600.0,
];

/// The methods a request is counted under; any other is counted as `other`.
const METHODS: [&str; 7] = ["GET", "HEAD", "POST", "PUT", "DELETE", "OPTIONS", "PATCH"];

/// The labels of `locker_http_request_duration_seconds`.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct RequestLabels {
    route: &'static str,
    method: &'static str,
    status: u16,
}

/// Every metric the server keeps, and the registry that writes them out.
pub struct Metrics {
    registry: Registry,
    locks: Gauge,
    locks_held: Gauge,
    waiters: Gauge,
    grants: Counter,
    refusals: Counter,
    expiries: Counter,
    force_releases: Counter,
    unavailable: Counter,
    concourse_failures: Counter,
    lock_wait: Histogram,
    lock_held: Histogram,
    batch_size: Histogram,
    commit_duration: Histogram,
    requests: Family<RequestLabels, Histogram, fn() -> Histogram>,
}

impl Default for Metrics {
    fn default() -> Metrics {
        Metrics::new()
    }
}

impl Metrics {
    /// Every metric at zero, registered under the `locker_` prefix.
    pub fn new() -> Metrics {
        let request_histogram: fn() -> Histogram = || Histogram::new(REQUEST_BUCKETS);
        let metrics = Metrics {
            registry: Registry::with_prefix("locker"),
            locks: Gauge::default(),
            locks_held: Gauge::default(),
            waiters: Gauge::default(),
            grants: Counter::default(),
            refusals: Counter::default(),
            expiries: Counter::default(),
            force_releases: Counter::default(),
            unavailable: Counter::default(),
            concourse_failures: Counter::default(),
            lock_wait: Histogram::new(WAIT_BUCKETS),
            lock_held: Histogram::new(HELD_BUCKETS),
            batch_size: Histogram::new(BATCH_BUCKETS),
            commit_duration: Histogram::new(COMMIT_BUCKETS),
            requests: Family::new_with_constructor(request_histogram),
        };
        metrics.registered()
    }

    fn registered(mut self) -> Metrics {
        let r = &mut self.registry;
        r.register(
            "locks",
            "Locks the server knows, held or free",
            self.locks.clone(),
        );
        r.register("locks_held", "Locks held by a key", self.locks_held.clone());
        r.register(
            "waiters",
            "Lock requests waiting in the locks' queues, places kept for a client's next poll included",
            self.waiters.clone(),
        );
        r.register(
            "grants",
            "Claims granted: lock requests that took a claim (reservations too), and waiters handed a lock from its queue",
            self.grants.clone(),
        );
        r.register(
            "refusals",
            "Requests answered 423 Locked: the lock is held by another key (or, after a wait, still is)",
            self.refusals.clone(),
        );
        r.register(
            "expiries",
            "Claims released because their lease ended",
            self.expiries.clone(),
        );
        r.register(
            "force_releases",
            "Locks force-released by an operator",
            self.force_releases.clone(),
        );
        r.register(
            "unavailable",
            "Requests answered 503: a change could not be saved, or the server was stopping",
            self.unavailable.clone(),
        );
        r.register(
            "concourse_failures",
            "Rounds of the build watcher that got no answer to rely on from Concourse (unreachable, 5xx, credentials refused); claims held for builds are kept meanwhile",
            self.concourse_failures.clone(),
        );
        r.register_with_unit(
            "lock_wait",
            "How long a lock request with ?wait= waited, from its arrival to its grant",
            Unit::Seconds,
            self.lock_wait.clone(),
        );
        r.register_with_unit(
            "lock_held",
            "How long a key held a lock, from taking it to the unlock, expiry or force-release that freed it",
            Unit::Seconds,
            self.lock_held.clone(),
        );
        r.register(
            "commit_batch_size",
            "Requests decided by one commit (0: the server's own, expiring leases)",
            self.batch_size.clone(),
        );
        r.register_with_unit(
            "commit_duration",
            "How long deciding and committing a batch took (the state file's journal append and fsync)",
            Unit::Seconds,
            self.commit_duration.clone(),
        );
        r.register_with_unit(
            "http_request_duration",
            "HTTP requests by route template, method and status, and how long each took to answer",
            Unit::Seconds,
            self.requests.clone(),
        );
        self
    }

    /// A round of the build watcher in which Concourse gave no answer to rely on.
    pub fn concourse_failed(&self) {
        self.concourse_failures.inc();
    }

    /// A batch the writer decided (committed or not): how many requests, and how long
    /// deciding and committing took.
    pub fn batch(&self, requests: usize, took: Duration) {
        self.batch_size.observe(requests as f64);
        self.commit_duration.observe(took.as_secs_f64());
    }

    /// What a committed batch changed, from the history entries it recorded: `before` is the
    /// table it was decided on, `after` the table it made.
    pub fn committed(&self, before: &LockTable, history: &[Arc<Entry>], after: &LockTable) {
        for entry in history {
            let counter = match entry.action {
                Action::Lock | Action::Granted | Action::Reserve => &self.grants,
                Action::Expire => &self.expiries,
                Action::ForceRelease => &self.force_releases,
                Action::Unlock | Action::Renew => continue,
            };
            counter.inc();
        }
        for held in ended_tenures(before, history, after) {
            self.lock_held.observe(held.as_secs_f64());
        }
    }

    /// A lock request with `?wait=` that was granted after `waited`.
    pub fn waited(&self, waited: Duration) {
        self.lock_wait.observe(waited.as_secs_f64());
    }

    /// An answered HTTP request. `route` is a template, never a path a client sent.
    pub fn request(&self, route: &'static str, method: &str, status: u16, took: Duration) {
        let method = METHODS
            .into_iter()
            .find(|known| *known == method)
            .unwrap_or("other");
        let labels = RequestLabels {
            route,
            method,
            status,
        };
        self.requests
            .get_or_create(&labels)
            .observe(took.as_secs_f64());
        let counter = match status {
            423 => &self.refusals,
            503 => &self.unavailable,
            _ => return,
        };
        counter.inc();
    }

    /// Every metric in the Prometheus text format, the gauges read from `table`.
    pub fn encode(&self, table: &LockTable) -> Result<String, fmt::Error> {
        let count = |n: usize| i64::try_from(n).unwrap_or(i64::MAX);
        self.locks.set(count(table.locks.len()));
        self.locks_held
            .set(count(table.locks.values().filter(|l| !l.is_free()).count()));
        self.waiters.set(count(
            table.queues().values().map(|q| q.waiters().len()).sum(),
        ));
        let mut text = String::new();
        prometheus_text::encode(&mut text, &self.registry)?;
        Ok(text)
    }
}

/// How long each tenure that a batch ended had lasted. A tenure is one key's time holding a
/// lock (one token); it ends when the lock no longer has its token after the batch (freed by
/// an unlock, an expiry or a force-release, and maybe handed to a waiter at once). It began
/// at `locked_at` if the lock was held before the batch, else in the batch itself. Locks taken
/// over from the original server's file have no `locked_at` and are left out.
fn ended_tenures(before: &LockTable, history: &[Arc<Entry>], after: &LockTable) -> Vec<Duration> {
    let mut tenures: HashMap<(&str, u64), (Option<SystemTime>, SystemTime)> = HashMap::new();
    for entry in history {
        let Some(token) = entry.token else { continue };
        tenures
            .entry((entry.lock.as_str(), token))
            .and_modify(|(_, end)| *end = entry.at)
            .or_insert_with(|| {
                let lock = before.lock(&entry.lock);
                let start = if lock.token == Some(token) {
                    lock.locked_at
                } else {
                    Some(entry.at)
                };
                (start, entry.at)
            });
    }
    tenures
        .into_iter()
        .filter(|((name, token), _)| after.lock(name).token != Some(*token))
        .filter_map(|(_, (start, end))| end.duration_since(start?).ok())
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::domain::{Claim, Op};

    fn at(secs: u64) -> SystemTime {
        SystemTime::UNIX_EPOCH + Duration::from_secs(1_800_000_000 + secs)
    }

    fn claim(key: &str, requestor: &str) -> Claim {
        Claim::new(key, requestor)
    }

    /// Applies `requests` as one batch at `now` and returns the tenures it ended, in seconds.
    fn ended(table: &mut LockTable, now: SystemTime, requests: &[(&str, Op, Claim)]) -> Vec<u64> {
        let before = table.clone();
        let mut batch = table.batch();
        batch.expire_due(now);
        for (name, op, claim) in requests {
            batch.apply(name, *op, claim, now);
        }
        let history = table.commit(batch.into_changes());
        let mut ended: Vec<u64> = ended_tenures(&before, &history, table)
            .into_iter()
            .map(|d| d.as_secs())
            .collect();
        ended.sort();
        ended
    }

    #[test]
    fn a_tenure_ends_when_the_lock_is_freed_not_when_one_of_its_holders_leaves() {
        let mut table = LockTable::default();
        let shared = [
            ("env", Op::Lock, claim("k", "a")),
            ("env", Op::Lock, claim("k", "b")),
        ];
        assert_eq!(ended(&mut table, at(0), &shared), Vec::<u64>::new());
        let one_leaves = [("env", Op::Unlock, claim("k", "a"))];
        assert_eq!(ended(&mut table, at(5), &one_leaves), Vec::<u64>::new());
        let renewed = [(
            "env",
            Op::Renew,
            Claim {
                ttl: Some(Duration::from_secs(60)),
                ..claim("k", "b")
            },
        )];
        assert_eq!(ended(&mut table, at(6), &renewed), Vec::<u64>::new());
        let last_leaves = [("env", Op::Unlock, claim("k", "b"))];
        assert_eq!(
            ended(&mut table, at(9), &last_leaves),
            vec![9],
            "held from the first lock to the last unlock"
        );
    }

    #[test]
    fn expiries_force_releases_and_hand_overs_end_tenures() {
        let mut table = LockTable::default();
        let leased = Claim {
            ttl: Some(Duration::from_secs(3)),
            ..claim("k", "a")
        };
        let taken = [
            ("leased", Op::Lock, leased),
            ("stuck", Op::Lock, claim("k", "a")),
            ("handed", Op::Lock, claim("k", "a")),
        ];
        ended(&mut table, at(0), &taken);
        let queued = [(
            "handed",
            Op::Wait {
                poll: 1,
                grace: Duration::from_secs(30),
            },
            claim("other", "b"),
        )];
        ended(&mut table, at(1), &queued);
        let force = Claim {
            reason: Some("stuck".into()),
            ..claim("", "ops")
        };
        let ends = [
            ("stuck", Op::ForceRelease, force),
            ("handed", Op::Unlock, claim("k", "a")),
        ];
        assert_eq!(
            ended(&mut table, at(4), &ends),
            vec![4, 4, 4],
            "the lease, the force-release and the hand-over end with the batch that frees them"
        );
        assert_eq!(table.lock("handed").key, "other", "the waiter took it over");
    }

    #[test]
    fn a_tenure_begun_and_ended_in_one_batch_lasted_no_time() {
        let mut table = LockTable::default();
        let both = [
            ("env", Op::Lock, claim("k", "a")),
            ("env", Op::Unlock, claim("k", "a")),
            ("env", Op::Lock, claim("k2", "b")),
        ];
        assert_eq!(ended(&mut table, at(7), &both), vec![0]);
    }

    #[test]
    fn committed_changes_are_counted_from_their_history() {
        let metrics = Metrics::new();
        let mut table = LockTable::default();
        let before = table.clone();
        let mut batch = table.batch();
        let now = at(0);
        batch.apply("a", Op::Lock, &claim("k", "r"), now);
        batch.apply("a", Op::Lock, &claim("k2", "r2"), now);
        batch.apply("b", Op::Lock, &claim("k", "r"), now);
        batch.apply("b", Op::Unlock, &claim("k", "r"), now);
        let history = table.commit(batch.into_changes());
        metrics.committed(&before, &history, &table);
        metrics.request("/lock/{name}", "PUT", 423, Duration::from_millis(1));
        metrics.request("/lock/{name}", "BREW", 503, Duration::from_millis(1));

        let text = metrics.encode(&table).unwrap();
        for line in [
            "locker_locks 2\n",
            "locker_locks_held 1\n",
            "locker_grants_total 2\n",
            "locker_refusals_total 1\n",
            "locker_unavailable_total 1\n",
            "locker_lock_held_seconds_count 1\n",
            "locker_http_request_duration_seconds_count{route=\"/lock/{name}\",method=\"other\",status=\"503\"} 1\n",
        ] {
            assert!(text.contains(line), "expected {line:?} in:\n{text}");
        }
    }
}

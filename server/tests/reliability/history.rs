//! Recorded histories of concurrent clients, and the checks run on them.
//!
//! A [`Workload`] runs client threads that lock and unlock at random and records every
//! request: what was sent and what came back, or that nothing did. The checks compare that
//! history with what the server holds after a crash ([`check_recovered`]) and look for a
//! moment where two keys held one lock ([`check_mutual_exclusion`]). They use their own model
//! of the lock rules, written from the issue, not the server's code.

use std::collections::{BTreeMap, BTreeSet, HashSet, VecDeque};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::thread;
use std::time::Duration;

use locker_testkit::Client;
use serde_json::Value;

use crate::{body, encode};

/// A lock as the model sees it: the key and each requestor's claims (empty when free).
#[derive(Debug, Clone, Default, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct LockState {
    pub key: String,
    pub holders: BTreeMap<String, u64>,
}

impl LockState {
    /// Reads the `key` and `locked_by` of a LOCK object.
    pub fn from_json(lock: &Value) -> LockState {
        let holders: BTreeMap<String, u64> = lock["locked_by"]
            .as_object()
            .unwrap_or_else(|| panic!("locked_by is an object in {lock}"))
            .iter()
            .map(|(r, c)| (r.clone(), c.as_u64().expect("a count")))
            .collect();
        let key = if holders.is_empty() {
            String::new()
        } else {
            lock["key"].as_str().expect("key").to_string()
        };
        LockState { key, holders }
    }

    fn claims(&self) -> u64 {
        self.holders.values().sum()
    }

    /// The lock rules of issue 2; `None` when nothing changes.
    pub fn apply(&self, op: Op, key: &str, requestor: &str) -> Option<LockState> {
        let free = self.holders.is_empty();
        if !free && self.key != key {
            return None;
        }
        let mut next = self.clone();
        match op {
            Op::Lock => {
                next.key = key.to_string();
                *next.holders.entry(requestor.to_string()).or_insert(0) += 1;
            }
            Op::Unlock => {
                let count = next.holders.get_mut(requestor)?;
                *count -= 1;
                if *count == 0 {
                    next.holders.remove(requestor);
                }
                if next.holders.is_empty() {
                    next.key.clear();
                }
            }
        }
        Some(next)
    }

    /// The fewest single-claim changes that lead from `self` to `other`.
    fn steps_to(&self, other: &LockState) -> u64 {
        if !self.holders.is_empty() && !other.holders.is_empty() && self.key != other.key {
            // Every claim must go before the other key can take the lock.
            return self.claims() + other.claims();
        }
        let names: BTreeSet<&String> = self.holders.keys().chain(other.holders.keys()).collect();
        names
            .into_iter()
            .map(|r| {
                let a = self.holders.get(r).copied().unwrap_or(0);
                let b = other.holders.get(r).copied().unwrap_or(0);
                a.abs_diff(b)
            })
            .sum()
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Op {
    Lock,
    Unlock,
}

/// One request and its fate.
#[derive(Debug, Clone)]
pub struct Record {
    pub name: String,
    pub op: Op,
    pub key: String,
    pub requestor: String,
    pub answer: Option<Answer>,
}

/// What the server answered.
#[derive(Debug, Clone)]
pub struct Answer {
    /// The lock as the answer shows it, and its revision.
    pub lock: Option<(u64, LockState)>,
    /// True when the answer reports a change (acquired or released).
    pub changed: bool,
}

/// Random lock/unlock traffic from many clients.
#[derive(Debug, Clone)]
pub struct Workload {
    pub clients: usize,
    pub names: Vec<String>,
    pub keys: usize,
    /// Chance of a lock (rather than an unlock), in percent.
    pub lock_percent: u32,
}

/// Client threads running a [`Workload`] until told to stop.
pub struct Running {
    stop: Arc<AtomicBool>,
    answered: Arc<AtomicUsize>,
    threads: Vec<thread::JoinHandle<Vec<Record>>>,
}

impl Workload {
    /// Starts the clients against `base_url`; `seed` makes their choices repeatable.
    pub fn start(&self, base_url: &str, seed: u64) -> Running {
        let stop = Arc::new(AtomicBool::new(false));
        let answered = Arc::new(AtomicUsize::new(0));
        let threads = (0..self.clients)
            .map(|i| {
                let stop = stop.clone();
                let answered = answered.clone();
                let url = base_url.to_string();
                let workload = self.clone();
                thread::spawn(move || {
                    let client = Client::new();
                    let mut rng = Rng(seed ^ (i as u64 + 1).wrapping_mul(0x9E37_79B9_7F4A_7C15));
                    let key = format!("key-{}", i % workload.keys);
                    let requestor = format!("client-{i}");
                    let mut records = Vec::new();
                    while !stop.load(Ordering::SeqCst) {
                        let name = &workload.names[rng.below(workload.names.len() as u64) as usize];
                        let op = if rng.below(100) < u64::from(workload.lock_percent) {
                            Op::Lock
                        } else {
                            Op::Unlock
                        };
                        let method = if op == Op::Lock { "PUT" } else { "DELETE" };
                        let lock_url = format!("{url}/lock/{}", encode(name));
                        let sent = body(&key, &requestor);
                        let answer = client
                            .call(method, &lock_url, Some(&sent))
                            .ok()
                            .map(|(status, value)| answer_of(op, status, &value));
                        let failed = answer.is_none();
                        if !failed {
                            answered.fetch_add(1, Ordering::SeqCst);
                        }
                        records.push(Record {
                            name: name.clone(),
                            op,
                            key: key.clone(),
                            requestor: requestor.clone(),
                            answer,
                        });
                        if failed {
                            // The server is gone; wait for the round to end.
                            while !stop.load(Ordering::SeqCst) {
                                thread::sleep(Duration::from_millis(5));
                            }
                        }
                    }
                    records
                })
            })
            .collect();
        Running {
            stop,
            answered,
            threads,
        }
    }
}

impl Running {
    /// Waits until the clients have had `count` answers in all (at most 30 s).
    pub fn wait_for_answers(&self, count: usize) {
        let deadline = std::time::Instant::now() + Duration::from_secs(30);
        while self.answered.load(Ordering::SeqCst) < count {
            assert!(
                std::time::Instant::now() < deadline,
                "the clients got fewer than {count} answers in 30 s"
            );
            thread::sleep(Duration::from_millis(2));
        }
    }

    /// Tells the clients to stop after their current request (call before killing the server).
    pub fn stop(&self) {
        self.stop.store(true, Ordering::SeqCst);
    }

    /// Waits for every client and returns everything they recorded.
    pub fn join(self) -> Vec<Record> {
        self.stop();
        self.threads
            .into_iter()
            .flat_map(|t| t.join().expect("client thread"))
            .collect()
    }
}

fn answer_of(op: Op, status: u16, value: &Value) -> Answer {
    assert!(
        matches!(status, 200 | 423),
        "a lock or unlock must answer 200 or 423, got {status}: {value}"
    );
    let lock = value.get("lock").map(|lock| {
        let revision = lock["revision"].as_u64().expect("revision");
        (revision, LockState::from_json(lock))
    });
    let message = value["response"].as_str().unwrap_or_default();
    let changed = status == 200 && (op == Op::Lock || message.contains("released by"));
    Answer { lock, changed }
}

/// The locks the server holds, from `GET /locks`: name to revision and state.
pub fn server_state(client: &Client, base_url: &str) -> BTreeMap<String, (u64, LockState)> {
    let (status, locks) = client.get(&format!("{base_url}/locks"));
    assert_eq!(status, 200, "{locks}");
    locks
        .as_object()
        .expect("an object of locks")
        .iter()
        .map(|(name, lock)| {
            let revision = lock["revision"].as_u64().expect("revision");
            (name.clone(), (revision, LockState::from_json(lock)))
        })
        .collect()
}

/// Checks the state recovered after a crash against the round that preceded it.
///
/// For each lock, the latest state any answer showed (or the state before the round) must be
/// there, or a later one that some of the unanswered requests on that lock explain. The
/// revision of a lock never goes below one that was answered.
pub fn check_recovered(
    before: &BTreeMap<String, (u64, LockState)>,
    round: &[Record],
    after: &BTreeMap<String, (u64, LockState)>,
) {
    let names: BTreeSet<&String> = before
        .keys()
        .chain(after.keys())
        .chain(round.iter().map(|r| &r.name))
        .collect();
    for name in names {
        let mut latest = before.get(name).cloned().unwrap_or_default();
        for record in round.iter().filter(|r| &r.name == name) {
            if let Some((revision, state)) = record.answer.as_ref().and_then(|a| a.lock.clone())
                && revision >= latest.0
            {
                latest = (revision, state);
            }
        }
        let (revision, state) = after.get(name).cloned().unwrap_or_default();
        assert!(
            revision >= latest.0,
            "lock '{name}' went back to revision {revision} ({state:?}) after the restart, but \
             an answer had shown revision {} ({:?}): an answered change was lost",
            latest.0,
            latest.1
        );
        if revision == latest.0 {
            assert_eq!(
                state, latest.1,
                "lock '{name}' at revision {revision} differs from what the server answered"
            );
            continue;
        }
        let unanswered: Vec<&Record> = round
            .iter()
            .filter(|r| &r.name == name && r.answer.is_none())
            .collect();
        assert!(
            reachable(&latest.1, &unanswered, &state),
            "lock '{name}' recovered as {state:?} at revision {revision}, which no subset of \
             the {} unanswered requests explains from the last answered state {:?} (revision {})",
            unanswered.len(),
            latest.1,
            latest.0
        );
    }
}

/// True when applying some of `requests`, each at most once and in some order, to `from`
/// gives `to`.
fn reachable(from: &LockState, requests: &[&Record], to: &LockState) -> bool {
    assert!(
        requests.len() < 20,
        "too many unanswered requests on one lock to search"
    );
    let mut seen = HashSet::new();
    let mut queue = VecDeque::from([(0u32, from.clone())]);
    while let Some((used, state)) = queue.pop_front() {
        if &state == to {
            return true;
        }
        for (i, r) in requests.iter().enumerate() {
            if used & (1 << i) != 0 {
                continue;
            }
            let next = state
                .apply(r.op, &r.key, &r.requestor)
                .unwrap_or(state.clone());
            let next = (used | (1 << i), next);
            if seen.insert(next.clone()) {
                queue.push_back(next);
            }
        }
    }
    false
}

/// Checks that no two keys ever held one lock, from every answer in `history`.
///
/// Every answer shows the lock's key and holders; each holder must be a requestor of that key.
/// Every change takes the next server-wide revision and adds or removes exactly one claim.
/// So between two answers on one lock at revisions `r1 < r2`, at most `r2 - r1` changes (less
/// those answered on other locks) happened to it; if handing the lock from one key to another
/// needs more (every claim released, then the new ones taken), the two keys overlapped.
pub fn check_mutual_exclusion(history: &[Record]) {
    let answers: Vec<(&Record, &Answer, u64, &LockState)> = history
        .iter()
        .filter_map(|r| {
            let answer = r.answer.as_ref()?;
            let (revision, state) = answer.lock.as_ref()?;
            Some((r, answer, *revision, state))
        })
        .collect();
    // Each client claims with one key: a holder whose key is not the lock's means two keys.
    let key_of: BTreeMap<&str, &str> = history
        .iter()
        .map(|r| (r.requestor.as_str(), r.key.as_str()))
        .collect();
    for (record, answer, revision, state) in &answers {
        for holder in state.holders.keys() {
            let key = key_of.get(holder.as_str()).copied().unwrap_or(&state.key);
            assert_eq!(
                key, state.key,
                "lock '{}' at revision {revision} is held with key '{}', and also by '{holder}', \
                 who claims with key '{key}': two keys held it at once",
                record.name, state.key
            );
        }
        if answer.changed && record.op == Op::Lock {
            assert_eq!(
                state.key, record.key,
                "lock '{}' was granted to key '{}' but shows key '{}'",
                record.name, record.key, state.key
            );
        }
    }
    let mut change_owner: BTreeMap<u64, &str> = BTreeMap::new();
    for (record, answer, revision, _) in &answers {
        if answer.changed
            && let Some(other) = change_owner.insert(*revision, &record.name)
        {
            panic!(
                "two answered changes share revision {revision} (locks '{other}' and '{}'): a \
                 revision was reused, so an acknowledged change was lost",
                record.name
            );
        }
    }
    let mut by_name: BTreeMap<&str, BTreeMap<u64, &LockState>> = BTreeMap::new();
    for (record, _, revision, state) in &answers {
        let seen = by_name.entry(&record.name).or_default();
        if let Some(previous) = seen.insert(*revision, state) {
            assert_eq!(
                previous, *state,
                "lock '{}' showed two different states at revision {revision}",
                record.name
            );
        }
    }
    for (name, states) in by_name {
        let states: Vec<(&u64, &&LockState)> = states.iter().collect();
        for pair in states.windows(2) {
            let ((&r1, s1), (&r2, s2)) = (pair[0], pair[1]);
            let elsewhere = change_owner
                .range(r1 + 1..=r2)
                .filter(|(_, owner)| **owner != name)
                .count() as u64;
            let room = (r2 - r1).saturating_sub(elsewhere);
            let needed = s1.steps_to(s2);
            assert!(
                needed <= room,
                "lock '{name}' went from {s1:?} at revision {r1} to {s2:?} at revision {r2}: \
                 that takes {needed} changes, but only {room} happened to it in between, so two \
                 keys held it at once"
            );
        }
    }
}

/// A small deterministic random source (xorshift), so failures can be replayed by seed.
pub struct Rng(pub u64);

impl Rng {
    pub fn next(&mut self) -> u64 {
        let mut x = self.0.max(1);
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        self.0 = x;
        x
    }

    pub fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }
}

/// A seed from the clock, printed so a failure can be replayed with `LOCKER_TEST_SEED`.
pub fn seed(test: &str) -> u64 {
    let seed = std::env::var("LOCKER_TEST_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| {
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .unwrap()
                .as_nanos() as u64
        });
    eprintln!("{test}: LOCKER_TEST_SEED={seed}");
    seed
}

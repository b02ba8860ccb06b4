//! The lock rules: a pure state machine with no I/O and no clock of its own.
//!
//! A [`Lock`] is free or held by one key. Everyone who presents that key may claim it again
//! (the claims are counted per requestor), and it becomes free when every claim is released.
//! [`Batch`] applies a sequence of requests on top of a [`LockTable`] without touching it, so
//! a storage backend can persist exactly the changed locks and publish them only once they
//! are durable. Time comes in as an argument, which keeps every rule testable and leaves
//! room for leases that expire.
//!
//! A request may carry a request id (the HTTP `Idempotency-Key`). A lock remembers the ids of
//! the requests that changed it since it was last free (the last [`REMEMBERED_REQUESTS`]), and
//! of the one that freed it, so a client that retries after losing an answer does not claim (or
//! release) twice: the retry is answered as done and changes nothing, as long as what it did
//! still stands. Forgetting at each release keeps a lock's memory small: typically one or two
//! ids.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::SystemTime;

/// How many request ids a lock remembers: enough for the retries of every sharer of a key
/// in flight at once; older ids are forgotten first.
pub const REMEMBERED_REQUESTS: usize = 8;

/// The state of one lock.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Lock {
    /// The key that holds the lock; empty when the lock is free.
    pub key: String,
    /// How many claims each requestor holds; never contains a zero count.
    pub locked_by: Holders,
    /// The table revision of this lock's last change; 0 for a lock never changed here.
    pub revision: u64,
    /// When the current key took the lock; `None` when free (or unknown, for imported locks).
    pub locked_at: Option<SystemTime>,
    /// Ids of the requests that changed this lock since it was last free, and of the one that
    /// freed it; oldest first, at most [`REMEMBERED_REQUESTS`].
    pub requests: Vec<String>,
}

impl Default for Lock {
    fn default() -> Lock {
        Lock::free()
    }
}

/// What [`LockTable::lock`] lends for a name never used.
static FREE: Lock = Lock::free();

impl Lock {
    /// A free lock at revision 0: what a name never used is.
    pub const fn free() -> Lock {
        Lock {
            key: String::new(),
            locked_by: Holders(Vec::new()),
            revision: 0,
            locked_at: None,
            requests: Vec::new(),
        }
    }

    /// True when no key holds the lock.
    pub fn is_free(&self) -> bool {
        self.locked_by.is_empty()
    }

    /// True when the request with this id changed this lock recently.
    pub fn remembers(&self, request_id: &str) -> bool {
        self.requests.iter().any(|id| id == request_id)
    }

    fn remember(&mut self, request_id: &str) {
        if self.requests.len() >= REMEMBERED_REQUESTS {
            self.requests.remove(0);
        }
        self.requests.push(request_id.to_owned());
    }

    /// Checks the invariants a lock read from storage must satisfy.
    pub fn check_invariants(&self) -> Result<(), String> {
        match (self.key.is_empty(), self.locked_by.is_empty()) {
            (true, false) => Err("it has holders but an empty key".into()),
            (false, true) => Err("it has a key but no holders".into()),
            _ => Ok(()),
        }
    }
}

/// The claims on a lock: requestor to count, sorted by requestor, no zero counts.
///
/// A lock has one or two holders almost always, so a sorted vector is both the fastest and
/// the smallest map here (a `BTreeMap` allocates room for eleven entries).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Holders(Vec<(String, u64)>);

impl Holders {
    /// The number of claims `requestor` holds, if any.
    pub fn get(&self, requestor: &str) -> Option<&u64> {
        self.find(requestor).ok().map(|i| &self.0[i].1)
    }

    /// Adds one claim for `requestor`.
    pub fn add(&mut self, requestor: &str) {
        match self.find(requestor) {
            Ok(i) => self.0[i].1 += 1,
            Err(i) => self.0.insert(i, (requestor.to_owned(), 1)),
        }
    }

    /// Releases one claim of `requestor`; false if it holds none.
    pub fn release(&mut self, requestor: &str) -> bool {
        match self.find(requestor) {
            Ok(i) if self.0[i].1 > 1 => self.0[i].1 -= 1,
            Ok(i) => {
                self.0.remove(i);
            }
            Err(_) => return false,
        }
        true
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    pub fn len(&self) -> usize {
        self.0.len()
    }

    /// Requestors and counts, in requestor order.
    pub fn iter(&self) -> impl Iterator<Item = (&str, u64)> {
        self.0.iter().map(|(r, c)| (r.as_str(), *c))
    }

    fn find(&self, requestor: &str) -> Result<usize, usize> {
        self.0.binary_search_by(|(r, _)| r.as_str().cmp(requestor))
    }
}

impl FromIterator<(String, u64)> for Holders {
    /// Collects claims; zero counts are left out and a repeated requestor's counts add up.
    fn from_iter<I: IntoIterator<Item = (String, u64)>>(iter: I) -> Self {
        let mut claims: Vec<(String, u64)> = iter.into_iter().filter(|(_, c)| *c > 0).collect();
        claims.sort_by(|a, b| a.0.cmp(&b.0));
        claims.dedup_by(|later, first| {
            let same = later.0 == first.0;
            if same {
                first.1 += later.1;
            }
            same
        });
        claims.shrink_to_fit();
        Holders(claims)
    }
}

/// Who asks: the key that identifies a claim and the requestor it is counted for, and the
/// request's id when the client gave one (retries of one request share it).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Claim {
    pub key: String,
    pub requestor: String,
    pub request_id: Option<String>,
}

/// What a request wants done to a lock.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Op {
    Lock,
    Unlock,
}

/// How a request was decided.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    /// The claim was added (the lock was free or already held with this key).
    Acquired,
    /// One claim of this requestor was released.
    Released,
    /// Unlock of a lock that is free: nothing to do.
    NotHeld,
    /// Unlock with the right key by a requestor that holds no claim: nothing to do.
    NoClaim,
    /// Another key holds the lock.
    HeldByOther,
}

impl Verdict {
    /// True when the request was refused because another key holds the lock.
    pub fn is_conflict(self) -> bool {
        self == Verdict::HeldByOther
    }
}

/// Decides `op` for `claim` against `lock` at time `now`.
///
/// Returns the verdict and, when the lock changes, its new state (with the revision left for
/// the caller to assign).
pub fn decide(lock: &Lock, op: Op, claim: &Claim, now: SystemTime) -> (Verdict, Option<Lock>) {
    if let Some(verdict) = replayed(lock, op, claim) {
        return (verdict, None);
    }
    let (verdict, mut next) = decide_afresh(lock, op, claim, now);
    if let Some(next) = next.as_mut() {
        if next.is_free() {
            next.requests.clear();
        }
        if let Some(id) = &claim.request_id {
            next.remember(id);
        }
    }
    (verdict, next)
}

/// The verdict for a retry of a request that already changed `lock`, if it is one: a lock
/// is done while the claim it added still stands (after that, it is decided afresh); an
/// unlock is done for good.
fn replayed(lock: &Lock, op: Op, claim: &Claim) -> Option<Verdict> {
    let id = claim.request_id.as_deref()?;
    if !lock.remembers(id) {
        return None;
    }
    match op {
        Op::Lock if lock.key == claim.key && lock.locked_by.get(&claim.requestor).is_some() => {
            Some(Verdict::Acquired)
        }
        Op::Lock => None,
        Op::Unlock => Some(Verdict::Released),
    }
}

fn decide_afresh(lock: &Lock, op: Op, claim: &Claim, now: SystemTime) -> (Verdict, Option<Lock>) {
    let same_key = lock.is_free() || lock.key == claim.key;
    match op {
        Op::Lock if same_key => {
            let mut next = lock.clone();
            if next.is_free() {
                next.key = claim.key.clone();
                next.locked_at = Some(now);
            }
            next.locked_by.add(&claim.requestor);
            (Verdict::Acquired, Some(next))
        }
        Op::Lock => (Verdict::HeldByOther, None),
        Op::Unlock if lock.is_free() => (Verdict::NotHeld, None),
        Op::Unlock if !same_key => (Verdict::HeldByOther, None),
        Op::Unlock => {
            let mut next = lock.clone();
            if !next.locked_by.release(&claim.requestor) {
                return (Verdict::NoClaim, None);
            }
            if next.locked_by.is_empty() {
                next.key.clear();
                next.locked_at = None;
            }
            (Verdict::Released, Some(next))
        }
    }
}

/// Locks by name, in name order: a persistent map, so a copy costs nothing and a change
/// copies only the path to the changed lock. That is what lets the store publish every
/// committed table as an immutable snapshot (see [`crate::store`]).
pub type Locks = imbl::OrdMap<Arc<str>, Arc<Lock>>;

/// Every known lock and the table-wide revision counter. Cloning it is cheap (see [`Locks`]).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct LockTable {
    /// Incremented by every change; never goes backwards.
    pub revision: u64,
    pub locks: Locks,
}

impl LockTable {
    /// A table of `locks` at `revision`.
    pub fn new(revision: u64, locks: impl IntoIterator<Item = (String, Lock)>) -> LockTable {
        LockTable {
            revision,
            locks: locks
                .into_iter()
                .map(|(name, lock)| (Arc::from(name), Arc::new(lock)))
                .collect(),
        }
    }

    /// The lock called `name`, or a free lock at revision 0 for a name never used.
    pub fn lock(&self, name: &str) -> &Lock {
        self.locks.get(name).map_or(&FREE, |lock| lock)
    }

    /// An owned copy of [`LockTable::lock`].
    pub fn get(&self, name: &str) -> Lock {
        self.lock(name).clone()
    }

    /// Starts a batch of requests on top of this table.
    pub fn batch(&self) -> Batch<'_> {
        Batch {
            base: self,
            revision: self.revision,
            changes: BTreeMap::new(),
        }
    }

    /// Takes in the changes of a batch that has been made durable.
    pub fn commit(&mut self, changes: Changes) {
        self.revision = changes.revision;
        for (name, lock) in changes.locks {
            self.locks.insert(Arc::from(name), Arc::new(lock));
        }
    }

    /// Applies one request directly; for tests and tools that need no storage.
    pub fn apply(&mut self, name: &str, op: Op, claim: &Claim, now: SystemTime) -> Decision {
        let mut batch = self.batch();
        let decision = batch.apply(name, op, claim, now);
        let changes = batch.into_changes();
        self.commit(changes);
        decision
    }
}

/// The outcome of one request: the verdict and the lock as it stands afterwards.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Decision {
    pub verdict: Verdict,
    pub lock: Lock,
}

/// Requests applied on top of a table, not yet durable.
#[derive(Debug)]
pub struct Batch<'a> {
    base: &'a LockTable,
    revision: u64,
    changes: BTreeMap<String, Lock>,
}

/// What a batch changed: the locks to write and the new table revision.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Changes {
    pub revision: u64,
    pub locks: BTreeMap<String, Lock>,
}

impl Changes {
    pub fn is_empty(&self) -> bool {
        self.locks.is_empty()
    }
}

impl<'a> Batch<'a> {
    /// The lock as this batch sees it: its own change if any, else the table's.
    pub fn lock(&self, name: &str) -> &Lock {
        self.changes
            .get(name)
            .unwrap_or_else(|| self.base.lock(name))
    }

    /// Decides one request; a change takes the next revision.
    pub fn apply(&mut self, name: &str, op: Op, claim: &Claim, now: SystemTime) -> Decision {
        let current = self.lock(name);
        match decide(current, op, claim, now) {
            (verdict, Some(mut next)) => {
                self.revision += 1;
                next.revision = self.revision;
                let lock = next.clone();
                self.changes.insert(name.to_owned(), next);
                Decision { verdict, lock }
            }
            (verdict, None) => Decision {
                verdict,
                lock: current.clone(),
            },
        }
    }

    /// The table this batch builds on.
    pub fn base(&self) -> &'a LockTable {
        self.base
    }

    /// What the batch changed so far.
    pub fn changes(&self) -> &BTreeMap<String, Lock> {
        &self.changes
    }

    /// The table revision after this batch.
    pub fn revision(&self) -> u64 {
        self.revision
    }

    pub fn into_changes(self) -> Changes {
        Changes {
            revision: self.revision,
            locks: self.changes,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use std::collections::HashMap;
    use std::time::Duration;

    fn claim(key: &str, requestor: &str) -> Claim {
        Claim {
            key: key.into(),
            requestor: requestor.into(),
            request_id: None,
        }
    }

    fn retried(key: &str, requestor: &str, id: &str) -> Claim {
        Claim {
            request_id: Some(id.into()),
            ..claim(key, requestor)
        }
    }

    #[test]
    fn a_retried_lock_claims_once() {
        let mut table = LockTable::default();
        let first = table.apply("env", Op::Lock, &retried("k", "x", "r1"), at(1));
        let again = table.apply("env", Op::Lock, &retried("k", "x", "r1"), at(2));
        assert_eq!(
            again.verdict,
            Verdict::Acquired,
            "the retry is answered as done"
        );
        assert_eq!(again.lock, first.lock, "and changes nothing");
        assert_eq!(table.revision, 1);
        let other = table.apply("env", Op::Lock, &retried("k", "x", "r2"), at(3));
        assert_eq!(
            other.lock.locked_by.get("x"),
            Some(&2),
            "a new id claims again"
        );
    }

    #[test]
    fn a_retried_unlock_releases_once() {
        let mut table = LockTable::default();
        table.apply("env", Op::Lock, &claim("k", "x"), at(1));
        table.apply("env", Op::Lock, &claim("k", "x"), at(1));
        table.apply("env", Op::Unlock, &retried("k", "x", "u1"), at(2));
        let again = table.apply("env", Op::Unlock, &retried("k", "x", "u1"), at(3));
        assert_eq!(again.verdict, Verdict::Released);
        assert_eq!(again.lock.locked_by.get("x"), Some(&1), "one claim is left");
        assert_eq!(table.revision, 3);
    }

    #[test]
    fn a_retried_lock_whose_claim_was_released_is_decided_afresh() {
        let mut table = LockTable::default();
        table.apply("env", Op::Lock, &retried("a", "x", "r1"), at(1));
        table.apply("env", Op::Unlock, &claim("a", "x"), at(2));
        table.apply("env", Op::Lock, &claim("b", "y"), at(3));
        let again = table.apply("env", Op::Lock, &retried("a", "x", "r1"), at(4));
        assert_eq!(
            again.verdict,
            Verdict::HeldByOther,
            "a retry never reports a lock it does not hold"
        );
    }

    #[test]
    fn a_freed_lock_remembers_only_the_request_that_freed_it() {
        let mut table = LockTable::default();
        table.apply("env", Op::Lock, &retried("k", "x", "l1"), at(1));
        table.apply("env", Op::Lock, &retried("k", "y", "l2"), at(1));
        table.apply("env", Op::Unlock, &retried("k", "x", "u1"), at(2));
        assert_eq!(table.get("env").requests, ["l1", "l2", "u1"]);
        table.apply("env", Op::Unlock, &retried("k", "y", "u2"), at(3));
        assert_eq!(table.get("env").requests, ["u2"]);
        let again = table.apply("env", Op::Unlock, &retried("k", "y", "u2"), at(4));
        assert_eq!(
            again.verdict,
            Verdict::Released,
            "its retry is still recognised"
        );
        table.apply("env", Op::Unlock, &claim("k", "y"), at(5));
        assert_eq!(
            table.get("env").requests,
            ["u2"],
            "a request that changes nothing changes no memory"
        );
        table.apply("env", Op::Lock, &claim("k2", "z"), at(6));
        table.apply("env", Op::Unlock, &claim("k2", "z"), at(7));
        assert!(
            table.get("env").requests.is_empty(),
            "freed by a request without an id"
        );
    }

    #[test]
    fn a_lock_remembers_its_last_requests_only() {
        let mut table = LockTable::default();
        for i in 0..=REMEMBERED_REQUESTS {
            table.apply("env", Op::Lock, &retried("k", "x", &format!("r{i}")), at(1));
        }
        let lock = table.get("env");
        assert_eq!(lock.requests.len(), REMEMBERED_REQUESTS);
        assert!(!lock.remembers("r0"), "the oldest is forgotten");
        assert!(lock.remembers(&format!("r{REMEMBERED_REQUESTS}")));
        let refused = table.apply("env", Op::Lock, &retried("other", "y", "r9"), at(2));
        assert_eq!(refused.verdict, Verdict::HeldByOther);
        assert!(
            !table.get("env").remembers("r9"),
            "a refusal is not remembered"
        );
    }

    fn at(secs: u64) -> SystemTime {
        SystemTime::UNIX_EPOCH + Duration::from_secs(secs)
    }

    #[test]
    fn free_lock_is_acquired_and_records_time_and_revision() {
        let mut table = LockTable::default();
        let d = table.apply("env", Op::Lock, &claim("k", "job"), at(10));
        assert_eq!(d.verdict, Verdict::Acquired);
        assert_eq!(d.lock.key, "k");
        assert_eq!(d.lock.locked_by, Holders::from_iter([("job".into(), 1)]));
        assert_eq!(d.lock.locked_at, Some(at(10)));
        assert_eq!(d.lock.revision, 1);
        assert_eq!(table.revision, 1);
    }

    #[test]
    fn second_key_is_refused_while_first_holds() {
        let mut table = LockTable::default();
        table.apply("env", Op::Lock, &claim("a", "x"), at(1));
        let d = table.apply("env", Op::Lock, &claim("b", "y"), at(2));
        assert_eq!(d.verdict, Verdict::HeldByOther);
        assert_eq!(d.lock.key, "a", "the refusal reports the holder");
        assert_eq!(table.revision, 1, "a refusal is not a change");
    }

    #[test]
    fn same_key_is_reentrant_and_shared_between_requestors() {
        let mut table = LockTable::default();
        table.apply("env", Op::Lock, &claim("k", "x"), at(1));
        table.apply("env", Op::Lock, &claim("k", "x"), at(2));
        let d = table.apply("env", Op::Lock, &claim("k", "y"), at(3));
        assert_eq!(
            d.lock.locked_by,
            Holders::from_iter([("x".into(), 2), ("y".into(), 1)])
        );
        assert_eq!(
            d.lock.locked_at,
            Some(at(1)),
            "locked_at is when the key took it"
        );
    }

    #[test]
    fn lock_n_times_needs_n_unlocks() {
        let mut table = LockTable::default();
        for _ in 0..3 {
            table.apply("env", Op::Lock, &claim("k", "x"), at(1));
        }
        for left in [2, 1] {
            let d = table.apply("env", Op::Unlock, &claim("k", "x"), at(2));
            assert_eq!(d.verdict, Verdict::Released);
            assert_eq!(d.lock.locked_by.get("x"), Some(&left));
        }
        let d = table.apply("env", Op::Unlock, &claim("k", "x"), at(2));
        assert!(d.lock.is_free());
        assert_eq!(d.lock.key, "");
        assert_eq!(d.lock.locked_at, None);
    }

    #[test]
    fn unlock_of_free_or_unknown_lock_changes_nothing() {
        let mut table = LockTable::default();
        let d = table.apply("never", Op::Unlock, &claim("k", "x"), at(1));
        assert_eq!(d.verdict, Verdict::NotHeld);
        assert_eq!(table.revision, 0);
        assert!(table.locks.is_empty(), "no entry is made for a no-op");
    }

    #[test]
    fn unlock_with_other_key_is_refused() {
        let mut table = LockTable::default();
        table.apply("env", Op::Lock, &claim("a", "x"), at(1));
        let d = table.apply("env", Op::Unlock, &claim("b", "x"), at(2));
        assert_eq!(d.verdict, Verdict::HeldByOther);
        assert_eq!(d.lock.locked_by.get("x"), Some(&1));
    }

    #[test]
    fn unlock_by_requestor_without_claim_changes_nothing() {
        let mut table = LockTable::default();
        table.apply("env", Op::Lock, &claim("k", "x"), at(1));
        let d = table.apply("env", Op::Unlock, &claim("k", "y"), at(2));
        assert_eq!(d.verdict, Verdict::NoClaim);
        assert_eq!(table.revision, 1);
    }

    #[test]
    fn holders_stay_sorted_without_zero_counts() {
        let mut holders: Holders = [("b".into(), 1), ("a".into(), 0), ("c".into(), 2)]
            .into_iter()
            .collect();
        assert_eq!(holders.iter().collect::<Vec<_>>(), [("b", 1), ("c", 2)]);
        holders.add("a");
        holders.add("c");
        assert_eq!(
            holders.iter().collect::<Vec<_>>(),
            [("a", 1), ("b", 1), ("c", 3)]
        );
        assert!(holders.release("b"));
        assert!(!holders.release("b"), "b holds nothing any more");
        assert_eq!(holders.get("c"), Some(&3));
        assert_eq!(holders.len(), 2);
    }

    #[test]
    fn batch_sees_its_own_changes_but_leaves_table_alone() {
        let table = LockTable::default();
        let mut batch = table.batch();
        batch.apply("env", Op::Lock, &claim("a", "x"), at(1));
        let d = batch.apply("env", Op::Lock, &claim("b", "y"), at(1));
        assert_eq!(d.verdict, Verdict::HeldByOther);
        assert_eq!(batch.revision(), 1);
        assert!(table.locks.is_empty());
    }

    /// The simplest model of the rules: a key and a count per requestor, nothing else.
    #[derive(Default)]
    struct Model {
        locks: HashMap<String, (String, HashMap<String, u64>)>,
    }

    impl Model {
        /// Returns true when the request is granted (lock) or released something (unlock).
        fn apply(&mut self, name: &str, op: Op, key: &str, requestor: &str) -> bool {
            let (holder, counts) = self.locks.entry(name.into()).or_default();
            let free = counts.values().all(|&c| c == 0);
            match op {
                Op::Lock if free || holder == key => {
                    *holder = key.into();
                    *counts.entry(requestor.into()).or_default() += 1;
                    true
                }
                Op::Lock => false,
                Op::Unlock if !free && holder == key => match counts.get_mut(requestor) {
                    Some(c) if *c > 0 => {
                        *c -= 1;
                        true
                    }
                    _ => false,
                },
                Op::Unlock => false,
            }
        }
    }

    proptest! {
        #[test]
        fn rules_match_the_model(
            steps in proptest::collection::vec((0..3usize, any::<bool>(), 0..3usize, 0..3usize), 1..200)
        ) {
            let names = ["a", "b", "c"];
            let keys = ["k1", "k2", "k3"];
            let requestors = ["r1", "r2", "r3"];
            let mut table = LockTable::default();
            let mut model = Model::default();
            let mut changes = 0;
            for (i, (n, lock, k, r)) in steps.into_iter().enumerate() {
                let op = if lock { Op::Lock } else { Op::Unlock };
                let d = table.apply(names[n], op, &claim(keys[k], requestors[r]), at(i as u64));
                let granted = model.apply(names[n], op, keys[k], requestors[r]);
                prop_assert_eq!(
                    matches!(d.verdict, Verdict::Acquired | Verdict::Released), granted,
                    "step {} {:?} {} {} {}", i, op, names[n], keys[k], requestors[r]);
                if granted { changes += 1; }
                prop_assert_eq!(table.revision, changes, "revision counts changes");
                for (name, lock) in &table.locks {
                    prop_assert!(lock.check_invariants().is_ok(), "{}: {:?}", name, lock);
                    let (key, counts) = &model.locks[&**name];
                    let held: Holders = counts.iter().map(|(r, c)| (r.clone(), *c)).collect();
                    prop_assert_eq!(&lock.locked_by, &held);
                    if !held.is_empty() { prop_assert_eq!(&lock.key, key); }
                }
            }
        }
    }
}

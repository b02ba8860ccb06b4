//! The lock rules: a pure state machine with no I/O and no clock of its own.
//!
//! A [`Lock`] is free or held by one key. Everyone who presents that key may claim it again
//! (the claims are counted per requestor), and it becomes free when every claim is released.
//! [`Batch`] applies a sequence of requests on top of a [`LockTable`] without touching it, so
//! a storage backend can persist exactly the changed locks and publish them only once they
//! are durable. Time comes in as an argument, which keeps every rule testable and leaves
//! room for leases that expire.

use std::collections::BTreeMap;
use std::time::SystemTime;

/// The state of one lock.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Lock {
    /// The key that holds the lock; empty when the lock is free.
    pub key: String,
    /// How many claims each requestor holds; never contains a zero count.
    pub locked_by: BTreeMap<String, u64>,
    /// The table revision of this lock's last change; 0 for a lock never changed here.
    pub revision: u64,
    /// When the current key took the lock; `None` when free (or unknown, for imported locks).
    pub locked_at: Option<SystemTime>,
}

impl Lock {
    /// True when no key holds the lock.
    pub fn is_free(&self) -> bool {
        self.locked_by.is_empty()
    }

    /// Checks the invariants a lock read from storage must satisfy.
    pub fn check_invariants(&self) -> Result<(), String> {
        if self.locked_by.values().any(|&count| count == 0) {
            return Err("a requestor has a zero count (leave it out instead)".into());
        }
        match (self.key.is_empty(), self.locked_by.is_empty()) {
            (true, false) => Err("it has holders but an empty key".into()),
            (false, true) => Err("it has a key but no holders".into()),
            _ => Ok(()),
        }
    }
}

/// Who asks: the key that identifies a claim and the requestor it is counted for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Claim {
    pub key: String,
    pub requestor: String,
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
    let same_key = lock.is_free() || lock.key == claim.key;
    match op {
        Op::Lock if same_key => {
            let mut next = lock.clone();
            if next.is_free() {
                next.key = claim.key.clone();
                next.locked_at = Some(now);
            }
            *next.locked_by.entry(claim.requestor.clone()).or_insert(0) += 1;
            (Verdict::Acquired, Some(next))
        }
        Op::Lock => (Verdict::HeldByOther, None),
        Op::Unlock if lock.is_free() => (Verdict::NotHeld, None),
        Op::Unlock if !same_key => (Verdict::HeldByOther, None),
        Op::Unlock => {
            let Some(&count) = lock.locked_by.get(&claim.requestor) else {
                return (Verdict::NoClaim, None);
            };
            let mut next = lock.clone();
            if count > 1 {
                next.locked_by.insert(claim.requestor.clone(), count - 1);
            } else {
                next.locked_by.remove(&claim.requestor);
            }
            if next.locked_by.is_empty() {
                next.key.clear();
                next.locked_at = None;
            }
            (Verdict::Released, Some(next))
        }
    }
}

/// Every known lock and the table-wide revision counter.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct LockTable {
    /// Incremented by every change; never goes backwards.
    pub revision: u64,
    pub locks: BTreeMap<String, Lock>,
}

impl LockTable {
    /// The lock called `name`, or a free lock at revision 0 for a name never used.
    pub fn get(&self, name: &str) -> Lock {
        self.locks.get(name).cloned().unwrap_or_default()
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
        self.locks.extend(changes.locks);
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
    pub fn get(&self, name: &str) -> Lock {
        match self.changes.get(name) {
            Some(lock) => lock.clone(),
            None => self.base.get(name),
        }
    }

    /// Decides one request; a change takes the next revision.
    pub fn apply(&mut self, name: &str, op: Op, claim: &Claim, now: SystemTime) -> Decision {
        let current = self.get(name);
        match decide(&current, op, claim, now) {
            (verdict, Some(mut next)) => {
                self.revision += 1;
                next.revision = self.revision;
                self.changes.insert(name.to_owned(), next.clone());
                Decision {
                    verdict,
                    lock: next,
                }
            }
            (verdict, None) => Decision {
                verdict,
                lock: current,
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
        }
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
        assert_eq!(d.lock.locked_by, BTreeMap::from([("job".into(), 1)]));
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
            BTreeMap::from([("x".into(), 2), ("y".into(), 1)])
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
                    let (key, counts) = &model.locks[name];
                    let held: BTreeMap<String, u64> = counts.iter()
                        .filter(|(_, c)| **c > 0).map(|(r, c)| (r.clone(), *c)).collect();
                    prop_assert_eq!(&lock.locked_by, &held);
                    if !held.is_empty() { prop_assert_eq!(&lock.key, key); }
                }
            }
        }
    }
}

//! The queue of a lock: who waits for it, in arrival order, and the grants made from it that
//! can still be collected or withdrawn.
//!
//! A queue is volatile: it lives in memory beside the table and is never written to storage
//! (a waiter is not an acknowledged change; after a restart clients re-enter by retrying).
//! The grants made from it are ordinary claims, durable like any other.
//!
//! A waiter is answered through a *poll*: the one request waiting on its answer, named by a
//! number the store gives it. A waiter with a request id (the HTTP `Idempotency-Key`) keeps its
//! place for its grace after its poll ends, so that the client's next poll resumes it; a waiter
//! without one leaves with its poll. A grant is remembered for the same grace: a grant nobody
//! collected is released when the grace runs out (no lock leaks to a vanished client), and one
//! that was collected can still be withdrawn by its request id (an aborted client that never saw
//! the answer).

use std::sync::Arc;
use std::time::{Duration, SystemTime};

use super::rules::{Hold, Owner};

/// Someone waiting for a lock.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Waiter {
    pub requestor: String,
    pub key: String,
    /// When it joined the queue.
    pub since: SystemTime,
    pub owner: Owner,
    /// The time to live of the claim it gets when granted.
    pub(super) ttl: Option<Duration>,
    /// How long the claim it gets when granted is held, as its request said.
    pub(super) hold: Option<Hold>,
    pub(super) request_id: Option<String>,
    /// How long its place (and then its grant) outlives the poll that waits for it.
    pub(super) grace: Duration,
    /// The poll waiting for its answer, if one is.
    pub(super) poll: Option<u64>,
    /// When its place lapses: set when its poll ends, cleared when a poll resumes it.
    pub(super) lapses_at: Option<SystemTime>,
    /// The client's address, for the history.
    pub(super) client: Option<String>,
}

/// A claim granted from the queue, remembered for its waiter's grace.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) struct Grant {
    pub(super) requestor: String,
    pub(super) request_id: Option<String>,
    /// The lock's token at the grant: a claim of a later tenure is never released for it.
    pub(super) token: u64,
    /// The poll the grant was answered to, while that answer may still be undelivered.
    pub(super) poll: Option<u64>,
    /// True once a poll has taken the answer; an uncollected grant is released at its lapse.
    pub(super) collected: bool,
    pub(super) lapses_at: SystemTime,
}

/// Where a waiter stands: `position` 1 is next.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Place {
    pub position: usize,
    pub length: usize,
}

/// The waiters of one lock in arrival order, and its recent grants.
///
/// The waiters are a persistent vector: a batch copies a queue before changing it, and a copy
/// of 4,096 waiters must not cost 4,096 clones.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Queue {
    pub(super) waiting: imbl::Vector<Arc<Waiter>>,
    pub(super) granted: Vec<Grant>,
}

impl Waiter {
    /// When its place lapses, if its poll has ended.
    pub fn lapses_at(&self) -> Option<SystemTime> {
        self.lapses_at
    }
}

impl Queue {
    /// True when nobody waits and no grant is remembered.
    pub fn is_empty(&self) -> bool {
        self.waiting.is_empty() && self.granted.is_empty()
    }

    /// The waiters, first in line first.
    pub fn waiters(&self) -> impl ExactSizeIterator<Item = &Waiter> {
        self.waiting.iter().map(|w| &**w)
    }

    /// How many wait.
    pub fn len(&self) -> usize {
        self.waiting.len()
    }

    /// True when someone with another key than `key` waits.
    pub(super) fn has_other_key(&self, key: &str) -> bool {
        self.waiting.iter().any(|w| w.key != key)
    }

    /// The place of the waiter at index `i`.
    pub(super) fn place(&self, i: usize) -> Place {
        Place {
            position: i + 1,
            length: self.waiting.len(),
        }
    }

    pub(super) fn waiter_with_poll(&self, poll: u64) -> Option<usize> {
        self.waiting.iter().position(|w| w.poll == Some(poll))
    }

    pub(super) fn waiter_with_id(&self, id: &str) -> Option<usize> {
        self.waiting
            .iter()
            .position(|w| w.request_id.as_deref() == Some(id))
    }

    pub(super) fn grant_with_poll(&self, poll: u64) -> Option<usize> {
        self.granted.iter().position(|g| g.poll == Some(poll))
    }

    pub(super) fn grant_with_id(&self, id: &str) -> Option<usize> {
        self.granted
            .iter()
            .position(|g| g.request_id.as_deref() == Some(id))
    }

    /// The earliest time a place or a grant lapses.
    pub(super) fn next_lapse(&self) -> Option<SystemTime> {
        let places = self.waiting.iter().filter_map(|w| w.lapses_at);
        let grants = self.granted.iter().map(|g| g.lapses_at);
        places.chain(grants).min()
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use super::*;
    use crate::domain::{Claim, LockTable, Op, PollAnswer, Verdict};

    const GRACE: Duration = Duration::from_secs(30);

    fn at(secs: u64) -> SystemTime {
        SystemTime::UNIX_EPOCH + Duration::from_secs(1_800_000_000 + secs)
    }

    /// A table and the answers its polls got, applied one request at a time.
    #[derive(Default)]
    struct Lab {
        table: LockTable,
        answers: Vec<PollAnswer>,
    }

    impl Lab {
        fn run(&mut self, op: Op, claim: &Claim, now: SystemTime) -> crate::domain::Decision {
            let mut batch = self.table.batch();
            batch.expire_due(now);
            let decision = batch.apply("env", op, claim, now);
            let mut changes = batch.into_changes();
            self.answers.append(&mut changes.answers);
            self.table.commit(changes);
            assert!(
                self.table.deadlines_in_step(),
                "the deadline index after {op:?}"
            );
            decision
        }

        fn tick(&mut self, now: SystemTime) {
            let mut batch = self.table.batch();
            batch.expire_due(now);
            let mut changes = batch.into_changes();
            self.answers.append(&mut changes.answers);
            self.table.commit(changes);
            assert!(
                self.table.deadlines_in_step(),
                "the deadline index after a tick"
            );
        }

        fn lock(&mut self, key: &str, requestor: &str, now: SystemTime) -> Verdict {
            self.run(Op::Lock, &Claim::new(key, requestor), now).verdict
        }

        fn unlock(&mut self, key: &str, requestor: &str, now: SystemTime) -> Verdict {
            self.run(Op::Unlock, &Claim::new(key, requestor), now)
                .verdict
        }

        fn wait(&mut self, key: &str, requestor: &str, poll: u64, id: Option<&str>) -> Verdict {
            let claim = Claim {
                request_id: id.map(str::to_owned),
                ..Claim::new(key, requestor)
            };
            let op = Op::Wait { poll, grace: GRACE };
            self.run(op, &claim, at(1)).verdict
        }

        /// The polls answered so far with `verdict`, in order.
        fn answered(&self, verdict: Verdict) -> Vec<u64> {
            self.answers
                .iter()
                .filter(|a| a.decision.verdict == verdict)
                .map(|a| a.poll)
                .collect()
        }

        fn waiting(&self) -> Vec<String> {
            self.table
                .queue("env")
                .map(|q| q.waiters().map(|w| w.requestor.clone()).collect())
                .unwrap_or_default()
        }

        fn holders(&self) -> Vec<String> {
            let lock = self.table.lock("env");
            lock.locked_by.iter().map(|(r, _)| r.to_owned()).collect()
        }
    }

    #[test]
    fn waiters_are_granted_one_after_another_in_arrival_order() {
        let mut lab = Lab::default();
        lab.lock("a", "ra", at(0));
        for (poll, key) in [(1, "b"), (2, "c"), (3, "d")] {
            assert_eq!(
                lab.wait(key, &format!("r{key}"), poll, None),
                Verdict::Queued
            );
        }
        assert_eq!(lab.waiting(), ["rb", "rc", "rd"]);
        assert_eq!(lab.unlock("a", "ra", at(2)), Verdict::Released);
        assert_eq!(
            lab.answered(Verdict::Acquired),
            [1],
            "the first waiter, at once"
        );
        assert_eq!(lab.holders(), ["rb"]);
        assert_eq!(lab.waiting(), ["rc", "rd"]);
        lab.unlock("b", "rb", at(3));
        lab.unlock("c", "rc", at(4));
        assert_eq!(lab.answered(Verdict::Acquired), [1, 2, 3]);
        assert_eq!(lab.table.lock("env").key, "d");
    }

    #[test]
    fn the_same_key_directly_behind_the_first_is_granted_with_it_in_one_change() {
        let mut lab = Lab::default();
        lab.lock("a", "ra", at(0));
        lab.wait("b", "r1", 1, None);
        lab.wait("b", "r2", 2, None);
        lab.wait("c", "r3", 3, None);
        lab.wait("b", "r4", 4, None);
        let revision = lab.table.revision;
        lab.unlock("a", "ra", at(2));
        assert_eq!(lab.answered(Verdict::Acquired), [1, 2]);
        assert_eq!(lab.holders(), ["r1", "r2"]);
        let lock = lab.table.lock("env");
        assert_eq!(
            (lock.revision, lock.token),
            (revision + 2, Some(revision + 2)),
            "the release and the hand-over are one revision each; one token for the key"
        );
        assert_eq!(lab.waiting(), ["r3", "r4"], "r4 is behind another key");
    }

    #[test]
    fn reentry_is_granted_at_once_but_a_new_sharer_waits_behind_another_key() {
        let mut lab = Lab::default();
        lab.lock("a", "r1", at(0));
        assert_eq!(
            lab.lock("a", "r2", at(0)),
            Verdict::Acquired,
            "nobody waits yet"
        );
        lab.wait("b", "rb", 1, None);
        assert_eq!(lab.lock("a", "r1", at(1)), Verdict::Acquired, "re-entry");
        assert_eq!(lab.lock("a", "r3", at(1)), Verdict::OthersWaiting);
        assert_eq!(lab.wait("a", "r3", 2, None), Verdict::Queued);
        assert_eq!(lab.waiting(), ["rb", "r3"]);
    }

    #[test]
    fn a_place_with_a_request_id_outlives_its_poll_for_the_grace_and_is_resumed() {
        let mut lab = Lab::default();
        lab.lock("a", "ra", at(0));
        lab.wait("x", "rx", 1, None);
        lab.wait("b", "rb", 2, Some("id-b"));
        let stopped = lab.run(Op::StopWaiting { poll: 2 }, &Claim::default(), at(10));
        assert_eq!(stopped.verdict, Verdict::Queued);
        assert_eq!(
            lab.answered(Verdict::Queued),
            [2],
            "the poll is told where it stands"
        );
        assert_eq!(
            lab.answers[0].decision.place,
            Some(Place {
                position: 2,
                length: 2
            })
        );
        assert_eq!(lab.waiting(), ["rx", "rb"], "the place is kept");
        assert_eq!(lab.wait("b", "rb", 3, Some("id-b")), Verdict::Queued);
        assert_eq!(lab.waiting(), ["rx", "rb"], "resumed, not joined again");
        lab.run(Op::StopWaiting { poll: 3 }, &Claim::default(), at(20));
        lab.tick(at(20) + GRACE - Duration::from_secs(1));
        assert_eq!(lab.waiting(), ["rx", "rb"]);
        lab.tick(at(20) + GRACE);
        assert_eq!(lab.waiting(), ["rx"], "dropped once the grace ran out");
    }

    #[test]
    fn a_waiter_without_a_request_id_leaves_with_its_poll() {
        let mut lab = Lab::default();
        lab.lock("a", "ra", at(0));
        lab.wait("b", "rb", 1, None);
        lab.run(Op::StopWaiting { poll: 1 }, &Claim::default(), at(5));
        assert!(lab.waiting().is_empty());
        assert!(
            lab.table.queue("env").is_none(),
            "an empty queue is not kept"
        );
    }

    #[test]
    fn a_grant_made_between_polls_is_collected_by_the_next_one() {
        let mut lab = Lab::default();
        lab.lock("a", "ra", at(0));
        lab.wait("b", "rb", 1, Some("id-b"));
        lab.run(Op::StopWaiting { poll: 1 }, &Claim::default(), at(5));
        lab.unlock("a", "ra", at(6));
        assert_eq!(lab.holders(), ["rb"], "granted while no poll waited");
        assert!(lab.answered(Verdict::Acquired).is_empty());
        assert_eq!(lab.wait("b", "rb", 2, Some("id-b")), Verdict::Acquired);
        lab.tick(at(6) + GRACE);
        assert_eq!(lab.holders(), ["rb"], "a collected grant is kept");
    }

    #[test]
    fn a_grant_nobody_collects_is_released_after_the_grace_and_the_next_is_served() {
        let mut lab = Lab::default();
        lab.lock("a", "ra", at(0));
        lab.wait("b", "rb", 1, Some("id-b"));
        lab.wait("c", "rc", 2, None);
        lab.run(Op::Abandon { poll: 1 }, &Claim::default(), at(5));
        lab.unlock("a", "ra", at(6));
        assert_eq!(lab.holders(), ["rb"]);
        lab.tick(at(6) + GRACE - Duration::from_secs(1));
        assert_eq!(lab.holders(), ["rb"]);
        lab.tick(at(6) + GRACE);
        assert_eq!(
            lab.holders(),
            ["rc"],
            "released, and handed to the next waiter"
        );
        assert_eq!(lab.answered(Verdict::Acquired), [2]);
    }

    #[test]
    fn a_grant_to_a_poll_that_is_gone_is_released_at_once_without_a_request_id() {
        let mut lab = Lab::default();
        lab.lock("a", "ra", at(0));
        lab.wait("b", "rb", 1, None);
        lab.unlock("a", "ra", at(1));
        assert_eq!(lab.holders(), ["rb"], "granted to a poll that was there");
        lab.run(Op::Abandon { poll: 1 }, &Claim::default(), at(1));
        assert!(
            lab.holders().is_empty(),
            "its client went away before the answer"
        );
    }

    #[test]
    fn withdrawing_leaves_the_queue_and_releases_a_grant() {
        let mut lab = Lab::default();
        lab.lock("a", "ra", at(0));
        lab.wait("b", "rb", 1, Some("id-b"));
        lab.wait("c", "rc", 2, Some("id-c"));
        let withdraw = |id: &str| Claim {
            request_id: Some(id.into()),
            ..Claim::default()
        };
        let d = lab.run(Op::Withdraw, &withdraw("id-b"), at(1));
        assert_eq!(d.verdict, Verdict::Withdrawn);
        assert_eq!(lab.answered(Verdict::Withdrawn), [1], "its poll is told");
        assert_eq!(lab.waiting(), ["rc"]);
        lab.unlock("a", "ra", at(2));
        assert_eq!(lab.holders(), ["rc"]);
        let d = lab.run(Op::Withdraw, &withdraw("id-c"), at(3));
        assert_eq!(
            d.verdict,
            Verdict::Released,
            "a grant that raced the withdrawal"
        );
        assert!(d.lock.is_free());
        let d = lab.run(Op::Withdraw, &withdraw("id-c"), at(3));
        assert_eq!(
            d.verdict,
            Verdict::NotQueued,
            "withdrawing twice does nothing"
        );
    }

    #[test]
    fn an_expired_lease_hands_the_lock_to_the_first_waiter() {
        let mut lab = Lab::default();
        let leased = Claim {
            ttl: Some(Duration::from_secs(60)),
            ..Claim::new("a", "ra")
        };
        lab.run(Op::Lock, &leased, at(0));
        lab.wait("b", "rb", 1, None);
        lab.tick(at(60));
        assert_eq!(lab.holders(), ["rb"]);
        assert_eq!(lab.answered(Verdict::Acquired), [1]);
    }

    #[test]
    fn a_claim_granted_from_the_queue_keeps_the_hold_it_asked_for() {
        let mut lab = Lab::default();
        lab.lock("a", "ra", at(0));
        let for_build = Claim {
            hold: Some(Hold::Build),
            ..Claim::new("b", "rb")
        };
        let op = Op::Wait {
            poll: 1,
            grace: GRACE,
        };
        assert_eq!(lab.run(op, &for_build, at(1)).verdict, Verdict::Queued);
        lab.unlock("a", "ra", at(2));
        let lock = lab.table.lock("env");
        let holder = lock
            .locked_by
            .holder("rb")
            .expect("rb was granted the lock");
        assert_eq!(
            holder.hold,
            Hold::Build,
            "a claim that waited is held as its request asked, not until unlocked"
        );
    }

    #[test]
    fn a_force_release_frees_every_claim_and_the_next_waiter_gets_a_greater_token() {
        let mut lab = Lab::default();
        lab.lock("a", "r1", at(0));
        lab.lock("a", "r2", at(0));
        let released = lab.table.lock("env").token;
        lab.wait("b", "rb", 1, None);
        let by = Claim {
            request_id: Some("force-1".into()),
            ..Claim::new("", "operator")
        };
        let d = lab.run(Op::ForceRelease, &by, at(5));
        assert_eq!(d.verdict, Verdict::Released);
        assert_eq!(
            lab.holders(),
            ["rb"],
            "every claim went; the waiter got the lock"
        );
        assert!(lab.table.lock("env").token > released);
        let again = lab.run(Op::ForceRelease, &by, at(6));
        assert_eq!(
            again.verdict,
            Verdict::Released,
            "a retry is answered as done"
        );
        assert_eq!(lab.holders(), ["rb"], "and releases nothing more");
        lab.unlock("b", "rb", at(7));
        let d = lab.run(Op::ForceRelease, &Claim::new("", "operator"), at(8));
        assert_eq!(d.verdict, Verdict::NotHeld);
    }

    #[test]
    fn a_second_poll_on_one_place_replaces_the_first() {
        let mut lab = Lab::default();
        lab.lock("a", "ra", at(0));
        lab.wait("b", "rb", 1, Some("id"));
        lab.wait("b", "rb", 2, Some("id"));
        assert_eq!(
            lab.answered(Verdict::Queued),
            [1],
            "the first is told where it stands"
        );
        assert_eq!(lab.waiting(), ["rb"]);
        lab.unlock("a", "ra", at(1));
        assert_eq!(lab.answered(Verdict::Acquired), [2]);
    }

    mod model {
        use super::*;
        use proptest::prelude::*;

        proptest! {
            /// Whatever mix of locks, waits, unlocks, ends of polls, withdrawals and time
            /// passing: a free lock has nobody waiting, waiters are granted in the order they
            /// joined, and no grant goes to a poll that was not waiting.
            #[test]
            fn waiters_are_served_in_order_and_a_free_lock_has_no_queue(
                steps in proptest::collection::vec((0..6u8, 0..4usize, 0..3usize, 0..40u64), 1..120)
            ) {
                let keys = ["k1", "k2", "k3"];
                let mut lab = Lab::default();
                let mut now = at(0);
                let mut next_poll = 1;
                // The order in which each poll's place joined the queue (a resumed place keeps
                // the order it joined in).
                let mut order: BTreeMap<u64, usize> = BTreeMap::new();
                let mut places: BTreeMap<String, usize> = BTreeMap::new();
                let mut next_place = 0;
                let mut waiting_polls: Vec<u64> = Vec::new();
                for (op, r, k, pause) in steps {
                    now += Duration::from_secs(pause);
                    let requestor = format!("r{r}");
                    let id = format!("id-{r}");
                    let claim = Claim { request_id: Some(id.clone()), ..Claim::new(keys[k], requestor.clone()) };
                    let before = lab.answers.len();
                    // Settle what is due first (lapses, expiries and the grants they make), so
                    // that whether a place is resumed is judged on the queue the request meets.
                    lab.tick(now);
                    match op {
                        0 => { lab.run(Op::Lock, &Claim::new(keys[k], requestor), now); }
                        1 | 2 => {
                            let poll = next_poll;
                            next_poll += 1;
                            let had_place = lab.table.queue("env")
                                .and_then(|q| q.waiters().find(|w| w.request_id.as_deref() == Some(&id)))
                                .is_some_and(|w| w.lapses_at.is_none_or(|at| at > now));
                            let d = lab.run(Op::Wait { poll, grace: GRACE }, &claim, now);
                            if d.verdict == Verdict::Queued {
                                if !had_place {
                                    places.insert(id.clone(), next_place);
                                    next_place += 1;
                                }
                                order.insert(poll, places[&id]);
                                waiting_polls.push(poll);
                            }
                        }
                        3 => { lab.run(Op::Unlock, &Claim::new(lab.table.lock("env").key.clone(), lab.holders().first().cloned().unwrap_or(requestor)), now); }
                        4 => if let Some(&poll) = waiting_polls.first() {
                            lab.run(Op::StopWaiting { poll }, &Claim::default(), now);
                        },
                        _ => { lab.run(Op::Withdraw, &claim, now); }
                    }
                    for answer in &lab.answers[before..] {
                        waiting_polls.retain(|p| *p != answer.poll);
                        if answer.decision.verdict == Verdict::Acquired {
                            prop_assert!(order.contains_key(&answer.poll), "a grant for poll {} that never waited", answer.poll);
                        }
                    }
                    let lock = lab.table.lock("env");
                    let queue = lab.table.queue("env");
                    prop_assert!(!lock.is_free() || queue.is_none_or(|q| q.waiters().next().is_none()),
                        "a free lock with waiters: {:?} {:?}", lock, queue);
                    prop_assert!(lock.check_invariants().is_ok());
                }
                // Grants to polls come in the order their places joined.
                let granted: Vec<usize> = lab.answered(Verdict::Acquired).iter().map(|p| order[p]).collect();
                let mut sorted = granted.clone();
                sorted.sort_unstable();
                prop_assert_eq!(granted, sorted);
            }
        }
    }
}

//! Whether a contended lock was granted in arrival order, judged from what the clients saw.
//!
//! Every grant answer carries the lock's fencing token, which grows with every new tenure, so
//! sorting the grants by token gives the order the server granted in. Arrival order is judged
//! two ways:
//!
//! - Against the server's own queue ([`check_against_queues`]): a `GET /lock/NAME` shows, from
//!   one snapshot of the table, the token of the current tenure and the waiters in the order
//!   the server took them in. Granted in that order, the grants right after that token go to
//!   exactly those waiters, one each, in that order. This is exact, but covers only the grants
//!   that some snapshot's queue reached; a snapshot taken at least once per queue length of
//!   grants covers them all.
//! - Against the clients' clocks ([`overtaken`]): a grant *overtook* when a client that had
//!   sent its request more than a margin earlier was granted later. Approximate: two requests
//!   sent on different connections a moment apart may reach the server in either order, which
//!   is what the margin allows for. It needs no queue, so it also judges clients that poll.

use std::collections::HashMap;
use std::time::{Duration, Instant};

/// One grant, as the client that got it saw it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Grant {
    pub client: usize,
    /// The lock's fencing token in the grant's answer.
    pub token: u64,
    /// When the client sent its first request for this grant (a poller's first attempt).
    pub asked: Instant,
    /// When the grant's answer arrived.
    pub granted: Instant,
}

/// A lock's queue as one read showed it: the current tenure and who waited, first in line first.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct QueueSnapshot {
    /// The token of the tenure at the time; `None` when the lock was free.
    pub token: Option<u64>,
    pub waiters: Vec<usize>,
}

/// The verdict of [`check_against_queues`].
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct QueueOrder {
    /// Snapshots whose token was one of the grants (the others were of a free lock, or of a
    /// tenure no client reported).
    pub snapshots_used: usize,
    /// Grants whose recipient some snapshot predicted.
    pub grants_checked: usize,
    /// Predictions that a grant contradicted, or that no grant fulfilled.
    pub out_of_order: usize,
    /// The first contradiction, described.
    pub first_mismatch: Option<String>,
}

/// Checks every grant some snapshot predicts: after the grant of a snapshot's token come grants
/// to its waiters, in its order.
pub fn check_against_queues(grants: &[Grant], snapshots: &[QueueSnapshot]) -> QueueOrder {
    let mut by_token = grants.to_vec();
    by_token.sort_by_key(|g| g.token);
    let index: HashMap<u64, usize> = by_token
        .iter()
        .enumerate()
        .map(|(i, g)| (g.token, i))
        .collect();
    let mut checked = vec![false; by_token.len()];
    let mut order = QueueOrder::default();
    for snapshot in snapshots {
        let Some(&at) = snapshot.token.and_then(|t| index.get(&t)) else {
            continue;
        };
        order.snapshots_used += 1;
        for (k, &waiter) in snapshot.waiters.iter().enumerate() {
            let next = at + 1 + k;
            let mismatch = match by_token.get(next) {
                Some(grant) if grant.client == waiter => None,
                Some(grant) => Some(format!(
                    "a read at token {} showed client {waiter} at place {} of the queue, but the grant after {k} more went to client {} (token {})",
                    by_token[at].token,
                    k + 1,
                    grant.client,
                    grant.token
                )),
                None => Some(format!(
                    "a read at token {} showed client {waiter} at place {} of the queue, and no grant followed for it",
                    by_token[at].token,
                    k + 1
                )),
            };
            if let Some(next) = checked.get_mut(next) {
                *next = true;
            }
            if let Some(mismatch) = mismatch {
                order.out_of_order += 1;
                order.first_mismatch.get_or_insert(mismatch);
            }
        }
    }
    order.grants_checked = checked.iter().filter(|&&c| c).count();
    order
}

/// How many grants went to a client while another, whose request went out more than `margin`
/// earlier, was still waiting (it was granted later).
pub fn overtaken(grants: &[Grant], margin: Duration) -> usize {
    let mut by_token = grants.to_vec();
    by_token.sort_by_key(|g| g.token);
    // Walking back from the last grant, `earliest` is when the earliest of the later-granted
    // clients asked.
    let mut earliest: Option<Instant> = None;
    let mut count = 0;
    for grant in by_token.iter().rev() {
        if earliest.is_some_and(|e| e + margin < grant.asked) {
            count += 1;
        }
        earliest = Some(earliest.map_or(grant.asked, |e| e.min(grant.asked)));
    }
    count
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Grants to `clients` in this order, tokens 10, 20, ..., each asked `asked[i]` ms after a
    /// common start.
    fn grants(clients: &[usize], asked: &[u64]) -> Vec<Grant> {
        let start = Instant::now();
        clients
            .iter()
            .zip(asked)
            .enumerate()
            .map(|(i, (&client, &ms))| Grant {
                client,
                token: 10 * (i as u64 + 1),
                asked: start + Duration::from_millis(ms),
                granted: start + Duration::from_millis(100 + i as u64),
            })
            .collect()
    }

    #[test]
    fn grants_that_follow_each_snapshot_are_in_order() {
        let log = grants(&[1, 2, 3, 1, 2], &[0, 1, 2, 3, 4]);
        let snapshots = [
            QueueSnapshot {
                token: Some(10),
                waiters: vec![2, 3],
            },
            QueueSnapshot {
                token: Some(30),
                waiters: vec![1, 2],
            },
            QueueSnapshot {
                token: None,
                waiters: vec![],
            },
        ];
        let order = check_against_queues(&log, &snapshots);
        assert_eq!(
            order,
            QueueOrder {
                snapshots_used: 2,
                grants_checked: 4,
                out_of_order: 0,
                first_mismatch: None
            }
        );
    }

    #[test]
    fn a_waiter_passed_over_is_out_of_order() {
        let log = grants(&[1, 3, 2], &[0, 1, 2]);
        let snapshots = [QueueSnapshot {
            token: Some(10),
            waiters: vec![2, 3],
        }];
        let order = check_against_queues(&log, &snapshots);
        assert_eq!((order.grants_checked, order.out_of_order), (2, 2));
        let first = order.first_mismatch.expect("a mismatch is described");
        assert!(first.contains("client 2 at place 1"), "{first}");
    }

    #[test]
    fn a_waiter_never_granted_is_out_of_order() {
        let log = grants(&[1, 2], &[0, 1]);
        let snapshots = [QueueSnapshot {
            token: Some(20),
            waiters: vec![3],
        }];
        let order = check_against_queues(&log, &snapshots);
        assert_eq!(order.out_of_order, 1, "{order:?}");
    }

    #[test]
    fn a_grant_overtakes_only_a_client_that_asked_more_than_the_margin_earlier() {
        // Client 1 is granted first although client 2 asked 5 ms before it (and client 3 1 ms
        // before it, which a 1 ms margin allows).
        let log = grants(&[1, 2, 3], &[10, 5, 9]);
        assert_eq!(overtaken(&log, Duration::from_millis(1)), 1);
        assert_eq!(overtaken(&log, Duration::from_millis(10)), 0);
        let fifo = grants(&[1, 2, 3], &[1, 2, 3]);
        assert_eq!(overtaken(&fifo, Duration::ZERO), 0);
    }
}

//! Crash under load: SIGKILL at a random moment never loses an answered change.
//!
//! Broken on purpose (tried): answering every other batch without writing it (in `store/mod.rs`,
//! skip `backend.persist` on alternate batches) makes `answered_changes_survive_sigkill_under_load`
//! fail with "lock 'lock-0' went back to revision 50 ... an answered change was lost".

use std::time::Duration;

use locker_testkit::{Client, Locker};

use crate::history::{Rng, Workload, check_mutual_exclusion, check_recovered, seed, server_state};
use crate::long_tests;

#[test]
fn answered_changes_survive_sigkill_under_load() {
    let rounds = if long_tests() { 200 } else { 20 };
    let seed = seed("answered_changes_survive_sigkill_under_load");
    let mut rng = Rng(seed);
    let workload = Workload {
        clients: 32,
        names: (0..8).map(|i| format!("lock-{i}")).collect(),
        keys: 4,
        lock_percent: 55,
    };
    let mut server = Locker::start();
    let client = Client::new();
    let mut before = server_state(&client, &server.base_url());
    let mut history = Vec::new();
    let mut highest = 0;
    for round in 0..rounds {
        let running = workload.start(&server.base_url(), rng.next());
        // Kill at a random moment once the clients are busy.
        running.wait_for_answers(16);
        std::thread::sleep(Duration::from_millis(rng.below(400)));
        running.stop();
        server.kill();
        let records = running.join();
        server.restart();
        let after = server_state(&client, &server.base_url());
        check_recovered(&before, &records, &after);
        let revision = after.values().map(|(r, _)| *r).max().unwrap_or(0);
        assert!(
            revision >= highest,
            "round {round}: the revision went back from {highest} to {revision}"
        );
        highest = revision;
        history.extend(records);
        before = after;
    }
    check_mutual_exclusion(&history);
}

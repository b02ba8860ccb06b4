//! Mutual exclusion: from the recorded history, no moment where two keys hold one lock.
//!
//! Broken on purpose (tried), in `domain/rules.rs`, two ways; each makes `two_keys_never_hold_one_lock`
//! fail with "two keys held it at once":
//! - granting a lock whatever key holds it (`Op::Lock if same_key` made `Op::Lock`): a holder
//!   of another key shows up among the lock's holders;
//! - letting another key take a held lock, dropping the holders: the lock goes from one key to
//!   another in fewer changes than releasing and taking it needs.

use std::time::Duration;

use locker_testkit::{Client, Locker};

use crate::history::{Rng, Workload, check_mutual_exclusion, check_recovered, seed, server_state};
use crate::long_tests;

/// Heavy contention (few locks, every key wanting them), with a crash now and then.
#[test]
fn two_keys_never_hold_one_lock() {
    let rounds = if long_tests() { 30 } else { 3 };
    let mut rng = Rng(seed("two_keys_never_hold_one_lock"));
    let workload = Workload {
        clients: 24,
        names: vec!["shared".into(), "🚀 deploy".into()],
        keys: 4,
        lock_percent: 50,
    };
    let mut server = Locker::start();
    let client = Client::new();
    let mut before = server_state(&client, &server.base_url());
    let mut history = Vec::new();
    for _ in 0..rounds {
        let running = workload.start(&server.base_url(), rng.next());
        running.wait_for_answers(200);
        std::thread::sleep(Duration::from_millis(rng.below(500)));
        running.stop();
        server.kill();
        let records = running.join();
        server.restart();
        history.extend(records.iter().cloned());
        check_mutual_exclusion(&history);
        let after = server_state(&client, &server.base_url());
        check_recovered(&before, &records, &after);
        before = after;
    }
    let changes = history
        .iter()
        .filter(|r| r.answer.as_ref().is_some_and(|a| a.changed))
        .count();
    assert!(
        changes > 100,
        "only {changes} changes were answered; the test proves little"
    );
}

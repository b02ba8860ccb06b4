//! Many clients at once: mutual exclusion holds and the file matches the answers.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};

use locker_testkit::{Client, Locker};
use serde_json::Value;

use crate::body;

/// One answered change: the lock's state right after it, as the server reported it.
#[derive(Debug, Clone)]
struct Change {
    name: String,
    revision: u64,
    lock: Value,
}

#[test]
fn sixty_four_clients_never_see_two_keys_hold_one_lock() {
    let mut server = Locker::start();
    let names = ["a", "b", "c", "d"];
    let history = Arc::new(Mutex::new(Vec::<Change>::new()));
    let threads: Vec<_> = (0..64)
        .map(|i| {
            let url = server.base_url();
            let history = history.clone();
            std::thread::spawn(move || {
                let client = Client::new();
                let key = format!("key-{}", i % 8);
                let requestor = format!("client-{i}");
                for round in 0..25 {
                    let name = names[(i + round) % names.len()];
                    let lock_url = format!("{url}/lock/{name}");
                    let (status, resp) = client.put(&lock_url, &body(&key, &requestor));
                    assert!(status == 200 || status == 423, "{status} {resp}");
                    if status == 200 {
                        let (status, unlock) = client.delete(&lock_url, &body(&key, &requestor));
                        assert_eq!(status, 200, "{unlock}");
                        let mut h = history.lock().unwrap();
                        for r in [resp, unlock] {
                            h.push(Change {
                                name: name.to_string(),
                                revision: r["lock"]["revision"].as_u64().unwrap(),
                                lock: r["lock"].clone(),
                            });
                        }
                    }
                }
            })
        })
        .collect();
    for t in threads {
        t.join().expect("client thread");
    }
    let mut history = history.lock().unwrap().clone();
    history.sort_by_key(|c| c.revision);
    let revisions: Vec<u64> = history.iter().map(|c| c.revision).collect();
    let expected: Vec<u64> = (1..=history.len() as u64).collect();
    assert_eq!(
        revisions, expected,
        "every change answered once, in one total order"
    );

    // Replay in revision order: each change must follow from the one before it on that lock.
    let mut state: BTreeMap<String, (String, BTreeMap<String, u64>)> = BTreeMap::new();
    for change in &history {
        let (key, holders) = state.entry(change.name.clone()).or_default();
        let new_key = change.lock["key"].as_str().unwrap().to_string();
        let new_holders: BTreeMap<String, u64> = change.lock["locked_by"]
            .as_object()
            .unwrap()
            .iter()
            .map(|(r, c)| (r.clone(), c.as_u64().unwrap()))
            .collect();
        let total = |h: &BTreeMap<String, u64>| h.values().sum::<u64>();
        if total(&new_holders) > total(holders) {
            assert!(
                holders.is_empty() || *key == new_key,
                "revision {}: {} granted to key {new_key} while {key} held it ({holders:?})",
                change.revision,
                change.name
            );
        }
        assert_eq!(
            total(&new_holders).abs_diff(total(holders)),
            1,
            "revision {} changes exactly one claim",
            change.revision
        );
        *key = new_key;
        *holders = new_holders;
    }
    assert!(
        history.len() >= 64,
        "enough grants to mean something: {}",
        history.len()
    );

    let client = Client::new();
    let (_, before) = client.get(&server.url("/locks"));
    for (name, (_, holders)) in &state {
        assert!(holders.is_empty(), "{name} was left held: {holders:?}");
        assert_eq!(before[name]["key"], "");
    }
    server.restart();
    let (_, after) = client.get(&server.url("/locks"));
    assert_eq!(before, after, "the file matches the server's answers");
}

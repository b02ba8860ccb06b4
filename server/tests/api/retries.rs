//! Retried requests (`Idempotency-Key`): a retry after a lost answer claims and releases once,
//! across crashes too; malformed ids are refused.

use locker_testkit::{Client, Locker};
use serde_json::Value;

use crate::{body, holders};

fn with_id(id: &str) -> Client {
    Client::new().header("Idempotency-Key", id)
}

fn count(lock: &Value, requestor: &str) -> u64 {
    holders(lock)
        .into_iter()
        .find(|(r, _)| r == requestor)
        .map_or(0, |(_, c)| c)
}

#[test]
fn a_retry_with_the_same_idempotency_key_claims_and_releases_once() {
    let server = Locker::start();
    let url = server.url("/lock/env");
    let (status, first) = with_id("lock-1").put(&url, &body("k", "job"));
    assert_eq!(status, 200, "{first}");
    let (status, retry) = with_id("lock-1").put(&url, &body("k", "job"));
    assert_eq!(status, 200, "a retry is answered as done: {retry}");
    assert_eq!(retry["lock"], first["lock"], "and changes nothing");
    assert_eq!(count(&retry["lock"], "job"), 1);
    assert!(
        retry["response"].as_str().unwrap().contains("acquired"),
        "{retry}"
    );

    let (_, second) = with_id("lock-2").put(&url, &body("k", "job"));
    assert_eq!(count(&second["lock"], "job"), 2, "a new id claims again");

    let (status, released) = with_id("unlock-1").delete(&url, &body("k", "job"));
    assert_eq!(status, 200, "{released}");
    let (status, retry) = with_id("unlock-1").delete(&url, &body("k", "job"));
    assert_eq!(status, 200, "{retry}");
    assert_eq!(
        count(&retry["lock"], "job"),
        1,
        "the retry released nothing"
    );
    assert_eq!(retry["lock"]["revision"], released["lock"]["revision"]);

    let (_, lock) = Client::new().get(&url);
    assert!(
        lock.get("requests").is_none(),
        "request ids are not part of the API's lock: {lock}"
    );
}

#[test]
fn idempotency_keys_survive_a_crash_and_a_clean_restart() {
    let mut server = Locker::start();
    let url = server.url("/lock/env");
    assert_eq!(with_id("lock-1").put(&url, &body("k", "job")).0, 200);

    server.kill();
    server.restart();
    let (status, retry) = with_id("lock-1").put(&url, &body("k", "job"));
    assert_eq!(status, 200, "{retry}");
    assert_eq!(
        count(&retry["lock"], "job"),
        1,
        "remembered from the journal"
    );

    assert_eq!(server.stop().code(), Some(0));
    server.restart();
    let (_, retry) = with_id("lock-1").put(&url, &body("k", "job"));
    assert_eq!(
        count(&retry["lock"], "job"),
        1,
        "remembered from the state file"
    );
}

#[test]
fn malformed_idempotency_keys_are_refused_with_the_reason() {
    let server = Locker::start();
    let url = server.url("/lock/env");
    let long = "x".repeat(256);
    for (id, expected) in [
        ("has space", "visible ASCII"),
        (long.as_str(), "1 to 255 bytes"),
    ] {
        let (status, answer) = with_id(id).put(&url, &body("k", "job"));
        assert_eq!(status, 400, "{id:?}: {answer}");
        let error = answer["error"].as_str().unwrap();
        assert!(
            error.contains("Idempotency-Key") && error.contains(expected),
            "{id:?}: {error}"
        );
    }
    let (status, answer) = with_id("a")
        .header("Idempotency-Key", "b")
        .put(&url, &body("k", "job"));
    assert_eq!(status, 400, "{answer}");
    assert!(answer["error"].as_str().unwrap().contains("more than once"));
    let (_, lock) = Client::new().get(&url);
    assert!(
        holders(&lock).is_empty(),
        "refused requests changed nothing"
    );
}

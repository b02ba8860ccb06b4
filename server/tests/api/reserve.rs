//! `POST /lock/{name}/reserve`: an operator takes a free lock by hand with a note and a ttl;
//! an ordinary lock that shows, expires and is released like any other, recorded as such.

use locker_testkit::{Client, Locker, Options};
use serde_json::json;

use crate::body;

/// A reservation is a lock with key `reserved-by:BY`, its owner says who and why, its lease
/// ends at the ttl, and the history records it as `reserve` with the note.
#[test]
fn a_reservation_is_an_ordinary_lock_with_a_note() {
    let server = Locker::start();
    let client = Client::new();
    let (status, answer) = client.post(
        &server.url("/lock/db/reserve"),
        r#"{"by": "alice", "note": "migrating the schema", "ttl": "1s"}"#,
    );
    assert_eq!(status, 200, "{answer}");
    let lock = &answer["lock"];
    assert_eq!(lock["key"], "reserved-by:alice");
    let holder = &lock["holders"][0];
    assert_eq!(holder["requestor"], "alice");
    assert_eq!(
        holder["owner"],
        json!({"reserved_by": "alice", "note": "migrating the schema"})
    );
    assert!(holder["expires_at"].is_string(), "{holder}");
    let (status, answer) = client.put(&server.url("/lock/db"), &body("deploy", "job"));
    assert_eq!(status, 423, "held like any lock: {answer}");
    let (status, answer) = client.post(
        &server.url("/lock/db/reserve"),
        r#"{"by": "alice", "note": "again", "ttl": "1s"}"#,
    );
    assert_eq!(
        status, 423,
        "a reservation takes a free lock only: {answer}"
    );
    let (_, entries) = client.get(&server.url("/lock/db/history"));
    assert_eq!(entries[0]["op"], "reserve");
    assert_eq!(entries[0]["reason"], "migrating the schema");
    assert_eq!(entries[0]["requestor"], "alice");

    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
    // A read hides a lapsed lease at once; the history has the expiry once it is committed
    // (within the writer's one-second check).
    while client.get(&server.url("/lock/db/history?limit=1")).1[0]["op"] != "expire" {
        assert!(
            std::time::Instant::now() < deadline,
            "the reservation never expired"
        );
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
    assert_eq!(client.get(&server.url("/lock/db")).1["key"], "");
}

#[test]
fn a_reservation_needs_a_free_lock_a_note_and_a_ttl() {
    let server = Locker::start();
    let client = Client::new();
    client.put(&server.url("/lock/db"), &body("deploy", "job"));
    let url = server.url("/lock/db/reserve");
    let (status, answer) = client.post(&url, r#"{"by": "alice", "note": "n", "ttl": "1h"}"#);
    assert_eq!(status, 423, "{answer}");
    for (bad, named) in [
        (r#"{"by": "alice", "ttl": "1h"}"#, "note"),
        (r#"{"by": "alice", "note": "n"}"#, "ttl"),
        (r#"{"by": "alice", "note": " ", "ttl": "1h"}"#, "note"),
        (r#"{"by": "alice", "note": "n", "ttl": "soon"}"#, "ttl"),
        (r#"{"by": null, "note": "n", "ttl": "1h"}"#, "by"),
        (
            r#"{"by": "alice", "note": "n", "ttl": "400d"}"#,
            "LOCKER_MAX_TTL",
        ),
    ] {
        let (status, answer) = client.post(&server.url("/lock/free/reserve"), bad);
        assert_eq!(status, 400, "{bad}: {answer}");
        let error = answer["error"].as_str().unwrap();
        assert!(error.contains(named), "{bad}: {error}");
    }
}

/// With `ADMIN_USER` set, a reservation needs the admin's credentials, like a force-release.
#[test]
fn a_reservation_needs_the_admin_credentials_when_they_are_set() {
    let server = Locker::start_with(
        Options::default()
            .env("AUTH_USER", "ci")
            .env("AUTH_PASS", "ci-pass")
            .env("ADMIN_USER", "ops")
            .env("ADMIN_PASS", "ops-pass"),
    );
    let why = r#"{"note": "n", "ttl": "1h"}"#;
    let url = server.url("/lock/db/reserve");
    let (status, _) = Client::new().basic_auth("ci", "ci-pass").post(&url, why);
    assert_eq!(status, 403);
    let (status, answer) = Client::new().basic_auth("ops", "ops-pass").post(&url, why);
    assert_eq!(status, 200, "{answer}");
    assert_eq!(
        answer["lock"]["key"], "reserved-by:ops",
        "by defaults to the user"
    );
}

//! `POST /lock/{name}/force-release`: an operator frees a stuck lock, saying why; with
//! `ADMIN_USER` and `ADMIN_PASS` set, only their credentials may.

use locker_testkit::{Client, Locker, Options};
use serde_json::json;

use crate::body;

/// Every claim is released whoever holds it, the answer is the freed lock, the next holder's
/// token is greater than the one released, and a waiter in the queue gets the lock at once.
///
/// Broken on purpose (tried): with `force_release` releasing only the first holder, the
/// second holder's claim is still there and the waiter is not served.
#[test]
fn force_release_frees_every_claim_and_serves_the_queue() {
    let server = Locker::start();
    let client = Client::new();
    let url = server.url("/lock/stuck");
    client.put(&url, &body("k", "job-1"));
    let (_, held) = client.put(&url, &body("k", "job-2"));
    let released = held["lock"]["token"].as_u64().unwrap();
    let waiter = {
        let url = server.url("/lock/stuck?wait=60s");
        std::thread::spawn(move || Client::new().put(&url, &body("next", "job-3")))
    };
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
    while client.get(&url).1["queue"] == json!([]) {
        assert!(
            std::time::Instant::now() < deadline,
            "the waiter never queued"
        );
        std::thread::sleep(std::time::Duration::from_millis(10));
    }
    let (status, answer) = client.post(
        &server.url("/lock/stuck/force-release"),
        r#"{"reason": "job-1's worker died", "by": "alice"}"#,
    );
    assert_eq!(status, 200, "{answer}");
    assert_eq!(
        answer["response"],
        "Lock for 'stuck' force-released by 'alice': job-1's worker died"
    );
    let (status, granted) = waiter.join().unwrap();
    assert_eq!(status, 200, "{granted}");
    assert_eq!(granted["lock"]["locked_by"], json!({"job-3": 1}));
    assert!(granted["lock"]["token"].as_u64().unwrap() > released);
    // The log line is written after the answer is sent: wait for it.
    server.wait_for_log("lock force-released");

    client.delete(&url, &body("next", "job-3"));
    let (status, answer) = client.post(
        &server.url("/lock/stuck/force-release"),
        r#"{"reason": "again"}"#,
    );
    assert_eq!(status, 200, "a free lock: nothing to do: {answer}");
    assert!(answer["response"].as_str().unwrap().contains("not held"));
}

#[test]
fn a_force_release_must_say_why() {
    let server = Locker::start();
    let client = Client::new();
    client.put(&server.url("/lock/env"), &body("k", "r"));
    for bad in [
        r#"{}"#,
        r#"{"reason": "  "}"#,
        r#"{"reason": "x", "extra": 1}"#,
        "nope",
    ] {
        let (status, answer) = client.post(&server.url("/lock/env/force-release"), bad);
        assert_eq!(status, 400, "{bad}: {answer}");
        assert!(
            answer["error"].as_str().unwrap().contains("reason")
                || answer["error"].as_str().unwrap().contains("extra"),
            "{answer}"
        );
    }
    assert_eq!(
        client.get(&server.url("/lock/env")).1["key"],
        "k",
        "nothing was released"
    );
}

/// With `ADMIN_USER`/`ADMIN_PASS`, the API's credentials may not force-release (403) and the
/// admin's may (and may do everything else); without them, the API's credentials may.
///
/// Broken on purpose (tried): with `Role::Admin` given to every authenticated request, the
/// API's credentials force-release with 200.
#[test]
fn force_release_needs_the_admin_credentials_when_they_are_set() {
    let server = Locker::start_with(
        Options::default()
            .env("AUTH_USER", "ci")
            .env("AUTH_PASS", "ci-pass")
            .env("ADMIN_USER", "ops")
            .env("ADMIN_PASS", "ops-pass"),
    );
    let ci = Client::new().basic_auth("ci", "ci-pass");
    let ops = Client::new().basic_auth("ops", "ops-pass");
    let force = server.url("/lock/env/force-release");
    let why = r#"{"reason": "stuck"}"#;
    assert_eq!(ci.put(&server.url("/lock/env"), &body("k", "r")).0, 200);
    let (status, answer) = ci.post(&force, why);
    assert_eq!(status, 403, "{answer}");
    assert!(
        answer["error"].as_str().unwrap().contains("ADMIN_USER"),
        "{answer}"
    );
    assert_eq!(Client::new().post(&force, why).0, 401);
    assert_eq!(
        ops.get(&server.url("/locks")).0,
        200,
        "the admin may read too"
    );
    let (status, answer) = ops.post(&force, why);
    assert_eq!(status, 200, "{answer}");
    assert!(
        answer["response"].as_str().unwrap().contains("by 'ops'"),
        "{answer}"
    );

    let open = Locker::start_with(
        Options::default()
            .env("AUTH_USER", "ci")
            .env("AUTH_PASS", "ci-pass"),
    );
    let ci = Client::new().basic_auth("ci", "ci-pass");
    ci.put(&open.url("/lock/env"), &body("k", "r"));
    let (status, answer) = ci.post(&open.url("/lock/env/force-release"), why);
    assert_eq!(
        status, 200,
        "without ADMIN_*, the API's credentials may: {answer}"
    );
}

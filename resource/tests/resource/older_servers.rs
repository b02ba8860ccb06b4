//! Servers without leases: this server before them, which refuses unknown body fields, and the
//! original server, which ignores them and whose locks have no `token` or `holders`. Neither
//! keeps a queue: both ignore `?wait=` and answer 423 at once, without a `queue`. The
//! resource must keep working against both. Each is played by a stand-in that answers as that
//! server did and records what it was sent.
//!
//! Broken on purpose (tried): with `refuses_owner` in `resource/src/put.rs` always false,
//! `a_server_that_refuses_owner_still_gives_the_lock` fails: the 400 about `owner` fails the lock.
//! With a 423 without `queue` taken for a place in the queue (`Outcome::Queued` with a made-up
//! place), `a_server_without_a_queue_is_asked_again_after_back_off` fails: no back-off line.

use std::sync::atomic::{AtomicUsize, Ordering};

use serde_json::{Value, json};

use crate::helpers::*;
use crate::stand_in::{Received, StandIn};

/// The lock as a server without leases describes it after `body`'s requestor took it.
fn lock_without_leases(body: &Value) -> Value {
    json!({"key": body["key"], "locked_by": {body["locked_by"].as_str().unwrap_or("?"): 1},
           "revision": 1, "locked_at": "2024-01-01T00:00:00.000Z"})
}

/// This server before leases: a body with a field it does not know is a 400.
fn refuses_unknown_fields(request: &Received) -> (u16, Value) {
    let known = ["key", "locked_by", "lock_by", "requestor"];
    let fields = request.body.as_object().cloned().unwrap_or_default();
    let unknown: Vec<&str> = fields
        .keys()
        .map(String::as_str)
        .filter(|field| !known.contains(field))
        .collect();
    if !unknown.is_empty() {
        let error = format!(
            "unknown field(s) in request body: {} (expected: {})",
            unknown.join(", "),
            known.join(", ")
        );
        return (400, json!({"error": error}));
    }
    (
        200,
        json!({"response": "locked", "lock": lock_without_leases(&request.body)}),
    )
}

/// The original server: unknown fields are ignored, there is no renew, GET shows a free lock.
fn ignores_unknown_fields(request: &Received) -> (u16, Value) {
    match request.method.as_str() {
        "PUT" => (
            200,
            json!({"response": "locked", "lock": lock_without_leases(&request.body)}),
        ),
        "GET" => (
            200,
            json!({"key": "", "locked_by": {}, "revision": 0, "locked_at": null}),
        ),
        _ => (405, json!({"error": "method not allowed on this path"})),
    }
}

/// The original server while `holder` holds the lock for the first `refusals` lock requests:
/// 423 at once, whatever the `wait`, and no `queue` in the answer.
fn held_without_a_queue(refusals: usize) -> impl Fn(&Received) -> (u16, Value) + Send + Sync {
    let locks = AtomicUsize::new(0);
    move |request| match request.method.as_str() {
        "PUT" if locks.fetch_add(1, Ordering::SeqCst) < refusals => (
            423,
            json!({"error": "Lock for 'env' is held by 'holder' using key 'h', not 'k'",
                   "lock": {"key": "h", "locked_by": {"holder": 1}, "revision": 1,
                            "locked_at": "2024-01-01T00:00:00.000Z"}}),
        ),
        "PUT" => (
            200,
            json!({"response": "locked", "lock": lock_without_leases(&request.body)}),
        ),
        _ => (405, json!({"error": "method not allowed on this path"})),
    }
}

#[test]
fn a_server_without_a_queue_is_asked_again_after_back_off() {
    let server = StandIn::start(held_without_a_queue(3));
    let input = put(&server.source(), json!({"lock_op": "lock", "key": "k"}));
    let run = run(Bin::Out, &input, &["/tmp"]);
    let output = run.json();
    assert_eq!(metadata(&output, "holders"), r#"{"k":1}"#);

    let received = server.received();
    let methods: Vec<&str> = received.iter().map(|r| r.method.as_str()).collect();
    assert_eq!(
        methods, ["PUT"; 4],
        "three refusals, then the lock; nothing to withdraw"
    );
    assert!(
        received.iter().all(|r| r.wait().is_some()),
        "every lock asks to wait (an older server ignores it): {received:?}"
    );
    assert!(
        received
            .iter()
            .all(|r| r.idempotency_key == received[0].idempotency_key),
        "one request id for the whole wait: {received:?}"
    );
    assert_eq!(
        run.stderr.matches("the server keeps no queue").count(),
        1,
        "the fallback is noted once:\n{}",
        run.stderr
    );
    assert_eq!(
        run.stderr.matches("before the next").count(),
        3,
        "each refusal is followed by a back-off:\n{}",
        run.stderr
    );
    assert!(
        run.stderr
            .contains("lock 'env' is held by 'holder' (1 claim) with key 'h'"),
        "{}",
        run.stderr
    );
}

const BUILD: [(&str, &str); 5] = [
    ("BUILD_TEAM_NAME", "main"),
    ("BUILD_PIPELINE_NAME", "prod"),
    ("BUILD_JOB_NAME", "deploy"),
    ("BUILD_NAME", "42"),
    ("ATC_EXTERNAL_URL", "https://ci.example.com"),
];

#[test]
fn a_server_that_refuses_owner_still_gives_the_lock() {
    let server = StandIn::start(refuses_unknown_fields);
    let input = put(&server.source(), json!({"lock_op": "lock", "key": "k"}));
    let run = run_with_env(Bin::Out, &input, &["/tmp"], &BUILD);
    let output = run.json();
    assert_eq!(metadata(&output, "holders"), r#"{"k":1}"#);
    assert!(
        run.stderr.contains("asking again without it"),
        "the log should say why the lock was asked for twice:\n{}",
        run.stderr
    );
    let received = server.received();
    assert_eq!(
        received.len(),
        2,
        "expected the lock, then the lock again without owner: {received:?}"
    );
    assert!(received[0].body.get("owner").is_some(), "{received:?}");
    assert_eq!(received[1].body, json!({"key": "k", "locked_by": "k"}));
    assert_eq!(
        received[0].idempotency_key, received[1].idempotency_key,
        "both requests are one lock and carry one request id"
    );
}

#[test]
fn a_server_that_refuses_ttl_fails_the_lock_with_its_message() {
    let server = StandIn::start(refuses_unknown_fields);
    let input = put(
        &server.source(),
        json!({"lock_op": "lock", "key": "k", "ttl": "30m"}),
    );
    let error = run(Bin::Out, &input, &["/tmp"]).error();
    assert!(
        error.contains("answered 400: unknown field(s) in request body: ttl"),
        "a lease the server cannot give must not be dropped silently: {error}"
    );
}

#[test]
fn the_original_server_ignores_ttl_and_the_log_says_so() {
    let server = StandIn::start(ignores_unknown_fields);
    let input = put(
        &server.source(),
        json!({"lock_op": "lock", "key": "k", "ttl": "30m"}),
    );
    let run = run_with_env(Bin::Out, &input, &["/tmp"], &BUILD);
    let output = run.json();
    assert_protocol_output(&output);
    assert!(
        run.stderr
            .contains("the ttl of 30m was not applied: the lock is held until unlocked"),
        "stderr:\n{}",
        run.stderr
    );
    let fields: Vec<&str> = output["metadata"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|field| field["name"].as_str())
        .collect();
    assert!(
        !fields.contains(&"token") && !fields.contains(&"expires_at"),
        "no token or expires_at when the server gives none: {fields:?}"
    );
    let received = server.received();
    assert_eq!(received[0].body["ttl"], json!(1800));
    assert_eq!(received[0].body["owner"]["job"], json!("deploy"));
}

#[test]
fn renew_on_a_server_without_leases_says_to_upgrade_it() {
    let server = StandIn::start(ignores_unknown_fields);
    let input = put(
        &server.source(),
        json!({"lock_op": "renew", "key": "k", "ttl": "30m"}),
    );
    let error = run(Bin::Out, &input, &["/tmp"]).error();
    assert!(
        error.starts_with("error: could not renew 'env': ")
            && error.contains("answered 405")
            && error.contains("this server has no leases: upgrade it"),
        "{error}"
    );
    let received = server.received();
    assert_eq!(received.len(), 1, "a 405 is not retried: {received:?}");
    assert_eq!(received[0].method, "POST");
    assert_eq!(received[0].path, "/lock/env/renew");
}

#[test]
fn in_writes_empty_lease_files_for_a_server_without_leases() {
    let server = StandIn::start(ignores_unknown_fields);
    let dir = tempfile::tempdir().unwrap();
    let input = json!({"source": server.source(), "version": {"revision": "0"}});
    run(Bin::In, &input, &[dir.path().to_str().unwrap()]).json();
    let file = |name: &str| std::fs::read_to_string(dir.path().join(name)).unwrap();
    assert_eq!(file("token"), "", "no token from a server without leases");
    assert_eq!(file("expires_at"), "");
    assert_eq!(file("holders"), "[]");
}

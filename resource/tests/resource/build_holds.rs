//! `hold: build`: a lock the server releases once the build that took it has finished. The
//! real server is started watching a Concourse at `http://127.0.0.1:1`, which never answers:
//! the server releases nothing while it cannot ask, so the claims stay for the tests to read.
//! Older servers are played by stand-ins that answer as they did and record what they were sent.
//!
//! Broken on purpose (tried), each making the named tests fail:
//! - `Claim::body` leaving `hold` out: `a_lock_held_for_the_build_shows_it_in_the_holder` and
//!   five more (the server holds the claim until unlocked, so the put gives it back and fails,
//!   or the server's refusal is never provoked).
//! - `OutParams::hold` returning the source's hold for `unlock` and `renew` too:
//!   `a_source_hold_is_sent_by_lock_only` (the server refuses a renew that says `hold: build`
//!   without an owner).
//! - `check_build_known` not called: `a_build_hold_outside_a_build_fails_before_sending` (the
//!   stand-in is sent a lock).
//! - The `HoldNotWatched` arm for a 400 removed:
//!   `a_build_hold_from_another_concourse_fails_naming_it` and
//!   `a_build_hold_on_a_server_without_concourse_fails_with_its_reason` (the error no longer
//!   says the lock was to be held for the build).
//! - A `build` hold the server refuses as unknown dropped like an `until_unlocked` one:
//!   `a_server_before_holds_fails_a_build_hold_and_drops_an_until_unlocked_one` (the lock is
//!   asked again without it and taken, then given back).
//! - The check of the answer's `hold` removed:
//!   `the_original_server_ignoring_a_build_hold_gets_the_claim_back` (the put succeeds).
//! - Before the server's queue kept a waiter's hold (`Waiter::hold`),
//!   `a_build_hold_waits_in_the_queue_and_is_held_for_the_build_once_granted` failed: the claim
//!   granted from the queue was held until unlocked, and the put gave it back.

use std::time::Duration;

use serde_json::{Value, json};

use crate::helpers::*;
use crate::stand_in::{Received, StandIn};

/// The Concourse the server watches; nothing listens on port 1.
const CONCOURSE: &str = "http://127.0.0.1:1";

/// A job's build on that Concourse.
const BUILD: [(&str, &str); 6] = [
    ("BUILD_TEAM_NAME", "main"),
    ("BUILD_PIPELINE_NAME", "prod"),
    ("BUILD_JOB_NAME", "deploy"),
    ("BUILD_NAME", "42"),
    ("BUILD_ID", "1234"),
    ("ATC_EXTERNAL_URL", CONCOURSE),
];

/// The build variables with `name` set to `value`, or left out when `value` is `None`.
fn build_with(name: &str, value: Option<&'static str>) -> Vec<(&'static str, &'static str)> {
    let mut env: Vec<_> = BUILD.iter().copied().filter(|(n, _)| *n != name).collect();
    if let Some(value) = value {
        let name = BUILD.iter().find(|(n, _)| *n == name).unwrap().0;
        env.push((name, value));
    }
    env
}

fn watching_server() -> LockerServer {
    LockerServer::start_with(&[("CONCOURSE_URL", CONCOURSE), ("CONCOURSE_TOKEN", "x")])
}

fn out(source: &Value, params: Value, env: &[(&str, &str)]) -> Run {
    run_with_env(Bin::Out, &put(source, params), &["/tmp"], env)
}

/// The `hold` the server shows for `requestor`'s claims, if it holds any.
fn hold_of(server: &LockerServer, source: &Value, requestor: &str) -> Option<String> {
    server
        .lock_state(source)
        .holder(requestor)
        .and_then(|holder| holder.hold.clone())
}

#[test]
fn a_lock_held_for_the_build_shows_it_in_the_holder() {
    let server = watching_server();
    let source = server.source("env");
    let locked = out(
        &source,
        json!({"lock_op": "lock", "key": "k", "locked_by": "deploy", "hold": "build"}),
        &BUILD,
    );
    let output = locked.json();
    assert_eq!(
        hold_of(&server, &source, "deploy").as_deref(),
        Some("build"),
        "the server should hold the claim for the build: {}",
        server.lock_state(&source).json
    );
    assert_eq!(
        metadata(&output, "hold"),
        "build (released by the server when build 1234 finishes)"
    );
    assert!(
        locked.stderr.contains(
            "taking lock 'env' with key 'k' as 'deploy' for main/prod/deploy #42 \
             (http://127.0.0.1:1/teams/main/pipelines/prod/jobs/deploy/builds/42), held for the \
             build (released by the server when build 1234 finishes)"
        ),
        "the log should say the claim is held for the build:\n{}",
        locked.stderr
    );

    let plain = out(
        &source,
        json!({"lock_op": "lock", "key": "k", "locked_by": "other"}),
        &BUILD,
    )
    .json();
    assert_eq!(
        metadata(&plain, "hold"),
        "until_unlocked",
        "a lock without hold is held until unlocked"
    );
    assert_eq!(
        hold_of(&server, &source, "other").as_deref(),
        Some("until_unlocked")
    );
}

#[test]
fn a_source_hold_is_sent_by_lock_only() {
    let server = watching_server();
    let mut source = server.source("env");
    source["hold"] = json!("build");
    let params = |op: &str| json!({"lock_op": op, "key": "k", "locked_by": "r", "ttl": "1h"});
    out(&source, params("lock"), &BUILD).json();
    assert_eq!(hold_of(&server, &source, "r").as_deref(), Some("build"));
    let renewed = out(&source, params("renew"), &BUILD).json();
    assert_eq!(
        metadata(&renewed, "hold"),
        "build (released by the server when build 1234 finishes)",
        "a renewed claim keeps the hold it was locked with"
    );
    out(
        &source,
        json!({"lock_op": "unlock", "key": "k", "locked_by": "r"}),
        &BUILD,
    )
    .json();
    assert!(server.lock_state(&source).is_free());
}

#[test]
fn a_build_hold_waits_in_the_queue_and_is_held_for_the_build_once_granted() {
    let server = watching_server();
    let source = server.source("env");
    lock(&source, "first", "first");
    let mut waiting = Running::start(
        Bin::Out,
        &put(
            &source,
            json!({"lock_op": "lock", "key": "k", "locked_by": "deploy", "hold": "build"}),
        ),
        &["/tmp"],
        &BUILD,
    );
    waiting.wait_for_log(
        "waiting in its queue at position 1",
        Duration::from_secs(20),
    );
    unlock(&source, "first", "first");
    waiting.finish(Duration::from_secs(20)).json();
    assert_eq!(
        hold_of(&server, &source, "deploy").as_deref(),
        Some("build"),
        "the claim granted from the queue is held for the build"
    );
}

#[test]
fn a_build_hold_from_another_concourse_fails_naming_it() {
    let server = watching_server();
    let source = server.source("env");
    let env = build_with("ATC_EXTERNAL_URL", Some("https://other.example.com"));
    let error = out(
        &source,
        json!({"lock_op": "lock", "key": "k", "hold": "build"}),
        &env,
    )
    .error();
    assert!(
        error.starts_with("error: could not lock 'env' held for its build (hold: build): ")
            && error.contains(
                "field 'owner.atc_url' (https://other.example.com) is not the Concourse this \
                 server watches (http://127.0.0.1:1)"
            ),
        "expected the server's reason: {error}"
    );
    assert!(server.lock_state(&source).is_free(), "nothing was claimed");
}

#[test]
fn a_build_hold_on_a_server_without_concourse_fails_with_its_reason() {
    let server = LockerServer::start();
    let source = server.source("env");
    let error = out(
        &source,
        json!({"lock_op": "lock", "key": "k", "hold": "build"}),
        &BUILD,
    )
    .error();
    assert!(
        error.starts_with("error: could not lock 'env' held for its build (hold: build): ")
            && error.contains("CONCOURSE_URL is not set"),
        "expected the server's reason: {error}"
    );
    assert!(server.lock_state(&source).is_free(), "nothing was claimed");
}

#[test]
fn a_build_hold_outside_a_build_fails_before_sending() {
    // Should a request come, its 400 ends the put at once.
    let server = StandIn::start(|_| (400, json!({"error": "no request was expected"})));
    let mut source = server.source();
    source["hold"] = json!("build");
    let params = json!({"lock_op": "lock", "key": "k", "timeout": "10s"});
    let error = out(&source, params.clone(), &build_with("BUILD_ID", None)).error();
    assert_eq!(
        error,
        "error: source.hold is build, but this put has no BUILD_ID (Concourse's build \
         variables), so the server could not ask Concourse when the build finishes: run the put \
         as a step of a Concourse build, or hold until_unlocked"
    );
    let error = out(&source, params, &[]).error();
    assert!(
        error.contains("has no BUILD_ID and ATC_EXTERNAL_URL"),
        "{error}"
    );
    assert!(
        server.received().is_empty(),
        "nothing may be sent: {:?}",
        server.received()
    );
}

/// The lock with leases as a server describes it after `body`'s requestor took it, its holder
/// without `hold`.
fn lock_before_holds(body: &Value) -> Value {
    let requestor = body["locked_by"].as_str().unwrap_or("?");
    json!({"key": body["key"], "locked_by": {requestor: 1}, "revision": 1,
           "locked_at": "2026-12-02T09:00:00.000Z", "token": 1,
           "holders": [{"requestor": requestor, "count": 1,
                        "since": "2026-12-02T09:00:00.000Z", "expires_at": null,
                        "owner": body["owner"]}]})
}

/// This server with leases and queues, before holds: a body with a field it does not know is
/// a 400.
fn refuses_hold(request: &Received) -> (u16, Value) {
    let known = ["key", "locked_by", "lock_by", "requestor", "ttl", "owner"];
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
        json!({"response": "locked", "lock": lock_before_holds(&request.body)}),
    )
}

#[test]
fn a_server_before_holds_fails_a_build_hold_and_drops_an_until_unlocked_one() {
    let server = StandIn::start(refuses_hold);
    let error = out(
        &server.source(),
        json!({"lock_op": "lock", "key": "k", "hold": "build"}),
        &BUILD,
    )
    .error();
    assert!(
        error.starts_with("error: could not lock 'env' held for its build (hold: build): ")
            && error.contains("the server does not know hold")
            && error.contains("unknown field(s) in request body: hold"),
        "a hold for the build that the server cannot keep must fail the put: {error}"
    );
    let received = server.received();
    assert_eq!(
        received.len(),
        1,
        "the lock is not asked again without the hold: {received:?}"
    );
    assert_eq!(received[0].body["hold"], "build");

    let server = StandIn::start(refuses_hold);
    let run = out(
        &server.source(),
        json!({"lock_op": "lock", "key": "k", "hold": "until_unlocked"}),
        &BUILD,
    );
    run.json();
    assert!(
        run.stderr
            .contains("the server does not know hold, it predates holds for builds"),
        "the log should say why the lock was asked for twice:\n{}",
        run.stderr
    );
    let received = server.received();
    assert_eq!(received.len(), 2, "{received:?}");
    assert_eq!(received[0].body["hold"], "until_unlocked");
    assert!(
        received[1].body.get("hold").is_none() && received[1].body.get("owner").is_some(),
        "asked again without the hold, with the owner: {received:?}"
    );
}

/// The original server: unknown fields are ignored, locks have no holders, DELETE unlocks.
fn ignores_hold(request: &Received) -> (u16, Value) {
    let requestor = request.body["locked_by"].as_str().unwrap_or("?");
    match request.method.as_str() {
        "PUT" => (
            200,
            json!({"response": "locked", "lock": {"key": request.body["key"],
                   "locked_by": {requestor: 1}, "revision": 1,
                   "locked_at": "2024-01-01T00:00:00.000Z"}}),
        ),
        "DELETE" => (
            200,
            json!({"response": "unlocked", "lock": {"key": "", "locked_by": {}, "revision": 2,
                   "locked_at": null}}),
        ),
        _ => (405, json!({"error": "method not allowed on this path"})),
    }
}

#[test]
fn the_original_server_ignoring_a_build_hold_gets_the_claim_back() {
    let server = StandIn::start(ignores_hold);
    let error = out(
        &server.source(),
        json!({"lock_op": "lock", "key": "k", "locked_by": "r", "hold": "build"}),
        &BUILD,
    )
    .error();
    assert!(
        error.starts_with("error: could not lock 'env' held for its build (hold: build): ")
            && error.contains("does not say it holds it for the build")
            && error.contains("the claim was given back"),
        "a claim the server would keep until unlocked must not pass for one held for the \
         build: {error}"
    );
    let received = server.received();
    let methods: Vec<&str> = received.iter().map(|r| r.method.as_str()).collect();
    assert_eq!(methods, ["PUT", "DELETE"], "{received:?}");
    assert_eq!(
        received[1].body,
        json!({"key": "k", "locked_by": "r"}),
        "the claim given back is the one taken"
    );
}

//! Leases through the real server: `ttl`, `lock_op: renew`, the build sent as `owner`, the
//! fencing token, and what `in` and `out` report of them.

use std::time::{Duration, Instant, SystemTime};

use serde_json::{Value, json};

use crate::helpers::*;

const BUILD: [(&str, &str); 6] = [
    ("BUILD_TEAM_NAME", "main"),
    ("BUILD_PIPELINE_NAME", "prod"),
    ("BUILD_JOB_NAME", "deploy"),
    ("BUILD_NAME", "42"),
    ("BUILD_ID", "1234"),
    ("ATC_EXTERNAL_URL", "https://ci.example.com"),
];

const BUILD_URL: &str = "https://ci.example.com/teams/main/pipelines/prod/jobs/deploy/builds/42";

fn out(source: &Value, params: Value) -> Run {
    run(Bin::Out, &put(source, params), &["/tmp"])
}

fn time(text: &str) -> SystemTime {
    humantime::parse_rfc3339_weak(text)
        .unwrap_or_else(|err| panic!("expected an RFC 3339 time, got {text:?}: {err}"))
}

/// A metadata value by name, or `None` when the output has none.
fn metadata_if_any<'a>(output: &'a Value, name: &str) -> Option<&'a str> {
    output["metadata"]
        .as_array()?
        .iter()
        .find(|field| field["name"] == name)?["value"]
        .as_str()
}

#[test]
fn renew_after_lock_moves_the_lease_end() {
    let server = LockerServer::start();
    let source = server.source("env");
    let locked = out(
        &source,
        json!({"lock_op": "lock", "key": "k", "locked_by": "r", "ttl": "60s"}),
    )
    .json();
    let first_end = time(metadata(&locked, "expires_at"));

    let renewed = out(
        &source,
        json!({"lock_op": "renew", "key": "k", "locked_by": "r", "ttl": "2h"}),
    )
    .json();
    assert_protocol_output(&renewed);
    assert_eq!(metadata(&renewed, "lock_op"), "renew");
    let new_end = time(metadata(&renewed, "expires_at"));
    assert!(
        new_end > first_end + Duration::from_secs(3000),
        "a renew for 2h should end the lease about 2h from now, not at the lock's 60s: \
         {first_end:?} then {new_end:?}"
    );
    let state = server.lock_state(&source);
    assert_eq!(
        state.holder("r").and_then(|h| h.expires_at.as_deref()),
        Some(metadata(&renewed, "expires_at")),
        "the server keeps the renewed lease end"
    );
    assert_eq!(
        state.locked_by,
        [("r".to_owned(), 1)].into(),
        "a renew is no new claim"
    );
}

#[test]
fn renew_takes_its_ttl_from_the_source() {
    let server = LockerServer::start();
    let mut source = server.source("env");
    source["ttl"] = json!("1h");
    out(&source, json!({"lock_op": "lock", "key": "k"})).json();
    let renewed = out(&source, json!({"lock_op": "renew", "key": "k"})).json();
    let end = time(metadata(&renewed, "expires_at"));
    let from_now = end.duration_since(SystemTime::now()).unwrap_or_default();
    assert!(
        from_now > Duration::from_secs(3500) && from_now <= Duration::from_secs(3600),
        "expected the lease to end in about an hour (source.ttl), got {from_now:?}"
    );
}

#[test]
fn renew_of_a_claim_that_is_gone_fails_with_the_servers_message() {
    let server = LockerServer::start();
    let source = server.source("env");
    let params = |op: &str| json!({"lock_op": op, "key": "k", "locked_by": "r", "ttl": "5m"});
    out(&source, params("lock")).json();
    out(
        &source,
        json!({"lock_op": "unlock", "key": "k", "locked_by": "r"}),
    )
    .json();

    let started = Instant::now();
    let error = out(&source, params("renew")).error();
    assert!(
        error.starts_with("error: could not renew 'env': ")
            && error.contains("holds no claim")
            && error.contains("another build may have held it in between"),
        "expected the 409 explained, got: {error}"
    );
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "a 409 is final, not retried"
    );
    assert!(
        server.lock_state(&source).is_free(),
        "a failed renew takes nothing"
    );

    let never = server.source("never-locked");
    let error = out(&never, params("renew")).error();
    assert!(
        error.starts_with("error: could not renew 'never-locked': "),
        "renewing a claim never taken fails too: {error}"
    );
}

#[test]
fn renew_while_another_key_holds_the_lock_fails_at_once() {
    let server = LockerServer::start();
    let source = server.source("env");
    lock(&source, "a", "holder");
    let started = Instant::now();
    let error = out(
        &source,
        json!({"lock_op": "renew", "key": "b", "locked_by": "holder", "ttl": "5m"}),
    )
    .error();
    assert!(
        error.starts_with("error: could not renew 'env': "),
        "expected the server's 423 message: {error}"
    );
    assert!(started.elapsed() < Duration::from_secs(5));
    assert_eq!(server.lock_state(&source).key, "a");
}

#[test]
fn lock_sends_the_build_as_owner() {
    let server = LockerServer::start();
    let source = server.source("env");
    run_with_env(
        Bin::Out,
        &put(&source, json!({"lock_op": "lock", "key": "k"})),
        &["/tmp"],
        &BUILD,
    )
    .json();
    let state = server.lock_state(&source);
    assert_eq!(
        state.json["holders"][0]["owner"],
        json!({
            "team": "main", "pipeline": "prod", "job": "deploy", "build": "42",
            "build_id": "1234", "atc_url": "https://ci.example.com", "build_url": BUILD_URL,
        }),
        "the server should keep the build variables as the holder's owner: {}",
        state.json
    );
}

#[test]
fn a_lock_outside_concourse_sends_no_owner() {
    let server = LockerServer::start();
    let source = server.source("env");
    lock(&source, "k", "r");
    let state = server.lock_state(&source);
    assert!(
        state.server_has_leases(),
        "expected holders: {}",
        state.json
    );
    let owner = &state.json["holders"][0]["owner"];
    assert!(
        owner.is_null() || owner.as_object().is_some_and(|o| o.is_empty()),
        "no build variables, no owner: {owner}"
    );
}

#[test]
fn out_metadata_names_the_token_and_this_requestors_lease_end() {
    let server = LockerServer::start();
    let source = server.source("env");
    let locked = out(
        &source,
        json!({"lock_op": "lock", "key": "k", "locked_by": "r", "ttl": 600}),
    )
    .json();
    let state = server.lock_state(&source);
    let token = state.token.expect("a held lock has a token");
    assert_eq!(metadata(&locked, "token"), token.to_string());
    assert_eq!(
        Some(metadata(&locked, "expires_at")),
        state.holder("r").and_then(|h| h.expires_at.as_deref())
    );

    let shared = out(
        &source,
        json!({"lock_op": "lock", "key": "k", "locked_by": "no-lease"}),
    )
    .json();
    assert_eq!(
        metadata(&shared, "token"),
        token.to_string(),
        "sharing the held lock does not change its token"
    );
    assert_eq!(
        metadata_if_any(&shared, "expires_at"),
        None,
        "a claim without ttl has no lease end to report"
    );
}

#[test]
fn tokens_grow_each_time_the_free_lock_is_taken() {
    let server = LockerServer::start();
    let source = server.source("env");
    let token = |output: &Value| -> u64 { metadata(output, "token").parse().unwrap() };
    let first = token(&lock(&source, "a", "a"));
    let again = token(&lock(&source, "a", "a"));
    assert_eq!(first, again, "a re-entrant lock keeps the token");
    unlock(&source, "a", "a");
    unlock(&source, "a", "a");
    let next = token(&lock(&source, "b", "b"));
    assert!(
        next > first,
        "the next holder's token ({next}) must be greater than the last one's ({first})"
    );
}

#[test]
fn in_writes_the_token_lease_end_and_holders() {
    let server = LockerServer::start();
    let source = server.source("env");
    let locked = run_with_env(
        Bin::Out,
        &put(
            &source,
            json!({"lock_op": "lock", "key": "k", "locked_by": "r", "ttl": "10m"}),
        ),
        &["/tmp"],
        &BUILD,
    )
    .json();
    let dir = tempfile::tempdir().unwrap();
    let got = run(
        Bin::In,
        &json!({"source": source, "version": locked["version"]}),
        &[dir.path().to_str().unwrap()],
    )
    .json();
    let file = |name: &str| std::fs::read_to_string(dir.path().join(name)).unwrap();
    let state = server.lock_state(&source);
    assert_eq!(file("token"), state.token.unwrap().to_string());
    assert_eq!(file("expires_at"), metadata(&locked, "expires_at"));
    assert_eq!(metadata(&got, "expires_at"), file("expires_at"));
    let holders: Value = serde_json::from_str(&file("holders")).unwrap();
    assert_eq!(holders, state.json["holders"]);
    assert_eq!(holders[0]["requestor"], "r");
    assert_eq!(holders[0]["owner"]["build_url"], BUILD_URL);

    out(
        &source,
        json!({"lock_op": "unlock", "key": "k", "locked_by": "r"}),
    )
    .json();
    run(
        Bin::In,
        &json!({"source": source, "version": locked["version"]}),
        &[dir.path().to_str().unwrap()],
    )
    .json();
    assert_eq!(file("token"), "", "a free lock has no token");
    assert_eq!(file("expires_at"), "");
    assert_eq!(file("holders"), "[]");
}

#[test]
fn a_waiting_build_names_the_holding_build_and_its_lease_end() {
    let server = LockerServer::start();
    let source = server.source("env");
    run_with_env(
        Bin::Out,
        &put(
            &source,
            json!({"lock_op": "lock", "key": "K", "locked_by": "deploy", "ttl": "10m"}),
        ),
        &["/tmp"],
        &BUILD,
    )
    .json();
    let waited = out(
        &source,
        json!({"lock_op": "lock", "key": "K2", "timeout": "300ms"}),
    );
    let error = waited.error();
    let holder = format!("main/prod/deploy #42 ({BUILD_URL}) as 'deploy' (1 claim) with key 'K'");
    assert!(
        waited
            .stderr
            .contains(&format!("lock 'env' is held by {holder} since "))
            && waited.stderr.contains(", lease ends "),
        "the waiting line should name the holding build, its link and its lease end:\n{}",
        waited.stderr
    );
    assert!(
        error.contains(&holder) && error.contains(", lease ends "),
        "{error}"
    );
}

#[test]
fn a_lease_that_runs_out_frees_the_lock_for_the_next_key() {
    let server = LockerServer::start();
    let source = server.source("env");
    out(
        &source,
        json!({"lock_op": "lock", "key": "crashed", "ttl": 2}),
    )
    .json();
    let started = Instant::now();
    let next = out(
        &source,
        json!({"lock_op": "lock", "key": "next", "timeout": "20s"}),
    );
    let taken = next.json();
    assert_eq!(metadata(&taken, "key"), "next");
    assert!(
        next.stderr.contains("is held by 'crashed'"),
        "the lock should have been held when the next key first asked:\n{}",
        next.stderr
    );
    assert!(
        started.elapsed() < Duration::from_secs(10),
        "a 2s lease should free the lock within seconds, took {:?}",
        started.elapsed()
    );
}

//! Waiting for a held lock, and for a server that is down.

use std::time::{Duration, Instant};

use serde_json::json;

use crate::helpers::*;

const LIMIT: Duration = Duration::from_secs(20);

#[test]
fn second_key_waits_until_first_unlocks() {
    let server = LockerServer::start();
    let source = server.source("env");
    let build = [
        ("BUILD_PIPELINE_NAME", "p"),
        ("BUILD_JOB_NAME", "deploy"),
        ("BUILD_NAME", "7"),
    ];
    let input = |key: &str| put(&source, json!({"lock_op": "lock", "key": key}));
    let mut first = Running::start(Bin::Out, &input("a"), &["/tmp"], &build);
    let mut second = Running::start(Bin::Out, &input("b"), &["/tmp"], &build);

    let deadline = Instant::now() + LIMIT;
    while first.is_running() && second.is_running() {
        assert!(Instant::now() < deadline, "neither out took the lock");
        std::thread::sleep(Duration::from_millis(20));
    }
    let (winner, mut loser, loser_key) = if first.is_running() {
        (second, first, "a")
    } else {
        (first, second, "b")
    };
    let winner = winner.finish(LIMIT).json();
    let winner_key = metadata(&winner, "key").to_owned();
    loser.wait_for_log("is held by", LIMIT);
    std::thread::sleep(Duration::from_millis(400));
    assert!(
        loser.is_running(),
        "the second out must wait while the first holds the lock:\n{}",
        loser.stderr()
    );
    assert!(
        loser.stderr().contains("p/deploy #7"),
        "the log says who waits:\n{}",
        loser.stderr()
    );

    let unlocked = unlock(&source, &winner_key, &winner_key);
    let loser = loser.finish(LIMIT);
    let acquired = loser.json();
    assert_eq!(metadata(&acquired, "key"), loser_key);
    // The server hands the lock to the waiter in the unlock's own commit, and the unlock's
    // answer shows the lock after it: the two may share a revision, after the first lock's.
    assert!(
        revision(&acquired) > revision(&winner) && revision(&acquired) >= revision(&unlocked),
        "the second lock ({}) must come after the first ({}) and its unlock ({})",
        revision(&acquired),
        revision(&winner),
        revision(&unlocked)
    );
    assert!(
        loser.stderr.contains("lock 'env' is held by"),
        "stderr:\n{}",
        loser.stderr
    );
    assert!(
        loser.stderr.contains("took lock 'env' on attempt "),
        "stderr:\n{}",
        loser.stderr
    );
}

#[test]
fn a_waiting_out_survives_a_server_restart() {
    let mut server = LockerServer::start();
    let source = server.source("env");
    lock(&source, "a", "a");
    let mut waiting = Running::start(
        Bin::Out,
        &put(&source, json!({"lock_op": "lock", "key": "b"})),
        &["/tmp"],
        &[],
    );
    waiting.wait_for_log("is held by", LIMIT);

    server.stop();
    waiting.wait_for_log("could not reach", LIMIT);
    server.restart();
    // The lock outlived the restart, so the waiting out still waits.
    std::thread::sleep(Duration::from_millis(300));
    assert!(
        waiting.is_running(),
        "out must keep waiting:\n{}",
        waiting.stderr()
    );

    unlock(&source, "a", "a");
    let acquired = waiting.finish(LIMIT).json();
    assert_eq!(metadata(&acquired, "holders"), r#"{"b":1}"#);
}

#[test]
fn timeout_fails_with_the_holder_named_and_claims_nothing() {
    let server = LockerServer::start();
    let source = server.source("env");
    lock(&source, "a", "holder");
    let started = Instant::now();
    let run = run(
        Bin::Out,
        &put(
            &source,
            json!({"lock_op": "lock", "key": "b", "timeout": "500ms"}),
        ),
        &["/tmp"],
    );
    let elapsed = started.elapsed();
    let error = run.error();
    assert!(
        error.starts_with("error: timed out after 500ms trying to lock 'env': it is still held by 'holder' (1 claim) with key 'a' since "),
        "{error}"
    );
    assert!(
        elapsed >= Duration::from_millis(500),
        "gave up after {elapsed:?}, before the timeout"
    );
    assert!(
        elapsed < Duration::from_secs(5),
        "took {elapsed:?} to time out after 500ms"
    );
    let state = server.lock_state(&source);
    assert_eq!(state.key, "a");
    assert_eq!(
        state.locked_by,
        [("holder".to_owned(), 1)].into(),
        "the timed-out out left a claim"
    );
}

#[test]
fn unlock_gives_up_on_an_unreachable_server_after_its_timeout() {
    let mut server = LockerServer::start();
    let source = server.source("env");
    server.stop();
    let params = json!({"lock_op": "unlock", "key": "k", "timeout": "300ms"});
    let run = run(Bin::Out, &put(&source, params), &["/tmp"]);
    let error = run.error();
    assert!(
        error.starts_with("error: timed out after 300ms trying to unlock 'env': the server did not answer: could not reach"),
        "{error}"
    );
    assert!(
        run.stderr.contains("waiting"),
        "each retry is logged:\n{}",
        run.stderr
    );
}

#[test]
fn a_hanging_server_cannot_stretch_the_timeout() {
    // Accepts connections and never answers.
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let url = format!("http://127.0.0.1:{}", listener.local_addr().unwrap().port());
    std::thread::spawn(move || {
        let held: Vec<_> = listener.incoming().map_while(Result::ok).collect();
        drop(held);
    });
    let source = json!({"locker_uri": url, "lock_name": "env", "retry_delay": "50ms", "max_retry_delay": "200ms"});
    let started = Instant::now();
    let run = run(
        Bin::Out,
        &put(
            &source,
            json!({"lock_op": "lock", "key": "k", "timeout": "1s"}),
        ),
        &["/tmp"],
    );
    let elapsed = started.elapsed();
    let error = run.error();
    assert!(
        error.starts_with(
            "error: timed out after 1s trying to lock 'env': the server did not answer: "
        ),
        "{error}"
    );
    assert!(
        elapsed < Duration::from_secs(5),
        "a 1s timeout took {elapsed:?} against a hanging server"
    );
}

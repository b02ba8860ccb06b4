//! Lock and unlock through `out`, as pipelines use them.

use serde_json::json;

use crate::helpers::*;

#[test]
fn lock_then_unlock_frees_the_lock() {
    let server = LockerServer::start();
    let source = server.source("env");
    let locked = lock(&source, "deploy", "build-1");
    let state = server.lock_state(&source);
    assert_eq!(state.key, "deploy");
    assert_eq!(state.locked_by, [("build-1".to_owned(), 1)].into());
    assert_eq!(state.revision, revision(&locked));

    let unlocked = unlock(&source, "deploy", "build-1");
    let state = server.lock_state(&source);
    assert!(
        state.is_free(),
        "the lock should be free after unlock: {state:?}"
    );
    assert_eq!(state.revision, revision(&unlocked));
}

#[test]
fn same_key_locks_again_without_waiting() {
    let server = LockerServer::start();
    let source = server.source("env");
    lock(&source, "deploy", "build-1");
    let again = lock(&source, "deploy", "build-1");
    assert_eq!(metadata(&again, "holders"), r#"{"build-1":2}"#);
    unlock(&source, "deploy", "build-1");
    assert_eq!(
        server.lock_state(&source).locked_by,
        [("build-1".to_owned(), 1)].into()
    );
    unlock(&source, "deploy", "build-1");
    assert!(server.lock_state(&source).is_free());
}

#[test]
fn a_shared_key_is_held_by_two_requestors() {
    let server = LockerServer::start();
    let source = server.source("env");
    lock(&source, "shared", "job-a");
    let second = lock(&source, "shared", "job-b");
    assert_eq!(metadata(&second, "holders"), r#"{"job-a":1,"job-b":1}"#);
    unlock(&source, "shared", "job-a");
    let state = server.lock_state(&source);
    assert_eq!(state.key, "shared");
    assert_eq!(state.locked_by, [("job-b".to_owned(), 1)].into());
}

#[test]
fn locked_by_defaults_to_the_key_and_lock_by_is_accepted() {
    let server = LockerServer::start();
    let source = server.source("env");
    let output = run(
        Bin::Out,
        &put(&source, json!({"lock_op": "lock", "key": "k"})),
        &["/tmp"],
    )
    .json();
    assert_eq!(metadata(&output, "holders"), r#"{"k":1}"#);
    let output = run(
        Bin::Out,
        &put(
            &source,
            json!({"lock_op": "lock", "key": "k", "lock_by": "other"}),
        ),
        &["/tmp"],
    )
    .json();
    assert_eq!(metadata(&output, "holders"), r#"{"k":1,"other":1}"#);
}

#[test]
fn unlock_with_the_wrong_key_fails_with_the_servers_text() {
    let server = LockerServer::start();
    let source = server.source("env");
    lock(&source, "deploy", "build-1");
    let run = run(
        Bin::Out,
        &put(
            &source,
            json!({"lock_op": "unlock", "key": "intruder", "locked_by": "build-2"}),
        ),
        &["/tmp"],
    );
    let error = run.error();
    assert!(
        error.starts_with("error: could not unlock 'env': "),
        "{error}"
    );
    assert_eq!(
        server.lock_state(&source).locked_by,
        [("build-1".to_owned(), 1)].into()
    );
}

#[test]
fn lock_with_the_wrong_key_waits_and_takes_nothing() {
    let server = LockerServer::start();
    let source = server.source("env");
    lock(&source, "deploy", "build-1");
    let params =
        json!({"lock_op": "lock", "key": "intruder", "locked_by": "build-2", "timeout": "300ms"});
    let run = run(Bin::Out, &put(&source, params), &["/tmp"]);
    let error = run.error();
    assert!(
        error.starts_with("error: timed out after 300ms trying to lock 'env': it is still held by 'build-1' (1 claim)"),
        "{error}"
    );
    assert!(
        run.stderr.contains("lock 'env' is held by 'build-1'"),
        "stderr:\n{}",
        run.stderr
    );
    let state = server.lock_state(&source);
    assert_eq!(state.key, "deploy");
    assert_eq!(state.locked_by, [("build-1".to_owned(), 1)].into());
}

#[test]
fn unlocking_a_free_lock_succeeds() {
    let server = LockerServer::start();
    let source = server.source("never-locked");
    let output = unlock(&source, "k", "r");
    assert_protocol_output(&output);
    assert!(server.lock_state(&source).is_free());
}

#[test]
fn names_with_spaces_slashes_and_emoji_round_trip() {
    let server = LockerServer::start();
    for name in ["a b", "team/env", "🔒 prod/eu #1?x=y%20", " spaced "] {
        let source = server.source(name);
        let locked = lock(&source, "k", "r");
        assert_eq!(metadata(&locked, "lock"), name);
        let versions = run(Bin::Check, &json!({"source": source}), &[]).json();
        assert_eq!(versions, json!([locked["version"]]), "check of {name:?}");
        let dir = tempfile::tempdir().unwrap();
        run(
            Bin::In,
            &json!({"source": source, "version": locked["version"]}),
            &[dir.path().to_str().unwrap()],
        )
        .json();
        assert_eq!(
            std::fs::read_to_string(dir.path().join("name")).unwrap(),
            name
        );
        assert_eq!(
            std::fs::read_to_string(dir.path().join("key")).unwrap(),
            "k",
            "lock {name:?}"
        );
        unlock(&source, "k", "r");
    }
    // Each name is its own lock: nothing above spilled into a lock named by a part of it.
    assert!(server.lock_state(&server.source("team")).is_free());
    assert!(server.lock_state(&server.source("a")).is_free());
}

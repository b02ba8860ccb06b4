//! The Concourse protocol as the binaries speak it.

use serde_json::json;

use crate::helpers::*;

#[test]
fn check_of_a_never_used_lock_is_revision_zero() {
    let server = LockerServer::start();
    let versions = run(Bin::Check, &json!({"source": server.source("fresh")}), &[]).json();
    assert_eq!(versions, json!([{"revision": "0"}]));
}

#[test]
fn check_prints_exactly_the_current_version_whatever_version_was_given() {
    let server = LockerServer::start();
    let source = server.source("env");
    let locked = lock(&source, "k", "r");
    let current = json!([locked["version"]]);
    for version in [
        json!(null),
        json!({"revision": "0"}),
        locked["version"].clone(),
    ] {
        let versions = run(
            Bin::Check,
            &json!({"source": source, "version": version}),
            &[],
        )
        .json();
        assert_eq!(versions, current, "check given {version}");
    }
    let unlocked = unlock(&source, "k", "r");
    assert!(
        revision(&unlocked) > revision(&locked),
        "unlock moves the revision on"
    );
    let versions = run(Bin::Check, &json!({"source": source}), &[]).json();
    assert_eq!(versions, json!([unlocked["version"]]));
}

#[test]
fn in_writes_the_lock_files_and_echoes_the_version() {
    let server = LockerServer::start();
    let source = server.source("env");
    let locked = lock(&source, "deploy", "build-1");
    let dir = tempfile::tempdir().unwrap();
    let input = json!({"source": source, "version": locked["version"], "params": {}});
    let output = run(Bin::In, &input, &[dir.path().to_str().unwrap()]).json();
    assert_protocol_output(&output);
    assert_eq!(output["version"], locked["version"]);
    assert_eq!(metadata(&output, "holders"), r#"{"build-1":1}"#);

    let read = |file: &str| std::fs::read_to_string(dir.path().join(file)).unwrap();
    assert_eq!(read("name"), "env");
    assert_eq!(read("key"), "deploy");
    assert_eq!(read("revision"), revision(&locked).to_string());
    assert_eq!(
        serde_json::from_str::<serde_json::Value>(&read("locked_by")).unwrap(),
        json!({"build-1": 1})
    );
    let lock: serde_json::Value = serde_json::from_str(&read("lock")).unwrap();
    assert_eq!(lock["key"], "deploy");
    assert_eq!(lock["locked_by"], json!({"build-1": 1}));
}

#[test]
fn in_does_not_fail_when_the_lock_moved_on() {
    let server = LockerServer::start();
    let source = server.source("env");
    let locked = lock(&source, "deploy", "build-1");
    unlock(&source, "deploy", "build-1");
    let dir = tempfile::tempdir().unwrap();
    let run = run(
        Bin::In,
        &json!({"source": source, "version": locked["version"]}),
        &[dir.path().to_str().unwrap()],
    );
    let output = run.json();
    assert_eq!(
        output["version"], locked["version"],
        "in echoes the requested version"
    );
    assert_eq!(
        std::fs::read_to_string(dir.path().join("key")).unwrap(),
        "",
        "the lock is free now"
    );
    assert!(
        run.stderr.contains("has changed since version"),
        "stderr:\n{}",
        run.stderr
    );
}

#[test]
fn in_without_a_version_fails_clearly() {
    let server = LockerServer::start();
    let dir = tempfile::tempdir().unwrap();
    let run = run(
        Bin::In,
        &json!({"source": server.source("env")}),
        &[dir.path().to_str().unwrap()],
    );
    assert_eq!(
        run.error(),
        "error: no version given: in needs the version to fetch, like {\"revision\": \"3\"}"
    );
}

#[test]
fn in_rejects_params() {
    let server = LockerServer::start();
    let input = json!({"source": server.source("env"), "version": {"revision": "1"}, "params": {"lock_op": "lock"}});
    assert_eq!(
        run(Bin::In, &input, &["/tmp"]).error(),
        "error: params.lock_op is not a known key (this step takes no params)"
    );
}

#[test]
fn a_typo_in_source_fails_every_binary_with_the_key_named() {
    let source = json!({"locker_uri": "http://127.0.0.1:9", "lock_nmae": "env"});
    let expected = "error: source.lock_nmae is not a known key (expected one of: locker_uri, lock_name, \
                    bosh_lock, username, password, ca_cert, skip_ssl_validation, retry_delay, max_retry_delay, ttl, \
                    hold)";
    assert_eq!(
        run(Bin::Check, &json!({"source": source}), &[]).error(),
        expected
    );
    assert_eq!(
        run(
            Bin::In,
            &json!({"source": source, "version": {"revision": "1"}}),
            &["/tmp"]
        )
        .error(),
        expected
    );
    let params = json!({"lock_op": "lock", "key": "k"});
    assert_eq!(
        run(Bin::Out, &put(&source, params), &["/tmp"]).error(),
        expected
    );
}

#[test]
fn a_typo_in_params_fails_out() {
    let source = json!({"locker_uri": "http://127.0.0.1:9", "lock_name": "env"});
    let run = run(
        Bin::Out,
        &put(&source, json!({"lock_op": "lock", "kye": "k"})),
        &["/tmp"],
    );
    assert!(
        run.error()
            .starts_with("error: params.kye is not a known key (expected one of: lock_op, key,"),
        "{}",
        run.stderr
    );
}

#[test]
fn garbage_on_stdin_fails_cleanly() {
    let run = run(Bin::Check, &json!("not an object"), &[]);
    assert_eq!(
        run.error(),
        "error: stdin must be a JSON object like {\"source\": {...}, ...} (got a string)"
    );
}

#[test]
fn out_prints_one_document_with_string_metadata() {
    let server = LockerServer::start();
    let source = server.source("env");
    let output = lock(&source, "deploy", "build-1");
    assert_protocol_output(&output);
    assert_eq!(metadata(&output, "lock"), "env");
    assert_eq!(metadata(&output, "key"), "deploy");
    assert_eq!(metadata(&output, "locked_by"), "build-1");
    assert_eq!(metadata(&output, "lock_op"), "lock");
    assert_eq!(metadata(&output, "holders"), r#"{"build-1":1}"#);
    let output = unlock(&source, "deploy", "build-1");
    assert_protocol_output(&output);
    assert_eq!(metadata(&output, "lock_op"), "unlock");
    assert_eq!(metadata(&output, "holders"), "{}");
}

//! What survives a restart, what is loaded, and what is refused.

use std::fs;
use std::sync::Arc;

use locker_testkit::{Client, Locker, Options};
use serde_json::json;

use crate::{body, holders};

fn fixture(name: &str) -> String {
    let path = format!(
        "{}/tests/fixtures/legacy/{name}",
        env!("CARGO_MANIFEST_DIR")
    );
    fs::read_to_string(&path).unwrap_or_else(|e| panic!("{path}: {e}"))
}

/// Starts a server on a state file holding `content`; returns the failure if it refuses.
fn start_with_file(
    content: &[u8],
) -> (
    Arc<tempfile::TempDir>,
    std::path::PathBuf,
    Result<Locker, locker_testkit::StartFailure>,
) {
    let dir = Arc::new(tempfile::tempdir().unwrap());
    let path = dir.path().join("locker.yml");
    fs::write(&path, content).unwrap();
    let result = Locker::start_on(dir.clone(), path.clone(), Options::default());
    (dir, path, result)
}

#[test]
fn state_and_revision_survive_restart_and_revision_keeps_growing() {
    let mut server = Locker::start();
    let client = Client::new();
    client.put(&server.url("/lock/a"), &body("k", "r"));
    client.put(&server.url("/lock/b"), &body("k", "r"));
    let (_, before) = client.get(&server.url("/locks"));
    assert_eq!(server.stop().code(), Some(0));
    server.restart();
    let (_, after) = client.get(&server.url("/locks"));
    assert_eq!(before, after);
    let (_, resp) = client.put(&server.url("/lock/c"), &body("k", "r"));
    assert_eq!(
        resp["lock"]["revision"], 3,
        "the revision continues after a restart"
    );
}

#[test]
fn killed_server_keeps_every_answered_lock() {
    let mut server = Locker::start();
    let client = Client::new();
    for i in 0..20 {
        let (status, _) = client.put(&server.url(&format!("/lock/l{i}")), &body("k", "r"));
        assert_eq!(status, 200);
    }
    server.kill();
    server.restart();
    let (_, all) = client.get(&server.url("/locks"));
    for i in 0..20 {
        assert_eq!(
            all[format!("l{i}")]["key"],
            "k",
            "lock l{i} was answered 200 and must survive SIGKILL"
        );
    }
}

#[test]
fn state_file_is_versioned_yaml() {
    if crate::skipped_on_postgres("it is about the state file") {
        return;
    }
    let mut server = Locker::start();
    Client::new().put(&server.url("/lock/yes"), &body("null", "~"));
    server.stop();
    let text = fs::read_to_string(server.state_file()).unwrap();
    assert!(
        text.starts_with("version: 2\nrevision: 1\nlocks:\n"),
        "{text}"
    );
    let value: serde_json::Value = serde_norway::from_str(&text).unwrap();
    assert_eq!(
        value["locks"]["yes"]["key"], "null",
        "strings stay strings: {text}"
    );
    assert_eq!(
        value["locks"]["yes"]["holders"][0]["requestor"], "~",
        "{text}"
    );
    assert_eq!(value["locks"]["yes"]["holders"][0]["count"], 1, "{text}");
}

#[test]
fn legacy_files_load_with_exact_holders_and_are_rewritten_on_first_change() {
    let expectations = [
        ("empty.yml", json!({})),
        (
            "typical.yml",
            json!({
                "prod-deployments": {"key": "prod-cloudfoundry", "locked_by": {"my-deployment": 1}},
                "shared-testbed": {"key": "can-coexist", "locked_by": {"coexisting-1": 2, "coexisting-2": 1}},
                "staging": {"key": "", "locked_by": {}},
            }),
        ),
        (
            "awkward-names.yml",
            json!({
                "bosh%20director%2Fz1": {"key": "bosh director/z1", "locked_by": {"deploy job": 1}},
                "null": {"key": "yes", "locked_by": {"~": 1}},
                "ümlaut ✓ 🚀": {"key": "- x", "locked_by": {"1e3": 3}},
            }),
        ),
    ];
    let client = Client::new();
    for (file, expected) in expectations {
        let (_dir, path, started) = start_with_file(fixture(file).as_bytes());
        let mut server = started.unwrap_or_else(|f| panic!("{file}: {}", f.log));
        let (_, all) = client.get(&server.url("/locks"));
        let seen: serde_json::Map<_, _> = all
            .as_object()
            .unwrap()
            .iter()
            .map(|(n, l)| {
                (
                    n.clone(),
                    json!({"key": l["key"], "locked_by": l["locked_by"]}),
                )
            })
            .collect();
        assert_eq!(serde_json::Value::Object(seen), expected, "{file}");
        assert_eq!(
            fs::read_to_string(&path).unwrap(),
            fixture(file),
            "{file}: loading alone does not rewrite"
        );

        client.put(&server.url("/lock/new"), &body("k", "r"));
        let text = fs::read_to_string(&path).unwrap();
        assert!(text.starts_with("version: 2\n"), "{file} rewritten: {text}");
        server.restart();
        let (_, again) = client.get(&server.url("/locks"));
        for (name, lock) in expected.as_object().unwrap() {
            assert_eq!(
                again[name]["key"], lock["key"],
                "{file}: {name} after rewrite"
            );
            assert_eq!(
                again[name]["locked_by"], lock["locked_by"],
                "{file}: {name}"
            );
        }
    }
}

#[test]
fn corrupt_files_are_refused_and_left_untouched() {
    if crate::skipped_on_postgres("it is about the state file") {
        return;
    }
    let good = {
        let mut server = Locker::start();
        Client::new().put(&server.url("/lock/a"), &body("k", "r"));
        server.stop();
        fs::read(server.state_file()).unwrap()
    };
    let torn = &good[..good.len() / 2];
    let cases: [(&[u8], &str); 5] = [
        (torn, "could not be loaded"),
        (b"\x00\x01\x02garbage", "could not be loaded"),
        (
            b"version: 1\nrevision: 0\nlocks: [1, 2]\n",
            "could not be loaded",
        ),
        (
            b"{\"a\": {\"locked_by\": {}, \"key\": \"\"",
            "original server's JSON",
        ),
        (b"", "is empty"),
    ];
    for (content, expected) in cases {
        let (_dir, path, started) = start_with_file(content);
        let failure = match started {
            Ok(_) => panic!("started on {:?}", String::from_utf8_lossy(content)),
            Err(f) => f,
        };
        assert_eq!(
            failure.status.and_then(|s| s.code()),
            Some(1),
            "{}",
            failure.log
        );
        assert!(
            failure.log.contains(expected),
            "{expected:?} not in {}",
            failure.log
        );
        assert!(
            failure.log.contains(&path.display().to_string()),
            "names the file: {}",
            failure.log
        );
        assert_eq!(
            fs::read(&path).unwrap(),
            content,
            "the refused file is unchanged"
        );
    }
    let (_dir, _path, started) = start_with_file(b"");
    let log = started.err().unwrap().log;
    assert!(
        log.contains("remove the file or write {}"),
        "says how to start empty: {log}"
    );
}

#[test]
fn leftover_temporary_file_is_ignored_and_last_good_state_loads() {
    if crate::skipped_on_postgres("it is about the state file") {
        return;
    }
    let mut server = Locker::start();
    let client = Client::new();
    client.put(&server.url("/lock/a"), &body("k", "r"));
    server.stop();
    let tmp = server.state_file().with_file_name("locker.yml.tmp");
    fs::write(&tmp, "version: 1\nrevision: 99\nlocks: {}\n").unwrap();
    server.restart();
    let (_, all) = client.get(&server.url("/locks"));
    assert_eq!(all["a"]["key"], "k");
    assert!(!tmp.exists(), "the leftover was removed");
    assert!(
        server.log().contains("interrupted write"),
        "{}",
        server.log()
    );
}

#[test]
fn missing_file_is_created_empty() {
    if crate::skipped_on_postgres("it is about the state file") {
        return;
    }
    let server = Locker::start();
    let text = fs::read_to_string(server.state_file()).unwrap();
    assert_eq!(
        text,
        "version: 2\nrevision: 0\nlocks: {}\n# end of locker state file\n"
    );
    assert!(server.log().contains("created empty"), "{}", server.log());
}

#[test]
fn second_server_on_the_same_file_is_refused() {
    if crate::skipped_on_postgres("it is about the state file") {
        return;
    }
    let server = Locker::start();
    let failure = Locker::start_on(
        server.dir(),
        server.state_file().to_owned(),
        Options::default(),
    )
    .err()
    .expect("a second server must not start");
    assert_eq!(failure.status.and_then(|s| s.code()), Some(1));
    assert!(
        failure.log.contains("in use by another locker server"),
        "{}",
        failure.log
    );
}

#[test]
fn sigterm_exits_zero() {
    let mut server = Locker::start();
    Client::new().put(&server.url("/lock/a"), &body("k", "r"));
    let status = server.stop();
    assert_eq!(status.code(), Some(0), "{}", server.log());
    assert!(server.log().contains("locker stopped"));
}

#[test]
fn holders_helper_reads_counts() {
    assert_eq!(
        holders(&json!({"locked_by": {"a": 2}})),
        [("a".to_string(), 2)]
    );
}

#[test]
fn changes_go_to_the_journal_and_a_clean_stop_folds_them_into_the_state_file() {
    if crate::skipped_on_postgres("it is about the state file") {
        return;
    }
    let mut server = Locker::start();
    let client = Client::new();
    client.put(&server.url("/lock/a"), &body("k", "r"));
    let journal = server.state_file().with_file_name("locker.yml.journal");
    let segment = fs::read_to_string(&journal).unwrap();
    // A new segment is made of zeros, and records are written over them.
    let records = segment.trim_end_matches('\0');
    assert!(segment.len() > records.len(), "zeros after the records");
    assert_eq!(
        records.lines().count(),
        1,
        "one record per batch: {records}"
    );
    assert!(records.contains(r#""revision":1"#), "{records}");
    server.stop();
    assert!(!journal.exists(), "removed at a clean stop");
    let text = fs::read_to_string(server.state_file()).unwrap();
    assert!(
        text.contains("revision: 1\nlocks:\n  \"a\": {\"key\":\"k\""),
        "{text}"
    );
}

#[test]
fn torn_last_journal_record_is_dropped_and_earlier_ones_kept() {
    if crate::skipped_on_postgres("it is about the state file") {
        return;
    }
    let mut server = Locker::start();
    let client = Client::new();
    client.put(&server.url("/lock/a"), &body("k", "r"));
    server.kill();
    let journal = server.state_file().with_file_name("locker.yml.journal");
    let mut bytes = fs::read(&journal).unwrap();
    // An append cut short after the last record (the zeros after it cut off too).
    let end = bytes.iter().position(|&b| b == 0).unwrap_or(bytes.len());
    let torn = b"1234abcd {\"revision\":2,\"locks\":{\"b\":";
    bytes.truncate(end);
    bytes.extend_from_slice(torn);
    fs::write(&journal, &bytes).unwrap();
    server.restart();
    let (_, all) = client.get(&server.url("/locks"));
    assert_eq!(all["a"]["key"], "k", "the acknowledged record is kept");
    assert!(all.get("b").is_none(), "the torn record is dropped: {all}");
    let (_, resp) = client.put(&server.url("/lock/c"), &body("k", "r"));
    assert_eq!(resp["lock"]["revision"], 2);
    server.kill();
    server.restart();
    let (_, all) = client.get(&server.url("/locks"));
    assert_eq!(all["c"]["key"], "k", "appends after the cut replay: {all}");
}

#[test]
fn damaged_journal_record_followed_by_others_is_refused_and_left_untouched() {
    if crate::skipped_on_postgres("it is about the state file") {
        return;
    }
    let mut server = Locker::start();
    let client = Client::new();
    client.put(&server.url("/lock/a"), &body("k", "r"));
    client.put(&server.url("/lock/b"), &body("k", "r"));
    server.kill();
    let journal = server.state_file().with_file_name("locker.yml.journal");
    let mut bytes = fs::read(&journal).unwrap();
    bytes[20] ^= 0x01;
    fs::write(&journal, &bytes).unwrap();
    let state = fs::read(server.state_file()).unwrap();
    let failure = Locker::start_on(
        server.dir(),
        server.state_file().to_owned(),
        Options::default(),
    )
    .err()
    .expect("must refuse a damaged journal");
    assert!(failure.log.contains("line 1 is damaged"), "{}", failure.log);
    assert_eq!(fs::read(&journal).unwrap(), bytes, "journal untouched");
    assert_eq!(
        fs::read(server.state_file()).unwrap(),
        state,
        "state file untouched"
    );
}

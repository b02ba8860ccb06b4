//! Disk faults: the state file on a file system that fills up, one that turns read-only under
//! the server, and one whose writes fail.
//! Changes that cannot be saved get 503 JSON, reads still work, nothing is acknowledged that is
//! not on disk, and the server carries on without a restart once the disk is usable again.
//!
//! The full disk is a size-limited tmpfs; the disk that turns read-only or starts failing is a
//! FUSE file system (`faulty_disk.rs`). Both need root (and `/dev/fuse`); where they are not
//! available, each test says so and skips itself.
//!
//! Broken on purpose (tried): in `store/mod.rs`, publishing and answering a batch even when
//! `persist` failed makes `a_full_disk_answers_503_and_recovers_without_a_restart` fail ("100
//! changes on a full disk were all accepted").

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Arc;

use locker_testkit::prometheus::Scrape;
use locker_testkit::{Client, Locker, Options};
use serde_json::Value;

use crate::body;
use crate::faulty_disk::{Fault, FaultyDisk};

/// A mount point that is unmounted again on drop.
struct Mount(PathBuf);

impl Drop for Mount {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg("-l").arg(&self.0).status();
    }
}

/// Runs `mount` with `args`; the error says why it could not.
fn mount(args: &[&str]) -> Result<(), String> {
    let out = Command::new("mount")
        .args(args)
        .output()
        .map_err(|e| format!("cannot run mount: {e}"))?;
    if out.status.success() {
        Ok(())
    } else {
        Err(String::from_utf8_lossy(&out.stderr).trim().to_string())
    }
}

/// A tmpfs of `size` mounted in a new temporary directory, or why not.
fn small_tmpfs(size: &str) -> Result<(Arc<tempfile::TempDir>, Mount), String> {
    let dir = Arc::new(tempfile::tempdir().expect("tempdir"));
    let point = dir.path().join("disk");
    std::fs::create_dir(&point).unwrap();
    mount(&[
        "-t",
        "tmpfs",
        "-o",
        &format!("size={size}"),
        "tmpfs",
        point.to_str().unwrap(),
    ])
    .map_err(|e| format!("cannot mount a tmpfs ({e})"))?;
    Ok((dir, Mount(point)))
}

fn put(server: &Locker, name: &str, key: &str) -> (u16, Value) {
    Client::new().put(&server.url(&format!("/lock/{name}")), &body(key, key))
}

fn delete(server: &Locker, name: &str, key: &str) -> (u16, Value) {
    Client::new().delete(&server.url(&format!("/lock/{name}")), &body(key, key))
}

fn holder(server: &Locker, name: &str) -> String {
    let (status, lock) = Client::new().get(&server.url(&format!("/lock/{name}")));
    assert_eq!(status, 200, "reads keep working: {lock}");
    lock["key"].as_str().unwrap().to_string()
}

/// Checks a refused change: 503, a JSON error that says it was not saved, nothing changed.
fn assert_not_persisted(answer: (u16, Value), while_what: &str) {
    let (status, body) = answer;
    assert_eq!(
        status, 503,
        "expected 503 while {while_what}, got {status}: {body}"
    );
    let error = body["error"].as_str().unwrap_or_default();
    assert!(
        error.contains("could not be saved") && error.contains("nothing was changed"),
        "the 503 says why: {body}"
    );
}

/// Kills the server, starts it again and checks it holds exactly `expected` (name, key).
fn assert_durable(server: &mut Locker, expected: &[(&str, &str)]) {
    server.kill();
    server.restart();
    for (name, key) in expected {
        assert_eq!(holder(server, name), *key, "lock '{name}' after a restart");
    }
}

fn file(path: &Path) -> Vec<u8> {
    std::fs::read(path).expect("read the state file")
}

/// A lock name of about 400 bytes, so that each change needs fresh space on disk soon.
fn long_name(i: usize) -> String {
    format!("fill-{i}-{}", "x".repeat(400))
}

#[test]
fn a_full_disk_answers_503_and_recovers_without_a_restart() {
    let (dir, disk) = match small_tmpfs("256k") {
        Ok(mounted) => mounted,
        Err(why) => {
            eprintln!("SKIPPED a_full_disk_answers_503_and_recovers_without_a_restart: {why}");
            return;
        }
    };
    let state = disk.0.join("locker.yml");
    let mut server =
        Locker::start_on(dir.clone(), state.clone(), Options::default()).expect("start");
    assert_eq!(put(&server, "held", "k1").0, 200);

    // Fill the file system to the last byte.
    let filler = disk.0.join("filler");
    {
        use std::io::Write;
        let mut f = std::fs::File::create(&filler).unwrap();
        let chunk = vec![b'x'; 4096];
        while f.write_all(&chunk).is_ok() {}
        while f.write_all(b"x").is_ok() {}
    }
    // An append to the journal may still fit in space the file system gave it before; keep
    // changing until the disk refuses. Whatever was accepted must be on disk (checked below).
    let mut accepted = Vec::new();
    let refused = (0..100).find_map(|i| {
        let answer = put(&server, &long_name(i), "k2");
        if answer.0 == 200 {
            accepted.push(long_name(i));
            None
        } else {
            Some((long_name(i), answer))
        }
    });
    let (refused_name, answer) = refused.expect("100 changes on a full disk were all accepted");
    assert_not_persisted(answer, "the disk is full");
    assert_eq!(
        holder(&server, &refused_name),
        "",
        "a refused lock is not visible"
    );
    assert_eq!(holder(&server, "held"), "k1", "reads keep working");
    let (status, _) = Client::new().get(&server.url("/locks"));
    assert_eq!(status, 200);
    assert!(
        server.log().contains("could not save"),
        "the failure is logged:\n{}",
        server.log()
    );
    let on_disk = files(&disk.0);
    let (status, body) = put(&server, &refused_name, "k2");
    if status == 503 {
        assert_eq!(
            files(&disk.0),
            on_disk,
            "a refused change leaves the files as they were"
        );
    } else {
        assert_eq!(status, 200, "{body}");
        accepted.push(refused_name.clone());
    }

    std::fs::remove_file(&filler).unwrap();
    assert_eq!(
        put(&server, "new", "k2").0,
        200,
        "space is back: changes work again"
    );
    assert_eq!(delete(&server, "held", "k1").0, 200);
    let mut expected = vec![("new", "k2"), ("held", "")];
    if !accepted.contains(&refused_name) {
        expected.push((refused_name.as_str(), ""));
    }
    expected.extend(accepted.iter().map(|name| (name.as_str(), "k2")));
    assert_durable(&mut server, &expected);
}

/// The contents of every file in `dir` but the filler (as text, so that a failed comparison
/// reads well; the files are YAML and JSON lines).
fn files(dir: &Path) -> Vec<(PathBuf, String)> {
    let mut found: Vec<(PathBuf, String)> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| !p.ends_with("filler"))
        .map(|p| {
            let text = String::from_utf8_lossy(&file(&p)).into_owned();
            (p, text)
        })
        .collect();
    found.sort();
    found
}

/// A server on a (healthy, for now) FUSE disk, holding lock `held` with key `k1`; `None`,
/// saying so, where FUSE cannot be mounted (the caller `test` skips itself).
fn server_on_faulty_disk(test: &str) -> Option<(FaultyDisk, Locker)> {
    let dir = Arc::new(tempfile::tempdir().expect("tempdir"));
    let disk = match FaultyDisk::mount(dir.clone()) {
        Ok(disk) => disk,
        Err(why) => {
            eprintln!("SKIPPED {test}: {why}");
            return None;
        }
    };
    let state = disk.mount_point.join("locker.yml");
    let server = Locker::start_on(dir, state, Options::default()).expect("start");
    assert_eq!(put(&server, "held", "k1").0, 200);
    Some((disk, server))
}

/// Refuses `count` new locks and an unlock while `fault` is on: 503 JSON each, nothing
/// visible, reads still answered, and not one byte changed on the disk.
fn assert_refused_while(server: &Locker, disk: &FaultyDisk, fault: Fault, count: usize) {
    let before = files(&disk.backing);
    disk.set(fault);
    let while_what = format!("the disk fault {fault:?} is on");
    for i in 0..count {
        let name = format!("refused-{i}");
        assert_not_persisted(put(server, &name, "k2"), &while_what);
        assert_eq!(holder(server, &name), "", "a refused lock is not visible");
    }
    assert_not_persisted(delete(server, "held", "k1"), &while_what);
    assert_eq!(holder(server, "held"), "k1", "reads keep working");
    let (status, locks) = Client::new().get(&server.url("/locks"));
    assert_eq!(status, 200, "GET /locks keeps working: {locks}");
    assert_eq!(
        files(&disk.backing),
        before,
        "refused changes left no trace on the disk"
    );
}

/// A file system that turns read-only under the server (as ext4 does with
/// `errors=remount-ro`), journal open and all: changes get 503 JSON, reads work, nothing
/// changes on disk, and once the disk is writable again the server carries on without a
/// restart, with exactly the acknowledged changes durable.
///
/// Broken on purpose (tried): in `store/file/journal.rs`, ignoring the result of `write_all` in
/// `Journal::append` makes this test fail (the change is answered 200 but never written).
#[test]
fn a_disk_that_turns_read_only_answers_503_and_recovers_without_a_restart() {
    const TEST: &str = "a_disk_that_turns_read_only_answers_503_and_recovers_without_a_restart";
    // Dropped in reverse: the server stops before the disk is unmounted.
    let Some((disk, mut server)) = server_on_faulty_disk(TEST) else {
        return;
    };

    // Enough refused changes that a compaction would be due if they had been accepted.
    assert_refused_while(&server, &disk, Fault::ReadOnly, 50);
    assert!(
        server.log().contains("could not save"),
        "the failure is logged:\n{}",
        server.log()
    );

    disk.set(Fault::None);
    assert_eq!(
        put(&server, "new", "k2").0,
        200,
        "writable again: changes work"
    );
    assert_eq!(delete(&server, "held", "k1").0, 200);
    let mut expected = vec![("new", "k2"), ("held", "")];
    let refused: Vec<String> = (0..50).map(|i| format!("refused-{i}")).collect();
    expected.extend(refused.iter().map(|name| (name.as_str(), "")));
    assert_durable(&mut server, &expected);
}

/// A disk whose writes fail (`fsync` reports EIO): changes get 503 JSON and are cut back out of
/// the journal, so a crash during the outage brings none of them back; once the disk works
/// again the server carries on without a restart.
///
/// Broken on purpose (tried): in `store/file/journal.rs`, not cutting the journal back after a failed
/// append makes this test fail (a refused lock is held after the restart).
#[test]
fn failing_fsyncs_answer_503_and_no_refused_change_survives_a_crash() {
    const TEST: &str = "failing_fsyncs_answer_503_and_no_refused_change_survives_a_crash";
    let Some((disk, mut server)) = server_on_faulty_disk(TEST) else {
        return;
    };

    assert_refused_while(&server, &disk, Fault::FailingSync, 20);
    disk.set(Fault::None);
    assert_eq!(put(&server, "after", "k3").0, 200, "the disk works again");

    // Fail again, then crash in the middle of the outage.
    assert_refused_while(&server, &disk, Fault::FailingSync, 20);
    server.kill();
    disk.set(Fault::None);
    server.restart();
    assert_eq!(holder(&server, "held"), "k1");
    assert_eq!(holder(&server, "after"), "k3");
    for i in 0..20 {
        assert_eq!(holder(&server, &format!("refused-{i}")), "", "refused-{i}");
    }
}

/// The metrics count what a failing disk refused: every 503, every batch that was tried, and
/// no grant for a change that was not saved.
///
/// Broken on purpose (tried): with `Metrics::request` not counting 503s, this test fails
/// (`locker_unavailable_total` 0, not 3).
#[test]
fn refused_changes_count_as_503s_not_as_grants() {
    const TEST: &str = "refused_changes_count_as_503s_not_as_grants";
    let Some((disk, server)) = server_on_faulty_disk(TEST) else {
        return;
    };
    disk.set(Fault::FailingSync);
    for i in 0..3 {
        assert_not_persisted(put(&server, &format!("refused-{i}"), "k2"), "fsync fails");
    }
    disk.set(Fault::None);

    let (status, text) = Client::new().get(&server.url("/metrics"));
    assert_eq!(status, 200, "{text}");
    let scrape = Scrape::parse(text.as_str().expect("the metrics are text"));
    assert_eq!(scrape.value("locker_unavailable_total", &[]), 3.0);
    assert_eq!(
        scrape.value("locker_grants_total", &[]),
        1.0,
        "only the lock taken while the disk was healthy was granted"
    );
    assert_eq!(scrape.value("locker_locks_held", &[]), 1.0);
    let batches = scrape.histogram("locker_commit_batch_size", &[]);
    assert_eq!(
        batches.sum, 4.0,
        "the refused batches were decided, and counted, too: {batches:?}"
    );
    let refused = scrape.histogram(
        "locker_http_request_duration_seconds",
        &[
            ("route", "/lock/{name}"),
            ("method", "PUT"),
            ("status", "503"),
        ],
    );
    assert_eq!(refused.count, 3.0);
}

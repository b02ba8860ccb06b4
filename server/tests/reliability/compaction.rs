//! Crash during compaction: the server is held inside one step of folding a journal segment
//! into the state file (on the FUSE disk of `faulty_disk.rs`), keeps acknowledging changes to
//! the live segment meanwhile, and is then SIGKILLed there. Restarted on the plain directory,
//! both as the server left it (a plain crash) and put back to what the disk was sure to hold
//! (a power cut: only fsynced data and directory entries), it loads exactly the acknowledged
//! state: every lock as the last answers left it, and every history entry.
//!
//! Broken on purpose (tried), each made a test here fail:
//! - in `store/file/compaction.rs`, replacing the old segment before the state file is written
//!   (`fresh_segment` first in `attempt`, when segments were not yet reused):
//!   `killed_while_the_state_file_is_renamed` failed with "the server did not start after a
//!   crash" (the live segment's first record follows a revision that nothing on disk holds any
//!   more, so loading refuses it as records missing);
//! - no directory fsync in `Files::fresh_segment`: `killed_while_the_state_file_is_written`
//!   fails with "after a power cut, the locks are not what was acknowledged" (the spare
//!   segment's name, with the acknowledged records in it, is gone);
//! - in `store/file/journal.rs`, taking any intact record after a segment's records for damage,
//!   not only one above the state file's revision (`check_rest`):
//!   `killed_while_a_folded_segment_takes_batches` and `killed_while_the_history_is_made_durable`
//!   fail with "the server did not start after a crash" (the records the segment's earlier use
//!   left after the new ones);
//! - the compaction thread left at the workers' priority (no
//!   `background::lower_this_threads_priority` in `compaction::run`): every test here fails
//!   with "the compaction thread runs at nice 10".

use std::path::Path;
use std::sync::Arc;

use locker_testkit::{Client, Locker, Options};
use serde_json::Value;

use crate::body;
use crate::faulty_disk::{Call, FaultyDisk, Stall};

pub const STATE: &str = "locker.yml";

/// A name of about 400 bytes, so that a compaction is due after a few hundred changes.
fn name(i: usize) -> String {
    format!("lock-{i}-{}", "n".repeat(400))
}

fn key(i: usize) -> String {
    format!("key-{i}-{}", "k".repeat(480))
}

/// A history entry in short: its id, revision and op.
pub type ShortEntry = (u64, u64, String);

/// What the server serves, in short: every lock (the start of its name, its key, revision and
/// token), and the history (newest first).
pub fn served(server: &Locker) -> (Vec<String>, Vec<ShortEntry>) {
    let (status, history) = Client::new().get(&server.url("/history?limit=1000"));
    assert_eq!(status, 200, "{history}");
    let number = |v: &Value| v.as_u64().expect("a number");
    let history = history
        .as_array()
        .expect("a list of entries")
        .iter()
        .map(|e| {
            let op = e["op"].as_str().unwrap_or_default().to_string();
            (number(&e["id"]), number(&e["revision"]), op)
        })
        .collect();
    (served_locks(server), history)
}

/// Every lock the server serves, in short.
pub fn served_locks(server: &Locker) -> Vec<String> {
    let (status, locks) = Client::new().get(&server.url("/locks"));
    assert_eq!(status, 200, "{locks}");
    let short = |v: &Value| {
        v.as_str()
            .map_or(String::new(), |s| s.chars().take(8).collect())
    };
    locks
        .as_object()
        .expect("an object of locks")
        .iter()
        .map(|(name, lock)| {
            let name: String = name.chars().take(8).collect();
            format!(
                "{name} key {} revision {} token {}",
                short(&lock["key"]),
                lock["revision"],
                lock["token"]
            )
        })
        .collect()
}

/// The `i`th change: a lock or an unlock of one of 8 locks; returns its revision.
pub fn change(server: &Locker, i: usize, lock: bool) -> u64 {
    let client = Client::new();
    let url = server.url(&format!("/lock/{}", name(i % 8)));
    let claim = body(&key(i % 8), &format!("compaction-test-{}", "r".repeat(480)));
    let (status, answer) = if lock {
        client.put(&url, &claim)
    } else {
        client.delete(&url, &claim)
    };
    assert_eq!(status, 200, "change {i}: {answer}");
    answer["lock"]["revision"].as_u64().expect("a revision")
}

/// Runs the server on a FUSE disk that holds `stall`, changes locks until the server sits in
/// it, makes 20 more changes, and kills it there; then checks what two restarts load (after a
/// plain crash, and after a power cut).
fn killed_while(stall: Stall, history_max: Option<&str>) {
    let test = format!("killed while {stall:?}");
    let dir = Arc::new(tempfile::tempdir().expect("tempdir"));
    let disk = match FaultyDisk::mount(dir.clone()) {
        Ok(disk) => disk,
        Err(why) => {
            eprintln!("SKIPPED {test}: {why}");
            return;
        }
    };
    let mut options = Options::default();
    if let Some(max) = history_max {
        options = options.env("LOCKER_HISTORY_MAX", max);
    }
    let mut server = Locker::start_on(dir.clone(), disk.mount_point.join(STATE), options.clone())
        .expect("start");
    disk.stall(stall.clone());
    let mut i = 0;
    while !disk.stalled() {
        change(&server, i, true);
        change(&server, i, false);
        i += 1;
        assert!(i < 2000, "{test}: the call was never made");
    }
    // The fold runs on its own thread, below the requests' priority (checked once the disk
    // no longer holds the server: a test that fails while it does would never end).
    let compaction_nice = crate::threads_named(server.pid(), "locker-compact");
    // The compaction is held: the live segment takes these.
    for j in 0..20 {
        change(&server, i + j, j % 3 != 2);
    }
    let acknowledged = served(&server);

    // SIGKILL while the call is held, then the power goes (which lets the call fail).
    unsafe { libc::kill(server.pid() as i32, libc::SIGKILL) };
    disk.power_cut(false);
    server.kill();
    let crashed = tempfile::tempdir().expect("tempdir");
    for entry in std::fs::read_dir(&disk.backing).unwrap() {
        let path = entry.unwrap().path();
        std::fs::copy(&path, crashed.path().join(path.file_name().unwrap())).unwrap();
    }
    disk.power_cut(true);
    assert_eq!(
        compaction_nice,
        [10],
        "{test}: the compaction thread runs at nice 10"
    );

    for (what, files) in [("a crash", crashed.path()), ("a power cut", &*disk.backing)] {
        let restarted = Locker::start_on(dir.clone(), files.join(STATE), options.clone())
            .unwrap_or_else(|f| {
                panic!(
                    "{test}: the server did not start after {what}:\n{}\nfiles: {:?}",
                    f.log,
                    listing(files)
                )
            });
        let loaded = served(&restarted);
        assert_eq!(
            loaded.0,
            acknowledged.0,
            "{test}: after {what}, the locks are not what was acknowledged; files: {:?}",
            listing(files)
        );
        assert_eq!(
            loaded.1,
            acknowledged.1,
            "{test}: after {what}, the history is not what was acknowledged; files: {:?}",
            listing(files)
        );
        drop(restarted);
    }
}

/// The files in `dir` and their sizes, for failure messages.
pub fn listing(dir: &Path) -> Vec<(String, u64)> {
    let mut files: Vec<(String, u64)> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| {
            let e = e.unwrap();
            (
                e.file_name().to_string_lossy().into_owned(),
                e.metadata().unwrap().len(),
            )
        })
        .collect();
    files.sort();
    files
}

pub fn stall(call: Call, name: &str, after: &[(Call, &str)]) -> Stall {
    Stall {
        call,
        name: name.to_string(),
        after: after.iter().map(|(c, n)| (*c, n.to_string())).collect(),
    }
}

/// The steps of a fold, after the state file's temporary file was renamed into place.
const AFTER_RENAME: (Call, &str) = (Call::Rename, "locker.yml.tmp");

#[test]
fn killed_while_the_spare_segment_is_written() {
    // Before the first compaction the spare segment is made (later folds reuse the old one).
    killed_while(stall(Call::Fsync, "locker.yml.journal.tmp", &[]), None);
}

#[test]
fn killed_while_the_state_file_is_written() {
    killed_while(stall(Call::Write, "locker.yml.tmp", &[]), None);
    killed_while(stall(Call::Fsync, "locker.yml.tmp", &[]), None);
}

#[test]
fn killed_while_the_state_file_is_renamed() {
    killed_while(stall(Call::Rename, "locker.yml.tmp", &[]), None);
    killed_while(stall(Call::FsyncDir, "", &[AFTER_RENAME]), None);
}

#[test]
fn killed_while_the_history_is_made_durable() {
    killed_while(
        stall(Call::Fsync, "locker.yml.history", &[AFTER_RENAME]),
        None,
    );
    // With few entries kept, the history file is rewritten at every compaction.
    killed_while(
        stall(Call::Rename, "locker.yml.history.tmp", &[AFTER_RENAME]),
        Some("10"),
    );
}

#[test]
fn killed_while_a_folded_segment_takes_batches() {
    // The second fold: the segment the first one folded takes the batches meanwhile, written
    // over its old records (which loading must pass over, and never take for damage).
    killed_while(stall(Call::Write, "locker.yml.tmp", &[AFTER_RENAME]), None);
    killed_while(stall(Call::Rename, "locker.yml.tmp", &[AFTER_RENAME]), None);
}

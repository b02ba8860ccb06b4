//! Corrupt state files: the server loads exactly the last good state or refuses to start with
//! a message naming the file; it never starts empty over existing data and never changes a
//! file it refused.
//!
//! Broken on purpose (tried): in `store/file/state_file.rs`, taking an empty file as an empty table makes
//! `broken_files_are_refused_and_left_untouched` fail ("started over an empty file, serving {}").
//! `a_truncated_file_loads_the_good_state_or_is_refused` fails as things are (see its note).

use std::path::{Path, PathBuf};
use std::sync::Arc;

use locker_testkit::{Client, Locker, Options};
use serde_json::Value;

use crate::history::{Rng, seed};
use crate::{body, encode, long_tests};

/// A state file written by the server itself, and the locks it served from it.
struct GoodFile {
    bytes: Vec<u8>,
    locks: Value,
}

fn good_file() -> GoodFile {
    let mut server = Locker::start();
    let client = Client::new();
    for (name, key, requestor) in [
        ("prod", "deploy-1", "pipeline-a"),
        ("prod", "deploy-1", "pipeline-b"),
        ("null", "k", "r"),
        ("a/b", "🚀", "emoji"),
        ("free-again", "k", "r"),
    ] {
        let url = server.url(&format!("/lock/{}", encode(name)));
        assert_eq!(client.put(&url, &body(key, requestor)).0, 200);
    }
    let url = server.url("/lock/free-again");
    assert_eq!(client.delete(&url, &body("k", "r")).0, 200);
    let (_, locks) = client.get(&server.url("/locks"));
    assert_eq!(server.stop().code(), Some(0));
    GoodFile {
        bytes: std::fs::read(server.state_file()).unwrap(),
        locks,
    }
}

/// What starting on a file came to.
enum Outcome {
    /// It started and served these locks.
    Served(Value),
    /// It refused; its log.
    Refused(String),
}

/// Starts a server on `content` (and, if given, a leftover temporary file); checks that a
/// refusal names the file and leaves it as it was.
fn start_on(content: &[u8], leftover_tmp: Option<&[u8]>) -> Outcome {
    let dir = Arc::new(tempfile::tempdir().unwrap());
    let path: PathBuf = dir.path().join("locker.yml");
    std::fs::write(&path, content).unwrap();
    if let Some(tmp) = leftover_tmp {
        std::fs::write(dir.path().join("locker.yml.tmp"), tmp).unwrap();
    }
    // `dir` outlives the attempt: a refused start drops the clone it was given.
    match Locker::start_on(dir.clone(), path.clone(), Options::default()) {
        Ok(mut server) => {
            let (status, locks) = Client::new().get(&server.url("/locks"));
            assert_eq!(status, 200);
            server.kill();
            Outcome::Served(locks)
        }
        Err(failure) => {
            assert!(
                failure.status.is_some_and(|s| !s.success()),
                "a refusal exits non-zero: {failure:?}"
            );
            assert!(
                failure.log.contains(&path.display().to_string()),
                "the refusal names the file:\n{}",
                failure.log
            );
            assert!(!failure.log.contains("panicked"), "{}", failure.log);
            assert_eq!(
                read(&path),
                content,
                "the refused file must be left untouched (log:\n{})",
                failure.log
            );
            Outcome::Refused(failure.log)
        }
    }
}

fn read(path: &Path) -> Vec<u8> {
    std::fs::read(path).unwrap()
}

/// Every prefix of a good file either loads exactly the good state or is refused.
///
/// Truncation cannot come from the server's own writes (it renames a complete file into
/// place), but a disk, a backup tool or a hand edit can leave one.
#[test]
fn a_truncated_file_loads_the_good_state_or_is_refused() {
    let good = good_file();
    // By default every cut near a line end (where YAML is most likely to still parse) and
    // every fifth other one; with LOCKER_LONG_TESTS every offset.
    let near_line_end = |len: usize| {
        good.bytes[len.saturating_sub(2)..(len + 2).min(good.bytes.len())].contains(&b'\n')
    };
    let mut problems = Vec::new();
    for len in
        (0..good.bytes.len()).filter(|&len| long_tests() || len % 5 == 0 || near_line_end(len))
    {
        if let Outcome::Served(locks) = start_on(&good.bytes[..len], None)
            && locks != good.locks
        {
            problems.push(format!(
                "cut after {len} of {} bytes ({:?}) it started with {locks}",
                good.bytes.len(),
                String::from_utf8_lossy(&good.bytes[len.saturating_sub(20)..len])
            ));
        }
    }
    assert!(
        problems.is_empty(),
        "a truncated file must be refused or load the last good state:\n{}\nthe good state: {}",
        problems.join("\n"),
        good.locks
    );
}

#[test]
fn broken_files_are_refused_and_left_untouched() {
    let good = good_file();
    let text = String::from_utf8(good.bytes.clone()).unwrap();
    let duplicated = text.replacen("locks:\n", &format!("locks:\n{}", lock_entry(&text)), 1);
    let cases: Vec<(&str, Vec<u8>)> = vec![
        ("an empty file", Vec::new()),
        ("only whitespace", b"  \n\n".to_vec()),
        ("a YAML list", b"- version: 1\n- locks: {}\n".to_vec()),
        ("a YAML scalar", b"locks\n".to_vec()),
        ("no locks", b"version: 1\nrevision: 3\n".to_vec()),
        (
            "an unknown version",
            text.replacen("version: 2", "version: 9", 1).into_bytes(),
        ),
        (
            "a lock as a list",
            b"version: 1\nrevision: 1\nlocks:\n  a: [1, 2]\n".to_vec(),
        ),
        ("a negative count", {
            let broken = text.replacen(
                "\"pipeline-a\",\"count\":1",
                "\"pipeline-a\",\"count\":-1",
                1,
            );
            assert_ne!(broken, text, "the good file has pipeline-a's count to break");
            broken.into_bytes()
        }),
        (
            "a negative count in block YAML",
            b"version: 1\nrevision: 1\nlocks:\n  a:\n    key: k\n    locked_by:\n      r: -1\n    revision: 1\n    locked_at: null\n# end of locker state file\n".to_vec(),
        ),
        ("a duplicate lock", duplicated.into_bytes()),
        (
            "duplicate legacy locks",
            br#"{"a": {"locked_by": {"r": 1}, "key": "k"}, "a": {"locked_by": {}, "key": ""}}"#
                .to_vec(),
        ),
        (
            "truncated legacy JSON",
            br#"{"a": {"locked_by": {"r": 1}, "key": "k"}"#.to_vec(),
        ),
        ("NUL bytes", vec![0; 64]),
        (
            "invalid UTF-8",
            b"version: 1\nrevision: 1\nlocks:\n  \xff\xfe: x\n".to_vec(),
        ),
    ];
    for (what, content) in cases {
        match start_on(&content, None) {
            Outcome::Refused(_) => {}
            Outcome::Served(locks) => panic!("started over {what}, serving {locks}"),
        }
    }
}

/// The first lock of a file as written (its line under `locks:`, and any indented lines).
fn lock_entry(text: &str) -> String {
    let after = text.split_once("locks:\n").expect("a locks section").1;
    let mut lines = after.lines();
    let mut entry = format!("{}\n", lines.next().unwrap());
    for line in lines.take_while(|l| l.starts_with("    ")) {
        entry.push_str(line);
        entry.push('\n');
    }
    entry
}

#[test]
fn random_bytes_are_refused() {
    let mut rng = Rng(seed("random_bytes_are_refused"));
    let runs = if long_tests() { 500 } else { 40 };
    for _ in 0..runs {
        let len = 1 + rng.below(600) as usize;
        let content: Vec<u8> = (0..len).map(|_| rng.next() as u8).collect();
        if let Outcome::Served(locks) = start_on(&content, None) {
            assert_eq!(
                locks,
                serde_json::json!({}),
                "random bytes {content:?} loaded as locks"
            );
        }
    }
}

#[test]
fn a_leftover_temporary_file_is_ignored() {
    let good = good_file();
    let newer = String::from_utf8(good.bytes.clone())
        .unwrap()
        .replace("deploy-1", "never-acknowledged");
    for leftover in [
        &good.bytes[..good.bytes.len() / 2],
        b"\0\0garbage".as_slice(),
        newer.as_bytes(),
    ] {
        match start_on(&good.bytes, Some(leftover)) {
            Outcome::Served(locks) => assert_eq!(
                locks, good.locks,
                "an interrupted write was never acknowledged: the state file wins"
            ),
            Outcome::Refused(log) => panic!("refused a good file next to a leftover:\n{log}"),
        }
    }
}

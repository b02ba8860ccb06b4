//! State files with many held locks, written by the server's own state file code, for the
//! big-table and start-up scenarios.

use std::fs;
use std::path::Path;
use std::time::{Duration, SystemTime};

use locker_server::domain::{Claim, LockTable, Op};
use locker_server::state_file;

/// Writes a state file in which `count` locks (`held-000000`, ...) are each held by its own
/// key and requestor; the benchmark's own lock names never collide with them.
pub fn write_held_locks(path: &Path, count: usize) -> std::io::Result<()> {
    let mut table = LockTable::default();
    let at = SystemTime::UNIX_EPOCH + Duration::from_secs(1_795_000_000);
    for i in 0..count {
        let claim = Claim::new(format!("key-{i}"), format!("pipeline-{i}"));
        table.apply(&format!("held-{i:06}"), Op::Lock, &claim, at);
    }
    fs::write(path, state_file::to_bytes(&table)?)
}

/// Writes a state file in which `count` locks (`leased-000000`, ...) are each held with a lease
/// that ends at `ends`, all in the same second: an expiry storm waiting to happen.
pub fn write_leased_locks(path: &Path, count: usize, ends: SystemTime) -> std::io::Result<()> {
    let mut table = LockTable::default();
    let now = SystemTime::now();
    let ttl = ends.duration_since(now).unwrap_or(Duration::from_secs(1));
    for i in 0..count {
        let claim = Claim {
            ttl: Some(ttl),
            ..Claim::new(format!("key-{i}"), format!("pipeline-{i}"))
        };
        table.apply(&format!("leased-{i:06}"), Op::Lock, &claim, now);
    }
    fs::write(path, state_file::to_bytes(&table)?)
}

/// Writes the same table as [`write_held_locks`] in block YAML, the shape of a hand-written
/// file (and of files this server wrote before it switched to one line per lock).
pub fn write_held_locks_block_yaml(path: &Path, count: usize) -> std::io::Result<()> {
    use std::fmt::Write as _;
    let mut text = String::with_capacity(count * 120 + 64);
    let _ = write!(text, "version: 1\nrevision: {count}\nlocks:\n");
    for i in 0..count {
        let _ = write!(
            text,
            "  held-{i:06}:\n    key: key-{i}\n    locked_by:\n      pipeline-{i}: 1\n    revision: {}\n    locked_at: 2026-11-18T09:33:20.000Z\n",
            i + 1
        );
    }
    text.push_str(state_file::END_LINE);
    text.push('\n');
    fs::write(path, text)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn writes_one_held_lock_per_entry() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("s.yml");
        write_held_locks(&path, 2).unwrap();
        let text = fs::read_to_string(path).unwrap();
        assert!(
            text.starts_with(
                "version: 2\nrevision: 2\nlocks:\n  \"held-000000\": {\"key\":\"key-0\""
            ),
            "{text}"
        );
        assert_eq!(text.matches("locked_at").count(), 2);
        assert!(text.ends_with("\n# end of locker state file\n"));
    }
}

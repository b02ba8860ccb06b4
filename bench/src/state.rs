//! State files with many held locks, written in the server's version 1 YAML format, for the
//! big-table and start-up scenarios.

use std::fmt::Write as _;
use std::fs;
use std::path::Path;

/// Writes a state file in which `count` locks (`held-000000`, ...) are each held by its own
/// key and requestor; the benchmark's own lock names never collide with them.
pub fn write_held_locks(path: &Path, count: usize) -> std::io::Result<()> {
    let mut text = String::with_capacity(count * 120 + 64);
    let _ = write!(text, "version: 1\nrevision: {count}\nlocks:\n");
    for i in 0..count {
        let _ = write!(
            text,
            "  held-{i:06}:\n    key: key-{i}\n    locked_by:\n      pipeline-{i}: 1\n    revision: {}\n    locked_at: 2026-11-27T10:00:00.123Z\n",
            i + 1
        );
    }
    // The server refuses a file without its end line: it takes it for one cut short.
    text.push_str("# end of locker state file\n");
    fs::write(path, text)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn writes_one_entry_per_lock_under_the_header() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("s.yml");
        write_held_locks(&path, 2).unwrap();
        let text = fs::read_to_string(path).unwrap();
        assert!(text.starts_with("version: 1\nrevision: 2\nlocks:\n  held-000000:\n"));
        assert_eq!(text.matches("locked_at:").count(), 2);
        assert!(text.contains("    revision: 2\n"));
        assert!(text.ends_with("\n# end of locker state file\n"));
    }
}

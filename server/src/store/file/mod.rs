//! The file backend: the lock table in memory, made durable in a YAML state file and a
//! journal beside it (the original server's file, read and replaced in place).
//!
//! The writer thread only ever appends a record to the journal and fsyncs it; the whole table
//! is written into the state file on a thread of its own, while new batches go to a fresh
//! journal segment.
//!
//! - [`state_file`]: the state file, its format, loading, and what the writer does per batch.
//! - [`journal`]: the batches committed since the state file was last written, in two
//!   segments written in turn.
//! - [`compaction`]: folding a segment into the state file in the background.
//! - [`history`]: the history file beside them.
//! - [`codec`]: how a lock is written to either and read back.

pub(crate) mod codec;
mod compaction;
mod history;
mod journal;
mod state_file;

use std::io;
use std::path::Path;
use std::time::SystemTime;

pub use state_file::{END_LINE, Format, OpenError, StateFile, to_bytes};

use super::backend::{Backend, CommitError, Committed, Request};
use crate::domain::LockTable;

/// The lock table, held in memory and made durable in a [`StateFile`].
#[derive(Debug)]
pub struct FileBackend {
    file: StateFile,
    table: LockTable,
}

impl FileBackend {
    /// Opens (or creates) the state file at `path` and loads its table, keeping the latest
    /// `history_max` history entries (in memory and in the history file beside it).
    pub fn open_keeping(
        path: &Path,
        history_max: usize,
    ) -> Result<(FileBackend, Format), OpenError> {
        let (file, table, format) = StateFile::open_keeping(path, history_max)?;
        Ok((FileBackend { file, table }, format))
    }

    /// The path of the state file.
    pub fn path(&self) -> &Path {
        self.file.path()
    }
}

impl Backend for FileBackend {
    fn table(&self) -> &LockTable {
        &self.table
    }

    /// Expires what is due, decides the batch on the table in memory, appends its changes to
    /// the journal with one fsync, and only then takes them into the table (with the batch's
    /// queue changes, which are not written); then starts a compaction if one is due.
    fn decide_and_commit(
        &mut self,
        requests: &[Request],
        now: SystemTime,
    ) -> Result<Committed, CommitError> {
        let mut batch = self.table.batch();
        batch.expire_due(now);
        let decisions = requests
            .iter()
            .map(|r| batch.apply(&r.name, r.op, &r.claim, now))
            .collect();
        let mut changes = batch.into_changes();
        if !changes.locks.is_empty() {
            self.file.commit(&self.table, &changes).map_err(|e| {
                CommitError(format!(
                    "the change could not be saved to the state file ({e})"
                ))
            })?;
        }
        let answers = std::mem::take(&mut changes.answers);
        let changed = !changes.is_empty();
        let wrote = !changes.locks.is_empty();
        let history = if changed {
            self.table.commit(changes)
        } else {
            Vec::new()
        };
        if wrote {
            self.file.compact_if_due(&self.table);
        }
        Ok(Committed {
            decisions,
            answers,
            changed,
            history,
        })
    }

    /// A commit is one `pwrite` and one `fdatasync` of the journal (a compaction that is due
    /// runs on a thread of its own).
    fn commits_inline(&self) -> bool {
        true
    }

    /// Waits for a running compaction, then folds the journal into the state file and removes
    /// its segments, so that after a clean stop the state file alone holds everything (for
    /// backups, and for going back to the original server).
    fn finish(&mut self) -> io::Result<()> {
        self.file.finish(&self.table)
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;
    use crate::domain::{Claim, Op};

    fn lock(backend: &mut FileBackend, name: &str, key: &str, op: Op) {
        let request = Request {
            name: name.into(),
            op,
            claim: Claim::new(key, key),
        };
        let now = SystemTime::UNIX_EPOCH + Duration::from_secs(1_800_000_000);
        backend.decide_and_commit(&[request], now).unwrap();
    }

    fn state_revision(path: &Path) -> u64 {
        let text = std::fs::read_to_string(path).unwrap();
        text.lines()
            .find_map(|l| l.strip_prefix("revision: "))
            .unwrap()
            .parse()
            .unwrap()
    }

    #[test]
    fn segments_take_turns_while_the_state_file_is_written_in_the_background() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("locks.yml");
        let segments = ["locks.yml.journal", "locks.yml.journal.2"].map(|n| dir.path().join(n));
        let (mut backend, _) = FileBackend::open_keeping(&path, 1000).unwrap();
        backend.file.compact_from(4096);
        for i in 0..200 {
            let op = if i % 2 == 0 { Op::Lock } else { Op::Unlock };
            lock(&mut backend, &format!("l{}", i % 7), "k", op);
            if i % 20 == 0 {
                backend.file.wait_for_compaction();
            }
        }
        backend.file.wait_for_compaction();
        assert!(
            segments.iter().all(|s| s.exists()),
            "both segments are in use"
        );
        let folded = state_revision(&path);
        assert!(
            folded > 100,
            "the state file was rewritten in the background (revision {folded})"
        );
        let table = backend.table.clone();

        // A crash now (no finish): both segments and the state file load to the same table.
        drop(backend);
        let (mut backend, _) = FileBackend::open_keeping(&path, 1000).unwrap();
        assert_eq!(backend.table.without_history(), table.without_history());
        assert_eq!(backend.table.history(), table.history());
        lock(&mut backend, "after", "k", Op::Lock);
        let table = backend.table.clone();

        // A clean stop folds everything into the state file and leaves no segment.
        backend.finish().unwrap();
        drop(backend);
        assert!(segments.iter().all(|s| !s.exists()), "no segment is left");
        assert_eq!(state_revision(&path), table.revision);
        let (backend, _) = FileBackend::open_keeping(&path, 1000).unwrap();
        assert_eq!(backend.table.without_history(), table.without_history());
        assert_eq!(backend.table.history(), table.history());
    }

    #[test]
    fn folded_segments_are_written_over_and_load_after_a_crash_at_every_batch() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("locks.yml");
        let (mut backend, _) = FileBackend::open_keeping(&path, 1000).unwrap();
        // A new segment is made of zeros, and its first record does not grow it.
        let live = backend.file.live_segment().to_owned();
        let len = || std::fs::metadata(&live).unwrap().len();
        assert_eq!(len(), journal::NEW_SEGMENT_LEN);
        lock(&mut backend, "first", "k", Op::Lock);
        assert_eq!(len(), journal::NEW_SEGMENT_LEN);
        backend.file.compact_from(4096);
        let mut written_over = 0;
        for i in 0..400 {
            let op = if i % 3 == 2 { Op::Unlock } else { Op::Lock };
            lock(
                &mut backend,
                &format!("l{}-{}", i % 11, "n".repeat(i % 50)),
                "k",
                op,
            );
            backend.file.wait_for_compaction();
            // A crash now: the files as they are.
            let crashed = tempfile::tempdir().unwrap();
            for entry in std::fs::read_dir(dir.path()).unwrap() {
                let entry = entry.unwrap().path();
                std::fs::copy(&entry, crashed.path().join(entry.file_name().unwrap())).unwrap();
            }
            let live = backend.file.live_segment();
            let folded = state_revision(&path);
            let read = journal::read_segment(live, folded, &mut |_| Ok(())).unwrap();
            let bytes = std::fs::read(live).unwrap();
            if bytes[read.good_len as usize..].iter().any(|&b| b != 0) {
                written_over += 1;
            }
            let (loaded, _) = FileBackend::open_keeping(&crashed.path().join("locks.yml"), 1000)
                .unwrap_or_else(|e| panic!("after batch {i}: {e}"));
            assert_eq!(
                loaded.table.without_history(),
                backend.table.without_history(),
                "after batch {i}"
            );
            assert_eq!(
                loaded.table.history(),
                backend.table.history(),
                "after batch {i}"
            );
        }
        assert!(
            written_over > 20,
            "the live segment was a folded one, written over, after {written_over} batches of 400"
        );
    }
}

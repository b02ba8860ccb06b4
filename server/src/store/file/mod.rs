//! The file backend: the lock table in memory, made durable in a YAML state file and an
//! append-only journal beside it (the original server's file, read and replaced in place).
//!
//! - [`state_file`]: the state file, its format, and atomic replacement.
//! - [`journal`]: the batches committed since the state file was last written.
//! - [`codec`]: how a lock is written to either and read back.

pub(crate) mod codec;
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
    /// queue changes, which are not written).
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
        let history = if changed {
            self.table.commit(changes)
        } else {
            Vec::new()
        };
        Ok(Committed {
            decisions,
            answers,
            changed,
            history,
        })
    }

    /// Folds the journal into the state file, so that after a clean stop the state file alone
    /// holds everything (for backups, and for going back to the original server).
    fn finish(&mut self) -> io::Result<()> {
        self.file.compact(&self.table)
    }
}

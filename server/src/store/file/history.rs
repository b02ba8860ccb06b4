//! The history file: the table's history entries, one JSON line each, beside the state file.
//!
//! Each batch's entries are durable first in its journal record (the same fsync as the
//! change). The compaction thread appends the entries a journal segment carried and fsyncs
//! this file before it removes that segment (and so does the writer at shutdown). So after a
//! crash every entry of an acknowledged change is either here or in the journal, and loading
//! takes the journal's entries that are missing here. Lines are cut back to the last complete
//! one. When the file holds twice as many entries as are kept, it is rewritten with the kept
//! ones, so the disk use is bounded.

use std::collections::VecDeque;
use std::fs::{self, File, OpenOptions};
use std::io::{self, BufRead, Write};
use std::path::{Path, PathBuf};

use super::codec::StoredEntry;
use crate::domain::Entry;

/// The open history file.
#[derive(Debug)]
pub(super) struct HistoryFile {
    path: PathBuf,
    tmp_path: PathBuf,
    file: File,
    /// Entries in the file.
    lines: usize,
    /// The id of the last entry in the file.
    last_id: u64,
    /// How many entries are kept.
    max: usize,
    /// Set when an append failed: the file is rewritten from memory at the next sync.
    damaged: bool,
}

/// A history file as read, before anything is written to it.
#[derive(Debug, Default)]
pub(super) struct HistoryRead {
    /// Its latest entries, oldest first: at most as many as are kept.
    pub entries: Vec<Entry>,
    /// Bytes of complete lines.
    good_len: u64,
    /// Entries in the file.
    lines: usize,
    /// The id of its last entry (0: none).
    last_id: u64,
}

impl HistoryFile {
    /// Reads the history file at `path` (absent means empty) without changing it, keeping
    /// the latest `max` entries. A damaged line is skipped with a warning: history is a
    /// record, not state.
    pub fn read(path: &Path, max: usize) -> io::Result<HistoryRead> {
        let mut entries = VecDeque::new();
        let mut read = HistoryRead::default();
        if let Ok(file) = File::open(path) {
            let mut reader = io::BufReader::new(file);
            let mut line = String::new();
            loop {
                line.clear();
                let n = reader.read_line(&mut line)?;
                if n == 0 || !line.ends_with('\n') {
                    break;
                }
                read.good_len += n as u64;
                let parsed = serde_json::from_str::<StoredEntry>(&line)
                    .map_err(|e| e.to_string())
                    .and_then(StoredEntry::into_entry);
                match parsed {
                    Ok(entry) if entry.id > read.last_id => {
                        read.lines += 1;
                        read.last_id = entry.id;
                        entries.push_back(entry);
                        if entries.len() > max {
                            entries.pop_front();
                        }
                    }
                    Ok(entry) => tracing::warn!(
                        "{}: skipping history entry {} out of order",
                        path.display(),
                        entry.id
                    ),
                    Err(e) => tracing::warn!("{}: skipping a damaged line ({e})", path.display()),
                }
            }
        }
        read.entries = entries.into();
        Ok(read)
    }

    /// Opens (or creates) the history file at `path` that `read` came from, for appending,
    /// and cuts off an append that never finished (what it held is in the journal).
    pub fn open(path: &Path, read: &HistoryRead, max: usize) -> io::Result<HistoryFile> {
        let file = OpenOptions::new().create(true).append(true).open(path)?;
        if file.metadata()?.len() > read.good_len {
            file.set_len(read.good_len)?;
        }
        Ok(HistoryFile {
            path: path.to_owned(),
            tmp_path: path.with_extension("history.tmp"),
            file,
            lines: read.lines,
            last_id: read.last_id,
            max,
            damaged: false,
        })
    }

    /// Appends the entries not in the file yet (not fsynced: their journal record holds them
    /// until [`Self::sync`]).
    pub fn append<'a>(&mut self, entries: impl IntoIterator<Item = &'a Entry>) {
        let entries: Vec<&Entry> = entries
            .into_iter()
            .filter(|e| e.id > self.last_id)
            .collect();
        if entries.is_empty() || self.damaged {
            self.damaged |= !entries.is_empty();
            return;
        }
        let mut buf = Vec::with_capacity(256 * entries.len());
        for entry in &entries {
            if serde_json::to_writer(&mut buf, &StoredEntry::of(entry)).is_err() {
                self.damaged = true;
                return;
            }
            buf.push(b'\n');
        }
        match self.file.write_all(&buf) {
            Ok(()) => {
                self.lines += entries.len();
                self.last_id = entries.last().map_or(self.last_id, |e| e.id);
            }
            Err(e) => {
                tracing::warn!(error = %e, "could not append to {}; it is rewritten at the next compaction", self.path.display());
                self.damaged = true;
            }
        }
    }

    /// Makes the file durable before the journal that also holds its entries is emptied:
    /// fsynced, or rewritten from `kept` (the latest entries, oldest first) when an append
    /// failed or the file has grown to twice what is kept.
    pub fn sync(&mut self, kept: &[&Entry]) -> io::Result<()> {
        if !self.damaged && self.lines <= 2 * self.max {
            return self.file.sync_all();
        }
        let mut buf = Vec::new();
        let mut lines = 0;
        let mut last_id = 0;
        for entry in kept.iter().skip(kept.len().saturating_sub(self.max)) {
            serde_json::to_writer(&mut buf, &StoredEntry::of(entry)).map_err(io::Error::other)?;
            buf.push(b'\n');
            lines += 1;
            last_id = entry.id;
        }
        let mut tmp = File::create(&self.tmp_path)?;
        tmp.write_all(&buf)?;
        tmp.sync_all()?;
        drop(tmp);
        fs::rename(&self.tmp_path, &self.path)?;
        if let Some(dir) = self.path.parent().filter(|p| !p.as_os_str().is_empty()) {
            File::open(dir)?.sync_all()?;
        }
        self.file = OpenOptions::new().append(true).open(&self.path)?;
        self.lines = lines;
        self.last_id = last_id;
        self.damaged = false;
        Ok(())
    }
}

//! The history file: the table's history entries, one JSON line each, beside the state file.
//!
//! Each batch's entries are durable first in its journal record (the same fsync as the
//! change). The compaction thread appends the entries a journal segment carried and fsyncs
//! this file before it removes that segment (and so does the writer at shutdown). So after a
//! crash every entry of an acknowledged change is either here or in the journal, and loading
//! takes the journal's entries that are missing here. Lines are cut back to the last complete
//! one. When the file holds twice as many entries as are kept, it is rewritten with the kept
//! ones, so the disk use is bounded.

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

impl HistoryFile {
    /// Opens (or creates) the history file at `path`; returns it and its entries, oldest
    /// first. A damaged line is skipped with a warning: history is a record, not state.
    pub fn open(path: &Path, max: usize) -> io::Result<(HistoryFile, Vec<Entry>)> {
        let mut entries = Vec::new();
        let mut good_len = 0u64;
        let mut lines = 0usize;
        if let Ok(file) = File::open(path) {
            let mut reader = io::BufReader::new(file);
            let mut line = String::new();
            loop {
                line.clear();
                let n = reader.read_line(&mut line)?;
                if n == 0 || !line.ends_with('\n') {
                    break;
                }
                good_len += n as u64;
                let parsed = serde_json::from_str::<StoredEntry>(&line)
                    .map_err(|e| e.to_string())
                    .and_then(StoredEntry::into_entry);
                match parsed {
                    Ok(entry) if entries.last().is_none_or(|e: &Entry| e.id < entry.id) => {
                        lines += 1;
                        entries.push(entry);
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
        let file = OpenOptions::new().create(true).append(true).open(path)?;
        // An append that never finished held nothing only here: cut it off.
        if file.metadata()?.len() > good_len {
            file.set_len(good_len)?;
        }
        if entries.len() > max {
            entries.drain(..entries.len() - max);
        }
        let history = HistoryFile {
            path: path.to_owned(),
            tmp_path: path.with_extension("history.tmp"),
            file,
            lines,
            last_id: entries.last().map_or(0, |e| e.id),
            max,
            damaged: false,
        };
        Ok((history, entries))
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

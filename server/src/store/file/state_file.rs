//! The state file: where the lock table lives between runs, and how it is replaced safely.
//!
//! The file is YAML with a version header, one lock per line (as a JSON-style flow mapping,
//! which is YAML too), and an end line that shows the file is complete:
//!
//! ```yaml
//! version: 2
//! revision: 42
//! locks:
//!   "prod": {"key":"deploy-1","holders":[{"requestor":"pipeline-a","count":1,"since":"2026-11-27T10:00:00.123Z","expires_at":"2026-11-27T11:00:00.123Z","owner":[["job","deploy"]]}],"revision":42,"locked_at":"2026-11-27T10:00:00.123Z","token":42}
//!   "staging": {"key":"","holders":[],"revision":40,"locked_at":null,"token":null}
//! # end of locker state file
//! ```
//!
//! Version 1 files (and journals), which had `"locked_by":{"pipeline-a":1}` in place of
//! `holders` and no `token`, are read too and rewritten as version 2 by the next compaction.
//!
//! Any YAML of the same shape is read too (a hand-edited file, say); the one-line form is
//! only what this server writes, because it is quick to write and to read back.
//!
//! The original Go server's file (JSON, `{"NAME": {"locked_by": {"R": 2}, "key": "K"}}`) is
//! read as well and replaced by this format on the first change.
//!
//! Each batch of changes is appended to a journal next to the file (two segments,
//! `<file>.journal` and `<file>.journal.2`, see [`super::journal`]) and fsynced. When the live
//! segment has grown past four times the state file, the writer switches to the other segment
//! and the compaction thread ([`super::compaction`]) writes the whole table into the state
//! file: to a temporary file in the same directory, which is fsynced, renamed over the state
//! file, and followed by an fsync of the directory, so the file on disk is always either the
//! previous state or the new one. At shutdown the writer waits for a running compaction and folds
//! everything into the state file itself, then removes both segments: after a clean shutdown
//! the state file alone holds everything. A sidecar `<file>.lock` is held with an exclusive
//! lock for the life of the process; the state file itself can't carry the lock because each
//! write replaces it with a new inode.

use std::fs::{self, File, OpenOptions};
use std::io::{self, BufRead, Write};
use std::path::{Path, PathBuf};

use locker_protocol::names;
use serde::Deserialize;

use std::sync::{Arc, Mutex};

use super::codec::{StoredLock, StoredLockView, UniqueMap};
use super::compaction::{Compactor, Done, Files, Job};
use super::history::HistoryFile;
use super::journal::{self, Replayed, Segment};
use crate::domain::{Changes, Holders, Lock, LockTable};

/// The format version this server writes and reads.
pub const VERSION: u64 = 2;

/// The last line of every state file this server writes. A file cut short anywhere (by a copy,
/// a full disk or a careless edit) lacks it, even where what is left still parses as YAML.
pub const END_LINE: &str = "# end of locker state file";

/// Why the state file could not be opened. Each message names the file and says what to do.
#[derive(Debug, thiserror::Error)]
pub enum OpenError {
    #[error(
        "state file {path} is in use by another locker server (it holds {lock}); stop that server or point LOCKER_CONFIG elsewhere"
    )]
    InUse { path: PathBuf, lock: PathBuf },
    #[error("state file {path}: {action} failed: {source}")]
    Io {
        path: PathBuf,
        action: &'static str,
        source: io::Error,
    },
    #[error(
        "state file {path} is empty; a crash of the original server's in-place write leaves exactly that, so it is not taken as an empty table. To start with no locks on purpose, remove the file or write {{}} into it"
    )]
    Empty { path: PathBuf },
    #[error(
        "state file {path} could not be loaded: {reason}. The server did not start and left the file untouched; fix the file or restore it from a backup"
    )]
    Invalid { path: PathBuf, reason: String },
}

/// Which format the file was in when it was loaded.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Format {
    /// No file existed; an empty one was created.
    Created,
    /// This server's YAML format.
    Current,
    /// The original Go server's JSON.
    Legacy,
}

/// An open, exclusively held state file, its journal and its history file.
#[derive(Debug)]
pub struct StateFile {
    files: Arc<Files>,
    _lock: File,
    /// The paths of the journal's two segments, by [`journal::SEGMENT_SUFFIXES`] index.
    segments: [PathBuf; 2],
    /// The segment taking new batches, and its index.
    live: Segment,
    live_index: usize,
    /// The other segment, open and holding no record, when it is ready to take over.
    spare: Option<File>,
    /// True while the other segment holds records that the state file may not hold yet (its
    /// fold runs or failed).
    folding: bool,
    compactor: Compactor,
    /// Size of the state file last written; the journal is folded in when it grows past
    /// [`JOURNAL_PER_STATE`] times this.
    snapshot_len: u64,
    /// True until the state file is in this server's format (a legacy file is rewritten on
    /// the first change).
    needs_snapshot: bool,
    /// The revision of the last journal record (or of the state file, when none is above it):
    /// what the next record follows.
    last_revision: u64,
    /// The least size of the live segment that makes a compaction due.
    min_compaction_len: u64,
}

/// The journal is folded into the state file once it is larger than this and than
/// [`JOURNAL_PER_STATE`] times the file.
const MIN_COMPACTION_LEN: u64 = 1 << 20;

/// How many times the state file's size the live segment grows to before it is folded in.
/// A fold writes the whole table: at 100,000 locks 16 MB and about 60 ms of CPU, and the
/// journal's fsyncs meanwhile wait behind its writes, so the cyclers' p99 doubled while folds
/// came every two seconds (BENCHMARKS.md, sixth session). At 4 the table is written for every
/// four bytes of journal instead of one. The price is the journal replayed after a crash: up
/// to two segments of this size (records are applied as they are read, so it costs time, not
/// memory: 0.4 s for 56 MB here).
const JOURNAL_PER_STATE: u64 = 4;

impl StateFile {
    /// Takes the file's lock, then loads the table (creating an empty file if there is none)
    /// and replays the journal; keeps the latest `history_max` history entries, in memory and in the history file.
    pub fn open_keeping(
        path: &Path,
        history_max: usize,
    ) -> Result<(StateFile, LockTable, Format), OpenError> {
        let io_err = |action, source| OpenError::Io {
            path: path.to_owned(),
            action,
            source,
        };
        let invalid = |reason: String| OpenError::Invalid {
            path: path.to_owned(),
            reason,
        };
        let dir_path = match path.parent() {
            Some(p) if !p.as_os_str().is_empty() => p.to_owned(),
            _ => PathBuf::from("."),
        };
        let file_name = path
            .file_name()
            .ok_or_else(|| invalid("the path names no file".into()))?
            .to_string_lossy()
            .into_owned();
        let lock_path = dir_path.join(format!("{file_name}.lock"));
        let lock = OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(&lock_path)
            .map_err(|e| io_err("creating its lock file", e))?;
        match lock.try_lock() {
            Ok(()) => {}
            Err(fs::TryLockError::WouldBlock) => {
                return Err(OpenError::InUse {
                    path: path.to_owned(),
                    lock: lock_path,
                });
            }
            Err(fs::TryLockError::Error(e)) => return Err(io_err("locking", e)),
        }
        let dir = File::open(&dir_path).map_err(|e| io_err("opening its directory", e))?;
        let tmp_path = dir_path.join(format!("{file_name}.tmp"));
        let segment_tmp_path = dir_path.join(format!("{file_name}.journal.tmp"));
        let segments = journal::SEGMENT_SUFFIXES.map(|s| dir_path.join(format!("{file_name}.{s}")));
        // Temporary files left by an interrupted write were never renamed into place, so they
        // hold nothing that was acknowledged.
        for tmp in [&tmp_path, &segment_tmp_path] {
            match fs::remove_file(tmp) {
                Ok(()) => tracing::warn!("removed {} left by an interrupted write", tmp.display()),
                Err(e) if e.kind() == io::ErrorKind::NotFound => {}
                Err(e) => return Err(io_err("removing a leftover temporary file", e)),
            }
        }
        // The written form is read line by line, so a large file is never in memory whole;
        // anything else (the original's JSON, hand-written YAML, damage) is read in full.
        let streamed = match File::open(path) {
            Ok(file) => {
                let len = file.metadata().map(|m| m.len()).unwrap_or(0);
                let lines = io::BufReader::with_capacity(1 << 16, file)
                    .lines()
                    .map_while(Result::ok);
                parse_canonical(lines).map(|table| (table, Format::Current, len))
            }
            Err(_) => None,
        };
        let (mut table, format, snapshot_len) = match streamed {
            Some(loaded) => loaded,
            None => match fs::read(path) {
                Ok(bytes) => {
                    let (table, format) = parse(&bytes).map_err(|reason| match reason {
                        ParseError::Empty => OpenError::Empty {
                            path: path.to_owned(),
                        },
                        ParseError::Invalid(reason) => invalid(reason),
                    })?;
                    (table, format, bytes.len() as u64)
                }
                Err(e) if e.kind() == io::ErrorKind::NotFound => {
                    (LockTable::default(), Format::Created, 0)
                }
                Err(e) => return Err(io_err("reading", e)),
            },
        };
        let history_path = dir_path.join(format!("{file_name}.history"));
        let mut history_read = HistoryFile::read(&history_path, history_max)
            .map_err(|e| io_err("reading its history file", e))?;
        table.load_history(std::mem::take(&mut history_read.entries), history_max);
        // Each record is applied as it is read: loading holds the table and one record, not
        // the journal (up to four times the state file's size, see `threshold`).
        let replay = journal::read(&segments, table.revision, |record| {
            match record {
                // A crash after the state file was written may have kept these entries from
                // the history file.
                Replayed::Folded(changes) => {
                    let history_id = table.history_id();
                    let missing = changes.history.into_iter().filter(|e| e.id > history_id);
                    table.load_history(missing.collect::<Vec<_>>(), history_max);
                }
                Replayed::New(mut changes) => {
                    for name in changes.locks.keys() {
                        names::check_text("lock name", name)
                            .map_err(|e| format!("lock '{name}': {e}"))?;
                    }
                    // Entries that reached the history file before a crash are there already.
                    changes.history.retain(|e| e.id > table.history_id());
                    table.commit(changes);
                }
            }
            Ok(())
        })
        .map_err(|reason| {
            invalid(format!(
                "its journal could not be replayed: {reason}. The files were left untouched"
            ))
        })?;
        for (segment, read) in segments.iter().zip(&replay.segments) {
            if format == Format::Created && read.data_end > 0 {
                return Err(invalid(format!(
                    "the file is missing but its journal {} holds changes; restore the state file, or remove the journal (and any {file_name}.journal.2) to start empty",
                    segment.display()
                )));
            }
            if let Some(torn) = &read.torn {
                tracing::warn!(
                    "dropping what follows the last intact record of {} ({torn}): an interrupted write, never acknowledged, or what the segment's earlier use left",
                    segment.display()
                );
            }
        }
        // Opened for writing only now that the journal was read without error: a refused
        // journal leaves the state, journal and history files as they were.
        let history = HistoryFile::open(&history_path, &history_read, history_max)
            .map_err(|e| io_err("opening its history file", e))?;
        let live_index = replay.live;
        let live_read = &replay.segments[live_index];
        let live = Segment::open(
            &segments[live_index],
            live_read.good_len,
            live_read.data_end,
        )
        .map_err(|e| io_err("opening its journal", e))?;
        // The journal may have just been created: its name must be durable before a batch in
        // it is acknowledged.
        dir.sync_all()
            .map_err(|e| io_err("syncing its directory", e))?;
        let files = Arc::new(Files {
            path: path.to_owned(),
            tmp_path,
            segment_tmp_path,
            dir,
            history: Mutex::new(history),
        });
        let compactor =
            Compactor::start(files.clone()).map_err(|e| io_err("starting its compaction", e))?;
        let mut file = StateFile {
            files,
            _lock: lock,
            live,
            live_index,
            spare: None,
            folding: false,
            compactor,
            snapshot_len,
            needs_snapshot: format != Format::Current,
            last_revision: replay.last_revision,
            min_compaction_len: MIN_COMPACTION_LEN,
            segments,
        };
        if format == Format::Created {
            file.snapshot_len = file
                .files
                .write_state(&table, &Changes::default(), 0)
                .map_err(|e| io_err("creating", e))?;
            file.needs_snapshot = false;
        }
        let other = 1 - live_index;
        let other_read = &replay.segments[other];
        if other_read.data_end > 0 {
            // Left by a crash during a compaction: fold it again, in the background.
            file.folding = true;
            let job = Job::Fold {
                table: table.clone(),
                old: file.segments[other].clone(),
                reuse_up_to: file.reuse_up_to(),
            };
            file.compactor.submit(job);
        } else if other_read.exists {
            file.spare = OpenOptions::new()
                .read(true)
                .write(true)
                .open(&file.segments[other])
                .ok();
        }
        Ok((file, table, format))
    }

    /// The path of the state file.
    pub fn path(&self) -> &Path {
        &self.files.path
    }

    /// Durably records `changes` on top of `table`: appended to the journal (or, while the
    /// file is still in the original server's format, written into a new state file).
    /// Returns only once the change is on disk; on error nothing of it is.
    pub fn commit(&mut self, table: &LockTable, changes: &Changes) -> io::Result<()> {
        if self.needs_snapshot {
            if let Some(done) = self.compactor.wait() {
                self.take(done);
            }
            let capacity = self.snapshot_len as usize + 4096;
            self.snapshot_len = self.files.write_state(table, changes, capacity)?;
            self.files.sync_history(table, &changes.history)?;
            self.needs_snapshot = false;
            self.last_revision = changes.revision;
            return Ok(());
        }
        self.live
            .append(&journal::encode(changes, self.last_revision)?)?;
        self.last_revision = changes.revision;
        Ok(())
    }

    /// Called after each commit with the table it made: when the live segment has grown past
    /// the compaction threshold, switches to the spare one and hands `table` to the
    /// compaction thread, which folds the old segment into the state file.
    pub fn compact_if_due(&mut self, table: &LockTable) {
        if let Some(done) = self.compactor.poll() {
            self.take(done);
        }
        if self.compactor.busy() {
            return;
        }
        let threshold = self.threshold();
        if self.live.len() > threshold {
            match self.spare.take() {
                Some(spare) => self.rotate(spare, table),
                None => self.prepare_spare(),
            }
        } else if self.live.len() > threshold / 2 && self.spare.is_none() {
            self.prepare_spare();
        }
    }

    fn threshold(&self) -> u64 {
        self.min_compaction_len
            .max(self.snapshot_len.saturating_mul(JOURNAL_PER_STATE))
    }

    /// Makes a compaction due from `len` bytes of journal on (for tests).
    #[cfg(test)]
    pub(super) fn compact_from(&mut self, len: u64) {
        self.min_compaction_len = len;
    }

    /// The path of the segment taking new batches (for tests).
    #[cfg(test)]
    pub(super) fn live_segment(&self) -> &Path {
        self.live.path()
    }

    /// Waits for the running compaction, if any, to end (for tests).
    #[cfg(test)]
    pub(super) fn wait_for_compaction(&mut self) {
        if let Some(done) = self.compactor.wait() {
            self.take(done);
        }
    }

    /// How long a folded segment may be and still be reused: twice the threshold (and never
    /// less than a new segment). A segment grows a little past the threshold before it is
    /// folded; one much longer was written for a larger table.
    fn reuse_up_to(&self) -> u64 {
        self.threshold()
            .saturating_mul(2)
            .max(journal::NEW_SEGMENT_LEN)
    }

    fn take(&mut self, done: Done) {
        match done {
            Done::Folded {
                snapshot_len,
                spare,
            } => {
                self.snapshot_len = snapshot_len;
                self.folding = false;
                self.spare = Some(spare);
            }
            Done::Prepared { spare } => self.spare = Some(spare),
            Done::GaveUp => {}
        }
    }

    fn prepare_spare(&mut self) {
        let job = Job::Prepare {
            path: self.segments[1 - self.live_index].clone(),
        };
        self.compactor.submit(job);
    }

    /// The spare segment takes new batches from now on; the old one is folded.
    fn rotate(&mut self, spare: File, table: &LockTable) {
        let other = 1 - self.live_index;
        match Segment::fresh(&self.segments[other], spare) {
            Ok(segment) => {
                let old = std::mem::replace(&mut self.live, segment);
                self.live_index = other;
                self.folding = true;
                self.compactor.submit(Job::Fold {
                    table: table.clone(),
                    old: old.path().to_owned(),
                    reuse_up_to: self.reuse_up_to(),
                });
            }
            Err(e) => {
                tracing::warn!(error = %e, "could not switch to the spare journal segment; will retry");
            }
        }
    }

    /// Folds the journal into the state file once any compaction has ended, so the state file
    /// alone holds `table` and no journal segment is left.
    pub fn finish(&mut self, table: &LockTable) -> io::Result<()> {
        if let Some(done) = self.compactor.stop() {
            self.take(done);
        }
        if self.live.len() > 0 || self.folding || self.needs_snapshot {
            let capacity = self.snapshot_len as usize + 4096;
            self.snapshot_len = self
                .files
                .write_state(table, &Changes::default(), capacity)?;
            self.files.sync_history(table, &[])?;
            self.needs_snapshot = false;
            self.folding = false;
        }
        self.spare = None;
        for segment in &self.segments {
            match fs::remove_file(segment) {
                Ok(()) => {}
                Err(e) if e.kind() == io::ErrorKind::NotFound => {}
                Err(e) => return Err(e),
            }
        }
        self.files.dir.sync_all()
    }
}

/// The bytes of a state file holding `table`, exactly as the server writes it (for tools and
/// benchmarks that prepare state files).
pub fn to_bytes(table: &LockTable) -> io::Result<Vec<u8>> {
    render(table, &Changes::default(), 0)
}

/// The state file's bytes for `table` with `changes` laid over it.
///
/// Block YAML at the top, one lock per line as a JSON-style flow mapping (valid YAML, and
/// quick to write and read back; see [`parse_canonical`]):
///
/// ```yaml
/// locks:
///   "prod": {"key":"k","locked_by":{"r":1},"revision":42,"locked_at":"2026-11-27T10:00:00.123Z"}
/// ```
pub(super) fn render(table: &LockTable, changes: &Changes, capacity: usize) -> io::Result<Vec<u8>> {
    let mut out = Vec::with_capacity(capacity);
    let revision = table.revision.max(changes.revision);
    writeln!(out, "version: {VERSION}\nrevision: {revision}")?;
    let mut locks = merged(table, changes).peekable();
    if locks.peek().is_none() {
        out.extend_from_slice(b"locks: {}\n");
    }
    for (i, (name, lock)) in locks.enumerate() {
        if i == 0 {
            out.extend_from_slice(b"locks:\n");
        }
        out.extend_from_slice(b"  ");
        write_yaml_safe_json(&mut out, &serde_json::to_string(name)?);
        out.extend_from_slice(b": ");
        write_yaml_safe_json(&mut out, &serde_json::to_string(&StoredLockView(lock))?);
        out.push(b'\n');
    }
    out.extend_from_slice(END_LINE.as_bytes());
    out.push(b'\n');
    Ok(out)
}

/// Writes JSON so that it is also YAML with the same meaning: characters that YAML does not
/// allow raw, or that YAML 1.1 parsers take for line breaks, are escaped. Such characters can
/// only stand inside JSON strings, where `\uXXXX` means the same in both languages.
fn write_yaml_safe_json(out: &mut Vec<u8>, json: &str) {
    if json.bytes().all(|b| (0x20..0x7f).contains(&b)) {
        // Printable ASCII, the usual case: nothing to escape.
        out.extend_from_slice(json.as_bytes());
        return;
    }
    for c in json.chars() {
        if c.is_control()
            || matches!(
                c,
                '\u{2028}' | '\u{2029}' | '\u{feff}' | '\u{fffe}' | '\u{ffff}'
            )
        {
            out.extend_from_slice(format!("\\u{:04x}", c as u32).as_bytes());
        } else {
            let mut buf = [0u8; 4];
            out.extend_from_slice(c.encode_utf8(&mut buf).as_bytes());
        }
    }
}

/// The table's locks with `changes` laid over them, in name order.
fn merged<'a>(
    table: &'a LockTable,
    changes: &'a Changes,
) -> impl Iterator<Item = (&'a str, &'a Lock)> {
    let mut base = table
        .locks
        .iter()
        .map(|(name, lock)| (&**name, &**lock))
        .peekable();
    let mut changed = changes
        .locks
        .iter()
        .map(|(name, lock)| (name.as_str(), lock))
        .peekable();
    std::iter::from_fn(move || match (base.peek(), changed.peek()) {
        (None, None) => None,
        (Some(_), None) => base.next(),
        (None, Some(_)) => changed.next(),
        (Some((b, _)), Some((c, _))) => match b.cmp(c) {
            std::cmp::Ordering::Less => base.next(),
            std::cmp::Ordering::Greater => changed.next(),
            std::cmp::Ordering::Equal => {
                base.next();
                changed.next()
            }
        },
    })
}

/// Reads a file in exactly the form [`render`] writes, without a YAML parser (which would
/// hold every event of a large file in memory at once). Returns `None` for anything else,
/// such as a hand-edited file, which then goes through the full YAML parser.
fn parse_canonical<L: AsRef<str>>(mut lines: impl Iterator<Item = L>) -> Option<LockTable> {
    match lines.next()?.as_ref() {
        "version: 1" | "version: 2" => {}
        _ => return None,
    }
    let revision: u64 = lines
        .next()?
        .as_ref()
        .strip_prefix("revision: ")?
        .parse()
        .ok()?;
    match lines.next()?.as_ref() {
        "locks: {}" | "locks:" => {}
        _ => return None,
    }
    // Straight into the table, with no second copy of it on the way: the server writes names
    // in order, so a name out of order (or repeated) is not this form.
    let mut table = LockTable::new(revision, []);
    let mut last_name: Option<String> = None;
    let mut complete = false;
    for line in lines.by_ref() {
        let line = line.as_ref();
        let Some(entry) = line.strip_prefix("  ") else {
            complete = line == END_LINE;
            break;
        };
        let mut names = serde_json::Deserializer::from_str(entry).into_iter::<String>();
        let name = names.next()?.ok()?;
        let value = entry[names.byte_offset()..].strip_prefix(": ")?;
        let stored: StoredLock = serde_json::from_str(value).ok()?;
        let lock = stored.into_lock(revision).ok()?;
        if last_name.as_ref().is_some_and(|last| *last >= name) {
            return None;
        }
        table.load(&name, lock);
        last_name = Some(name);
    }
    if !complete || lines.any(|l| !l.as_ref().trim().is_empty()) {
        return None;
    }
    check_table(&table).ok()?;
    Some(table)
}

/// Checks every lock's name and invariants.
fn check_table(table: &LockTable) -> Result<(), ParseError> {
    for (name, lock) in &table.locks {
        names::check_text("lock name", name)
            .and_then(|()| lock.check_invariants())
            .map_err(|e| ParseError::Invalid(format!("lock '{name}': {e}")))?;
    }
    Ok(())
}

/// Reads any YAML of the state file's shape (a hand-edited file, say).
fn parse_yaml(text: &str) -> Result<LockTable, ParseError> {
    let stored: StoredState = serde_norway::from_str(text)
        .map_err(|e| ParseError::Invalid(format!("it is not a valid locker state file: {e}")))?;
    if !(1..=VERSION).contains(&stored.version) {
        return Err(ParseError::Invalid(format!(
            "it has version {}, and this server reads versions 1 to {VERSION} only",
            stored.version
        )));
    }
    let mut locks = Vec::with_capacity(stored.locks.0.len());
    for (name, l) in stored.locks.0 {
        let lock = l
            .into_lock(stored.revision)
            .map_err(|e| ParseError::Invalid(format!("lock '{name}': {e}")))?;
        locks.push((name, lock));
    }
    Ok(LockTable::new(stored.revision, locks))
}

enum ParseError {
    Empty,
    Invalid(String),
}

/// Reads either format into a table and checks every lock.
fn parse(bytes: &[u8]) -> Result<(LockTable, Format), ParseError> {
    let text = std::str::from_utf8(bytes)
        .map_err(|e| ParseError::Invalid(format!("it is not UTF-8 text ({e})")))?;
    let trimmed = text.trim_start();
    if trimmed.is_empty() {
        return Err(ParseError::Empty);
    }
    let (table, format) = if trimmed.starts_with('{') {
        let legacy: UniqueMap<LegacyLock> = serde_json::from_str(text).map_err(|e| {
            ParseError::Invalid(format!("it looks like the original server's JSON, but {e}"))
        })?;
        let locks = legacy.0.into_iter().map(|(name, l)| {
            let locked_by: Holders = l.locked_by.0.into_iter().collect();
            // The original cleared the key only on some paths; no holders means free.
            let (key, token) = if locked_by.is_empty() {
                (String::new(), None)
            } else {
                (l.key, Some(0))
            };
            let lock = Lock {
                key,
                locked_by,
                revision: 0,
                locked_at: None,
                token,
                requests: Vec::new(),
            };
            (name, lock)
        });
        (LockTable::new(0, locks), Format::Legacy)
    } else {
        let table = match parse_canonical(text.lines()) {
            Some(table) => table,
            None => parse_yaml(text)?,
        };
        if !text.trim_end().ends_with(&format!("\n{END_LINE}")) {
            return Err(ParseError::Invalid(format!(
                "it does not end with the line '{END_LINE}', so it is incomplete (cut short by a copy, a full disk or an edit); if you edited it by hand, keep that line last"
            )));
        }
        (table, Format::Current)
    };
    check_table(&table)?;
    Ok((table, format))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct StoredState {
    version: u64,
    revision: u64,
    locks: UniqueMap<StoredLock>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct LegacyLock {
    locked_by: UniqueMap<u64>,
    key: String,
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::domain::{Claim, Op};
    use std::time::SystemTime;

    fn load(text: &str) -> Result<(LockTable, Format), String> {
        parse(text.as_bytes()).map_err(|e| match e {
            ParseError::Empty => "empty".to_string(),
            ParseError::Invalid(r) => r,
        })
    }

    #[test]
    fn awkward_names_round_trip_through_yaml() {
        let mut table = LockTable::default();
        let names = [
            "null",
            "~",
            "yes",
            "no",
            "1e3",
            "0x10",
            "- x",
            "#x",
            " spaced ",
            "a/b",
            "a: b",
            "'q'",
            "\"dq\"",
            "🚀 ümlaut",
            "true",
            "[x]",
            "{x}",
            "*x",
            "&x",
            "!x",
            "%x",
            "@x",
            "`x",
            "|",
            ">",
            "?",
            "-",
            ".inf",
            "2001-01-01",
        ];
        for (i, name) in names.iter().enumerate() {
            let claim = Claim {
                request_id: Some(format!("req-\"{i}\"-'#:{{}}")),
                ..Claim::new(name.to_string(), format!("{name}-{i}"))
            };
            table.apply(name, Op::Lock, &claim, SystemTime::UNIX_EPOCH);
        }
        let text = String::from_utf8(render(&table, &Changes::default(), 0).unwrap()).unwrap();
        let (loaded, format) = load(&text).unwrap();
        assert_eq!(format, Format::Current);
        assert_eq!(loaded, table.without_history(), "written:\n{text}");
    }

    #[test]
    fn changes_are_laid_over_the_table() {
        let mut table = LockTable::default();
        let claim = Claim::new("k", "r");
        table.apply("b", Op::Lock, &claim, SystemTime::UNIX_EPOCH);
        let mut batch = table.batch();
        batch.apply("a", Op::Lock, &claim, SystemTime::UNIX_EPOCH);
        batch.apply("b", Op::Unlock, &claim, SystemTime::UNIX_EPOCH);
        batch.apply("c", Op::Lock, &claim, SystemTime::UNIX_EPOCH);
        let changes = batch.into_changes();
        let text = String::from_utf8(render(&table, &changes, 0).unwrap()).unwrap();
        let mut expected = table.clone();
        expected.commit(changes);
        assert_eq!(load(&text).unwrap().0, expected.without_history());
    }

    #[test]
    fn written_form_reads_the_same_with_a_yaml_parser() {
        let mut table = LockTable::default();
        let texts = [
            "null",
            "~",
            "- x",
            "#x",
            " spaced ",
            "a: b",
            "\"dq\"",
            "back\\slash",
            "tab\tin",
            "line\u{2028}sep",
            "para\u{2029}sep",
            "del\u{7f}",
            "\u{feff}bom",
            "nel\u{85}",
            "\u{fffe}",
            "🚀 ümlaut",
            "{x}",
            "[x]",
            "'q'",
        ];
        for (i, text) in texts.iter().enumerate() {
            // Owners with long names, escaped as much as JSON can (stored as pairs: no key limit).
            let claim = Claim {
                owner: Some(crate::domain::Owner::from([
                    ("\u{1}".repeat(600), text.to_string()),
                    ("\\\"".repeat(600), "v".into()),
                ])),
                ttl: Some(std::time::Duration::from_secs(60)),
                ..Claim::new(text.to_string(), format!("{text}-{i}"))
            };
            // Control characters are refused in names (not in imported keys or requestors).
            let name = match names::check_text("name", text) {
                Ok(()) => text.to_string(),
                Err(_) => format!("lock-{i}"),
            };
            table.apply(&name, Op::Lock, &claim, SystemTime::UNIX_EPOCH);
        }
        let text = String::from_utf8(render(&table, &Changes::default(), 0).unwrap()).unwrap();
        let fast = parse_canonical(text.lines()).expect("the written form is canonical");
        assert_eq!(fast, table.without_history(), "fast path, written:\n{text}");
        let Ok(yaml) = parse_yaml(&text) else {
            panic!("the YAML parser refused:\n{text}");
        };
        assert_eq!(
            yaml,
            table.without_history(),
            "YAML parser, written:\n{text}"
        );
    }

    #[test]
    fn hand_written_block_yaml_is_read_too() {
        let text = "version: 1\nrevision: 3\nlocks:\n  prod:\n    key: k\n    locked_by:\n      r: 2\n    revision: 3\n    locked_at: 2026-11-27T10:00:00.123Z\n# end of locker state file\n";
        let (table, format) = load(text).unwrap();
        assert_eq!(format, Format::Current);
        assert_eq!(table.locks["prod"].locked_by.get("r"), Some(&2));
    }

    #[test]
    fn a_file_cut_short_anywhere_is_refused() {
        let mut table = LockTable::default();
        for name in ["a", "b"] {
            let claim = Claim::new("k", "r");
            table.apply(name, Op::Lock, &claim, SystemTime::UNIX_EPOCH);
        }
        let text = String::from_utf8(render(&table, &Changes::default(), 0).unwrap()).unwrap();
        let table = table.without_history();
        assert_eq!(load(&text).unwrap().0, table);
        assert_eq!(
            load(text.trim_end()).unwrap().0,
            table,
            "a missing final newline is fine"
        );
        for cut in 0..text.trim_end().len() {
            if let Ok((loaded, _)) = load(&text[..cut]) {
                panic!("cut at {cut} loaded {loaded:?}");
            }
        }
    }

    #[test]
    fn duplicate_keys_are_refused() {
        let yaml = "version: 1\nrevision: 1\nlocks:\n  a: {key: k, locked_by: {r: 1}, revision: 1, locked_at: null}\n  a: {key: k, locked_by: {r: 1}, revision: 1, locked_at: null}\n";
        assert!(load(yaml).unwrap_err().contains("duplicate key 'a'"));
        let json = r#"{"a": {"locked_by": {}, "key": ""}, "a": {"locked_by": {}, "key": ""}}"#;
        assert!(load(json).unwrap_err().contains("duplicate key 'a'"));
    }

    #[test]
    fn wrong_shapes_are_refused_with_the_reason() {
        let cases = [
            ("version: 3\nrevision: 0\nlocks: {}\n", "version 3"),
            ("version: 1\nrevision: 0\n", "missing field `locks`"),
            (
                "version: 1\nrevision: 0\nlocks: {}\nextra: 1\n",
                "unknown field `extra`",
            ),
            ("- a\n- b\n", "not a valid locker state file"),
            (
                "version: 1\nrevision: 1\nlocks:\n  a: {key: '', locked_by: {r: 1}, revision: 1, locked_at: null}\n",
                "empty key",
            ),
            (
                "version: 1\nrevision: 1\nlocks:\n  a: {key: k, locked_by: {}, revision: 1, locked_at: null}\n",
                "no holders",
            ),
            (
                "version: 1\nrevision: 1\nlocks:\n  a: {key: '', locked_by: {}, revision: 5, locked_at: null}\n",
                "above the file's revision",
            ),
            (
                r#"{"a": {"locked_by": {"r": -1}, "key": "k"}}"#,
                "original server's JSON",
            ),
            (r#"{"a": 1}"#, "original server's JSON"),
            ("\u{0}\u{1}garbage", "not a valid locker state file"),
            (
                "version: 1\nrevision: 1\nlocks:\n  a: {key: '', locked_by: {}, revision: 1, locked_at: null, requests: ['a b']}\n",
                "visible ASCII",
            ),
            (
                "version: 1\nrevision: 1\nlocks:\n  a: {key: '', locked_by: {}, revision: 1, locked_at: null, requests: [a,b,c,d,e,f,g,h,i]}\n",
                "more than the 8 kept",
            ),
        ];
        for (text, expected) in cases {
            let err = load(text).unwrap_err();
            assert!(
                err.contains(expected),
                "{text:?}: expected {expected:?} in {err:?}"
            );
        }
        assert_eq!(load("  \n").unwrap_err(), "empty");
    }
}

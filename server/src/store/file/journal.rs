//! The journal: the batches committed since the state file was last written, in one or two
//! segment files next to it.
//!
//! Rewriting the whole YAML state file for every batch costs time in proportion to the table
//! (tens of milliseconds at 10,000 locks), so each batch is appended here instead and the
//! state file is rewritten only now and then, on the compaction thread (see
//! [`super::compaction`]). One record per batch, one line per record:
//!
//! ```text
//! 1c291ca3 {"revision":43,"after":41,"locks":{"prod":{"key":"k","locked_by":{"r":1},"revision":43,"locked_at":"..."}}}
//! ```
//!
//! The first eight characters are the CRC-32 of the JSON after the space. A record holds the
//! complete new state of every lock the batch changed, so replaying it is idempotent, and
//! records at or below the state file's revision (left by a crash during compaction) are
//! skipped. `after` is the revision of the record before it (or of the state file it was
//! written on), so a missing record shows as a gap; records written before it have none.
//!
//! There are two segments, `<file>.journal` and `<file>.journal.2`, written in turn: one takes
//! new batches while the other is folded into the state file, after which it is written over
//! from its start (see [`super::compaction`] for why). Which is which is told by their first
//! records (the older holds lower revisions).
//!
//! So a segment's records are those from its start whose revisions rise. They end at a NUL
//! byte (a record never starts with one), at the end of the file, at a line that is not an
//! intact record, or at an intact record whose revision is not above the one before it: what
//! an earlier use of the file left. Everything an earlier use left is at or below the state
//! file's revision, since a segment is written over only once folded.
//!
//! A record is acknowledged only after it is fsynced; a crash in the middle of an append leaves
//! an incomplete last record (followed by zeros, the end of the file, or an earlier use's
//! bytes), which was never acknowledged and is dropped on load. An intact record above the
//! state file's revision after the end of the records is real damage (nothing else leaves
//! one), and loading stops with an error naming the file and line.

use std::fs::{File, OpenOptions};
use std::io::{self, BufRead};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};

use serde::ser::SerializeMap;
use serde::{Deserialize, Serialize, Serializer};

use super::codec::{StoredEntry, StoredLock, StoredLockView, UniqueMap};
use crate::domain::Changes;

use std::collections::BTreeMap;

/// The file names of the two segments, after the state file's: the first is also the name of
/// the single journal that earlier versions wrote.
pub(super) const SEGMENT_SUFFIXES: [&str; 2] = ["journal", "journal.2"];

/// How long a new segment is made, in zeros, so that even its first records are written over
/// bytes the file has: an fdatasync that must also write a new file size costs a second I/O
/// (BENCHMARKS.md, seventh session). A segment holds at least this much before it is folded, and
/// is then written over, so after this, only a table large enough for a longer threshold
/// grows a segment.
pub(super) const NEW_SEGMENT_LEN: u64 = 1 << 20;

/// One record as read.
#[derive(Debug)]
pub(super) struct Record {
    /// Its line in the segment, from 1.
    pub line: usize,
    pub changes: Changes,
    /// The revision of the record before it, when it says.
    pub after: Option<u64>,
}

/// What reading one segment found (its records went to the caller as they were read).
#[derive(Debug, Default)]
pub(super) struct SegmentRead {
    /// True when the file exists.
    pub exists: bool,
    /// Bytes of intact records; writing goes on from here.
    pub good_len: u64,
    /// The end of the incomplete record that follows them, if one does (an interrupted
    /// append): `good_len..data_end` is zeroed before anything is written there. Records of an
    /// earlier use of the file may lie further on; they are left as they are.
    pub data_end: u64,
    /// Why the records end before `data_end`, when they do (an interrupted append).
    pub torn: Option<String>,
}

/// The segment at `path`, buffered for reading; `None` when there is no such file.
fn open_segment(path: &Path) -> Result<Option<io::BufReader<File>>, String> {
    match File::open(path) {
        Ok(file) => Ok(Some(io::BufReader::with_capacity(1 << 16, file))),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(format!("cannot read {}: {e}", path.display())),
    }
}

/// Why a segment's records end.
enum End {
    /// Zeros, or the end of the file.
    Zeros,
    /// An intact record whose revision is not above the one before it: the first of those
    /// left by an earlier use of the file.
    Earlier,
    /// A line that is not an intact record: an interrupted append, or damage.
    NotARecord(String),
}

/// Reads the segment at `path` (absent means empty) a record at a time, handing each intact
/// one to `each`; stops at the first error `each` returns.
///
/// The records are the ones from the start of the file whose revisions rise. A segment is
/// reused once folded (see [`super::compaction`]), so what follows them may be records of an
/// earlier use, all at or below `folded` (the state file's revision): those are passed over.
/// An intact record above `folded` after the end of the records is damage, and an error.
pub(super) fn read_segment(
    path: &Path,
    folded: u64,
    each: &mut dyn FnMut(Record) -> Result<(), String>,
) -> Result<SegmentRead, String> {
    let cannot = |e: io::Error| format!("cannot read {}: {e}", path.display());
    let Some(mut reader) = open_segment(path)? else {
        return Ok(SegmentRead::default());
    };
    let mut read = SegmentRead {
        exists: true,
        ..SegmentRead::default()
    };
    let mut piece = Vec::new();
    let mut offset = 0u64;
    let mut line = 0usize;
    let mut previous: Option<u64> = None;
    let end = loop {
        if at_nul_or_end(&mut reader).map_err(cannot)? {
            break End::Zeros;
        }
        line += 1;
        let complete = next_piece(&mut reader, &mut piece).map_err(cannot)?;
        if !complete {
            break End::NotARecord("an incomplete record".to_string());
        }
        match parse_record(&piece[..piece.len() - 1]) {
            Ok((changes, _)) if previous.is_some_and(|p| changes.revision <= p) => {
                let revision = changes.revision;
                if revision > folded {
                    return Err(format!(
                        "{} line {line}: revision {revision} does not follow {}",
                        path.display(),
                        previous.unwrap_or_default()
                    ));
                }
                break End::Earlier;
            }
            Ok((changes, after)) => {
                offset += piece.len() as u64;
                previous = Some(changes.revision);
                each(Record {
                    line,
                    changes,
                    after,
                })?;
            }
            Err(reason) => break End::NotARecord(reason),
        }
    };
    read.good_len = offset;
    read.data_end = offset;
    if let End::NotARecord(reason) = &end {
        read.data_end = offset + trimmed_len(&piece) as u64;
        read.torn = Some(format!("line {line}: {reason}"));
    }
    check_rest(&mut reader, path, line, &end, folded)?;
    Ok(read)
}

/// The length of `piece` without the zeros at its end.
fn trimmed_len(piece: &[u8]) -> usize {
    piece.iter().rposition(|&b| b != 0).map_or(0, |i| i + 1)
}

/// True at a NUL byte or the end of the file (neither is consumed).
fn at_nul_or_end(reader: &mut impl BufRead) -> io::Result<bool> {
    let buf = reader.fill_buf()?;
    Ok(buf.first().is_none_or(|&b| b == 0))
}

/// Reads up to and including the next newline, or up to (not including) the next NUL byte or
/// the end of the file; returns true when it ended with a newline.
fn next_piece(reader: &mut impl BufRead, piece: &mut Vec<u8>) -> io::Result<bool> {
    piece.clear();
    loop {
        let buf = reader.fill_buf()?;
        if buf.is_empty() {
            return Ok(false);
        }
        match buf.iter().position(|&b| b == b'\n' || b == 0) {
            Some(i) if buf[i] == b'\n' => {
                piece.extend_from_slice(&buf[..=i]);
                reader.consume(i + 1);
                return Ok(true);
            }
            Some(i) => {
                piece.extend_from_slice(&buf[..i]);
                reader.consume(i);
                return Ok(false);
            }
            None => {
                let n = buf.len();
                piece.extend_from_slice(buf);
                reader.consume(n);
            }
        }
    }
}

/// Reads the rest of a segment after its records ended at line `line` (as `end` says): an error
/// when an intact record above `folded` lies there, which neither an interrupted append nor
/// an earlier use of the file can leave.
fn check_rest(
    reader: &mut impl BufRead,
    path: &Path,
    line: usize,
    end: &End,
    folded: u64,
) -> Result<(), String> {
    let cannot = |e: io::Error| format!("cannot read {}: {e}", path.display());
    let mut piece = Vec::new();
    loop {
        let buf = reader.fill_buf().map_err(cannot)?;
        if buf.is_empty() {
            return Ok(());
        }
        match buf.iter().position(|&b| b != 0) {
            None => {
                let n = buf.len();
                reader.consume(n);
            }
            Some(i) => {
                reader.consume(i);
                let complete = next_piece(reader, &mut piece).map_err(cannot)?;
                let revision = complete
                    .then(|| revision_of(&piece[..piece.len() - 1]))
                    .flatten();
                if revision.is_some_and(|r| r > folded) {
                    let why = match end {
                        End::Zeros => {
                            return Err(format!(
                                "{} holds an intact record after the zeros that end line {line}: the segment is damaged",
                                path.display()
                            ));
                        }
                        End::Earlier => "an earlier record",
                        End::NotARecord(reason) => reason,
                    };
                    return Err(format!(
                        "{} line {} is damaged ({why}) and more records follow it",
                        path.display(),
                        line.max(1)
                    ));
                }
            }
        }
    }
}

/// The revision of an intact record line (without its newline), or `None` for a line that is
/// not one. Cheaper than [`parse_record`]: the checksum, then the revision, which the server
/// writes first.
fn revision_of(line: &[u8]) -> Option<u64> {
    let json = checked_json(line).ok()?;
    let first = json.strip_prefix("{\"revision\":").and_then(|rest| {
        let len = rest.bytes().take_while(u8::is_ascii_digit).count();
        rest[..len].parse().ok()
    });
    first.or_else(|| parse_record(line).ok().map(|(changes, _)| changes.revision))
}

/// The revision of the first record in the segment at `path`, if it starts with an intact
/// one (a segment without one is read first; reading it whole tells what is wrong with it).
fn first_revision(path: &Path) -> Result<Option<u64>, String> {
    let cannot = |e: io::Error| format!("cannot read {}: {e}", path.display());
    let Some(mut reader) = open_segment(path)? else {
        return Ok(None);
    };
    if at_nul_or_end(&mut reader).map_err(cannot)? {
        return Ok(None);
    }
    let mut piece = Vec::new();
    if !next_piece(&mut reader, &mut piece).map_err(cannot)? {
        return Ok(None);
    }
    Ok(parse_record(&piece[..piece.len() - 1])
        .ok()
        .map(|(changes, _)| changes.revision))
}

/// A record of the journal, as [`read`] hands it over.
#[derive(Debug, PartialEq)]
pub(super) enum Replayed {
    /// At or below the state file's revision: its changes are in the state file, but a crash
    /// after the state file was written may have kept its history entries from the history
    /// file.
    Folded(Changes),
    /// Above the state file's revision: a batch to apply.
    New(Changes),
}

/// What loading both segments found.
#[derive(Debug, Default)]
pub(super) struct Replay {
    /// Each segment as read, by [`SEGMENT_SUFFIXES`] index.
    pub segments: [SegmentRead; 2],
    /// The segment that takes new batches: the one holding the latest records.
    pub live: usize,
    /// The revision of the last record read (or `after_revision` when there is none above it).
    pub last_revision: u64,
}

/// Reads both segments (`paths`, by [`SEGMENT_SUFFIXES`] index), the older first, handing
/// each record to `each` as it is read, so that loading holds one record at a time, however
/// long the journal. Records at or below `after_revision` (the state file's) are
/// [`Replayed::Folded`]. Revisions must increase across both segments, and a record that says
/// which one it follows must follow the one before it; the first that does not ends the
/// reading with an error (the records before it were handed over already).
pub(super) fn read(
    paths: &[PathBuf; 2],
    after_revision: u64,
    mut each: impl FnMut(Replayed) -> Result<(), String>,
) -> Result<Replay, String> {
    let first = [first_revision(&paths[0])?, first_revision(&paths[1])?];
    // Older first: a segment without records goes first, so that the other is live.
    let order = match first {
        [Some(a), Some(b)] if a < b => [0, 1],
        [None, Some(_)] => [0, 1],
        _ => [1, 0],
    };
    let mut replay = Replay {
        live: order[1],
        last_revision: after_revision,
        ..Replay::default()
    };
    let mut last_revision = 0u64;
    let mut applied: Option<u64> = None;
    for i in order {
        let path = &paths[i];
        replay.segments[i] = read_segment(path, after_revision, &mut |record| {
            let revision = record.changes.revision;
            if revision <= last_revision {
                return Err(format!(
                    "{} line {}: revision {revision} does not follow {last_revision}",
                    path.display(),
                    record.line
                ));
            }
            last_revision = revision;
            if revision <= after_revision {
                return each(Replayed::Folded(record.changes));
            }
            if let Some(after) = record.after {
                let expected = applied.unwrap_or(after_revision);
                let gap = match applied {
                    Some(previous) => after != previous,
                    None => after > after_revision,
                };
                if gap {
                    return Err(format!(
                        "{} line {}: the record follows revision {after}, but the last one before it is revision {expected}: records are missing (a segment was cut short or removed)",
                        path.display(),
                        record.line
                    ));
                }
            }
            applied = Some(revision);
            each(Replayed::New(record.changes))
        })?;
    }
    replay.last_revision = applied.unwrap_or(after_revision);
    Ok(replay)
}

/// The JSON of a record line (without its newline), once its checksum is found right.
fn checked_json(line: &[u8]) -> Result<&str, String> {
    let text = std::str::from_utf8(line).map_err(|_| "not UTF-8".to_string())?;
    let (crc, json) = text
        .split_once(' ')
        .ok_or_else(|| "no checksum".to_string())?;
    let expected = u32::from_str_radix(crc, 16).map_err(|_| "bad checksum field".to_string())?;
    if crc.len() != 8 || crc32fast::hash(json.as_bytes()) != expected {
        return Err("checksum mismatch".into());
    }
    Ok(json)
}

/// Reads one record line (without its newline): the batch, and the revision it follows.
fn parse_record(line: &[u8]) -> Result<(Changes, Option<u64>), String> {
    let json = checked_json(line)?;
    let record: StoredRecord =
        serde_json::from_str(json).map_err(|e| format!("not a journal record: {e}"))?;
    let mut locks = BTreeMap::new();
    for (name, stored) in record.locks.0 {
        let lock = stored
            .into_lock(record.revision)
            .map_err(|e| format!("lock '{name}': {e}"))?;
        locks.insert(name, lock);
    }
    let history = record
        .history
        .into_iter()
        .map(StoredEntry::into_entry)
        .collect::<Result<_, _>>()?;
    let changes = Changes {
        revision: record.revision,
        locks,
        history,
        ..Changes::default()
    };
    Ok((changes, record.after))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct StoredRecord {
    revision: u64,
    /// The revision of the record before it (records written before it have none).
    #[serde(default)]
    after: Option<u64>,
    locks: UniqueMap<StoredLock>,
    /// The history entries of the batch (records written before the history have none).
    #[serde(default)]
    history: Vec<StoredEntry>,
}

/// Formats one record line, checksum first: `changes`, written after the record (or state
/// file) at revision `after`.
pub(super) fn encode(changes: &Changes, after: u64) -> io::Result<Vec<u8>> {
    let json = serde_json::to_vec(&RecordView(changes, after)).map_err(io::Error::other)?;
    let mut line = format!("{:08x} ", crc32fast::hash(&json)).into_bytes();
    line.extend_from_slice(&json);
    line.push(b'\n');
    Ok(line)
}

struct RecordView<'a>(&'a Changes, u64);

impl Serialize for RecordView<'_> {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        let history = &self.0.history;
        let mut map = s.serialize_map(Some(3 + usize::from(!history.is_empty())))?;
        map.serialize_entry("revision", &self.0.revision)?;
        map.serialize_entry("after", &self.1)?;
        map.serialize_entry("locks", &ChangedLocks(&self.0.locks))?;
        if !history.is_empty() {
            let stored: Vec<StoredEntry> = history.iter().map(StoredEntry::of).collect();
            map.serialize_entry("history", &stored)?;
        }
        map.end()
    }
}

struct ChangedLocks<'a>(&'a BTreeMap<String, crate::domain::Lock>);

impl Serialize for ChangedLocks<'_> {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        let mut map = s.serialize_map(Some(self.0.len()))?;
        for (name, lock) in self.0 {
            map.serialize_entry(name, &StoredLockView(lock))?;
        }
        map.end()
    }
}

/// The segment taking new batches: records are written in place over what the file holds
/// (zeros, or an earlier use's records), or appended past its end, and fsynced.
#[derive(Debug)]
pub(super) struct Segment {
    path: PathBuf,
    file: File,
    /// Bytes of intact records: the next one is written here.
    len: u64,
    /// The file's length when nothing is being written: `len..capacity` holds no record of
    /// this use (zeros, or an earlier use's records).
    capacity: u64,
    /// Set when a failed write could not be undone; the next append retries.
    dirty: bool,
}

impl Segment {
    /// Opens (or creates) the segment at `path` to write after its `good_len` bytes of
    /// records, zeroing what lies up to `data_end` (an interrupted append).
    /// A new (or empty) one is made [`NEW_SEGMENT_LEN`] zeros long first.
    pub fn open(path: &Path, good_len: u64, data_end: u64) -> io::Result<Segment> {
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .open(path)?;
        if file.metadata()?.len() == 0 {
            fill_new_segment(&file)?;
        }
        Segment::resume(path, file, good_len, data_end)
    }

    /// Takes an open segment file, its name durable, that holds no record above the state
    /// file's revision (empty, zeros, or records folded into the state file): they are written
    /// over from its start.
    pub fn fresh(path: &Path, file: File) -> io::Result<Segment> {
        Segment::resume(path, file, 0, 0)
    }

    fn resume(path: &Path, file: File, good_len: u64, data_end: u64) -> io::Result<Segment> {
        let file_len = file.metadata()?.len();
        let mut segment = Segment {
            path: path.to_owned(),
            file,
            len: good_len,
            capacity: file_len,
            dirty: data_end > good_len,
        };
        if segment.dirty {
            segment.undo(data_end.min(file_len))?;
        }
        Ok(segment)
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Bytes of records in the segment.
    pub fn len(&self) -> u64 {
        self.len
    }

    /// Writes `line` after the last record and fsyncs it. On error the segment is left as it
    /// was (zeros where the line went, and its length).
    pub fn append(&mut self, line: &[u8]) -> io::Result<()> {
        if self.dirty {
            self.undo(self.capacity)?;
        }
        let end = self.len + line.len() as u64;
        let result = self
            .file
            .write_all_at(line, self.len)
            .and_then(|()| self.file.sync_data());
        match result {
            Ok(()) => {
                self.len = end;
                self.capacity = self.capacity.max(end);
                Ok(())
            }
            Err(e) => {
                self.dirty = true;
                let _ = self.undo(end);
                Err(e)
            }
        }
    }

    /// Puts zeros back over `len..written` (within the capacity) and the length back to the
    /// capacity, and fsyncs.
    fn undo(&mut self, written: u64) -> io::Result<()> {
        if self.file.metadata()?.len() > self.capacity {
            self.file.set_len(self.capacity)?;
        }
        let end = written.min(self.capacity);
        if end > self.len {
            write_zeros(&self.file, self.len, end - self.len)?;
        }
        self.file.sync_all()?;
        self.dirty = false;
        Ok(())
    }
}

/// Makes the new, empty segment `file` [`NEW_SEGMENT_LEN`] zeros long, and durable, where the
/// disk has the room; where it has not, leaves it empty (its records are then appended, which
/// costs more per fsync but works as well).
pub(super) fn fill_new_segment(file: &File) -> io::Result<()> {
    if let Err(e) = write_zeros(file, 0, NEW_SEGMENT_LEN).and_then(|()| file.sync_all()) {
        tracing::info!(error = %e, "a new journal segment stays empty, not made of zeros ahead");
        file.set_len(0)?;
    }
    Ok(())
}

/// Writes `len` zeros at `offset`.
fn write_zeros(file: &File, offset: u64, len: u64) -> io::Result<()> {
    const CHUNK: usize = 1 << 20;
    let zeros = vec![0u8; CHUNK.min(len as usize)];
    let mut done = 0u64;
    while done < len {
        let n = (len - done).min(CHUNK as u64) as usize;
        file.write_all_at(&zeros[..n], offset + done)?;
        done += n as u64;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::domain::{Claim, LockTable, Op};
    use std::time::SystemTime;

    fn batch(table: &mut LockTable, name: &str, op: Op) -> Changes {
        let claim = Claim::new("k", "r");
        let mut b = table.batch();
        b.apply(name, op, &claim, SystemTime::UNIX_EPOCH);
        let changes = b.into_changes();
        table.commit(changes.clone());
        changes
    }

    /// The records of `batches`, each after the one before it (the first after `after`).
    fn journal_of(batches: &[Changes], mut after: u64) -> Vec<u8> {
        let mut bytes = Vec::new();
        for changes in batches {
            bytes.extend(encode(changes, after).unwrap());
            after = changes.revision;
        }
        bytes
    }

    /// The two segment paths in `dir`; the second absent unless written.
    fn segments(dir: &Path) -> [PathBuf; 2] {
        SEGMENT_SUFFIXES.map(|s| dir.join(format!("locks.yml.{s}")))
    }

    /// What [`read`] handed over and returned.
    #[derive(Debug)]
    struct Read {
        batches: Vec<Changes>,
        folded: Vec<Changes>,
        segments: [SegmentRead; 2],
        live: usize,
        last_revision: u64,
    }

    fn read_all(paths: &[PathBuf; 2], after_revision: u64) -> Result<Read, String> {
        let (mut batches, mut folded) = (Vec::new(), Vec::new());
        let replay = read(paths, after_revision, |record| {
            match record {
                Replayed::New(changes) => batches.push(changes),
                Replayed::Folded(changes) => folded.push(changes),
            }
            Ok(())
        })?;
        Ok(Read {
            batches,
            folded,
            segments: replay.segments,
            live: replay.live,
            last_revision: replay.last_revision,
        })
    }

    fn read_one(bytes: &[u8], after_revision: u64) -> Result<Read, String> {
        let dir = tempfile::tempdir().unwrap();
        let paths = segments(dir.path());
        std::fs::write(&paths[0], bytes).unwrap();
        read_all(&paths, after_revision)
    }

    #[test]
    fn records_round_trip_and_old_ones_are_skipped() {
        let mut table = LockTable::default();
        let batches = vec![
            batch(&mut table, "a", Op::Lock),
            batch(&mut table, "b", Op::Lock),
            batch(&mut table, "a", Op::Unlock),
        ];
        let bytes = journal_of(&batches, 0);
        let replay = read_one(&bytes, 0).unwrap();
        assert_eq!(replay.batches, batches);
        assert_eq!(replay.segments[0].torn, None);
        assert_eq!(replay.last_revision, 3);
        let replay = read_one(&bytes, 2).unwrap();
        assert_eq!(
            replay.batches,
            batches[2..],
            "records in the state file already are skipped"
        );
    }

    #[test]
    fn records_written_before_they_named_the_one_before_load_too() {
        let mut table = LockTable::default();
        let batches = vec![
            batch(&mut table, "a", Op::Lock),
            batch(&mut table, "b", Op::Lock),
        ];
        let old: Vec<u8> = journal_of(&batches, 0)
            .split(|&b| b == b'\n')
            .filter(|l| !l.is_empty())
            .flat_map(|line| {
                let json = std::str::from_utf8(&line[9..]).unwrap();
                let json = json.replacen(&format!(",\"after\":{}", batches[0].revision - 1), "", 1);
                let json = json.replacen(&format!(",\"after\":{}", batches[0].revision), "", 1);
                assert!(!json.contains("after"), "{json}");
                format!("{:08x} {json}\n", crc32fast::hash(json.as_bytes())).into_bytes()
            })
            .collect();
        assert_eq!(read_one(&old, 0).unwrap().batches, batches);
    }

    #[test]
    fn a_torn_last_record_is_dropped_at_every_cut_with_or_without_zeros_after_it() {
        let mut table = LockTable::default();
        let batches = vec![
            batch(&mut table, "a", Op::Lock),
            batch(&mut table, "b", Op::Lock),
        ];
        let bytes = journal_of(&batches, 0);
        let first_len = encode(&batches[0], 0).unwrap().len();
        for zeros in [0, 1, 5000] {
            for cut in first_len..bytes.len() {
                let mut cut_bytes = bytes[..cut].to_vec();
                cut_bytes.resize(cut + zeros, 0);
                let replay = read_one(&cut_bytes, 0)
                    .unwrap_or_else(|e| panic!("cut at {cut}, {zeros} zeros: {e}"));
                let segment = &replay.segments[0];
                assert_eq!(replay.batches, batches[..1], "cut at {cut}");
                assert_eq!(segment.good_len, first_len as u64);
                assert_eq!(segment.torn.is_some(), cut > first_len, "cut at {cut}");
                assert_eq!(segment.data_end, cut as u64, "cut at {cut}, {zeros} zeros");
            }
        }
    }

    #[test]
    fn zeros_end_the_records() {
        let mut table = LockTable::default();
        let batches = vec![batch(&mut table, "a", Op::Lock)];
        let mut bytes = journal_of(&batches, 0);
        let len = bytes.len() as u64;
        bytes.resize(1 << 20, 0);
        let replay = read_one(&bytes, 0).unwrap();
        assert_eq!(replay.batches, batches);
        let segment = &replay.segments[0];
        assert_eq!((segment.good_len, segment.data_end), (len, len));
        assert_eq!(segment.torn, None);
    }

    #[test]
    fn damage_before_an_intact_record_is_refused() {
        let mut table = LockTable::default();
        let batches = vec![
            batch(&mut table, "a", Op::Lock),
            batch(&mut table, "b", Op::Lock),
        ];
        let mut bytes = journal_of(&batches, 0);
        bytes[12] ^= 0x20;
        let err = read_one(&bytes, 0).unwrap_err();
        assert!(
            err.contains(
                "locks.yml.journal line 1 is damaged (checksum mismatch) and more records follow it"
            ),
            "{err}"
        );
        let mut bytes = journal_of(&batches, 0);
        let first_len = encode(&batches[0], 0).unwrap().len();
        bytes[..first_len - 1].fill(0);
        let err = read_one(&bytes, 0).unwrap_err();
        assert!(
            err.contains("holds an intact record after the zeros"),
            "zeros over an acknowledged record, another after them: {err}"
        );
    }

    #[test]
    fn two_segments_are_read_older_first_and_a_gap_between_them_is_refused() {
        let mut table = LockTable::default();
        let batches: Vec<Changes> = (0..4)
            .map(|i| batch(&mut table, &format!("l{i}"), Op::Lock))
            .collect();
        let dir = tempfile::tempdir().unwrap();
        let paths = segments(dir.path());
        let mut older = journal_of(&batches[..2], 0);
        older.resize(4096, 0);
        let newer = journal_of(&batches[2..], batches[1].revision);
        for (first, second, live) in [(&older, &newer, 1), (&newer, &older, 0)] {
            std::fs::write(&paths[0], first).unwrap();
            std::fs::write(&paths[1], second).unwrap();
            let replay = read_all(&paths, 0).unwrap();
            assert_eq!(replay.batches, batches, "older segment first");
            assert_eq!(
                replay.live, live,
                "the segment with the latest records is live"
            );
            let replay = read_all(&paths, batches[1].revision).unwrap();
            assert_eq!(replay.batches, batches[2..], "a folded segment is skipped");
            assert_eq!(
                replay.folded,
                batches[..2],
                "its records are handed over as folded"
            );
        }
        // The older segment cut after its first record: the newer one's first record does not
        // follow the last one read.
        std::fs::write(&paths[0], journal_of(&batches[..1], 0)).unwrap();
        std::fs::write(&paths[1], &newer).unwrap();
        let err = read_all(&paths, 0).unwrap_err();
        assert!(
            err.contains("locks.yml.journal.2 line 1") && err.contains("records are missing"),
            "{err}"
        );
        // ... unless the state file holds what was cut.
        let replay = read_all(&paths, batches[1].revision).unwrap();
        assert_eq!(replay.batches, batches[2..]);
        // Without the older segment, the state file must hold what it held.
        std::fs::remove_file(&paths[0]).unwrap();
        assert!(read_all(&paths, 0).is_err(), "a missing segment is refused");
    }

    /// Batches 1 to 6, written once and folded (the state file is at 6), then batches 7 to 9
    /// written over them from the segment's start.
    fn reused_segment() -> (Vec<Changes>, Vec<Changes>, Vec<u8>, Vec<u8>) {
        let mut table = LockTable::default();
        let earlier: Vec<Changes> = (0..6)
            .map(|i| {
                batch(
                    &mut table,
                    &format!("earlier-{i}-{}", "e".repeat(40)),
                    Op::Lock,
                )
            })
            .collect();
        let later: Vec<Changes> = (0..3)
            .map(|i| batch(&mut table, &format!("l{i}"), Op::Lock))
            .collect();
        let old = journal_of(&earlier, 0);
        let new = journal_of(&later, earlier[5].revision);
        assert!(
            new.len() < old.len() / 2,
            "the new records leave earlier ones after them"
        );
        (earlier, later, old, new)
    }

    #[test]
    fn a_reused_segment_loads_its_new_records_at_every_cut_and_passes_over_the_earlier_ones() {
        let (earlier, later, old, new) = reused_segment();
        let folded = earlier[5].revision;
        let ends: Vec<usize> = later
            .iter()
            .scan((0, folded), |(len, after), changes| {
                *len += encode(changes, *after).unwrap().len();
                *after = changes.revision;
                Some(*len)
            })
            .collect();
        // The new records as far as an interrupted write got, the earlier ones after them.
        for cut in 0..=new.len() {
            let mut bytes = new[..cut].to_vec();
            bytes.extend_from_slice(&old[cut..]);
            let replay = read_one(&bytes, folded)
                .unwrap_or_else(|e| panic!("new records cut at {cut}: {e}"));
            let whole = ends.iter().filter(|&&end| end <= cut).count();
            assert_eq!(replay.batches, later[..whole], "cut at {cut}");
            if cut == 0 {
                assert_eq!(
                    replay.folded, earlier,
                    "untouched, it is the folded segment"
                );
            } else {
                assert!(
                    replay.folded.is_empty(),
                    "cut at {cut}: earlier records are passed over"
                );
            }
            let good_len = match cut {
                0 => old.len(),
                _ => ends[..whole].last().copied().unwrap_or(0),
            };
            assert_eq!(replay.segments[0].good_len, good_len as u64, "cut at {cut}");
            assert_eq!(
                replay.last_revision,
                later[..whole].last().map_or(folded, |c| c.revision)
            );

            // Writing goes on after the records, and all of them load.
            let dir = tempfile::tempdir().unwrap();
            let paths = segments(dir.path());
            std::fs::write(&paths[0], &bytes).unwrap();
            let replay = read_all(&paths, folded).unwrap();
            let read0 = &replay.segments[0];
            let mut segment = Segment::open(&paths[0], read0.good_len, read0.data_end).unwrap();
            let mut table = LockTable::default();
            for changes in earlier.iter().chain(&later[..whole]) {
                table.commit(changes.clone());
            }
            let next = batch(&mut table, "next", Op::Lock);
            segment
                .append(&encode(&next, replay.last_revision).unwrap())
                .unwrap();
            let replay = read_all(&paths, folded)
                .unwrap_or_else(|e| panic!("cut at {cut}, one more record: {e}"));
            let mut expected = later[..whole].to_vec();
            if cut == 0 {
                expected.clear();
            }
            expected.push(next);
            assert_eq!(replay.batches, expected, "cut at {cut}, one more record");
        }
    }

    #[test]
    fn an_earlier_record_right_after_the_new_ones_ends_them() {
        let (earlier, later, old, new) = reused_segment();
        let folded = earlier[5].revision;
        // The new records happened to end where an earlier one starts.
        let boundary = encode(&earlier[0], 0).unwrap().len();
        let mut bytes = new.clone();
        bytes.extend_from_slice(&old[boundary..]);
        let replay = read_one(&bytes, folded).unwrap();
        assert_eq!(replay.batches, later);
        assert!(replay.folded.is_empty(), "earlier records are passed over");
        let segment = &replay.segments[0];
        assert_eq!(
            (segment.good_len, segment.data_end),
            (new.len() as u64, new.len() as u64)
        );
        assert_eq!(segment.torn, None, "nothing was torn");
        // Above the state file's revision, it cannot be an earlier use's.
        let mut bytes = journal_of(&later, earlier[0].revision);
        bytes.extend_from_slice(&old[boundary..]);
        let err = read_one(&bytes, earlier[0].revision).unwrap_err();
        assert!(
            err.contains("line 4: revision 2 does not follow 9"),
            "{err}"
        );
    }

    #[test]
    fn damage_in_a_reused_segment_is_still_refused() {
        let (earlier, _, old, new) = reused_segment();
        let folded = earlier[5].revision;
        let mut bytes = new.clone();
        bytes.extend_from_slice(&old[new.len()..]);
        bytes[12] ^= 0x20;
        let err = read_one(&bytes, folded).unwrap_err();
        assert!(
            err.contains("line 1 is damaged (checksum mismatch) and more records follow it"),
            "a new record after a damaged one: {err}"
        );
        // An earlier record above the state file's revision: the state file does not hold it,
        // so it cannot be an earlier use's.
        let (_, later, _, _) = reused_segment();
        let mut bytes = journal_of(&later, earlier[3].revision);
        bytes.extend_from_slice(&old[bytes.len()..]);
        let err = read_one(&bytes, earlier[3].revision).unwrap_err();
        assert!(
            err.contains("line 4 is damaged") && err.contains("more records follow it"),
            "{err}"
        );
    }

    #[test]
    fn a_failed_write_is_undone_and_writing_goes_on_over_a_torn_tail() {
        let mut table = LockTable::default();
        let first = batch(&mut table, "a", Op::Lock);
        let dir = tempfile::tempdir().unwrap();
        let paths = segments(dir.path());
        let mut bytes = encode(&first, 0).unwrap();
        let good_len = bytes.len() as u64;
        bytes.extend_from_slice(b"0000 {\"revis-and-more-than-the-next-record-takes");
        bytes.extend_from_slice(&[b'x'; 300]);
        bytes.resize(8192, 0);
        std::fs::write(&paths[0], &bytes).unwrap();
        let replay = read_all(&paths, 0).unwrap();
        let read0 = &replay.segments[0];
        let mut segment = Segment::open(&paths[0], read0.good_len, read0.data_end).unwrap();
        let second = batch(&mut table, "b", Op::Lock);
        segment
            .append(&encode(&second, first.revision).unwrap())
            .unwrap();
        assert_eq!(read_all(&paths, 0).unwrap().batches, vec![first, second]);
        let on_disk = std::fs::read(&paths[0]).unwrap();
        assert_eq!(on_disk.len(), 8192, "the zeros written ahead are kept");
        assert!(
            on_disk[segment.len() as usize..].iter().all(|&b| b == 0),
            "the torn record was zeroed"
        );
        assert!(segment.len() > good_len);
    }
}

//! The journal: an append-only file of committed batches next to the state file.
//!
//! Rewriting the whole YAML state file for every batch costs time in proportion to the table
//! (tens of milliseconds at 10,000 locks), so each batch is appended here instead and the
//! state file is rewritten only now and then (compaction). One record per batch, one line per
//! record:
//!
//! ```text
//! 1c291ca3 {"revision":43,"locks":{"prod":{"key":"k","locked_by":{"r":1},"revision":43,"locked_at":"..."}}}
//! ```
//!
//! The first eight characters are the CRC-32 of the JSON after the space. A record holds the
//! complete new state of every lock the batch changed, so replaying it is idempotent, and
//! records at or below the state file's revision (left by a crash during compaction) are
//! skipped. A record is acknowledged only after it is fsynced; a crash in the middle of an
//! append leaves an incomplete last line, which was never acknowledged and is dropped on load.
//! A damaged record followed by others is real damage, and loading stops with an error.

use std::collections::BTreeMap;
use std::fs::{File, OpenOptions};
use std::io::{self, Write};
use std::path::{Path, PathBuf};

use serde::ser::SerializeMap;
use serde::{Deserialize, Serialize, Serializer};

use super::codec::{StoredLock, StoredLockView, UniqueMap};
use crate::domain::Changes;

/// What loading the journal found.
#[derive(Debug, Default)]
pub(super) struct Replay {
    /// The batches, in order, with revisions above the state file's.
    pub batches: Vec<Changes>,
    /// Bytes of intact records; anything after this is an incomplete last record.
    pub good_len: u64,
    /// True when an incomplete last record was found (and will be cut off).
    pub torn_tail: bool,
}

/// Reads the journal at `path` (absent means empty), keeping batches above `after_revision`.
pub(super) fn read(path: &Path, after_revision: u64) -> Result<Replay, String> {
    let bytes = match std::fs::read(path) {
        Ok(bytes) => bytes,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(Replay::default()),
        Err(e) => return Err(format!("cannot read {}: {e}", path.display())),
    };
    let mut replay = Replay::default();
    let mut offset = 0usize;
    let mut last_revision = after_revision;
    let mut line_no = 0;
    while offset < bytes.len() {
        line_no += 1;
        let rest = &bytes[offset..];
        let Some(end) = rest.iter().position(|&b| b == b'\n') else {
            // An append that never finished: never fsynced, never acknowledged.
            replay.torn_tail = true;
            break;
        };
        let line = &rest[..end];
        match parse_record(line) {
            Ok(changes) => {
                if changes.revision > after_revision {
                    if changes.revision <= last_revision {
                        return Err(format!(
                            "{} line {line_no}: revision {} does not follow {last_revision}",
                            path.display(),
                            changes.revision
                        ));
                    }
                    last_revision = changes.revision;
                    replay.batches.push(changes);
                }
            }
            Err(reason) if offset + end + 1 == bytes.len() => {
                // A damaged last line can only come from an interrupted append.
                tracing::warn!("{} line {line_no}: {reason}", path.display());
                replay.torn_tail = true;
                break;
            }
            Err(reason) => {
                return Err(format!(
                    "{} line {line_no} is damaged ({reason}) and more records follow it",
                    path.display()
                ));
            }
        }
        offset += end + 1;
    }
    replay.good_len = offset as u64;
    Ok(replay)
}

fn parse_record(line: &[u8]) -> Result<Changes, String> {
    let text = std::str::from_utf8(line).map_err(|_| "not UTF-8".to_string())?;
    let (crc, json) = text
        .split_once(' ')
        .ok_or_else(|| "no checksum".to_string())?;
    let expected = u32::from_str_radix(crc, 16).map_err(|_| "bad checksum field".to_string())?;
    if crc.len() != 8 || crc32fast::hash(json.as_bytes()) != expected {
        return Err("checksum mismatch".into());
    }
    let record: StoredRecord =
        serde_json::from_str(json).map_err(|e| format!("not a journal record: {e}"))?;
    let mut locks = BTreeMap::new();
    for (name, stored) in record.locks.0 {
        let lock = stored
            .into_lock(record.revision)
            .map_err(|e| format!("lock '{name}': {e}"))?;
        locks.insert(name, lock);
    }
    Ok(Changes {
        revision: record.revision,
        locks,
        ..Changes::default()
    })
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct StoredRecord {
    revision: u64,
    locks: UniqueMap<StoredLock>,
}

/// Formats one record line, checksum first.
pub(super) fn encode(changes: &Changes) -> io::Result<Vec<u8>> {
    let json = serde_json::to_vec(&Record(changes)).map_err(io::Error::other)?;
    let mut line = format!("{:08x} ", crc32fast::hash(&json)).into_bytes();
    line.extend_from_slice(&json);
    line.push(b'\n');
    Ok(line)
}

struct Record<'a>(&'a Changes);

impl Serialize for Record<'_> {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        let mut map = s.serialize_map(Some(2))?;
        map.serialize_entry("revision", &self.0.revision)?;
        map.serialize_entry("locks", &ChangedLocks(&self.0.locks))?;
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

/// The open journal, appended to with every batch.
#[derive(Debug)]
pub(super) struct Journal {
    path: PathBuf,
    file: File,
    /// Length of the intact records; the file is cut back to it after a failed append.
    len: u64,
    /// Set when a failed append could not be cut back; the next append retries the cut.
    dirty: bool,
}

impl Journal {
    /// Opens the journal for appending, cutting off an incomplete last record.
    pub fn open(path: &Path, good_len: u64) -> io::Result<Journal> {
        let file = OpenOptions::new().create(true).append(true).open(path)?;
        let mut journal = Journal {
            path: path.to_owned(),
            file,
            len: good_len,
            dirty: true,
        };
        journal.cut_back()?;
        Ok(journal)
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Bytes of records in the journal.
    pub fn len(&self) -> u64 {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Appends `line` and fsyncs it. On error the journal is cut back to its last record.
    pub fn append(&mut self, line: &[u8]) -> io::Result<()> {
        if self.dirty {
            self.cut_back()?;
        }
        let result = self
            .file
            .write_all(line)
            .and_then(|()| self.file.sync_data());
        match result {
            Ok(()) => {
                self.len += line.len() as u64;
                Ok(())
            }
            Err(e) => {
                self.dirty = true;
                let _ = self.cut_back();
                Err(e)
            }
        }
    }

    /// Empties the journal once the state file holds everything in it.
    pub fn clear(&mut self) -> io::Result<()> {
        self.len = 0;
        self.dirty = true;
        self.cut_back()
    }

    fn cut_back(&mut self) -> io::Result<()> {
        if self.file.metadata()?.len() != self.len {
            self.file.set_len(self.len)?;
            self.file.sync_all()?;
        }
        self.dirty = false;
        Ok(())
    }
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

    fn journal_of(batches: &[Changes]) -> Vec<u8> {
        batches.iter().flat_map(|c| encode(c).unwrap()).collect()
    }

    #[test]
    fn records_round_trip_and_old_ones_are_skipped() {
        let mut table = LockTable::default();
        let batches = vec![
            batch(&mut table, "a", Op::Lock),
            batch(&mut table, "b", Op::Lock),
            batch(&mut table, "a", Op::Unlock),
        ];
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("j");
        std::fs::write(&path, journal_of(&batches)).unwrap();
        let replay = read(&path, 0).unwrap();
        assert_eq!(replay.batches, batches);
        assert!(!replay.torn_tail);
        let replay = read(&path, 2).unwrap();
        assert_eq!(
            replay.batches,
            batches[2..],
            "records in the state file already are skipped"
        );
    }

    #[test]
    fn a_torn_last_record_is_dropped_at_every_cut() {
        let mut table = LockTable::default();
        let batches = vec![
            batch(&mut table, "a", Op::Lock),
            batch(&mut table, "b", Op::Lock),
        ];
        let bytes = journal_of(&batches);
        let first_len = encode(&batches[0]).unwrap().len();
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("j");
        for cut in first_len..bytes.len() {
            std::fs::write(&path, &bytes[..cut]).unwrap();
            let replay = read(&path, 0).unwrap_or_else(|e| panic!("cut at {cut}: {e}"));
            assert_eq!(replay.batches, batches[..1], "cut at {cut}");
            assert_eq!(replay.good_len, first_len as u64);
            assert_eq!(replay.torn_tail, cut > first_len);
        }
    }

    #[test]
    fn damage_before_the_last_record_is_refused() {
        let mut table = LockTable::default();
        let batches = vec![
            batch(&mut table, "a", Op::Lock),
            batch(&mut table, "b", Op::Lock),
        ];
        let mut bytes = journal_of(&batches);
        bytes[12] ^= 0x20;
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("j");
        std::fs::write(&path, &bytes).unwrap();
        let err = read(&path, 0).unwrap_err();
        assert!(
            err.contains("line 1 is damaged (checksum mismatch)"),
            "{err}"
        );
    }

    #[test]
    fn append_after_a_torn_tail_starts_at_the_last_good_record() {
        let mut table = LockTable::default();
        let first = batch(&mut table, "a", Op::Lock);
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("j");
        let mut bytes = encode(&first).unwrap();
        bytes.extend_from_slice(b"0000 {\"revis");
        std::fs::write(&path, &bytes).unwrap();
        let replay = read(&path, 0).unwrap();
        let mut journal = Journal::open(&path, replay.good_len).unwrap();
        let second = batch(&mut table, "b", Op::Lock);
        journal.append(&encode(&second).unwrap()).unwrap();
        assert_eq!(read(&path, 0).unwrap().batches, vec![first, second]);
    }
}

//! Compaction: folding a journal segment into the state file, on a thread of its own, so that
//! no batch waits for a whole-table write.
//!
//! When the live segment has grown past four times the state file's size (and at least 1 MiB),
//! the writer switches to the spare segment (open already, its name durable) and hands this
//! thread the table as of that moment (a cheap clone) and the old segment's path. The thread,
//! at a lower CPU priority than the requests' (see [`crate::background`]), then:
//!
//! 1. writes the table into a new state file: a temporary file, fsynced, renamed over the
//!    state file, then the directory fsynced;
//! 2. makes the history file durable with the entries the old segment carried;
//! 3. only then hands the old segment back, open, as the next spare: its records are all in the
//!    state file now, and new ones will be written over them. Writing over a file's existing
//!    bytes spares each append's fsync a new file size to commit (on the benchmark's disk an
//!    fdatasync took about 150 µs over existing bytes against 225 µs appending). A segment that
//!    has grown past twice the compaction threshold (the table shrank) is replaced instead by
//!    a fresh one of zeros (created and fsynced under a temporary name, renamed over it, the
//!    directory fsynced).
//!
//! A crash at any point leaves the old segment's records in place until the state file and
//! the history file hold what they held, so loading replays them (or skips them, as they are at
//! or below the new state file's revision); see [`super::journal`] for how the records of a
//! reused segment are told from what its earlier use left after them. One job runs at a time;
//! the writer hands over the next only once the last is done. A failed job is logged and tried
//! again after a pause, and never fails a batch; at shutdown it is given up, and the writer
//! folds everything itself.

use std::fs::{self, File, OpenOptions};
use std::io::{self, Write};
use std::path::{Path, PathBuf};
use std::sync::{Mutex, mpsc};
use std::thread;
use std::time::Duration;

use super::history::HistoryFile;
use super::journal::fill_new_segment;
use super::state_file::render;
use crate::domain::{Changes, Entry, LockTable};

/// How long a failed job waits before it is tried again.
const RETRY_AFTER_FAILURE: Duration = Duration::from_secs(1);

/// The files the writer and the compaction thread both write (never at the same time: the
/// writer writes them only while no job runs).
#[derive(Debug)]
pub(super) struct Files {
    /// The state file.
    pub path: PathBuf,
    /// Where a new state file is written before it is renamed into place.
    pub tmp_path: PathBuf,
    /// Where a fresh segment is written before it is renamed into place.
    pub segment_tmp_path: PathBuf,
    /// The directory holding them all, fsynced after every rename.
    pub dir: File,
    pub history: Mutex<HistoryFile>,
}

impl Files {
    /// Writes `table` (with `changes` laid over it) into a new state file, atomically; returns
    /// its length.
    pub fn write_state(
        &self,
        table: &LockTable,
        changes: &Changes,
        capacity: usize,
    ) -> io::Result<u64> {
        let buf = render(table, changes, capacity)?;
        let written = (|| {
            let mut tmp = OpenOptions::new()
                .write(true)
                .create(true)
                .truncate(true)
                .open(&self.tmp_path)?;
            tmp.write_all(&buf)?;
            tmp.sync_all()?;
            drop(tmp);
            fs::rename(&self.tmp_path, &self.path)?;
            self.dir.sync_all()
        })();
        if let Err(e) = written {
            let _ = fs::remove_file(&self.tmp_path);
            return Err(e);
        }
        Ok(buf.len() as u64)
    }

    /// Makes the history file durable with `table`'s entries and `more` after them (those of
    /// a batch not yet in the table).
    pub fn sync_history(&self, table: &LockTable, more: &[Entry]) -> io::Result<()> {
        let kept: Vec<&Entry> = table.history().iter().map(|e| &**e).chain(more).collect();
        let mut history = self.history.lock().unwrap_or_else(|e| e.into_inner());
        history.append(kept.iter().copied());
        history.sync(&kept)
    }

    /// The folded segment at `path`, open to be written over again, unless it is longer than
    /// `reuse_up_to` bytes (or gone): then a fresh one replaces it.
    pub fn reuse_segment(&self, path: &Path, reuse_up_to: u64) -> io::Result<File> {
        match OpenOptions::new().read(true).write(true).open(path) {
            Ok(file) if file.metadata()?.len() <= reuse_up_to => Ok(file),
            Ok(_) => self.fresh_segment(path),
            Err(e) if e.kind() == io::ErrorKind::NotFound => self.fresh_segment(path),
            Err(e) => Err(e),
        }
    }

    /// Replaces the segment at `path` (or creates it) with a fresh one (of zeros, see
    /// [`fill_new_segment`]), its name durable; returns it open for writing.
    pub fn fresh_segment(&self, path: &Path) -> io::Result<File> {
        let written = (|| {
            let tmp = OpenOptions::new()
                .read(true)
                .write(true)
                .create(true)
                .truncate(true)
                .open(&self.segment_tmp_path)?;
            fill_new_segment(&tmp)?;
            tmp.sync_all()?;
            fs::rename(&self.segment_tmp_path, path)?;
            self.dir.sync_all()?;
            Ok(tmp)
        })();
        if written.is_err() {
            let _ = fs::remove_file(&self.segment_tmp_path);
        }
        written
    }
}

/// Work for the compaction thread.
#[derive(Debug)]
pub(super) enum Job {
    /// Write `table` into the state file, the history with it, then hand back the segment at
    /// `old` (whose records are all at or below the table's revision) to be written over, or
    /// a fresh one if it is longer than `reuse_up_to` bytes.
    Fold {
        table: LockTable,
        old: PathBuf,
        reuse_up_to: u64,
    },
    /// Create the segment at `path` (which holds no record), as zeros.
    Prepare { path: PathBuf },
}

/// What a job came to.
#[derive(Debug)]
pub(super) enum Done {
    /// The state file holds the table (it is `snapshot_len` bytes long) and `spare` is the
    /// old segment, to be written over (or a fresh one that replaced it).
    Folded { snapshot_len: u64, spare: File },
    /// `spare` is the segment that was asked for.
    Prepared { spare: File },
    /// The job failed and was given up because the server is stopping.
    GaveUp,
}

/// The handle on the compaction thread.
#[derive(Debug)]
pub(super) struct Compactor {
    jobs: Option<mpsc::Sender<Job>>,
    done: mpsc::Receiver<Done>,
    thread: Option<thread::JoinHandle<()>>,
    busy: bool,
}

impl Compactor {
    pub fn start(files: std::sync::Arc<Files>) -> io::Result<Compactor> {
        let (jobs, queue) = mpsc::channel();
        let (report, done) = mpsc::channel();
        let thread = thread::Builder::new()
            .name("locker-compact".into())
            .spawn(move || run(&files, &queue, &report))?;
        Ok(Compactor {
            jobs: Some(jobs),
            done,
            thread: Some(thread),
            busy: false,
        })
    }

    /// True while a job runs.
    pub fn busy(&self) -> bool {
        self.busy
    }

    /// Hands over `job`; only when no job runs.
    pub fn submit(&mut self, job: Job) {
        debug_assert!(!self.busy, "one compaction job at a time");
        if let Some(jobs) = &self.jobs
            && jobs.send(job).is_ok()
        {
            self.busy = true;
        }
    }

    /// The outcome of the running job, if it has ended.
    pub fn poll(&mut self) -> Option<Done> {
        if !self.busy {
            return None;
        }
        let done = self.done.try_recv().ok()?;
        self.busy = false;
        Some(done)
    }

    /// Waits for the running job, if any, to end (retrying as long as it fails).
    pub fn wait(&mut self) -> Option<Done> {
        if !self.busy {
            return None;
        }
        self.busy = false;
        self.done.recv().ok()
    }

    /// Stops the thread: a running job ends (a failing one is given up); returns its outcome.
    pub fn stop(&mut self) -> Option<Done> {
        self.jobs = None;
        let done = if self.busy {
            self.done.recv().ok()
        } else {
            None
        };
        self.busy = false;
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
        done
    }
}

impl Drop for Compactor {
    fn drop(&mut self) {
        self.stop();
    }
}

fn run(files: &Files, queue: &mpsc::Receiver<Job>, report: &mpsc::Sender<Done>) {
    crate::background::lower_this_threads_priority();
    while let Ok(job) = queue.recv() {
        let done = loop {
            match attempt(files, &job) {
                Ok(done) => break done,
                Err(e) => {
                    tracing::warn!(error = %e, "could not fold the journal into the state file; trying again in a second (changes are still saved to the journal)");
                    // A closed queue means the server is stopping: give up, the writer folds.
                    match queue.recv_timeout(RETRY_AFTER_FAILURE) {
                        Err(mpsc::RecvTimeoutError::Timeout) => {}
                        Ok(_) | Err(mpsc::RecvTimeoutError::Disconnected) => break Done::GaveUp,
                    }
                }
            }
        };
        if report.send(done).is_err() {
            return;
        }
    }
}

fn attempt(files: &Files, job: &Job) -> io::Result<Done> {
    match job {
        Job::Fold {
            table,
            old,
            reuse_up_to,
        } => {
            let snapshot_len = files.write_state(table, &Changes::default(), 1 << 16)?;
            files.sync_history(table, &[])?;
            let spare = files.reuse_segment(old, *reuse_up_to)?;
            Ok(Done::Folded {
                snapshot_len,
                spare,
            })
        }
        Job::Prepare { path } => Ok(Done::Prepared {
            spare: files.fresh_segment(path)?,
        }),
    }
}

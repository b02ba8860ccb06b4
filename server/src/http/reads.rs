//! Big reads at a lower priority than the lock traffic.
//!
//! A `GET /locks` of a large table is written from one snapshot, a piece at a time. On the
//! runtime's workers those pieces would compete for the CPU with every lock request: one
//! client reading 100,000 locks in a loop took half of the cycling clients' throughput and
//! added half to their p99 (BENCHMARKS.md, scenario 9). So a read of more than one piece is
//! written on a thread of its own whose nice value is raised: it takes what CPU the lock
//! traffic leaves, and on an idle server it runs as fast as on a worker. The thread hands its
//! pieces over a channel of two, so a slow client holds two pieces in memory, not the table.

use std::io;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::thread;
use std::time::SystemTime;

use futures_util::stream::{self, Stream, StreamExt};
use tokio::sync::mpsc;

use super::answer::LockPieces;
use crate::concourse::Seen;
use crate::domain::LockTable;

/// Reads written on their own thread at once; more are written on the runtime's workers, as
/// small reads always are, so that a flood of readers cannot start a thread each.
const MAX_READER_THREADS: usize = 8;

/// Reader threads now running.
static READER_THREADS: AtomicUsize = AtomicUsize::new(0);

/// Every lock of `table`, by name, as one JSON object in pieces (see the module's comment for
/// where they are written).
pub(super) fn locks_json_stream(
    table: LockTable,
    seen: Option<Arc<Seen>>,
    now: SystemTime,
) -> impl Stream<Item = io::Result<Vec<u8>>> + Send + 'static {
    let pieces = LockPieces::new(table, seen, now);
    if pieces.is_large() {
        // A clone of the snapshot (shared, not copied), kept in case no thread starts.
        match on_reader_thread(pieces.clone()) {
            Ok(written) => return written.left_stream(),
            Err(e) => tracing::warn!(
                "cannot start a thread for a large read ({e}); it is written on the runtime's workers"
            ),
        }
    }
    on_worker(pieces).right_stream()
}

/// Writes `pieces` on a new thread at a lower priority (see [`crate::background`]); fails
/// when [`MAX_READER_THREADS`] run already or no thread can be started.
fn on_reader_thread(
    pieces: LockPieces,
) -> io::Result<impl Stream<Item = io::Result<Vec<u8>>> + Send + 'static> {
    let running = READER_THREADS.fetch_add(1, Ordering::AcqRel);
    let slot = ReaderSlot;
    if running >= MAX_READER_THREADS {
        return Err(io::Error::other(format!(
            "{MAX_READER_THREADS} large reads are being written already"
        )));
    }
    let (sender, receiver) = mpsc::channel(2);
    thread::Builder::new()
        .name("locker-read".into())
        .spawn(move || {
            let _slot = slot;
            crate::background::lower_this_threads_priority();
            for piece in pieces {
                let failed = piece.is_err();
                // The client went away (the receiver is dropped), or the read failed.
                if sender.blocking_send(piece).is_err() || failed {
                    break;
                }
            }
        })?;
    Ok(stream::unfold(receiver, |mut receiver| async move {
        let piece = receiver.recv().await?;
        Some((piece, receiver))
    }))
}

/// Writes `pieces` on the runtime's workers, giving the worker to the requests queued on it
/// between pieces, so a big read costs them at most one piece of waiting.
fn on_worker(pieces: LockPieces) -> impl Stream<Item = io::Result<Vec<u8>>> + Send + 'static {
    stream::unfold(pieces, |mut pieces| async move {
        tokio::task::yield_now().await;
        let piece = pieces.next()?;
        Some((piece, pieces))
    })
}

/// One of the [`MAX_READER_THREADS`] slots, given back when dropped.
struct ReaderSlot;

impl Drop for ReaderSlot {
    fn drop(&mut self) {
        READER_THREADS.fetch_sub(1, Ordering::AcqRel);
    }
}

//! What `out` does when Concourse aborts it.
//!
//! Concourse aborts a running step with SIGTERM (and a terminal sends SIGINT). While `lock`
//! waits in a lock's queue, `out` then withdraws its place (`DELETE /lock/{name}/queue/{id}`,
//! which also releases a grant that crossed the abort), giving that request 1.5 s, and exits
//! with 128 + the signal's number: within 2 s, holding nothing. At any other time it exits at
//! once, as it would without handlers. Once the put's outcome is decided ([`Abort::finish`]), a
//! signal is ignored: a lock taken is named in the output Concourse is about to read, and
//! stopping then would leave it held with nobody knowing.
//!
//! A thread of its own reads the signals, because the main thread is blocked in a request that
//! may take as long as the server's wait. The two agree through one mutex on which of them
//! ends the process: the signal thread marks it aborting before it withdraws, and
//! [`Abort::finish`] then never returns, so no output is printed for a lock being given back,
//! and the failure of a request that the withdrawal cut short (the server answers it 409) does
//! not end the process before the withdrawal is logged.

use std::process;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::thread;
use std::time::Duration;

use signal_hook::consts::{SIGINT, SIGTERM};
use signal_hook::iterator::Signals;

use crate::client::{LockerClient, RequestError};

/// How long the withdrawal may take, so that `out` ends within 2 s of the signal.
const WITHDRAW_TIME: Duration = Duration::from_millis(1500);

/// A place in a lock's queue that an abort must give back.
#[derive(Debug, Clone)]
pub struct Place {
    /// The client that took it.
    pub client: LockerClient,
    /// The lock.
    pub name: String,
    /// The request id (`Idempotency-Key`) that holds the place.
    pub request_id: String,
}

/// Where `out` is, as far as a signal cares.
#[derive(Debug)]
enum Phase {
    /// Nothing to give back: a signal ends the process at once.
    Running,
    /// `lock` may wait in a queue, or have just been granted the lock: a signal withdraws first.
    Queued(Place),
    /// The outcome is decided and being printed: a signal is ignored.
    Finishing,
    /// A signal came; the signal thread withdraws and ends the process.
    Aborting,
}

/// What a SIGTERM or SIGINT does to `out`; see the module's documentation.
#[derive(Debug, Clone)]
pub struct Abort {
    phase: Arc<Mutex<Phase>>,
}

impl Abort {
    /// Handles SIGTERM and SIGINT from now on.
    pub fn on_signals() -> std::io::Result<Self> {
        let abort = Self::without_signals();
        let mut signals = Signals::new([SIGTERM, SIGINT])?;
        let handler = abort.clone();
        thread::Builder::new()
            .name("signals".to_owned())
            .spawn(move || {
                for signal in signals.forever() {
                    handler.on_signal(signal);
                }
            })?;
        Ok(abort)
    }

    /// One that no signal reaches (when the handlers cannot be installed, or in tests).
    pub fn without_signals() -> Self {
        Self {
            phase: Arc::new(Mutex::new(Phase::Running)),
        }
    }

    /// From now on a signal withdraws `place` before `out` ends.
    pub fn queued(&self, place: Place) {
        let mut phase = self.phase();
        if matches!(*phase, Phase::Running) {
            *phase = Phase::Queued(place);
        }
    }

    /// The place was given back: a signal ends `out` at once again.
    pub fn left_queue(&self) {
        let mut phase = self.phase();
        if matches!(*phase, Phase::Queued(_)) {
            *phase = Phase::Running;
        }
    }

    /// The outcome (the output or the error) is decided: from now on a signal is ignored. If a
    /// signal came first, this never returns; the signal thread ends the process once it has
    /// withdrawn.
    pub fn finish(&self) {
        let mut phase = self.phase();
        if matches!(*phase, Phase::Aborting) {
            drop(phase);
            loop {
                thread::park();
            }
        }
        *phase = Phase::Finishing;
    }

    fn on_signal(&self, signal: i32) {
        let before = {
            let mut phase = self.phase();
            if matches!(*phase, Phase::Finishing | Phase::Aborting) {
                return;
            }
            std::mem::replace(&mut *phase, Phase::Aborting)
        };
        let name = signal_name(signal);
        if let Phase::Queued(place) = before {
            let outcome = match place
                .client
                .withdraw(&place.name, &place.request_id, WITHDRAW_TIME)
            {
                Ok(_) => "withdrew its place, holding nothing".to_owned(),
                Err(
                    err @ RequestError::Status {
                        status: 404 | 405, ..
                    },
                ) => {
                    format!("the server has no queue to withdraw from ({err})")
                }
                Err(err) => format!(
                    "could not withdraw its place ({err}); the server drops it after its grace \
                     (LOCKER_QUEUE_GRACE)"
                ),
            };
            eprintln!(
                "error: aborted by {name} while waiting for lock '{}': {outcome}",
                place.name
            );
        } else {
            eprintln!("error: aborted by {name}");
        }
        process::exit(128 + signal);
    }

    fn phase(&self) -> MutexGuard<'_, Phase> {
        self.phase.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

fn signal_name(signal: i32) -> &'static str {
    match signal {
        SIGTERM => "SIGTERM",
        SIGINT => "SIGINT",
        _ => "a signal",
    }
}

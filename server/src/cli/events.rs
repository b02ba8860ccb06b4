//! What a waiting or running client command reacts to, on one channel: stop signals, the
//! answers of long-polls and renewals, which run on threads of their own so that a signal is
//! never stuck behind a blocking request.

use std::sync::mpsc::{Receiver, Sender, channel};
use std::time::{Duration, Instant};

use signal_hook::consts::{SIGHUP, SIGINT, SIGTERM};
use signal_hook::iterator::SignalsInfo;
use signal_hook::iterator::exfiltrator::WithOrigin;
use signal_hook::low_level::siginfo::Cause;

use super::api::LockAnswer;
use super::failure::Failure;

/// The signals that stop a waiting client, and that `locker run` passes on to its command.
pub const STOP_SIGNALS: [i32; 3] = [SIGINT, SIGTERM, SIGHUP];

/// Something that happened.
#[derive(Debug)]
pub enum Event {
    /// A stop signal arrived.
    Signal(Stop),
    /// A lock request answered.
    Polled(Result<LockAnswer, Failure>),
    /// A renewal answered; when it succeeded, with the time it was sent.
    Renewed(Result<Instant, Failure>),
}

/// A stop signal and where it came from.
#[derive(Debug, Clone, Copy)]
pub struct Stop {
    pub signal: i32,
    /// True when the kernel sent it for the terminal (Ctrl-C, a hang-up): then it reached the
    /// whole foreground process group, a command that `locker run` started included.
    pub from_terminal: bool,
}

/// The channel of events, with the stop signals feeding it.
pub struct Events {
    sender: Sender<Event>,
    receiver: Receiver<Event>,
}

impl Events {
    /// Starts listening for the stop signals: from now on they no longer end the process but
    /// arrive here.
    pub fn listening() -> Result<Events, Failure> {
        let (sender, receiver) = channel();
        let mut signals = SignalsInfo::<WithOrigin>::new(STOP_SIGNALS)
            .map_err(|e| Failure::Failed(format!("cannot listen for signals: {e}")))?;
        let to_main = sender.clone();
        std::thread::spawn(move || {
            for origin in signals.forever() {
                let stop = Stop {
                    signal: origin.signal,
                    from_terminal: origin.cause == Cause::Kernel,
                };
                if to_main.send(Event::Signal(stop)).is_err() {
                    break;
                }
            }
        });
        Ok(Events { sender, receiver })
    }

    /// A sender for a thread that reports here.
    pub fn sender(&self) -> Sender<Event> {
        self.sender.clone()
    }

    /// The next event; `None` when `timeout` passes first.
    pub fn next(&self, timeout: Duration) -> Option<Event> {
        // The channel keeps a sender of its own, so it never disconnects.
        self.receiver.recv_timeout(timeout).ok()
    }

    /// A stop signal that has arrived and not been taken yet, leaving other events queued
    /// behind it in place.
    pub fn pending_stop(&self) -> Option<Stop> {
        let mut stop = None;
        let mut others = Vec::new();
        while let Ok(event) = self.receiver.try_recv() {
            match event {
                Event::Signal(s) if stop.is_none() => stop = Some(s),
                other => others.push(other),
            }
        }
        for event in others {
            let _ = self.sender.send(event);
        }
        stop
    }
}

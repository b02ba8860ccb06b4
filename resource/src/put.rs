//! `out` (Concourse's put step): lock or unlock, waiting politely.
//!
//! `lock` claims the lock and, while another key holds it, retries after a full-jitter back-off
//! ([`crate::backoff`]), logging one line per wait; a server that is down or restarting is waited
//! for the same way. `unlock` fails at once when another key holds the lock and retries only an
//! unreachable server. Both stop at `params.timeout` (for `unlock`, 10 minutes by default).
//! Every attempt carries the same request id (`Idempotency-Key`), so a retry after a lost
//! answer is recognised by the server and claims or releases nothing a second time.

use std::io::Write;
use std::thread;
use std::time::{Duration, Instant};

use rand::Rng;

use crate::backoff::Backoff;
use crate::client::{Claim, ClaimAnswer, Lock, LockerClient, RequestError, new_request_id};
use crate::config::{DEFAULT_UNLOCK_TIMEOUT, LockOp, OutParams, Source};
use crate::protocol::{MetadataField, Request, StepOutput, Version};
use crate::{BuildEnv, Error, duration, resolve_lock_name};

/// Runs `out` on what Concourse wrote on stdin.
pub fn run(input: &str, build: &BuildEnv, log: &mut dyn Write) -> Result<StepOutput, Error> {
    let request = Request::from_stdin(input)?;
    let source = Source::from_json(&request.source)?;
    let params = OutParams::from_json(&request.params)?;
    let name = resolve_lock_name(&source)?;
    let timeout = match params.lock_op {
        LockOp::Lock => params.timeout,
        LockOp::Unlock => Some(params.timeout.unwrap_or(DEFAULT_UNLOCK_TIMEOUT)),
    };
    let started = Instant::now();
    let deadline = timeout.and_then(|timeout| started.checked_add(timeout));
    let client = LockerClient::new(&source)?.with_deadline(deadline);
    let delays = params.retry_delays(&source);
    let attempts = Attempts {
        op: params.lock_op,
        name: &name,
        timeout,
        started,
        deadline,
        backoff: Backoff::new(delays.first, delays.max, rand::rng()),
        log,
    };
    let request_id = new_request_id();
    let claim = Claim {
        key: &params.key,
        locked_by: params.requestor(),
        request_id: &request_id,
    };
    let _ = writeln!(
        attempts.log,
        "{} lock '{name}' with key '{}' as '{}' for {}",
        match params.lock_op {
            LockOp::Lock => "taking",
            LockOp::Unlock => "releasing",
        },
        claim.key,
        claim.locked_by,
        build.describe()
    );
    let lock = match params.lock_op {
        LockOp::Lock => attempts.run(|| match client.lock(&name, &claim) {
            Ok(ClaimAnswer::Done { lock, .. }) => Ok(Outcome::Done(lock)),
            Ok(ClaimAnswer::Locked { lock, .. }) => Ok(Outcome::Held(lock)),
            Err(err) if err.is_transient() => Ok(Outcome::Unreachable(err)),
            Err(err) => Err(err.into()),
        })?,
        LockOp::Unlock => attempts.run(|| match client.unlock(&name, &claim) {
            Ok(ClaimAnswer::Done { lock, .. }) => Ok(Outcome::Done(lock)),
            Ok(ClaimAnswer::Locked { message, .. }) => Err(Error::Refused {
                name: name.clone(),
                message,
            }),
            Err(err) if err.is_transient() => Ok(Outcome::Unreachable(err)),
            Err(err) => Err(err.into()),
        })?,
    };
    Ok(StepOutput {
        version: Version::revision(lock.revision),
        metadata: vec![
            MetadataField::new("lock", name),
            MetadataField::new("key", params.key.clone()),
            MetadataField::new("locked_by", params.requestor()),
            MetadataField::new("lock_op", params.lock_op.as_str()),
            MetadataField::new("holders", lock.holders_json()),
        ],
    })
}

/// What one attempt came to.
enum Outcome {
    /// The operation is done; the lock after it.
    Done(Lock),
    /// Another key holds the lock: wait and try again.
    Held(Lock),
    /// The server could not be reached or failed: wait and try again.
    Unreachable(RequestError),
}

/// Repeats one operation with back-off until it is done, fails or runs out of time.
struct Attempts<'a, R> {
    op: LockOp,
    name: &'a str,
    timeout: Option<Duration>,
    started: Instant,
    deadline: Option<Instant>,
    backoff: Backoff<R>,
    log: &'a mut dyn Write,
}

impl<R: Rng> Attempts<'_, R> {
    fn run(mut self, mut attempt: impl FnMut() -> Result<Outcome, Error>) -> Result<Lock, Error> {
        loop {
            let number = self.backoff.attempts() + 1;
            let outcome = attempt()?;
            if let Outcome::Done(lock) = outcome {
                if number > 1 {
                    let done = match self.op {
                        LockOp::Lock => "took",
                        LockOp::Unlock => "released",
                    };
                    let _ = writeln!(
                        self.log,
                        "{done} lock '{}' on attempt {number} after {}",
                        self.name,
                        duration::format(self.started.elapsed())
                    );
                }
                return Ok(lock);
            }
            let mut delay = self.backoff.next_delay();
            if let Some(deadline) = self.deadline {
                let now = Instant::now();
                if now >= deadline {
                    return Err(self.timed_out(outcome));
                }
                delay = delay.min(deadline - now);
            }
            let why = match &outcome {
                Outcome::Held(lock) => format!(
                    "lock '{}' is held by {} with another key{}",
                    self.name,
                    lock.holders_text(),
                    since(lock)
                ),
                Outcome::Unreachable(err) => format!("{err}"),
                Outcome::Done(_) => unreachable!("handled above"),
            };
            let _ = writeln!(
                self.log,
                "{why}; attempt {number}, waiting {} before the next",
                duration::format(delay)
            );
            thread::sleep(delay);
        }
    }

    fn timed_out(&self, last: Outcome) -> Error {
        let timeout = duration::format(self.timeout.unwrap_or_default());
        let reason = match last {
            Outcome::Held(lock) => format!(
                "it is still held by {} with another key{}",
                lock.holders_text(),
                since(&lock)
            ),
            Outcome::Unreachable(err) => format!("the server did not answer: {err}"),
            Outcome::Done(_) => String::new(),
        };
        Error::TimedOut {
            op: self.op.as_str(),
            name: self.name.to_owned(),
            timeout,
            reason,
        }
    }
}

fn since(lock: &Lock) -> String {
    lock.locked_at
        .as_deref()
        .map(|at| format!(" since {at}"))
        .unwrap_or_default()
}

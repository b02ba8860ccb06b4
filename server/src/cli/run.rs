//! `locker run`: holds a lock for exactly as long as a command runs.
//!
//! The lock is taken with a lease (`--ttl`), which a thread of its own renews every third of
//! it while the command runs; the main thread watches the command, the stop signals (passed
//! on to the command) and the renewals. When the command ends, the lock is released and its
//! status is ours. The lease counts as lost when the server says the claim is gone (409, or
//! another key holds the lock: 423), or when no renewal has succeeded for a whole lease,
//! counted from when the last good one was sent (the server's deadline is later than that).
//! Then the command is stopped, since what it does is no longer protected.

use std::collections::BTreeMap;
use std::ffi::OsString;
use std::os::unix::process::ExitStatusExt;
use std::process::{Child, Command, ExitCode, ExitStatus};
use std::sync::mpsc::{RecvTimeoutError, Sender, channel};
use std::time::{Duration, Instant};

use locker_protocol::MAX_OWNER_VALUE;

use super::api::{Api, Claim, REQUEST_TIMEOUT};
use super::args::RunArgs;
use super::events::{Event, Events};
use super::failure::{Failure, signal_exit_code};
use super::{hostname, waiting};

/// How often the command is checked for having ended.
const CHILD_POLL: Duration = Duration::from_millis(50);

/// How long to try to release a lock whose lease was lost.
const LAST_RELEASE_TIMEOUT: Duration = Duration::from_secs(5);

/// Runs `locker run`.
pub fn run(args: RunArgs) -> Result<ExitCode, Failure> {
    let api = Api::connect(&args.server)?;
    let events = Events::listening()?;
    let host = hostname();
    let mut owner = BTreeMap::from([
        ("host".to_string(), owner_value(&host)),
        (
            "note".to_string(),
            owner_value(&format!("locker run: {}", shown(&args.command))),
        ),
    ]);
    owner.extend(args.owner_fields());
    let claim = Claim {
        key: args.key.clone(),
        requestor: args
            .requestor
            .clone()
            .unwrap_or_else(|| format!("locker-run@{host}:{}", std::process::id())),
        ttl: Some(args.ttl),
        owner,
    };
    let name = args.name.as_str();
    let granted = waiting::acquire(&api, name, &claim, args.wait, Some(&events))?;
    // The grant came between the request and its answer, so the server's deadline is at most
    // the answer's way back later than this.
    let granted_at = Instant::now();
    if let Some(stop) = events.pending_stop() {
        release(&api, name, &claim);
        return Err(Failure::Interrupted {
            signal: stop.signal,
            message: format!(
                "interrupted (signal {}) as lock '{name}' was granted; released it, the command did not run",
                stop.signal
            ),
        });
    }
    eprintln!(
        "locker run: holding lock '{name}' (token {}); running {}",
        granted
            .lock
            .token
            .map_or_else(|| "none".to_string(), |t| t.to_string()),
        shown(&args.command)
    );
    let mut child = match Command::new(&args.command[0])
        .args(&args.command[1..])
        .spawn()
    {
        Ok(child) => child,
        Err(e) => {
            release(&api, name, &claim);
            eprintln!(
                "error: cannot run {}: {e}; released lock '{name}'",
                shown(&args.command[..1])
            );
            let code = if e.kind() == std::io::ErrorKind::NotFound {
                127
            } else {
                126
            };
            return Ok(ExitCode::from(code));
        }
    };
    // A renewal answered after its lease is of no use; the next one is tried instead.
    let renewing = api.with_timeout((args.ttl / 3).clamp(Duration::from_secs(1), REQUEST_TIMEOUT));
    let renewer = Renewer::start(&renewing, name, &claim, args.ttl, events.sender());
    let outcome = Watch {
        child: &mut child,
        lease_end: granted_at + args.ttl,
        ttl: args.ttl,
        grace: args.grace,
        name,
    }
    .until_exit(&events);
    drop(renewer);
    match &outcome {
        // A server that did not answer the renewals will hardly answer this: do not wait
        // long for it.
        Ok((_, Some(_))) => release(&api.with_timeout(LAST_RELEASE_TIMEOUT), name, &claim),
        _ => release(&api, name, &claim),
    }
    match outcome {
        Ok((status, None)) => {
            eprintln!("locker run: released lock '{name}'; the command ended ({status})");
            Ok(exit_code(status))
        }
        Ok((status, Some(lost))) => Err(Failure::LeaseLost(format!(
            "lost lock '{name}' while the command ran: {lost}; stopped the command ({status})"
        ))),
        Err(e) => Err(Failure::Failed(format!(
            "cannot watch the command: {e}; released lock '{name}'"
        ))),
    }
}

/// The command running under the lock.
struct Watch<'a> {
    child: &'a mut Child,
    /// When the lease ends, as far as the renewals seen so far tell.
    lease_end: Instant,
    ttl: Duration,
    grace: Duration,
    name: &'a str,
}

impl Watch<'_> {
    /// Waits for the command to end, passing stop signals on and stopping it when the lease is
    /// lost. Returns how it ended, and why the lease was lost if it was.
    fn until_exit(mut self, events: &Events) -> std::io::Result<(ExitStatus, Option<String>)> {
        let mut lost: Option<String> = None;
        let mut last_failure = None;
        let mut stopping = Stopping::No;
        loop {
            if let Some(status) = self.child.try_wait()? {
                return Ok((status, lost));
            }
            let now = Instant::now();
            if lost.is_none() && now >= self.lease_end {
                lost = Some(format!(
                    "no renewal succeeded for a whole lease ({}): {}",
                    humantime::format_duration(self.ttl),
                    last_failure
                        .as_deref()
                        .unwrap_or("the server did not answer in time")
                ));
            }
            match stopping {
                Stopping::No if lost.is_some() => {
                    self.signal(libc::SIGTERM);
                    stopping = Stopping::Terminated { at: now };
                }
                Stopping::Terminated { at } if now >= at + self.grace => {
                    self.child.kill()?;
                    stopping = Stopping::Killed;
                }
                _ => {}
            }
            match events.next(CHILD_POLL) {
                // A signal from the terminal reached the command already (same process group).
                Some(Event::Signal(stop)) if !stop.from_terminal => self.signal(stop.signal),
                Some(Event::Renewed(Ok(sent))) => {
                    self.lease_end = self.lease_end.max(sent + self.ttl);
                }
                Some(Event::Renewed(Err(Failure::Conflict(message) | Failure::Held(message)))) => {
                    lost.get_or_insert(message);
                }
                Some(Event::Renewed(Err(failure))) if lost.is_none() => {
                    let failure = failure.to_string();
                    // Retries come often near the lease's end: tell each new reason once.
                    if last_failure.as_ref() != Some(&failure) {
                        eprintln!(
                            "locker run: renewing lock '{}' failed: {failure}; trying again until the lease ends",
                            self.name
                        );
                    }
                    last_failure = Some(failure);
                }
                _ => {}
            }
        }
    }

    fn signal(&self, signal: i32) {
        let pid = self.child.id() as libc::pid_t;
        // SAFETY: kill(2) on our own child, which has not been reaped yet (try_wait said it
        // runs, and only this thread reaps it), so the pid is still its.
        unsafe {
            libc::kill(pid, signal);
        }
    }
}

/// How far stopping a command whose lease was lost has come.
#[derive(Debug, Clone, Copy)]
enum Stopping {
    No,
    /// Sent SIGTERM at `at`; SIGKILL follows after the grace.
    Terminated {
        at: Instant,
    },
    Killed,
}

/// The thread that renews the lease every third of it, and sooner after a failure. It stops
/// when dropped.
struct Renewer {
    _stop: Sender<()>,
}

impl Renewer {
    fn start(api: &Api, name: &str, claim: &Claim, ttl: Duration, report: Sender<Event>) -> Self {
        let (stop, stopped) = channel::<()>();
        let (api, name, claim) = (api.clone(), name.to_owned(), claim.clone());
        let every = ttl / 3;
        // After a failure, try again several times before the lease could end.
        let again = (ttl / 10).max(Duration::from_millis(100));
        std::thread::spawn(move || {
            let mut delay = every;
            loop {
                match stopped.recv_timeout(delay) {
                    Err(RecvTimeoutError::Timeout) => {}
                    Ok(()) | Err(RecvTimeoutError::Disconnected) => return,
                }
                let sent = Instant::now();
                let result = api.renew(&name, &claim, ttl).map(|_| sent);
                delay = if result.is_ok() { every } else { again };
                if report.send(Event::Renewed(result)).is_err() {
                    return;
                }
            }
        });
        Renewer { _stop: stop }
    }
}

/// Releases the claim; a failure is told, not fatal: the lease ends it anyway.
fn release(api: &Api, name: &str, claim: &Claim) {
    if let Err(e) = api.unlock(name, claim) {
        let ttl = claim.ttl.map(humantime::format_duration);
        eprintln!(
            "warning: could not release lock '{name}' ({e}); it is free again when its lease ends{}",
            ttl.map(|t| format!(" (at most {t} from the last renewal)"))
                .unwrap_or_default()
        );
    }
}

/// The command's status as ours: its code, or 128 + the signal that ended it.
fn exit_code(status: ExitStatus) -> ExitCode {
    match (status.code(), status.signal()) {
        (Some(code), _) => ExitCode::from(u8::try_from(code).unwrap_or(1)),
        (None, Some(signal)) => ExitCode::from(signal_exit_code(signal)),
        (None, None) => ExitCode::FAILURE,
    }
}

/// A command line for messages.
fn shown(command: &[OsString]) -> String {
    command
        .iter()
        .map(|arg| arg.to_string_lossy())
        .collect::<Vec<_>>()
        .join(" ")
}

/// A value that fits an owner field: no control characters, at most [`MAX_OWNER_VALUE`]
/// bytes (cut at a character boundary, with an ellipsis).
fn owner_value(text: &str) -> String {
    let clean: String = text
        .chars()
        .map(|c| if c.is_control() { ' ' } else { c })
        .collect();
    if clean.len() <= MAX_OWNER_VALUE {
        return clean;
    }
    let mut end = MAX_OWNER_VALUE - '…'.len_utf8();
    while !clean.is_char_boundary(end) {
        end -= 1;
    }
    format!("{}…", &clean[..end])
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn owner_values_fit_the_servers_limit() {
        assert_eq!(owner_value("make\tdeploy"), "make deploy");
        let long = owner_value(&"ü".repeat(200));
        assert!(
            long.len() <= MAX_OWNER_VALUE && long.ends_with('…'),
            "{long}"
        );
    }

    #[test]
    fn a_signal_that_ended_the_command_is_128_plus_it() {
        let status = ExitStatus::from_raw(libc::SIGTERM);
        assert_eq!(exit_code(status), ExitCode::from(143));
        let status = ExitStatus::from_raw(3 << 8);
        assert_eq!(exit_code(status), ExitCode::from(3));
    }
}

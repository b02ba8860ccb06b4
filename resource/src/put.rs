//! `out` (Concourse's put step): lock, unlock or renew, waiting in line.
//!
//! `lock` claims the lock and, while another key holds it, waits in the lock's queue on the
//! server: the first request joins the queue and hears its place at once (`?wait=1ms`), each
//! following one asks to wait up to 50 s (less when the put's `timeout` is nearer), the server
//! answers the moment the lock is granted, and a request whose wait ran out is followed by the
//! next at once, keeping the place. It logs who holds the lock and its
//! position in the queue whenever that changes. A server without a queue (the original one,
//! or this one before it) answers at once without a place; then `lock` retries after a
//! full-jitter back-off ([`crate::backoff`]), one log line per wait. A server that is down or
//! restarting is waited for with the back-off too, and then the place is asked for again. When
//! the `timeout` passes, `lock` withdraws from the queue (releasing the lock if it was granted
//! meanwhile) before it fails, and an abort does the same ([`crate::abort`]).
//!
//! It sends the lease (`ttl`) when the pipeline sets one, and the build as the claim's `owner`.
//! `unlock` and `renew` fail at once when another key holds the lock (`renew` also when the
//! claim is gone) and retry only an unreachable server. All stop at `params.timeout` (for
//! `unlock` and `renew`, 10 minutes by default). Every request of one `out` carries the same
//! request id (`Idempotency-Key`): the server knows a waiting lock's place by it, and a retry
//! after a lost answer claims or releases nothing a second time.
//!
//! A `lock` with `hold: build` asks the server to release the claim once this build has
//! finished (the server asks Concourse). It needs the build's `BUILD_ID` and
//! `ATC_EXTERNAL_URL` in the owner, checked before anything is sent, and a server that watches
//! that Concourse: a claim that looks watched but is not is worse than none, so a server that
//! refuses the hold, does not know it or ignores it fails the put (one that took the claim
//! while ignoring it is given the claim back first).
//!
//! Older servers keep working: one that refuses `owner` (this server before leases) or an
//! `until_unlocked` hold (this server before holds) as an unknown field is asked again without
//! it, and one that ignores `ttl` (the original server, whose locks have no `holders`) is named
//! in the log, since its lock lasts until unlocked.

use std::collections::BTreeMap;
use std::io::Write;
use std::thread;
use std::time::{Duration, Instant};

use rand::Rng;

use crate::abort::{Abort, Place};
use crate::backoff::Backoff;
use crate::client::{
    Claim, ClaimAnswer, Holder, Lock, LockerClient, QueuePlace, RequestError, new_request_id,
};
use crate::config::{DEFAULT_RETRY_TIMEOUT, Hold, LockOp, OutParams, Source};
use crate::protocol::{MetadataField, Request, StepOutput, Version};
use crate::{BuildEnv, Error, duration, resolve_lock_name};

/// The longest wait one lock request asks the server for: below the 60 s that proxies and
/// load balancers commonly allow an idle request.
const MAX_POLL_WAIT: Duration = Duration::from_secs(50);

/// The wait of a lock request that does not know its place: the first, and the first after a
/// server error (a restart empties the queue). It joins the queue and is answered at once, so
/// that the log says straight away who holds the lock and where this put stands.
const JOIN_WAIT: Duration = Duration::from_millis(1);

/// How long `lock` gives the server to take back its place when the `timeout` has passed.
const WITHDRAW_TIME: Duration = Duration::from_millis(1500);

/// Runs `out` on what Concourse wrote on stdin. While `lock` waits in a queue, `abort` knows
/// the place, so that a signal gives it back.
pub fn run(
    input: &str,
    build: &BuildEnv,
    abort: &Abort,
    log: &mut dyn Write,
) -> Result<StepOutput, Error> {
    let request = Request::from_stdin(input)?;
    let source = Source::from_json(&request.source)?;
    let params = OutParams::from_json(&request.params)?;
    let ttl = params.lease_ttl(&source)?;
    let hold = params.hold(&source);
    let owner = build.owner();
    if let Some((Hold::Build, key)) = hold {
        check_build_known(&owner, key)?;
    }
    let name = resolve_lock_name(&source)?;
    let timeout = match params.lock_op {
        LockOp::Lock => params.timeout,
        LockOp::Unlock | LockOp::Renew => Some(params.timeout.unwrap_or(DEFAULT_RETRY_TIMEOUT)),
    };
    let started = Instant::now();
    let deadline = timeout.and_then(|timeout| started.checked_add(timeout));
    let client = LockerClient::new(&source)?.with_deadline(deadline);
    let delays = params.retry_delays(&source);
    let mut attempts = Attempts {
        op: params.lock_op,
        name: &name,
        timeout,
        started,
        deadline,
        backoff: Backoff::new(delays.first, delays.max, rand::rng()),
        attempts: 0,
        place: None,
        log,
    };
    let request_id = new_request_id();
    let claim = Claim {
        key: &params.key,
        locked_by: params.requestor(),
        ttl,
        owner: None,
        hold: hold.map(|(hold, _)| hold),
        request_id: &request_id,
    };
    let held = match claim.hold {
        Some(Hold::Build) => format!(", held for the build {}", released_when(&owner)),
        Some(Hold::UntilUnlocked) => ", held until unlocked".to_owned(),
        None => String::new(),
    };
    let _ = writeln!(
        attempts.log,
        "{} lock '{name}' with key '{}' as '{}' for {}{}{held}",
        match params.lock_op {
            LockOp::Lock => "taking",
            LockOp::Unlock => "releasing",
            LockOp::Renew => "renewing",
        },
        claim.key,
        claim.locked_by,
        build.describe(),
        ttl.map(|ttl| format!(", lease {}", duration::format(ttl)))
            .unwrap_or_default()
    );
    let lock = match params.lock_op {
        LockOp::Lock => {
            abort.queued(Place {
                client: client.clone(),
                name: name.clone(),
                request_id: request_id.clone(),
            });
            let taken = lock(&mut attempts, &client, &name, &claim, &owner);
            if let Err(Error::TimedOut { .. }) = taken {
                abort.left_queue();
            }
            taken?
        }
        LockOp::Unlock => attempts.run(|_| match client.unlock(&name, &claim) {
            Ok(ClaimAnswer::Done { lock, .. }) => Ok(Outcome::Done(lock)),
            Ok(ClaimAnswer::Locked { message, .. } | ClaimAnswer::NotHeld { message, .. }) => {
                Err(Error::Refused {
                    op: "unlock",
                    name: name.clone(),
                    message,
                })
            }
            Err(err) if err.is_transient() => Ok(Outcome::Unreachable(err)),
            Err(err) => Err(err.into()),
        })?,
        LockOp::Renew => attempts.run(|_| match client.renew(&name, &claim) {
            Ok(ClaimAnswer::Done { lock, .. }) => Ok(Outcome::Done(lock)),
            Ok(ClaimAnswer::Locked { message, .. }) => Err(Error::Refused {
                op: "renew",
                name: name.clone(),
                message,
            }),
            Ok(ClaimAnswer::NotHeld { message, .. }) => Err(Error::NotHeld {
                name: name.clone(),
                message,
            }),
            // A server without leases has no such route.
            Err(
                cause @ RequestError::Status {
                    status: 404 | 405, ..
                },
            ) => Err(Error::RenewUnknown {
                name: name.clone(),
                cause,
            }),
            Err(err) if err.is_transient() => Ok(Outcome::Unreachable(err)),
            Err(err) => Err(err.into()),
        })?,
    };
    let mut metadata = vec![
        MetadataField::new("lock", name),
        MetadataField::new("key", params.key.clone()),
        MetadataField::new("locked_by", params.requestor()),
        MetadataField::new("lock_op", params.lock_op.as_str()),
        MetadataField::new("holders", lock.locked_by_json()),
    ];
    if let Some(token) = lock.token {
        metadata.push(MetadataField::new("token", token.to_string()));
    }
    let holder = lock.holder(params.requestor());
    if let Some(expires_at) = holder.and_then(|holder| holder.expires_at.clone()) {
        metadata.push(MetadataField::new("expires_at", expires_at));
    }
    if let Some(hold) = holder.and_then(hold_text) {
        metadata.push(MetadataField::new("hold", hold));
    }
    Ok(StepOutput {
        version: Version::revision(lock.revision),
        metadata,
    })
}

/// A claim held for its build needs the build's id and its Concourse in the `owner`, or the
/// server could not ask Concourse about it; `key` chose the hold.
fn check_build_known(owner: &BTreeMap<String, String>, key: &'static str) -> Result<(), Error> {
    let missing: Vec<&str> = [("build_id", "BUILD_ID"), ("atc_url", "ATC_EXTERNAL_URL")]
        .into_iter()
        .filter(|(field, _)| !owner.contains_key(*field))
        .map(|(_, variable)| variable)
        .collect();
    if missing.is_empty() {
        return Ok(());
    }
    Err(Error::HoldWithoutBuild {
        key,
        missing: missing.join(" and "),
    })
}

/// When the server lets go of a claim held for the build in `owner`:
/// `(released by the server when build 1234 finishes)`.
fn released_when(owner: &BTreeMap<String, String>) -> String {
    let id = owner.get("build_id").map_or("?", String::as_str);
    format!("(released by the server when build {id} finishes)")
}

/// A holder's `hold` for the metadata: `build (released by the server when build 1234
/// finishes)`, or `until_unlocked`; `None` from a server that predates holds.
fn hold_text(holder: &Holder) -> Option<String> {
    match holder.hold.as_deref()? {
        "build" => Some(format!("build {}", released_when(&holder.owner))),
        other => Some(other.to_owned()),
    }
}

/// Whether the server holds `requestor`'s claims for their build, as its answer says.
fn held_for_build(lock: &Lock, requestor: &str) -> bool {
    lock.holder(requestor)
        .and_then(|holder| holder.hold.as_deref())
        == Some(Hold::Build.as_str())
}

/// Takes the lock, waiting in its queue, sending the build as `owner` unless the server
/// refuses that field, and the claim's `hold`. An `until_unlocked` hold the server does not
/// know is dropped (it holds until unlocked anyway); a `build` hold it refuses, does not know
/// or ignores fails the lock. When the timeout passes it withdraws from the queue before
/// failing.
fn lock<R: Rng>(
    attempts: &mut Attempts<'_, R>,
    client: &LockerClient,
    name: &str,
    claim: &Claim<'_>,
    owner: &BTreeMap<String, String>,
) -> Result<Lock, Error> {
    let mut send_owner = !owner.is_empty();
    let for_build = claim.hold == Some(Hold::Build);
    let mut send_hold = claim.hold.is_some();
    // Whether the server queues: unknown until it answers a wait. One that does not is still
    // asked to wait (it ignores the query), so that a server upgraded while the put waits
    // queues it from its restart on.
    let mut server_queues = None;
    // Whether the last answer gave a place in the queue.
    let mut placed = false;
    let deadline = attempts.deadline;
    let taken = attempts.run(|log| {
        let claim = Claim {
            owner: send_owner.then_some(owner),
            hold: claim.hold.filter(|_| send_hold),
            ..claim.clone()
        };
        let wait = poll_wait(placed, deadline, Instant::now());
        let answer = match wait {
            Some(wait) => client.lock_waiting(name, &claim, wait),
            None => client.lock(name, &claim),
        };
        placed = false;
        match answer {
            Ok(ClaimAnswer::Done { lock, .. }) => Ok(Outcome::Done(lock)),
            Ok(ClaimAnswer::Locked {
                lock,
                queue: Some(place),
                ..
            }) => {
                server_queues = Some(true);
                placed = true;
                Ok(Outcome::Queued(lock, place))
            }
            Ok(ClaimAnswer::Locked {
                lock, queue: None, ..
            }) => {
                if wait.is_some() && server_queues != Some(false) {
                    server_queues = Some(false);
                    let _ = writeln!(
                        log,
                        "note: the server keeps no queue (it predates it), so waiting for lock \
                         '{name}' is trying again with back-off"
                    );
                }
                Ok(Outcome::Held(lock))
            }
            Ok(ClaimAnswer::NotHeld { message, .. }) => Err(Error::Refused {
                op: "lock",
                name: name.to_owned(),
                message,
            }),
            Err(err) if for_build && unknown_fields(&err).contains(&"hold") => {
                Err(Error::HoldNotWatched {
                    name: name.to_owned(),
                    reason: format!(
                        "the server does not know hold, it predates holds for builds ({err}); \
                         upgrade it and set its CONCOURSE_URL, or hold until_unlocked"
                    ),
                })
            }
            Err(err @ RequestError::Status { status: 400, .. }) if for_build => {
                Err(Error::HoldNotWatched {
                    name: name.to_owned(),
                    reason: err.to_string(),
                })
            }
            Err(err) if droppable(&err, send_owner, send_hold) != (false, false) => {
                // Nothing was claimed: the server refused the body before deciding anything.
                let (without_owner, without_hold) = droppable(&err, send_owner, send_hold);
                send_owner &= !without_owner;
                send_hold &= !without_hold;
                Ok(Outcome::Again(format!(
                    "{} ({err}); asking again without {}",
                    predates(without_owner, without_hold),
                    if without_owner && without_hold {
                        "them"
                    } else {
                        "it"
                    }
                )))
            }
            Err(err) if err.is_transient() => Ok(Outcome::Unreachable(err)),
            Err(err) => Err(err.into()),
        }
    });
    if let Err(Error::TimedOut { .. }) = taken
        && server_queues != Some(false)
    {
        let left = match client.withdraw(name, claim.request_id, WITHDRAW_TIME) {
            Ok(_) => format!("left the queue of lock '{name}'"),
            Err(err) => format!(
                "note: could not leave the queue of lock '{name}' ({err}); the server drops \
                 the place after its grace (LOCKER_QUEUE_GRACE)"
            ),
        };
        let _ = writeln!(attempts.log, "{left}");
    }
    let lock = taken?;
    if for_build && !held_for_build(&lock, claim.locked_by) {
        // The original server ignores fields it does not know: it took the claim, for good.
        let gave_back = give_back(client, name, claim);
        return Err(Error::HoldNotWatched {
            name: name.to_owned(),
            reason: format!(
                "the server took the claim but does not say it holds it for the build, so it \
                 predates holds for builds and would keep the lock until unlocked; {gave_back}; \
                 upgrade the server and set its CONCOURSE_URL, or hold until_unlocked"
            ),
        });
    }
    if let Some(ttl) = claim.ttl
        && !lock.server_has_leases()
    {
        let _ = writeln!(
            attempts.log,
            "note: the server describes no leases (it predates them), so the ttl of {} was not \
             applied: the lock is held until unlocked",
            duration::format(ttl)
        );
    }
    Ok(lock)
}

/// Which of `owner` and the hold, when they are sent, a 400 refused as unknown fields: the
/// lock can do without them (an `until_unlocked` hold is what an older server does anyway).
fn droppable(err: &RequestError, send_owner: bool, send_hold: bool) -> (bool, bool) {
    let unknown = unknown_fields(err);
    (
        send_owner && unknown.contains(&"owner"),
        send_hold && unknown.contains(&"hold"),
    )
}

/// Why a server refused `owner` or an `until_unlocked` hold, which the lock can do without.
fn predates(owner: bool, hold: bool) -> &'static str {
    match (owner, hold) {
        (true, false) => "the server does not take the claiming build as owner, it predates leases",
        (false, true) => {
            "the server does not know hold, it predates holds for builds (its claims are held \
             until unlocked anyway)"
        }
        _ => {
            "the server knows neither owner nor hold, it predates leases (its claims are held \
             until unlocked anyway)"
        }
    }
}

/// Releases the claim just taken, once, for a lock that must fail; says what came of it.
fn give_back(client: &LockerClient, name: &str, claim: &Claim<'_>) -> String {
    let request_id = new_request_id();
    let release = Claim {
        ttl: None,
        owner: None,
        hold: None,
        request_id: &request_id,
        ..claim.clone()
    };
    match client.unlock(name, &release) {
        Ok(ClaimAnswer::Done { .. }) => "the claim was given back".to_owned(),
        Ok(ClaimAnswer::Locked { message, .. } | ClaimAnswer::NotHeld { message, .. }) => {
            format!("giving the claim back failed ({message}): unlock it by hand")
        }
        Err(err) => format!("giving the claim back failed ({err}): unlock it by hand"),
    }
}

/// The body fields a 400 refused as unknown, as this server words it before it knew them
/// (`unknown field(s) in request body: owner, hold (expected: ...)`); empty for any other
/// answer.
fn unknown_fields(err: &RequestError) -> Vec<&str> {
    let RequestError::Status {
        status: 400,
        message,
        ..
    } = err
    else {
        return Vec::new();
    };
    let Some((_, listed)) = message.split_once("unknown field(s) in request body: ") else {
        return Vec::new();
    };
    let listed = listed.split_once(" (").map_or(listed, |(fields, _)| fields);
    listed.split(", ").map(str::trim).collect()
}

/// How long the next lock request asks to wait in the queue: [`MAX_POLL_WAIT`] once the last
/// answer `placed` it in the queue, [`JOIN_WAIT`] otherwise, and never beyond the deadline.
/// `None` when less than a millisecond is left: that request asks for the lock without
/// waiting, as the last before the timeout.
fn poll_wait(placed: bool, deadline: Option<Instant>, now: Instant) -> Option<Duration> {
    let wait = if placed { MAX_POLL_WAIT } else { JOIN_WAIT };
    let left = deadline.map_or(wait, |deadline| deadline.saturating_duration_since(now));
    let wait = wait.min(left);
    (wait >= Duration::from_millis(1)).then_some(wait)
}

/// What one attempt came to.
enum Outcome {
    /// The operation is done; the lock after it.
    Done(Lock),
    /// Another key holds the lock and the request waits in its queue, at this place: ask again
    /// at once.
    Queued(Lock, QueuePlace),
    /// Another key holds the lock (and the server keeps no queue): wait and try again.
    Held(Lock),
    /// The server could not be reached or failed: wait and try again.
    Unreachable(RequestError),
    /// Try again at once, changed as the note says.
    Again(String),
}

/// Repeats one operation until it is done, fails or runs out of time: at once while it waits
/// in a queue, after a back-off otherwise.
struct Attempts<'a, R> {
    op: LockOp,
    name: &'a str,
    timeout: Option<Duration>,
    started: Instant,
    deadline: Option<Instant>,
    backoff: Backoff<R>,
    /// How many requests were sent.
    attempts: u32,
    /// The place in the queue last logged; `None` when not waiting in one.
    place: Option<QueuePlace>,
    log: &'a mut dyn Write,
}

impl<R: Rng> Attempts<'_, R> {
    /// Runs `attempt` (which may write notes to the log it is given) until it is done.
    fn run(
        &mut self,
        mut attempt: impl FnMut(&mut dyn Write) -> Result<Outcome, Error>,
    ) -> Result<Lock, Error> {
        loop {
            self.attempts += 1;
            let number = self.attempts;
            let outcome = attempt(&mut *self.log)?;
            match outcome {
                Outcome::Done(lock) => {
                    if number > 1 {
                        let done = match self.op {
                            LockOp::Lock => "took",
                            LockOp::Unlock => "released",
                            LockOp::Renew => "renewed",
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
                Outcome::Again(note) => {
                    let _ = writeln!(self.log, "{note}");
                    continue;
                }
                Outcome::Queued(lock, place) => {
                    if self
                        .deadline
                        .is_some_and(|deadline| Instant::now() >= deadline)
                    {
                        return Err(self.timed_out(Outcome::Queued(lock, place)));
                    }
                    if self.place.map(|logged| logged.position) != Some(place.position) {
                        let _ = writeln!(
                            self.log,
                            "lock '{}' is held by {}; waiting in its queue at position {} of {}",
                            self.name,
                            holding(&lock),
                            place.position,
                            place.length
                        );
                    }
                    self.place = Some(place);
                    // The server answers; should it fail later, its back-off starts small.
                    self.backoff.reset();
                    continue;
                }
                Outcome::Held(_) | Outcome::Unreachable(_) => {
                    // After a wait without a place, the next place is logged whatever it is.
                    self.place = None;
                }
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
                Outcome::Held(lock) => format!("lock '{}' is held by {}", self.name, holding(lock)),
                Outcome::Unreachable(err) => format!("{err}"),
                Outcome::Done(_) | Outcome::Again(_) | Outcome::Queued(..) => {
                    unreachable!("handled above")
                }
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
            Outcome::Queued(lock, place) => format!(
                "it is still held by {} (this put was at position {} of {} in its queue)",
                holding(&lock),
                place.position,
                place.length
            ),
            Outcome::Held(lock) => format!("it is still held by {}", holding(&lock)),
            Outcome::Unreachable(err) => format!("the server did not answer: {err}"),
            Outcome::Done(_) | Outcome::Again(_) => String::new(),
        };
        Error::TimedOut {
            op: self.op.as_str(),
            name: self.name.to_owned(),
            timeout,
            reason,
        }
    }
}

/// Who holds a lock, with which key, since when and until when, for a log line:
/// `main/prod/deploy #42 (https://...) as 'deploy' (1 claim) with key 'K'
/// since 2026-12-02T09:00:00.000Z, lease ends 2026-12-02T10:00:00.000Z`.
fn holding(lock: &Lock) -> String {
    let since = lock
        .locked_at
        .as_deref()
        .map(|at| format!(" since {at}"))
        .unwrap_or_default();
    let lease = lock
        .lease_ends()
        .map(|at| format!(", lease ends {at}"))
        .unwrap_or_default();
    format!(
        "{} with key '{}'{since}{lease}",
        lock.holders_text(),
        lock.key
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn lock(json: serde_json::Value) -> Lock {
        serde_json::from_value(json).unwrap()
    }

    #[test]
    fn a_waiting_line_names_the_holding_build_and_its_lease_end() {
        let held = lock(json!({
            "key": "K", "locked_by": {"deploy": 1}, "revision": 4,
            "locked_at": "2026-12-02T09:00:00.000Z", "token": 3,
            "holders": [{"requestor": "deploy", "count": 1,
                         "since": "2026-12-02T09:00:00.000Z",
                         "expires_at": "2026-12-02T10:00:00.000Z",
                         "owner": {"pipeline": "main", "job": "deploy", "build": "42",
                                   "build_url": "https://ci.example.com/b/42"}}]
        }));
        assert_eq!(
            holding(&held),
            "main/deploy #42 (https://ci.example.com/b/42) as 'deploy' (1 claim) with key 'K' \
             since 2026-12-02T09:00:00.000Z, lease ends 2026-12-02T10:00:00.000Z"
        );
    }

    #[test]
    fn a_waiting_line_without_owner_or_lease_names_the_requestor() {
        let held = lock(json!({"key": "K", "locked_by": {"r": 2}, "revision": 4,
                               "locked_at": "2026-12-02T09:00:00.000Z"}));
        assert_eq!(
            holding(&held),
            "'r' (2 claims) with key 'K' since 2026-12-02T09:00:00.000Z"
        );
    }

    #[test]
    fn a_poll_joins_at_once_then_waits_fifty_seconds_or_until_the_timeout() {
        let now = Instant::now();
        assert_eq!(poll_wait(false, None, now), Some(JOIN_WAIT));
        assert_eq!(poll_wait(true, None, now), Some(MAX_POLL_WAIT));
        let in_an_hour = now + Duration::from_secs(3600);
        assert_eq!(poll_wait(false, Some(in_an_hour), now), Some(JOIN_WAIT));
        assert_eq!(poll_wait(true, Some(in_an_hour), now), Some(MAX_POLL_WAIT));
        let soon = now + Duration::from_millis(1200);
        assert_eq!(
            poll_wait(true, Some(soon), now),
            Some(Duration::from_millis(1200)),
            "a wait must not outlast the put's timeout"
        );
        for placed in [false, true] {
            assert_eq!(
                poll_wait(placed, Some(now), now),
                None,
                "at the deadline the last request does not wait"
            );
            assert_eq!(
                poll_wait(placed, Some(now), now + Duration::from_secs(1)),
                None
            );
        }
    }

    #[test]
    fn only_a_refusal_of_unknown_fields_names_them() {
        let status = |status, message: &str| RequestError::Status {
            url: "u".to_owned(),
            status,
            message: message.to_owned(),
        };
        let before_leases = "unknown field(s) in request body: owner, hold (expected: key, \
                             locked_by, lock_by, requestor)";
        assert_eq!(
            unknown_fields(&status(400, before_leases)),
            ["owner", "hold"]
        );
        assert_eq!(
            unknown_fields(&status(400, "unknown field(s) in request body: hold")),
            ["hold"]
        );
        assert!(
            unknown_fields(&status(400, "field 'owner' has too many fields")).is_empty(),
            "a server that knows owner and refuses its content is not asked again without it"
        );
        assert!(
            unknown_fields(&status(
                400,
                "\"hold\": \"build\" needs a server that asks Concourse about builds"
            ))
            .is_empty(),
            "a server that knows hold and refuses the claim names no unknown field"
        );
        assert!(unknown_fields(&status(500, before_leases)).is_empty());
    }

    #[test]
    fn a_build_hold_is_explained_with_the_build_the_server_watches() {
        let holder = |hold: Option<&str>| Holder {
            requestor: "r".to_owned(),
            count: 1,
            since: None,
            expires_at: None,
            owner: BTreeMap::from([("build_id".to_owned(), "1234".to_owned())]),
            hold: hold.map(str::to_owned),
            build_status: None,
            build_checked_at: None,
        };
        assert_eq!(
            hold_text(&holder(Some("build"))).as_deref(),
            Some("build (released by the server when build 1234 finishes)")
        );
        assert_eq!(
            hold_text(&holder(Some("until_unlocked"))).as_deref(),
            Some("until_unlocked")
        );
        assert_eq!(hold_text(&holder(None)), None, "a server before holds");
    }

    #[test]
    fn a_build_hold_needs_the_build_id_and_its_concourse() {
        let owner = |pairs: &[(&str, &str)]| -> BTreeMap<String, String> {
            pairs
                .iter()
                .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
                .collect()
        };
        let known = owner(&[("build_id", "7"), ("atc_url", "https://ci")]);
        assert!(check_build_known(&known, "params.hold").is_ok());
        let error = check_build_known(&owner(&[("build", "3")]), "source.hold")
            .unwrap_err()
            .to_string();
        assert!(
            error.starts_with("source.hold is build, but ")
                && error.contains("BUILD_ID and ATC_EXTERNAL_URL"),
            "{error}"
        );
        let error = check_build_known(&owner(&[("atc_url", "https://ci")]), "params.hold")
            .unwrap_err()
            .to_string();
        assert!(
            error.contains(" BUILD_ID ") && !error.contains("ATC_EXTERNAL_URL"),
            "{error}"
        );
    }
}

//! Taking a lock, waiting in its queue if need be: long-polls of `PUT /lock/{name}?wait=` with
//! one request id, so the place in the queue survives between polls, until the lock is
//! granted or the wait runs out; then, or on a stop signal, the place is given back.

use std::time::{Duration, Instant};

use super::api::{Api, Changed, Claim, LockAnswer};
use super::events::{Event, Events};
use super::failure::Failure;

/// The longest pause before another try after an error, or against a server without a
/// queue.
const MAX_PAUSE: Duration = Duration::from_secs(10);

/// The longest wait of the first poll.
const FIRST_POLL: Duration = Duration::from_secs(1);

/// Takes lock `name` for `claim`: at once without `wait`; else waits in its queue for up to
/// `wait`, telling on stderr where it stands when that changes. A stop signal from `events`
/// gives up the place (and a grant that raced with it).
pub fn acquire(
    api: &Api,
    name: &str,
    claim: &Claim,
    wait: Option<Duration>,
    events: Option<&Events>,
) -> Result<Changed, Failure> {
    match (wait, events) {
        (Some(wait), Some(events)) => Waiter::new(api, name, claim, wait).wait(events),
        _ => match api.lock(name, claim, None)? {
            LockAnswer::Granted(changed) => Ok(changed),
            LockAnswer::Queued { message, .. } | LockAnswer::Held(message) => {
                Err(Failure::Held(message))
            }
        },
    }
}

/// One request waiting for a lock.
struct Waiter<'a> {
    api: &'a Api,
    name: &'a str,
    claim: &'a Claim,
    wait: Duration,
    deadline: Instant,
    /// The request id that keeps the place between polls.
    id: String,
    /// The place last told, so that only changes are.
    told: Option<u64>,
    /// True once the server answered: a failure after that is waited out, one before it
    /// (a wrong URL, say) is not.
    answered: bool,
    pause: Duration,
}

impl<'a> Waiter<'a> {
    fn new(api: &'a Api, name: &'a str, claim: &'a Claim, wait: Duration) -> Self {
        Waiter {
            api,
            name,
            claim,
            wait,
            deadline: Instant::now() + wait,
            id: format!("{:032x}", rand::random::<u128>()),
            told: None,
            answered: false,
            pause: Duration::from_secs(1),
        }
    }

    fn wait(mut self, events: &Events) -> Result<Changed, Failure> {
        loop {
            let mut left = self.deadline.saturating_duration_since(Instant::now());
            if self.told.is_none() {
                // A short first poll learns the place soon, so that a person sees it.
                left = left.min(FIRST_POLL);
            }
            let (api, name, claim, id) = (
                self.api.clone(),
                self.name.to_owned(),
                self.claim.clone(),
                self.id.clone(),
            );
            let report = events.sender();
            std::thread::spawn(move || {
                let answer = api.lock(&name, &claim, Some((left, &id)));
                let _ = report.send(Event::Polled(answer));
            });
            let answer = loop {
                match events.next(Duration::from_secs(3600)) {
                    Some(Event::Polled(answer)) => break answer,
                    Some(Event::Signal(stop)) => {
                        self.give_up();
                        return Err(Failure::Interrupted {
                            signal: stop.signal,
                            message: format!(
                                "interrupted (signal {}) while waiting for lock '{}'; gave up its place in the queue",
                                stop.signal, self.name
                            ),
                        });
                    }
                    _ => {}
                }
            };
            let out_of_time = Instant::now() >= self.deadline;
            match answer {
                Ok(LockAnswer::Granted(changed)) => return Ok(changed),
                Ok(LockAnswer::Queued {
                    message,
                    position,
                    length,
                }) => {
                    self.answered = true;
                    if self.told != Some(position) {
                        eprintln!(
                            "waiting for lock '{}': position {position} of {length} in its queue",
                            self.name
                        );
                        self.told = Some(position);
                    }
                    if out_of_time {
                        self.give_up();
                        return Err(self.gave_up(&message));
                    }
                    // The poll's wait ran out (the server caps it): poll again at once.
                }
                // A server without a queue answers at once: try again after a pause.
                Ok(LockAnswer::Held(message)) => {
                    self.answered = true;
                    if out_of_time {
                        self.give_up();
                        return Err(self.gave_up(&message));
                    }
                    self.pause(events)?;
                }
                Err(failure) if failure.is_transient() && self.answered && !out_of_time => {
                    eprintln!("waiting for lock '{}': {failure}; trying again", self.name);
                    self.pause(events)?;
                }
                Err(failure) => {
                    self.give_up();
                    return Err(failure);
                }
            }
        }
    }

    /// Sleeps before another try (doubling the pause up to [`MAX_PAUSE`], and never past the
    /// deadline), or gives up on a stop signal.
    fn pause(&mut self, events: &Events) -> Result<(), Failure> {
        let until = (Instant::now() + self.pause).min(self.deadline);
        self.pause = (self.pause * 2).min(MAX_PAUSE);
        loop {
            let left = until.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return Ok(());
            }
            if let Some(Event::Signal(stop)) = events.next(left) {
                self.give_up();
                return Err(Failure::Interrupted {
                    signal: stop.signal,
                    message: format!(
                        "interrupted (signal {}) while waiting for lock '{}'",
                        stop.signal, self.name
                    ),
                });
            }
        }
    }

    /// Withdraws from the queue, which also releases a grant made meanwhile, so that the
    /// request leaves neither a place nor a claim behind.
    fn give_up(&self) {
        // A server without a queue has nothing to withdraw (and no such endpoint).
        if let Err(e) = self.api.withdraw(self.name, &self.id)
            && self.told.is_some()
        {
            eprintln!(
                "warning: could not give up the place in the queue of '{}' ({e}); the server drops it within its LOCKER_QUEUE_GRACE",
                self.name
            );
        }
    }

    fn gave_up(&self, message: &str) -> Failure {
        // The server's note of the place is no longer true once the place is given back.
        let holder = message.split("; still waiting").next().unwrap_or(message);
        let place = match self.told {
            Some(position) => format!(" at position {position} in its queue"),
            None => String::new(),
        };
        Failure::Held(format!(
            "gave up waiting for lock '{}' after {}{place}: {holder}",
            self.name,
            humantime::format_duration(self.wait)
        ))
    }
}

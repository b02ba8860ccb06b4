//! Waiting in a lock's queue: `out` asks to wait (`?wait=`) with its one request id, asks
//! again at once when a wait runs out, logs its place when it changes, and gives the place back
//! when its `timeout` passes or Concourse aborts it (SIGTERM, SIGINT). A stand-in server shows
//! what `out` sends and when; the real server shows that nothing is left behind.
//!
//! Broken on purpose (tried):
//! - with a GET in place of the withdrawal in `resource/src/abort.rs`,
//!   `sigint_during_a_long_poll_gives_the_place_back` fails (no DELETE of the place) and so does
//!   `sigterm_while_queued_leaves_no_claim_and_no_waiter` (the waiter is still in `queue`);
//! - without the withdrawal on timeout in `resource/src/put.rs`,
//!   `the_timeout_bounds_the_wait_and_gives_the_place_back` fails (no DELETE) and so does
//!   `a_timeout_while_queued_leaves_no_place_behind`;
//! - with a back-off after a place in the queue too (`Outcome::Queued` handled as `Held`),
//!   `a_place_is_asked_for_again_at_once_and_logged_when_it_changes` fails: it takes seconds;
//! - with the position logged on every answer, that test fails too (two lines for position 3);
//! - with a fresh request id for each wait,
//!   `waiters_are_granted_in_the_order_they_came_and_log_their_places` fails: a waiter without
//!   its id leaves the queue with every answer.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::thread;
use std::time::{Duration, Instant};

use serde_json::{Value, json};

use crate::helpers::*;
use crate::stand_in::{Received, StandIn};

const LIMIT: Duration = Duration::from_secs(20);

/// The lock while `holder` holds it with key `h`, as a server with a queue describes it.
fn held() -> Value {
    json!({"key": "h", "locked_by": {"holder": 1}, "revision": 1,
           "locked_at": "2026-12-02T09:00:00.000Z", "token": 1, "holders": [], "queue": []})
}

/// A 423 after a wait that ran out, at `position` of `length`.
fn queued(position: u64, length: u64) -> (u16, Value) {
    (
        423,
        json!({"error": "Lock for 'env' is held by 'holder' using key 'h', not 'k'",
               "lock": held(), "queue": {"position": position, "length": length}}),
    )
}

fn granted(request: &Received) -> (u16, Value) {
    let lock = json!({"key": request.body["key"], "locked_by": {"k": 1}, "revision": 2,
                      "locked_at": "2026-12-02T09:01:00.000Z", "token": 2, "holders": []});
    (200, json!({"response": "locked", "lock": lock}))
}

fn withdrawn() -> (u16, Value) {
    let free = json!({"key": "", "locked_by": {}, "revision": 1, "locked_at": null});
    (200, json!({"response": "withdrawn", "lock": free}))
}

/// The place's URL path for the request id of `request`.
fn place_path(request: &Received) -> String {
    format!(
        "/lock/env/queue/{}",
        request.idempotency_key.as_deref().expect("a request id")
    )
}

fn lock_input(source: &Value, extra: Value) -> Value {
    let mut params = json!({"lock_op": "lock", "key": "k"});
    params
        .as_object_mut()
        .unwrap()
        .extend(extra.as_object().unwrap().clone());
    put(source, params)
}

#[test]
fn a_place_is_asked_for_again_at_once_and_logged_when_it_changes() {
    // Each wait runs out at once; the place moves 3, 3, 2, 2, 1, then the lock is granted.
    let places = [3, 3, 2, 2, 1];
    let puts = AtomicUsize::new(0);
    let server =
        StandIn::start(
            move |request| match places.get(puts.fetch_add(1, Ordering::SeqCst)) {
                Some(&position) => queued(position, 3),
                None => granted(request),
            },
        );
    // A back-off would wait up to 2 s after each of the five answers.
    let mut source = server.source();
    source["retry_delay"] = json!("2s");
    source["max_retry_delay"] = json!("2s");

    let started = Instant::now();
    let run = run(Bin::Out, &lock_input(&source, json!({})), &["/tmp"]);
    let elapsed = started.elapsed();
    assert_eq!(metadata(&run.json(), "holders"), r#"{"k":1}"#);
    assert!(
        elapsed < Duration::from_millis(1500),
        "a place in the queue is asked for again at once, yet the wait took {elapsed:?}:\n{}",
        run.stderr
    );
    let received = server.received();
    assert_eq!(received.len(), 6, "{received:?}");
    for (number, request) in received.iter().enumerate() {
        let wait = if number == 0 {
            Duration::from_millis(1)
        } else {
            Duration::from_secs(50)
        };
        assert_eq!(
            (request.method.as_str(), request.wait()),
            ("PUT", Some(wait)),
            "the first poll joins the queue at once, the others wait 50 s: {request:?}"
        );
        assert_eq!(
            request.idempotency_key, received[0].idempotency_key,
            "the place is known by the one request id of this out: {received:?}"
        );
    }
    for position in [3, 2, 1] {
        let line = format!(
            "lock 'env' is held by 'holder' (1 claim) with key 'h' since \
             2026-12-02T09:00:00.000Z; waiting in its queue at position {position} of 3"
        );
        assert_eq!(
            run.stderr.matches(&line).count(),
            1,
            "position {position} is logged once, when it changes:\n{}",
            run.stderr
        );
    }
    assert!(
        run.stderr.contains("took lock 'env' on attempt 6 after "),
        "{}",
        run.stderr
    );
}

#[test]
fn a_server_error_while_queued_is_waited_out_and_the_place_asked_for_again() {
    let puts = AtomicUsize::new(0);
    let server = StandIn::start(move |request| match puts.fetch_add(1, Ordering::SeqCst) {
        0 | 2 => queued(2, 2),
        1 => (503, json!({"error": "the state file could not be written"})),
        _ => granted(request),
    });
    let run = run(
        Bin::Out,
        &lock_input(&server.source(), json!({})),
        &["/tmp"],
    );
    run.json();
    assert!(
        run.stderr
            .contains("answered 503: the state file could not be written; attempt 2, waiting "),
        "a 503 is waited out with back-off:\n{}",
        run.stderr
    );
    assert_eq!(
        run.stderr.matches("at position 2 of 2").count(),
        2,
        "the place is logged again once the server is back:\n{}",
        run.stderr
    );
    let received = server.received();
    assert!(
        received
            .iter()
            .all(|r| r.idempotency_key == received[0].idempotency_key && r.wait().is_some()),
        "after the error the same request waits again: {received:?}"
    );
}

#[test]
fn sigint_during_a_long_poll_gives_the_place_back() {
    // The first wait never ends within the test; the place is given back with a DELETE.
    let server = StandIn::start(|request| match request.method.as_str() {
        "PUT" => {
            thread::sleep(Duration::from_secs(30));
            queued(1, 1)
        }
        _ => withdrawn(),
    });
    let mut out = Running::start(
        Bin::Out,
        &lock_input(&server.source(), json!({})),
        &["/tmp"],
        &[],
    );
    let poll = server.wait_for("PUT", LIMIT);
    // Let the request settle into its wait.
    thread::sleep(Duration::from_millis(200));
    assert!(out.is_running(), "out is waiting:\n{}", out.stderr());

    let signalled = Instant::now();
    out.signal(libc::SIGINT);
    let run = out.finish(LIMIT);
    let took = signalled.elapsed();
    assert!(
        took < Duration::from_secs(2),
        "out must end within 2 s of the signal, took {took:?}"
    );
    assert_eq!(
        run.status.code(),
        Some(128 + libc::SIGINT),
        "stderr:\n{}",
        run.stderr
    );
    assert!(run.stdout.is_empty(), "an aborted out prints no version");
    assert!(
        run.stderr.contains(
            "error: aborted by SIGINT while waiting for lock 'env': withdrew its place, holding nothing"
        ),
        "{}",
        run.stderr
    );
    let deletes: Vec<String> = server
        .received()
        .into_iter()
        .filter(|r| r.method == "DELETE")
        .map(|r| r.path)
        .collect();
    assert_eq!(
        deletes,
        [place_path(&poll)],
        "the place of this out's request id is withdrawn, once"
    );
}

#[test]
fn a_signal_outside_a_wait_ends_out_at_once() {
    let server = StandIn::start(|_| (503, json!({"error": "restarting"})));
    let params = json!({"lock_op": "unlock", "key": "k", "timeout": "1m"});
    let mut out = Running::start(Bin::Out, &put(&server.source(), params), &["/tmp"], &[]);
    out.wait_for_log("answered 503", LIMIT);

    let signalled = Instant::now();
    out.signal(libc::SIGTERM);
    let run = out.finish(LIMIT);
    assert!(
        signalled.elapsed() < Duration::from_secs(1),
        "an unlock has nothing to give back and ends at once, took {:?}",
        signalled.elapsed()
    );
    assert_eq!(run.status.code(), Some(128 + libc::SIGTERM));
    assert!(
        run.stderr.contains("error: aborted by SIGTERM"),
        "{}",
        run.stderr
    );
    let received = server.received();
    assert!(
        received.iter().all(|r| !r.path.contains("/queue/")),
        "an unlock withdraws nothing: {received:?}"
    );
}

#[test]
fn the_timeout_bounds_the_wait_and_gives_the_place_back() {
    // A queue that never moves: each wait is answered when it runs out.
    let server = StandIn::start(|request| match request.method.as_str() {
        "PUT" => {
            thread::sleep(
                request
                    .wait()
                    .unwrap_or_default()
                    .min(Duration::from_secs(10)),
            );
            queued(1, 1)
        }
        _ => withdrawn(),
    });
    let started = Instant::now();
    let run = run(
        Bin::Out,
        &lock_input(&server.source(), json!({"timeout": "1s"})),
        &["/tmp"],
    );
    let elapsed = started.elapsed();
    let error = run.error();
    assert!(
        error.starts_with(
            "error: timed out after 1s trying to lock 'env': it is still held by 'holder' \
             (1 claim) with key 'h' since 2026-12-02T09:00:00.000Z (this put was at position 1 \
             of 1 in its queue)"
        ),
        "{error}"
    );
    assert!(
        (Duration::from_secs(1)..Duration::from_secs(3)).contains(&elapsed),
        "a 1s timeout took {elapsed:?}"
    );
    let received = server.received();
    let wait = received[1].wait().expect("the lock asks to wait");
    assert!(
        wait <= Duration::from_secs(1) && wait > Duration::from_millis(500),
        "the wait once in the queue is cut to the timeout: {wait:?}"
    );
    let last = received.last().unwrap();
    assert_eq!(
        (last.method.as_str(), last.path.as_str()),
        ("DELETE", place_path(&received[0]).as_str()),
        "the place is given back before out fails: {received:?}"
    );
    assert!(
        run.stderr.contains("left the queue of lock 'env'"),
        "{}",
        run.stderr
    );
}

/// The requestors in the lock's queue, next in line first.
fn waiting(server: &LockerServer, source: &Value) -> Vec<String> {
    let lock = server.lock_state(source);
    lock.queue
        .into_iter()
        .map(|waiter| waiter.requestor)
        .collect()
}

#[test]
fn sigterm_while_queued_leaves_no_claim_and_no_waiter() {
    let server = LockerServer::start();
    let source = server.source("env");
    lock(&source, "a", "holder");
    let params = json!({"lock_op": "lock", "key": "b", "locked_by": "waiter"});
    let out = Running::start(Bin::Out, &put(&source, params), &["/tmp"], &[]);
    wait_until(LIMIT, "the out waits in the lock's queue", || {
        waiting(&server, &source) == ["waiter"]
    });

    let signalled = Instant::now();
    out.signal(libc::SIGTERM);
    let run = out.finish(LIMIT);
    let took = signalled.elapsed();
    assert!(
        took < Duration::from_secs(2),
        "out must end within 2 s of SIGTERM, took {took:?}"
    );
    assert_eq!(
        run.status.code(),
        Some(128 + libc::SIGTERM),
        "stderr:\n{}",
        run.stderr
    );
    assert!(
        run.stderr.contains("withdrew its place, holding nothing"),
        "{}",
        run.stderr
    );
    let lock = server.lock_state(&source);
    assert!(
        lock.queue.is_empty(),
        "the aborted out left its place: {:?}",
        lock.queue
    );
    assert_eq!(
        lock.locked_by,
        [("holder".to_owned(), 1)].into(),
        "only the holder has a claim"
    );
    unlock(&source, "a", "holder");
    assert!(
        server.lock_state(&source).is_free(),
        "nobody is left to be granted the lock after the holder"
    );
}

#[test]
fn waiters_are_granted_in_the_order_they_came_and_log_their_places() {
    // Short waits, so that a waiter hears its new place within a second.
    let server = LockerServer::start_with(&[("LOCKER_MAX_WAIT", "1s")]);
    let source = server.source("env");
    lock(&source, "holder", "holder");
    let names = ["first", "second", "third"];
    let mut outs = Vec::new();
    for (joined, name) in names.iter().enumerate() {
        let params = json!({"lock_op": "lock", "key": name});
        outs.push(Running::start(
            Bin::Out,
            &put(&source, params),
            &["/tmp"],
            &[],
        ));
        wait_until(LIMIT, &format!("'{name}' waits in the queue"), || {
            waiting(&server, &source).len() == joined + 1
        });
    }
    assert_eq!(waiting(&server, &source), names);
    outs[2].wait_for_log("waiting in its queue at position 3 of 3", LIMIT);

    let mut holder = "holder";
    let mut held_at = server.lock_state(&source).revision;
    for name in names {
        unlock(&source, holder, holder);
        let run = outs.remove(0).finish(LIMIT);
        let acquired = run.json();
        assert_eq!(
            metadata(&acquired, "key"),
            name,
            "'{name}' is next in line:\n{}",
            run.stderr
        );
        assert!(
            revision(&acquired) > held_at,
            "'{name}' took the lock (revision {}) after '{holder}' held it (revision {held_at})",
            revision(&acquired),
        );
        held_at = revision(&acquired);
        let left = outs.len();
        for (place, out) in outs.iter_mut().enumerate() {
            assert!(
                out.is_running(),
                "a waiter behind '{name}' took the lock too:\n{}",
                out.stderr()
            );
            out.wait_for_log(
                &format!("waiting in its queue at position {} of {left}", place + 1),
                LIMIT,
            );
        }
        holder = name;
    }
}

#[test]
fn a_timeout_while_queued_leaves_no_place_behind() {
    let server = LockerServer::start();
    let source = server.source("env");
    lock(&source, "a", "holder");
    let params = json!({"lock_op": "lock", "key": "b", "locked_by": "waiter", "timeout": "2s"});
    let started = Instant::now();
    let run = run(Bin::Out, &put(&source, params), &["/tmp"]);
    let elapsed = started.elapsed();
    let error = run.error();
    assert!(
        error.starts_with(
            "error: timed out after 2s trying to lock 'env': it is still held by 'holder' \
             (1 claim) with key 'a' since "
        ) && error.ends_with("(this put was at position 1 of 1 in its queue)"),
        "{error}"
    );
    assert!(
        (Duration::from_secs(2)..Duration::from_secs(4)).contains(&elapsed),
        "the server waits up to a minute, yet a 2s timeout must end the wait: took {elapsed:?}"
    );
    let lock = server.lock_state(&source);
    assert!(
        lock.queue.is_empty(),
        "the place must be given back, not kept for the grace: {:?}",
        lock.queue
    );
    unlock(&source, "a", "holder");
    assert!(server.lock_state(&source).is_free());
}

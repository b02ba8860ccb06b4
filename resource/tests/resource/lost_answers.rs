//! Answers lost on the way back: the server did the change, the resource never heard, and
//! retries. Every attempt of one `out` carries the same `Idempotency-Key`, so the lock is
//! claimed once and one unlock frees it.
//!
//! Broken on purpose (tried): not sending the `Idempotency-Key` header in
//! `resource/src/client.rs` makes both tests fail (2 claims after one lock; the lock still
//! held after one unlock).

use std::io::{BufRead, BufReader, Write};
use std::net::{Shutdown, TcpListener, TcpStream};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::thread;

use serde_json::{Value, json};

use crate::helpers::*;

/// A proxy in front of the server that forwards every request, and for the first `lose`
/// requests throws the server's answer away and hangs up instead of passing it on.
struct AnswerLosingProxy {
    url: String,
    lost: Arc<AtomicUsize>,
}

impl AnswerLosingProxy {
    fn start(upstream: &str, lose: usize) -> Self {
        let upstream = upstream.trim_start_matches("http://").to_owned();
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let url = format!("http://{}", listener.local_addr().unwrap());
        let lost = Arc::new(AtomicUsize::new(0));
        let counter = lost.clone();
        thread::spawn(move || {
            for client in listener.incoming() {
                let Ok(client) = client else { continue };
                let (upstream, counter) = (upstream.clone(), counter.clone());
                thread::spawn(move || relay(client, &upstream, &counter, lose));
            }
        });
        AnswerLosingProxy { url, lost }
    }

    fn lost(&self) -> usize {
        self.lost.load(Ordering::SeqCst)
    }
}

/// Relays requests on one connection until either side closes it or an answer is lost.
fn relay(client: TcpStream, upstream: &str, lost: &AtomicUsize, lose: usize) {
    let Ok(server) = TcpStream::connect(upstream) else {
        return;
    };
    let mut from_client = BufReader::new(client.try_clone().unwrap());
    let mut from_server = BufReader::new(server.try_clone().unwrap());
    let (mut client, mut server) = (client, server);
    while let Some(request) = read_message(&mut from_client) {
        if server.write_all(&request).is_err() {
            return;
        }
        let Some(answer) = read_message(&mut from_server) else {
            return;
        };
        let losing = lost
            .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| {
                (n < lose).then_some(n + 1)
            })
            .is_ok();
        if losing {
            let _ = client.shutdown(Shutdown::Both);
            return;
        }
        if client.write_all(&answer).is_err() {
            return;
        }
    }
}

/// Reads one HTTP/1.1 message with a Content-Length body (all that `out` and the server send).
fn read_message(reader: &mut impl BufRead) -> Option<Vec<u8>> {
    let mut message = Vec::new();
    let mut length = 0;
    loop {
        let mut line = String::new();
        if reader.read_line(&mut line).ok()? == 0 {
            return None;
        }
        if let Some((name, value)) = line.split_once(':')
            && name.eq_ignore_ascii_case("content-length")
        {
            length = value.trim().parse().ok()?;
        }
        message.extend_from_slice(line.as_bytes());
        if line == "\r\n" {
            break;
        }
    }
    let start = message.len();
    message.resize(start + length, 0);
    reader.read_exact(&mut message[start..]).ok()?;
    Some(message)
}

fn out(source: &Value, params: Value) -> Run {
    run(Bin::Out, &put(source, params), &["/tmp"])
}

#[test]
fn a_lock_whose_answer_is_lost_is_claimed_once() {
    let server = LockerServer::start();
    let proxy = AnswerLosingProxy::start(&server.url, 1);
    let mut source = server.source("env");
    source["locker_uri"] = json!(proxy.url);

    let locked = out(
        &source,
        json!({"lock_op": "lock", "key": "k", "locked_by": "job"}),
    );
    assert!(locked.status.success(), "out failed:\n{}", locked.stderr);
    assert_eq!(
        proxy.lost(),
        1,
        "the first answer was lost:\n{}",
        locked.stderr
    );
    let lock = server.lock_state(&server.source("env"));
    assert_eq!(
        lock.locked_by.get("job"),
        Some(&1),
        "one claim, though the server saw the request twice: {lock:?}"
    );
}

#[test]
fn an_unlock_whose_answer_is_lost_releases_once() {
    let server = LockerServer::start();
    let direct = server.source("env");
    for _ in 0..2 {
        lock(&direct, "k", "job");
    }
    let proxy = AnswerLosingProxy::start(&server.url, 1);
    let mut source = direct.clone();
    source["locker_uri"] = json!(proxy.url);

    let unlocked = out(
        &source,
        json!({"lock_op": "unlock", "key": "k", "locked_by": "job"}),
    );
    assert!(
        unlocked.status.success(),
        "out failed:\n{}",
        unlocked.stderr
    );
    assert_eq!(
        proxy.lost(),
        1,
        "the first answer was lost:\n{}",
        unlocked.stderr
    );
    let lock = server.lock_state(&direct);
    assert_eq!(
        lock.locked_by.get("job"),
        Some(&1),
        "one of the two claims is left: {lock:?}"
    );
}

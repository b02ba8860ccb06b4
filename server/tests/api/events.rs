//! `GET /events`: server-sent events that tell a page the lock table changed.

use std::io::{BufRead, BufReader, Write};
use std::net::TcpStream;
use std::sync::mpsc;
use std::thread;
use std::time::Duration;

use locker_testkit::{Client, Locker};

use crate::body;

/// Reads the `data:` lines of an event stream into a channel; the channel closes with it.
fn subscribe(server: &Locker) -> mpsc::Receiver<String> {
    let mut stream = TcpStream::connect(("127.0.0.1", server.port())).unwrap();
    write!(
        stream,
        "GET /events HTTP/1.1\r\nHost: x\r\nAccept: text/event-stream\r\n\r\n"
    )
    .unwrap();
    let (sender, events) = mpsc::channel();
    thread::spawn(move || {
        for line in BufReader::new(stream).lines() {
            let Ok(line) = line else { break };
            if let Some(data) = line.strip_prefix("data: ")
                && sender.send(data.to_owned()).is_err()
            {
                break;
            }
        }
    });
    events
}

const PATIENCE: Duration = Duration::from_secs(10);

/// One event at once, one after a change (coalesced), one when a waiter joins a queue (which
/// changes no revision), and the stream ends when the server stops.
///
/// Broken on purpose (tried): without `take_until(stopping)`, the stop waits out its ten
/// seconds of drain and the stream is cut instead of ended, after the server's exit.
#[test]
fn changes_are_announced_and_the_stream_ends_with_the_server() {
    let mut server = Locker::start();
    let events = subscribe(&server);
    assert_eq!(events.recv_timeout(PATIENCE).unwrap(), r#"{"revision":0}"#);
    let client = Client::new();
    client.put(&server.url("/lock/a"), &body("k", "r"));
    client.put(&server.url("/lock/b"), &body("k", "r"));
    let announced = events
        .recv_timeout(PATIENCE)
        .expect("an event after a change");
    assert!(
        announced == r#"{"revision":2}"# || announced == r#"{"revision":1}"#,
        "{announced}"
    );
    while events.recv_timeout(Duration::from_millis(600)).is_ok() {}

    let waiter = {
        let url = server.url("/lock/a?wait=30s");
        thread::spawn(move || Client::new().put(&url, &body("other", "w")))
    };
    assert_eq!(
        events
            .recv_timeout(PATIENCE)
            .expect("an event when a waiter joins"),
        r#"{"revision":2}"#
    );
    let started = std::time::Instant::now();
    server.stop();
    assert_eq!(waiter.join().unwrap().0, 503);
    loop {
        match events.recv_timeout(PATIENCE) {
            Ok(_) => continue,
            Err(mpsc::RecvTimeoutError::Disconnected) => break,
            Err(mpsc::RecvTimeoutError::Timeout) => panic!("the stream never ended"),
        }
    }
    assert!(
        started.elapsed() < Duration::from_secs(8),
        "stopped without waiting out the drain's ten seconds"
    );
}

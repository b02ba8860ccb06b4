//! The resource's `out` under faults: a server restarting while `out` waits, a server down
//! for 5 s during an unlock, and servers that answer garbage or hang up mid-answer. `out`
//! must end with a clear error or succeed, after a bounded number of attempts, never panic.
//!
//! Broken on purpose (tried): in the resource's `client.rs`, treating an unreachable server
//! as a permanent error (`is_transient` false for `Unreachable`) makes
//! `out_keeps_waiting_through_two_server_restarts` fail with "out ended while the server was
//! down", and `unlock_waits_for_a_server_that_is_down_for_five_seconds` with "could not reach".

use std::io::{Read, Write};
use std::net::TcpListener;
use std::process::{Child, Command, Output};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use locker_testkit::{Client, Locker, spawn_with_stdin, workspace_bin};
use serde_json::{Value, json};

use crate::body;

fn source(url: &str) -> Value {
    json!({
        "locker_uri": url,
        "lock_name": "env",
        "retry_delay": "100ms",
        "max_retry_delay": "400ms",
    })
}

/// Starts `out` with `params`; its output is collected when it ends.
fn start_out(url: &str, params: Value, dir: &std::path::Path) -> Child {
    let input = json!({"source": source(url), "params": params});
    spawn_with_stdin(
        Command::new(workspace_bin("out"))
            .arg(dir)
            .env_remove("http_proxy")
            .env_remove("HTTP_PROXY"),
        &input.to_string(),
    )
}

/// Waits for `out` to end within `limit`; kills it and fails the test otherwise.
fn finish(mut child: Child, limit: Duration) -> Output {
    let deadline = Instant::now() + limit;
    while child.try_wait().unwrap().is_none() {
        if Instant::now() > deadline {
            let _ = child.kill();
            let output = child.wait_with_output().unwrap();
            panic!(
                "out did not end within {limit:?}:\n{}",
                String::from_utf8_lossy(&output.stderr)
            );
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    child.wait_with_output().unwrap()
}

fn stderr(output: &Output) -> String {
    String::from_utf8_lossy(&output.stderr).into_owned()
}

/// Checks `out` failed cleanly: exit 1, an `error:` line, no panic; returns stderr.
fn assert_clean_failure(output: &Output, what: &str) -> String {
    let text = stderr(output);
    assert_eq!(output.status.code(), Some(1), "{what}: {text}");
    assert!(!text.contains("panicked"), "{what}: {text}");
    assert!(
        text.lines().any(|l| l.starts_with("error: ")),
        "{what}: {text}"
    );
    assert!(
        output.stdout.is_empty(),
        "{what}: nothing on stdout on failure"
    );
    text
}

fn holder(server: &Locker) -> Value {
    Client::new().get(&server.url("/lock/env")).1
}

#[test]
fn out_keeps_waiting_through_two_server_restarts() {
    let mut server = Locker::start();
    let dir = tempfile::tempdir().unwrap();
    let url = server.url("/lock/env");
    assert_eq!(Client::new().put(&url, &body("a", "holder")).0, 200);
    let mut out = start_out(
        &server.base_url(),
        json!({"lock_op": "lock", "key": "b"}),
        dir.path(),
    );
    std::thread::sleep(Duration::from_millis(500));
    for _ in 0..2 {
        server.stop();
        // Down for a while: out keeps trying.
        std::thread::sleep(Duration::from_millis(1_500));
        if out.try_wait().unwrap().is_some() {
            let output = out.wait_with_output().unwrap();
            panic!("out ended while the server was down: {}", stderr(&output));
        }
        server.restart();
        std::thread::sleep(Duration::from_millis(500));
    }
    assert_eq!(Client::new().delete(&url, &body("a", "holder")).0, 200);
    let output = finish(out, Duration::from_secs(20));
    let log = stderr(&output);
    assert!(output.status.success(), "{log}");
    assert!(
        log.contains("could not reach") || log.contains("did not answer"),
        "the outage is logged:\n{log}"
    );
    let lock = holder(&server);
    assert_eq!(lock["key"], "b", "{lock}");
    assert_eq!(
        lock["locked_by"],
        json!({"b": 1}),
        "claimed exactly once: {lock}"
    );
}

#[test]
fn unlock_waits_for_a_server_that_is_down_for_five_seconds() {
    let mut server = Locker::start();
    let dir = tempfile::tempdir().unwrap();
    assert_eq!(
        Client::new()
            .put(&server.url("/lock/env"), &body("b", "b"))
            .0,
        200
    );
    server.stop();
    let out = start_out(
        &server.base_url(),
        json!({"lock_op": "unlock", "key": "b"}),
        dir.path(),
    );
    std::thread::sleep(Duration::from_secs(5));
    server.restart();
    let output = finish(out, Duration::from_secs(20));
    assert!(output.status.success(), "{}", stderr(&output));
    assert_eq!(holder(&server)["key"], "", "released after the outage");
}

/// A fake server that answers every connection with `answer` and counts the connections.
fn fake_server(answer: &'static [u8]) -> (String, Arc<AtomicUsize>) {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    let count = Arc::new(AtomicUsize::new(0));
    let counter = count.clone();
    std::thread::spawn(move || {
        for stream in listener.incoming() {
            let Ok(mut stream) = stream else { break };
            counter.fetch_add(1, Ordering::SeqCst);
            stream
                .set_read_timeout(Some(Duration::from_millis(200)))
                .unwrap();
            let mut buf = [0; 4096];
            let _ = stream.read(&mut buf);
            let _ = stream.write_all(answer);
            // Dropping the stream hangs up, mid-answer where the answer promised more.
        }
    });
    (url, count)
}

#[test]
fn garbage_and_hang_ups_end_in_clear_errors() {
    let cases: [(&str, &[u8]); 5] = [
        (
            "a 200 that is not JSON",
            b"HTTP/1.1 200 OK\r\nContent-Length: 9\r\nConnection: close\r\n\r\nnot json!",
        ),
        (
            "a hang-up mid-body",
            b"HTTP/1.1 200 OK\r\nContent-Length: 500\r\n\r\n{\"response\": \"Lock for",
        ),
        ("a hang-up mid-head", b"HTTP/1.1 200 OK\r\nContent-Ty"),
        ("bytes that are not HTTP", b"\x00\x01\x02garbage\r\n\r\n"),
        ("a hang-up before any answer", b""),
    ];
    let dir = tempfile::tempdir().unwrap();
    for (what, answer) in cases {
        let (url, connections) = fake_server(answer);
        let started = Instant::now();
        let out = start_out(
            &url,
            json!({"lock_op": "lock", "key": "k", "timeout": "2s"}),
            dir.path(),
        );
        let output = finish(out, Duration::from_secs(15));
        assert_clean_failure(&output, what);
        let attempts = connections.load(Ordering::SeqCst);
        assert!(
            (1..=40).contains(&attempts),
            "{what}: {attempts} connections in {:?}; retries must be bounded",
            started.elapsed()
        );
    }
}

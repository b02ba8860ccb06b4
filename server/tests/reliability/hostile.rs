//! Hostile requests: whatever a client sends, the server answers JSON errors (no 5xx other
//! than 503), stays up, and does not wait for ever on a client.
//!
//! Broken on purpose (tried): in `names.rs`, dropping the control-character check makes
//! `awkward_names_are_refused_with_a_clear_message` fail on `%00` (200 instead of 400) and
//! `bad_bodies_get_400_with_the_reason` on a key with NUL; in `http/body.rs`, a body timeout 1000
//! times `BODY_TIMEOUT` makes `a_body_that_never_ends_gets_408` fail (no answer in 30 s).

use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::{Duration, Instant};

use locker_testkit::{Client, Locker};
use proptest::prelude::*;
use proptest::test_runner::{Config, TestRunner};
use serde_json::Value;

use crate::{body, long_tests, raw_body, raw_exchange, raw_status};

/// Checks an answer to a hostile request: no 5xx but 503, and errors are JSON `{"error"}`.
fn assert_sane(what: &str, status: u16, value: &Value) {
    assert!(
        status < 500 || status == 503,
        "{what}: got {status} {value}"
    );
    if status >= 400 {
        assert!(
            value["error"].as_str().is_some_and(|e| !e.is_empty()),
            "{what}: a {status} must carry a JSON error, got {value}"
        );
    }
}

fn assert_alive(server: &Locker) {
    let (status, _) = Client::new().get(&server.url("/healthz"));
    assert_eq!(status, 200, "the server still answers");
    assert!(!server.log().contains("panicked"), "{}", server.log());
}

fn percent_encode_all(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("%{b:02X}")).collect()
}

/// A request body: bytes, text or JSON of any shape.
fn hostile_body() -> impl Strategy<Value = Vec<u8>> {
    let leaf = prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::Bool),
        any::<i64>().prop_map(Value::from),
        any::<f64>().prop_map(Value::from),
        ".{0,40}".prop_map(Value::String),
    ];
    let json = leaf.prop_recursive(4, 32, 6, |inner| {
        prop_oneof![
            prop::collection::vec(inner.clone(), 0..6).prop_map(Value::Array),
            prop::collection::btree_map(
                prop_oneof![
                    Just("key".to_string()),
                    Just("locked_by".to_string()),
                    Just("lock_by".to_string()),
                    Just("requestor".to_string()),
                    ".{0,12}"
                ],
                inner,
                0..5
            )
            .prop_map(|m| Value::Object(m.into_iter().collect())),
        ]
    });
    prop_oneof![
        prop::collection::vec(any::<u8>(), 0..300),
        ".{0,300}".prop_map(String::into_bytes),
        json.prop_map(|v| v.to_string().into_bytes()),
    ]
}

#[test]
fn fuzzed_paths_and_bodies_get_json_answers() {
    let server = Locker::start();
    let client = Client::new();
    let cases = if long_tests() { 20_000 } else { 600 };
    let mut runner = TestRunner::new(Config {
        cases,
        failure_persistence: None,
        ..Config::default()
    });
    let method = prop::sample::select(vec!["GET", "PUT", "DELETE", "POST", "PATCH"]);
    let path = prop_oneof![
        prop::collection::vec(any::<u8>(), 0..700)
            .prop_map(|b| format!("/lock/{}", percent_encode_all(&b))),
        "[a-z/.0-9]{0,40}".prop_map(|p| format!("/{p}")),
        "[ -~]{0,30}".prop_map(|n| format!("/lock/{}", crate::encode(&n))),
    ];
    runner
        .run(&(method, path, hostile_body()), |(method, path, body)| {
            let text = String::from_utf8_lossy(&body).into_owned();
            let (status, value) = client
                .call(method, &server.url(&path), Some(&text))
                .unwrap_or_else(|e| panic!("{method} {path}: no answer: {e}"));
            assert_sane(&format!("{method} {path} {text:?}"), status, &value);
            Ok(())
        })
        .unwrap();
    assert_alive(&server);
}

#[test]
fn malformed_http_never_gets_a_5xx() {
    let server = Locker::start();
    let mut runner = TestRunner::new(Config {
        cases: if long_tests() { 2_000 } else { 100 },
        failure_persistence: None,
        ..Config::default()
    });
    let head = prop_oneof![
        prop::collection::vec(any::<u8>(), 0..200),
        "[A-Z]{1,8} /[ -~]{0,40} HTTP/1\\.[01]\r\n([ -~]{0,30}\r\n){0,4}\r\n"
            .prop_map(String::into_bytes),
    ];
    runner
        .run(&head, |head| {
            let answer = send_and_hang_up(server.port(), &head);
            let status = raw_status(&answer);
            assert!(status < 500, "{head:?} got {answer}");
            Ok(())
        })
        .unwrap();
    assert_alive(&server);
}

/// Sends `bytes`, closes the sending side, and reads what comes back.
fn send_and_hang_up(port: u16, bytes: &[u8]) -> String {
    let mut stream = TcpStream::connect(("127.0.0.1", port)).expect("connect");
    stream
        .set_read_timeout(Some(Duration::from_secs(5)))
        .unwrap();
    let _ = stream.write_all(bytes);
    let _ = stream.shutdown(std::net::Shutdown::Write);
    let mut answer = Vec::new();
    let _ = stream.read_to_end(&mut answer);
    String::from_utf8_lossy(&answer).into_owned()
}

#[test]
fn awkward_names_are_refused_with_a_clear_message() {
    let server = Locker::start();
    let client = Client::new();
    let long = "x".repeat(10 * 1024);
    let cases = [
        ("%00", "control character"),
        ("a%0D%0Ab", "control character"),
        ("%0A", "control character"),
        ("..", "not allowed"),
        ("%2E%2E", "not allowed"),
        ("%2E", "not allowed"),
        ("%FF%FE", "UTF-8"),
        (long.as_str(), "limit is 512 bytes"),
    ];
    for (name, expected) in cases {
        for method in ["GET", "PUT", "DELETE"] {
            let url = server.url(&format!("/lock/{name}"));
            let (status, value) = client
                .call(method, &url, Some(&body("k", "r")))
                .expect("an answer");
            let shown = &name[..name.len().min(20)];
            assert_eq!(status, 400, "{method} {shown}: {value}");
            let error = value["error"].as_str().unwrap_or_default();
            assert!(
                error.contains(expected),
                "{method} {shown}: expected {expected:?} in {value}"
            );
        }
    }
    // A raw CR/LF or NUL in the request line is not HTTP: hyper refuses it before routing.
    for line in ["GET /lock/a\rb HTTP/1.1", "GET /lock/a\0b HTTP/1.1"] {
        let answer = raw_exchange(
            server.port(),
            format!("{line}\r\nHost: x\r\n\r\n").as_bytes(),
            Duration::from_secs(2),
        );
        let status = raw_status(&answer);
        assert!(status == 0 || status == 400, "{line:?}: {answer}");
    }
    assert_alive(&server);
}

#[test]
fn bad_bodies_get_400_with_the_reason() {
    let server = Locker::start();
    let client = Client::new();
    let deep_array = format!("{}{}", "[".repeat(20_000), "]".repeat(20_000));
    let deep_object = format!("{}{}", r#"{"key":"#.repeat(5_000) + "1", "}".repeat(5_000));
    let cases = [
        (deep_array.as_str(), "not valid JSON"),
        (deep_object.as_str(), "not valid JSON"),
        (r#"{"key": 1}"#, "must be a string"),
        (r#"{"key": ["k"]}"#, "must be a string"),
        (r#"{"key": null}"#, "must be a string"),
        (r#"{"key": "k", "locked_by": {}}"#, "must be a string"),
        (r#"{"key": "a\u0000b"}"#, "control character"),
        (r#"{"key": "k", "extra": 1}"#, "unknown field"),
        ("[]", "JSON object"),
        ("\"key\"", "JSON object"),
        ("", "empty"),
    ];
    for (sent, expected) in cases {
        let (status, value) = client.put(&server.url("/lock/a"), sent);
        let shown = &sent[..sent.len().min(30)];
        assert_eq!(status, 400, "{shown}: {value}");
        let error = value["error"].as_str().unwrap_or_default();
        assert!(
            error.contains(expected),
            "{shown}: expected {expected:?} in {value}"
        );
    }
    // Bytes that are not UTF-8 at all, sent raw.
    let sent = b"{\"key\":\"\xff\xfe\"}";
    let mut request = format!(
        "PUT /lock/a HTTP/1.1\r\nHost: x\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
        sent.len()
    )
    .into_bytes();
    request.extend_from_slice(sent);
    let answer = raw_exchange(server.port(), &request, Duration::from_secs(5));
    assert_eq!(raw_status(&answer), 400, "{answer}");
    assert!(raw_body(&answer).contains("\"error\""), "{answer}");
    assert_alive(&server);
}

/// Sends a head, then `body_len` bytes of body in chunks while reading the answer; returns
/// the status and how long the answer took.
fn send_large_body(port: u16, head: &str, body_len: usize, chunked: bool) -> (u16, Duration) {
    let mut stream = TcpStream::connect(("127.0.0.1", port)).unwrap();
    stream
        .set_read_timeout(Some(Duration::from_secs(20)))
        .unwrap();
    let started = Instant::now();
    stream.write_all(head.as_bytes()).unwrap();
    let mut writer = stream.try_clone().unwrap();
    let sender = std::thread::spawn(move || {
        let chunk = vec![b'a'; 64 * 1024];
        let mut sent = 0;
        while sent < body_len {
            let result = if chunked {
                writer
                    .write_all(format!("{:x}\r\n", chunk.len()).as_bytes())
                    .and_then(|()| writer.write_all(&chunk))
                    .and_then(|()| writer.write_all(b"\r\n"))
            } else {
                writer.write_all(&chunk)
            };
            if result.is_err() {
                break;
            }
            sent += chunk.len();
        }
    });
    let mut answer = Vec::new();
    let mut buf = [0; 4096];
    while !answer.windows(4).any(|w| w == b"\r\n\r\n") {
        match stream.read(&mut buf) {
            Ok(0) | Err(_) => break,
            Ok(n) => answer.extend_from_slice(&buf[..n]),
        }
    }
    let elapsed = started.elapsed();
    drop(stream);
    let _ = sender.join();
    (raw_status(&String::from_utf8_lossy(&answer)), elapsed)
}

#[test]
fn a_ten_megabyte_body_gets_413_quickly() {
    let server = Locker::start();
    let size = 10 * 1024 * 1024;
    let head = format!("PUT /lock/a HTTP/1.1\r\nHost: x\r\nContent-Length: {size}\r\n\r\n");
    let (status, took) = send_large_body(server.port(), &head, size, false);
    assert_eq!(status, 413, "declared 10 MB");
    assert!(took < Duration::from_secs(2), "413 took {took:?}");
    let head = "PUT /lock/a HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n";
    let (status, took) = send_large_body(server.port(), head, size, true);
    assert_eq!(status, 413, "chunked 10 MB");
    assert!(took < Duration::from_secs(2), "413 took {took:?}");
    assert_alive(&server);
}

/// Reads one answer (head and Content-Length body) from `stream`; returns it and when it came.
fn answer_and_time(mut stream: TcpStream, started: Instant) -> (String, Duration) {
    stream
        .set_read_timeout(Some(Duration::from_secs(30)))
        .unwrap();
    let mut answer = Vec::new();
    let mut buf = [0; 4096];
    loop {
        let text = String::from_utf8_lossy(&answer).into_owned();
        if let Some((head, body)) = text.split_once("\r\n\r\n") {
            let length = head
                .lines()
                .find_map(|l| {
                    l.to_ascii_lowercase()
                        .strip_prefix("content-length:")
                        .map(|v| v.trim().to_string())
                })
                .and_then(|v| v.parse::<usize>().ok())
                .unwrap_or(0);
            if body.len() >= length {
                return (text, started.elapsed());
            }
        }
        match stream.read(&mut buf) {
            Ok(0) | Err(_) => return (text, started.elapsed()),
            Ok(n) => answer.extend_from_slice(&buf[..n]),
        }
    }
}

#[test]
fn a_lying_content_length_gets_408() {
    let server = Locker::start();
    let started = Instant::now();
    let mut stream = TcpStream::connect(("127.0.0.1", server.port())).unwrap();
    stream
        .write_all(b"PUT /lock/a HTTP/1.1\r\nHost: x\r\nContent-Length: 100\r\n\r\n{\"key\":")
        .unwrap();
    // Others are served meanwhile.
    let (status, _) = Client::new().put(&server.url("/lock/b"), &body("k", "r"));
    assert_eq!(status, 200);
    let (answer, took) = answer_and_time(stream, started);
    assert_eq!(raw_status(&answer), 408, "{answer}");
    assert!(
        raw_body(&answer).contains("not received in full"),
        "{answer}"
    );
    assert!(took < Duration::from_secs(15), "the 408 took {took:?}");
    let (_, lock) = Client::new().get(&server.url("/lock/a"));
    assert_eq!(lock["key"], "", "nothing was locked: {lock}");
    assert_alive(&server);
}

#[test]
fn a_body_that_never_ends_gets_408() {
    let server = Locker::start();
    let started = Instant::now();
    let stream = TcpStream::connect(("127.0.0.1", server.port())).unwrap();
    let mut writer = stream.try_clone().unwrap();
    writer
        .write_all(b"PUT /lock/a HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n")
        .unwrap();
    let trickle = std::thread::spawn(move || {
        // One space every 50 ms: never 64 KiB, never the end.
        while started.elapsed() < Duration::from_secs(20) {
            if writer.write_all(b"1\r\n \r\n").is_err() {
                break;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    });
    let (answer, took) = answer_and_time(stream, started);
    assert_eq!(
        raw_status(&answer),
        408,
        "expected 408 for a body that never ends, got {answer:?} after {took:?}"
    );
    assert!(took < Duration::from_secs(15), "the 408 took {took:?}");
    trickle.join().unwrap();
    assert_alive(&server);
}

//! Servers without leases: this server before them, which refuses unknown body fields, and the
//! original server, which ignores them and whose locks have no `token` or `holders`. The
//! resource must keep working against both. Each is played by a stand-in that answers as that
//! server did and records what it was sent.
//!
//! Broken on purpose (tried): with `refuses_owner` in `resource/src/put.rs` always false,
//! `a_server_that_refuses_owner_still_gives_the_lock` fails: the 400 about `owner` fails the lock.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::sync::{Arc, Mutex};
use std::thread;

use serde_json::{Value, json};

use crate::helpers::*;

/// What a stand-in server was sent.
#[derive(Debug, Clone)]
struct Received {
    method: String,
    path: String,
    idempotency_key: Option<String>,
    body: Value,
}

/// How a stand-in answers one request: status and JSON body.
type Answer = fn(&Received) -> (u16, Value);

/// A one-request-per-connection HTTP server answering with `answer`.
struct StandIn {
    url: String,
    received: Arc<Mutex<Vec<Received>>>,
}

impl StandIn {
    fn start(answer: Answer) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let url = format!("http://{}", listener.local_addr().unwrap());
        let received = Arc::new(Mutex::new(Vec::new()));
        let log = received.clone();
        thread::spawn(move || {
            for stream in listener.incoming().map_while(Result::ok) {
                let log = log.clone();
                thread::spawn(move || serve(stream, answer, &log));
            }
        });
        Self { url, received }
    }

    fn source(&self) -> Value {
        json!({"locker_uri": self.url, "lock_name": "env",
               "retry_delay": "50ms", "max_retry_delay": "200ms"})
    }

    fn received(&self) -> Vec<Received> {
        self.received.lock().unwrap().clone()
    }
}

fn serve(stream: TcpStream, answer: Answer, log: &Mutex<Vec<Received>>) {
    let mut reader = BufReader::new(stream.try_clone().unwrap());
    let mut request_line = String::new();
    if reader.read_line(&mut request_line).unwrap_or(0) == 0 {
        return;
    }
    let mut parts = request_line.split_whitespace();
    let method = parts.next().unwrap_or_default().to_owned();
    let path = parts.next().unwrap_or_default().to_owned();
    let (mut length, mut idempotency_key) = (0, None);
    loop {
        let mut line = String::new();
        reader.read_line(&mut line).unwrap();
        let line = line.trim_end();
        if line.is_empty() {
            break;
        }
        let (name, value) = line.split_once(':').unwrap();
        match name.to_ascii_lowercase().as_str() {
            "content-length" => length = value.trim().parse().unwrap(),
            "idempotency-key" => idempotency_key = Some(value.trim().to_owned()),
            _ => {}
        }
    }
    let mut body = vec![0; length];
    reader.read_exact(&mut body).unwrap();
    let received = Received {
        method,
        path,
        idempotency_key,
        body: serde_json::from_slice(&body).unwrap_or(Value::Null),
    };
    let (status, answer) = answer(&received);
    log.lock().unwrap().push(received);
    let answer = answer.to_string();
    let mut stream = stream;
    let _ = write!(
        stream,
        "HTTP/1.1 {status} X\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\
         Connection: close\r\n\r\n{answer}",
        answer.len()
    );
}

/// The lock as a server without leases describes it after `body`'s requestor took it.
fn lock_without_leases(body: &Value) -> Value {
    json!({"key": body["key"], "locked_by": {body["locked_by"].as_str().unwrap_or("?"): 1},
           "revision": 1, "locked_at": "2024-01-01T00:00:00.000Z"})
}

/// This server before leases: a body with a field it does not know is a 400.
fn refuses_unknown_fields(request: &Received) -> (u16, Value) {
    let known = ["key", "locked_by", "lock_by", "requestor"];
    let fields = request.body.as_object().cloned().unwrap_or_default();
    let unknown: Vec<&str> = fields
        .keys()
        .map(String::as_str)
        .filter(|field| !known.contains(field))
        .collect();
    if !unknown.is_empty() {
        let error = format!(
            "unknown field(s) in request body: {} (expected: {})",
            unknown.join(", "),
            known.join(", ")
        );
        return (400, json!({"error": error}));
    }
    (
        200,
        json!({"response": "locked", "lock": lock_without_leases(&request.body)}),
    )
}

/// The original server: unknown fields are ignored, there is no renew, GET shows a free lock.
fn ignores_unknown_fields(request: &Received) -> (u16, Value) {
    match request.method.as_str() {
        "PUT" => (
            200,
            json!({"response": "locked", "lock": lock_without_leases(&request.body)}),
        ),
        "GET" => (
            200,
            json!({"key": "", "locked_by": {}, "revision": 0, "locked_at": null}),
        ),
        _ => (405, json!({"error": "method not allowed on this path"})),
    }
}

const BUILD: [(&str, &str); 5] = [
    ("BUILD_TEAM_NAME", "main"),
    ("BUILD_PIPELINE_NAME", "prod"),
    ("BUILD_JOB_NAME", "deploy"),
    ("BUILD_NAME", "42"),
    ("ATC_EXTERNAL_URL", "https://ci.example.com"),
];

#[test]
fn a_server_that_refuses_owner_still_gives_the_lock() {
    let server = StandIn::start(refuses_unknown_fields);
    let input = put(&server.source(), json!({"lock_op": "lock", "key": "k"}));
    let run = run_with_env(Bin::Out, &input, &["/tmp"], &BUILD);
    let output = run.json();
    assert_eq!(metadata(&output, "holders"), r#"{"k":1}"#);
    assert!(
        run.stderr.contains("asking again without it"),
        "the log should say why the lock was asked for twice:\n{}",
        run.stderr
    );
    let received = server.received();
    assert_eq!(
        received.len(),
        2,
        "expected the lock, then the lock again without owner: {received:?}"
    );
    assert!(received[0].body.get("owner").is_some(), "{received:?}");
    assert_eq!(received[1].body, json!({"key": "k", "locked_by": "k"}));
    assert_eq!(
        received[0].idempotency_key, received[1].idempotency_key,
        "both requests are one lock and carry one request id"
    );
}

#[test]
fn a_server_that_refuses_ttl_fails_the_lock_with_its_message() {
    let server = StandIn::start(refuses_unknown_fields);
    let input = put(
        &server.source(),
        json!({"lock_op": "lock", "key": "k", "ttl": "30m"}),
    );
    let error = run(Bin::Out, &input, &["/tmp"]).error();
    assert!(
        error.contains("answered 400: unknown field(s) in request body: ttl"),
        "a lease the server cannot give must not be dropped silently: {error}"
    );
}

#[test]
fn the_original_server_ignores_ttl_and_the_log_says_so() {
    let server = StandIn::start(ignores_unknown_fields);
    let input = put(
        &server.source(),
        json!({"lock_op": "lock", "key": "k", "ttl": "30m"}),
    );
    let run = run_with_env(Bin::Out, &input, &["/tmp"], &BUILD);
    let output = run.json();
    assert_protocol_output(&output);
    assert!(
        run.stderr
            .contains("the ttl of 30m was not applied: the lock is held until unlocked"),
        "stderr:\n{}",
        run.stderr
    );
    let fields: Vec<&str> = output["metadata"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|field| field["name"].as_str())
        .collect();
    assert!(
        !fields.contains(&"token") && !fields.contains(&"expires_at"),
        "no token or expires_at when the server gives none: {fields:?}"
    );
    let received = server.received();
    assert_eq!(received[0].body["ttl"], json!(1800));
    assert_eq!(received[0].body["owner"]["job"], json!("deploy"));
}

#[test]
fn renew_on_a_server_without_leases_says_to_upgrade_it() {
    let server = StandIn::start(ignores_unknown_fields);
    let input = put(
        &server.source(),
        json!({"lock_op": "renew", "key": "k", "ttl": "30m"}),
    );
    let error = run(Bin::Out, &input, &["/tmp"]).error();
    assert!(
        error.starts_with("error: could not renew 'env': ")
            && error.contains("answered 405")
            && error.contains("this server has no leases: upgrade it"),
        "{error}"
    );
    let received = server.received();
    assert_eq!(received.len(), 1, "a 405 is not retried: {received:?}");
    assert_eq!(received[0].method, "POST");
    assert_eq!(received[0].path, "/lock/env/renew");
}

#[test]
fn in_writes_empty_lease_files_for_a_server_without_leases() {
    let server = StandIn::start(ignores_unknown_fields);
    let dir = tempfile::tempdir().unwrap();
    let input = json!({"source": server.source(), "version": {"revision": "0"}});
    run(Bin::In, &input, &[dir.path().to_str().unwrap()]).json();
    let file = |name: &str| std::fs::read_to_string(dir.path().join(name)).unwrap();
    assert_eq!(file("token"), "", "no token from a server without leases");
    assert_eq!(file("expires_at"), "");
    assert_eq!(file("holders"), "[]");
}

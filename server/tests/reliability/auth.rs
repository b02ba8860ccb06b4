//! Authentication: every endpoint but `/healthz` refuses a missing, malformed or wrong
//! `Authorization` header with 401, and credentials never reach the log.
//! (That the comparison takes the same time wherever the bytes differ is a unit test in
//! `http/middleware.rs`: `constant_time_eq_takes_as_long_whatever_the_mismatch`.)
//!
//! Broken on purpose (tried): logging the request's `Authorization` header in the request
//! log line (in `http/middleware.rs`) makes `credentials_never_reach_the_log` fail ("the log contains a
//! credential").

use std::time::Duration;

use crate::{body, raw_exchange, raw_status};
use locker_testkit::{Client, Locker, Options, base64};

const USER: &str = "locker-admin";
const PASS: &str = "Zq8-secret-PASS";

fn server() -> Locker {
    Locker::start_with(
        Options::default()
            .env("AUTH_USER", USER)
            .env("AUTH_PASS", PASS)
            .env("RUST_LOG", "trace"),
    )
}

/// Every route and method, with a body where one is expected.
const ENDPOINTS: [(&str, &str); 10] = [
    ("GET", "/locks"),
    ("GET", "/metrics"),
    ("GET", "/lock/a"),
    ("PUT", "/lock/a"),
    ("DELETE", "/lock/a"),
    ("GET", "/openapi.yaml"),
    ("POST", "/lock/a"),
    ("GET", "/no-such-path"),
    ("PUT", "/locks"),
    ("GET", "/lock/%00"),
];

fn refusals() -> Vec<(&'static str, Option<String>)> {
    let basic = |raw: &str| Some(format!("Basic {}", base64(raw.as_bytes())));
    vec![
        ("no header", None),
        ("empty", Some(String::new())),
        ("scheme only", Some("Basic".into())),
        ("not base64", Some("Basic !!!***".into())),
        ("another scheme", Some(format!("Bearer {PASS}"))),
        ("no colon", basic(&format!("{USER}{PASS}"))),
        ("wrong password", basic(&format!("{USER}:wrong"))),
        ("wrong user", basic(&format!("someone:{PASS}"))),
        (
            "password prefix",
            basic(&format!("{USER}:{}", &PASS[..PASS.len() - 1])),
        ),
        ("password extended", basic(&format!("{USER}:{PASS}x"))),
        ("swapped", basic(&format!("{PASS}:{USER}"))),
        ("empty credentials", basic(":")),
        (
            "case changed",
            basic(&format!("{USER}:{}", PASS.to_lowercase())),
        ),
    ]
}

#[test]
fn every_endpoint_but_healthz_refuses_bad_credentials() {
    let server = server();
    for (what, header) in refusals() {
        let client = match &header {
            Some(value) => Client::new().authorization(value),
            None => Client::new(),
        };
        for (method, path) in ENDPOINTS {
            let sent = (method != "GET").then(|| body("k", "r"));
            let (status, value) = client
                .call(method, &server.url(path), sent.as_deref())
                .expect("an answer");
            assert_eq!(status, 401, "{what}: {method} {path} answered {value}");
            assert_eq!(
                value,
                serde_json::json!({"error": "Please Authenticate"}),
                "{what}"
            );
        }
        let (status, _) = client.get(&server.url("/healthz"));
        assert_eq!(status, 200, "{what}: /healthz needs no credentials");
    }
    // A header that is not even UTF-8.
    let answer = raw_exchange(
        server.port(),
        b"GET /locks HTTP/1.1\r\nHost: x\r\nAuthorization: Basic \xff\xfe\r\nConnection: close\r\n\r\n",
        Duration::from_secs(5),
    );
    assert_eq!(raw_status(&answer), 401, "{answer}");
    assert!(
        answer
            .to_ascii_lowercase()
            .contains("www-authenticate: basic"),
        "{answer}"
    );

    let good = Client::new().basic_auth(USER, PASS);
    let (_, lock) = good.get(&server.url("/lock/a"));
    assert_eq!(
        lock["key"], "",
        "no refused request changed anything: {lock}"
    );
    for (method, path) in &ENDPOINTS[..5] {
        let sent = (*method != "GET").then(|| body("k", "r"));
        let (status, value) = good
            .call(method, &server.url(path), sent.as_deref())
            .unwrap();
        assert_eq!(
            status, 200,
            "{method} {path} with the right credentials: {value}"
        );
    }
}

#[test]
fn credentials_never_reach_the_log() {
    let server = server();
    let good = Client::new().basic_auth(USER, PASS);
    let wrong = Client::new().basic_auth(USER, "Wrong-PASS-9");
    for client in [&good, &wrong] {
        for (method, path) in ENDPOINTS {
            let sent = (method != "GET").then(|| body("k", "r"));
            let _ = client.call(method, &server.url(path), sent.as_deref());
        }
    }
    server.wait_for_log("GET /lock/%00");
    let log = server.log();
    let token = base64(format!("{USER}:{PASS}").as_bytes());
    let wrong_token = base64(format!("{USER}:Wrong-PASS-9").as_bytes());
    for secret in [
        PASS,
        "Wrong-PASS-9",
        token.as_str(),
        wrong_token.as_str(),
        USER,
    ] {
        assert!(
            !log.contains(secret),
            "the log contains a credential ({secret}):\n{log}"
        );
    }
    assert!(
        log.contains("auth on"),
        "the start-up line says auth is on:\n{log}"
    );
}

//! Basic auth, HTTPS trust settings and `bosh_lock` against a fake director.

use std::io::{BufRead, BufReader, Write};
use std::net::TcpListener;
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::thread;

use locker_resource::client::LockerClient;
use locker_resource::config::Source;
use locker_testkit::TestCa;
use serde_json::{Value, json};

use crate::helpers::*;

fn https_server(pki: &TestCa, files: &Path) -> LockerServer {
    let (cert, key) = pki.write_server_files(files);
    let (cert, key) = (cert.display().to_string(), key.display().to_string());
    let server = LockerServer::start_with(&[("SSL_CERT", &cert), ("SSL_KEY", &key)]);
    assert!(
        server.url.starts_with("https://"),
        "the server should speak HTTPS: {}",
        server.url
    );
    server
}

fn with(mut source: Value, key: &str, value: Value) -> Value {
    source[key] = value;
    source
}

#[test]
fn basic_auth_with_the_right_credentials_locks() {
    let server = LockerServer::start_with(&[("AUTH_USER", "ci"), ("AUTH_PASS", "s3cret")]);
    let source = with(
        with(server.source("env"), "username", json!("ci")),
        "password",
        json!("s3cret"),
    );
    lock(&source, "k", "r");
    let versions = run(Bin::Check, &json!({"source": source}), &[]).json();
    assert_ne!(versions, json!([{"revision": "0"}]));
}

#[test]
fn basic_auth_with_wrong_or_no_credentials_fails_at_once() {
    let server = LockerServer::start_with(&[("AUTH_USER", "ci"), ("AUTH_PASS", "s3cret")]);
    let wrong = with(
        with(server.source("env"), "username", json!("ci")),
        "password",
        json!("guess"),
    );
    for source in [wrong, server.source("env")] {
        // No timeout: a 401 must fail at once rather than be retried.
        let run = run(
            Bin::Out,
            &put(&source, json!({"lock_op": "lock", "key": "k"})),
            &["/tmp"],
        );
        let error = run.error();
        assert!(
            error.contains("answered 401: Please Authenticate"),
            "{error}"
        );
        assert!(
            !run.stderr.contains("guess"),
            "the password leaked into the log:\n{}",
            run.stderr
        );
        let error = run_check(&source).error();
        assert!(error.contains("answered 401"), "{error}");
    }
}

fn run_check(source: &Value) -> Run {
    run(Bin::Check, &json!({"source": source}), &[])
}

#[test]
fn https_with_ca_cert_is_trusted() {
    let pki = TestCa::new();
    let files = tempfile::tempdir().unwrap();
    let server = https_server(&pki, files.path());
    let source = with(server.source("env"), "ca_cert", json!(pki.ca_pem));
    let locked = lock(&source, "k", "r");
    assert_eq!(run_check(&source).json(), json!([locked["version"]]));
}

#[test]
fn https_with_a_wrong_ca_fails_without_retrying() {
    let pki = TestCa::new();
    let files = tempfile::tempdir().unwrap();
    let server = https_server(&pki, files.path());
    let other = TestCa::new();
    for source in [
        with(server.source("env"), "ca_cert", json!(other.ca_pem)),
        server.source("env"),
    ] {
        let error = run_check(&source).error();
        assert!(
            error.contains("TLS connection to https://127.0.0.1:"),
            "{error}"
        );
        // Without a timeout, a lock that retried certificate errors would never end.
        let run = run(
            Bin::Out,
            &put(&source, json!({"lock_op": "lock", "key": "k"})),
            &["/tmp"],
        );
        assert!(run.error().contains("TLS connection"), "{}", run.stderr);
    }
}

#[test]
fn https_with_skip_ssl_validation_works_without_ca_cert() {
    let pki = TestCa::new();
    let files = tempfile::tempdir().unwrap();
    let server = https_server(&pki, files.path());
    let source = with(server.source("env"), "skip_ssl_validation", json!(true));
    let locked = lock(&source, "k", "r");
    assert_eq!(run_check(&source).json(), json!([locked["version"]]));
}

/// A fake BOSH director: answers `GET /info` on HTTPS, with a self-signed certificate, with
/// `{"name": NAME, ...}` as a director does. Returns its URL and the requests' header lines.
fn fake_director(name: &str) -> (String, Arc<Mutex<Vec<String>>>) {
    let certified = rcgen::generate_simple_self_signed(vec!["localhost".to_owned()]).unwrap();
    let cert = certified.cert.der().clone();
    let key =
        rustls::pki_types::PrivateKeyDer::try_from(certified.signing_key.serialize_der()).unwrap();
    let config = rustls::ServerConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .unwrap()
    .with_no_client_auth()
    .with_single_cert(vec![cert], key)
    .unwrap();
    let config = Arc::new(config);
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    let body = json!({"name": name, "uuid": "1234", "version": "280.0.0"}).to_string();
    let requests = Arc::new(Mutex::new(Vec::new()));
    let seen = Arc::clone(&requests);
    thread::spawn(move || {
        for stream in listener.incoming().map_while(Result::ok) {
            let Ok(connection) = rustls::ServerConnection::new(Arc::clone(&config)) else {
                continue;
            };
            let mut tls = rustls::StreamOwned::new(connection, stream);
            let mut request_line = String::new();
            let mut reader = BufReader::new(&mut tls);
            if reader.read_line(&mut request_line).is_err() {
                continue;
            }
            let mut header = String::new();
            while reader.read_line(&mut header).is_ok_and(|read| read > 2) {
                seen.lock().unwrap().push(header.trim_end().to_lowercase());
                header.clear();
            }
            let (status, text) = if request_line.starts_with("GET /info ") {
                ("200 OK", body.as_str())
            } else {
                ("404 Not Found", "{}")
            };
            let _ = write!(
                tls,
                "HTTP/1.1 {status}\r\ncontent-type: application/json\r\ncontent-length: {}\r\n\
                 connection: close\r\n\r\n{text}",
                text.len()
            );
            let _ = tls.flush();
            tls.conn.send_close_notify();
            let _ = tls.flush();
        }
    });
    (format!("https://localhost:{port}"), requests)
}

#[test]
fn bosh_lock_uses_the_directors_name() {
    let server = LockerServer::start();
    let (director, requests) = fake_director("my-director");
    let mut source = server.source("unused");
    source.as_object_mut().unwrap().remove("lock_name");
    source["bosh_lock"] = json!(director);

    let locked = lock(&source, "k", "r");
    assert_eq!(metadata(&locked, "lock"), "my-director");
    let by_name = server.source("my-director");
    assert_eq!(
        server.lock_state(&by_name).locked_by,
        [("r".to_owned(), 1)].into()
    );
    assert_eq!(run_check(&source).json(), json!([locked["version"]]));
    let user_agent = format!("user-agent: locker-resource/{}", env!("CARGO_PKG_VERSION"));
    assert!(
        requests.lock().unwrap().contains(&user_agent),
        "expected {user_agent:?} among the director's request headers: {:?}",
        requests.lock().unwrap()
    );
}

#[test]
fn certificates_in_the_system_directory_are_trusted() {
    let pki = TestCa::new();
    let files = tempfile::tempdir().unwrap();
    let server = https_server(&pki, files.path());
    let source = Source::from_json(&server.source("env")).unwrap();
    let cert_dir = tempfile::tempdir().unwrap();
    let untrusted = LockerClient::with_cert_dir(&source, cert_dir.path()).unwrap();
    assert!(
        untrusted.get_lock("env").is_err(),
        "the test CA must not be trusted yet"
    );
    std::fs::write(cert_dir.path().join("test-ca.pem"), &pki.ca_pem).unwrap();
    let trusted = LockerClient::with_cert_dir(&source, cert_dir.path()).unwrap();
    assert_eq!(trusted.get_lock("env").unwrap().revision, 0);
}

#[test]
fn bosh_lock_that_cannot_be_reached_fails_clearly() {
    let server = LockerServer::start();
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let closed = format!(
        "https://127.0.0.1:{}",
        listener.local_addr().unwrap().port()
    );
    drop(listener);
    let mut source = server.source("unused");
    source.as_object_mut().unwrap().remove("lock_name");
    source["bosh_lock"] = json!(closed);
    let error = run_check(&source).error();
    assert!(
        error.starts_with(
            "error: could not read the lock name from source.bosh_lock: could not reach"
        ),
        "{error}"
    );
}

//! `source.ca_cert` holding the server's own certificate: trusted byte for byte ("pinned"), also
//! when it is the self-signed CA:TRUE certificate that
//! `openssl req -x509 -subj /CN=localhost -addext "subjectAltName=DNS:localhost,IP:127.0.0.1"`
//! makes and that webpki alone refuses as a server's own; its name, its dates and the server's
//! hold of its key are still checked.
//!
//! Broken on purpose to see these fail: without the pinned-certificate branch of
//! `PinningVerifier::verify_server_cert`, the openssl-style certificate was refused ("... is a CA
//! certificate (basic constraints CA:TRUE ...") and so was the CA-signed one without its CA;
//! without the branch's date check or name check, the expired or the other name's certificate
//! was trusted; with the handshake signature checks stubbed out, the server without the key was
//! trusted; without the CONNECT proxy connector, `check` went around the proxy.

use std::io::{BufRead, BufReader, Write};
use std::net::{TcpListener, TcpStream};
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::thread;
use std::time::Duration;

use rcgen::{CertificateParams, KeyPair};
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::server::{ClientHello, ResolvesServerCert};
use rustls::sign::CertifiedKey;
use serde_json::{Value, json};

use crate::helpers::*;

/// A self-signed certificate and its key, in PEM.
struct SelfSigned {
    cert_pem: String,
    key_pem: String,
    cert_der: CertificateDer<'static>,
}

use locker_testkit::certificate_params;

/// As [`certificate_params`] describes it, self-signed.
fn self_signed(common_name: &str, names: &[&str], is_ca: bool) -> SelfSigned {
    signed_by_itself(&certificate_params(common_name, names, is_ca))
}

fn signed_by_itself(params: &CertificateParams) -> SelfSigned {
    let key = KeyPair::generate().unwrap();
    let cert = params.self_signed(&key).unwrap();
    SelfSigned {
        cert_pem: cert.pem(),
        key_pem: key.serialize_pem(),
        cert_der: cert.der().clone(),
    }
}

/// As `openssl req -x509 -subj /CN=localhost -addext "subjectAltName=DNS:localhost,IP:127.0.0.1"`
/// makes it: self-signed, basic constraints CA:TRUE.
fn openssl_style() -> SelfSigned {
    self_signed("localhost", &["localhost", "127.0.0.1"], true)
}

/// The real server, serving `cert_pem` and `key_pem` (written into `files`).
fn https_server(cert_pem: &str, key_pem: &str, files: &Path) -> LockerServer {
    let (cert, key) = (files.join("cert.pem"), files.join("key.pem"));
    std::fs::write(&cert, cert_pem).unwrap();
    std::fs::write(&key, key_pem).unwrap();
    let (cert, key) = (cert.display().to_string(), key.display().to_string());
    let server = LockerServer::start_with(&[("SSL_CERT", &cert), ("SSL_KEY", &key)]);
    assert!(
        server.url.starts_with("https://127.0.0.1:"),
        "the server should speak HTTPS on 127.0.0.1: {}",
        server.url
    );
    server
}

fn with_ca_cert(server: &LockerServer, ca_cert: &str) -> Value {
    let mut source = server.source("env");
    source["ca_cert"] = json!(ca_cert);
    source
}

fn check_error(source: &Value) -> String {
    run(Bin::Check, &json!({"source": source}), &[]).error()
}

fn assert_contains(error: &str, expected: &[&str]) {
    for words in expected {
        assert!(
            error.contains(words),
            "expected {words:?} in the error, got:\n{error}"
        );
    }
    assert!(
        !error.contains("OtherError"),
        "the error should be words, not rustls's debug output:\n{error}"
    );
}

#[test]
fn an_openssl_style_certificate_in_ca_cert_is_trusted_by_check_in_and_out() {
    let certificate = openssl_style();
    let files = tempfile::tempdir().unwrap();
    let server = https_server(&certificate.cert_pem, &certificate.key_pem, files.path());
    let source = with_ca_cert(&server, &certificate.cert_pem);

    let locked = lock(&source, "deploy", "build-1");
    assert_eq!(
        run(Bin::Check, &json!({"source": source}), &[]).json(),
        json!([locked["version"]]),
        "check should see the lock that out took"
    );
    let dir = tempfile::tempdir().unwrap();
    let input = json!({"source": source, "version": locked["version"], "params": {}});
    let fetched = run(Bin::In, &input, &[dir.path().to_str().unwrap()]).json();
    assert_eq!(fetched["version"], locked["version"]);
    assert_eq!(
        std::fs::read_to_string(dir.path().join("key")).unwrap(),
        "deploy"
    );
    let unlocked = unlock(&source, "deploy", "build-1");
    assert!(revision(&unlocked) > revision(&locked), "{unlocked}");
}

#[test]
fn without_ca_cert_an_openssl_style_certificate_is_refused_saying_why() {
    let certificate = openssl_style();
    let files = tempfile::tempdir().unwrap();
    let server = https_server(&certificate.cert_pem, &certificate.key_pem, files.path());
    let error = check_error(&server.source("env"));
    assert_contains(
        &error,
        &[
            "TLS connection to https://127.0.0.1:",
            "the server presented a certificate for CN=localhost issued by CN=localhost (self-signed)",
            "is a CA certificate (basic constraints CA:TRUE",
            "trusted as a server's own only when source.ca_cert holds exactly it",
            "and source.ca_cert is not set",
            "set source.ca_cert to the server's certificate",
        ],
    );
}

#[test]
fn another_self_signed_certificate_in_ca_cert_is_refused_naming_both() {
    let other = self_signed("other", &["localhost", "127.0.0.1"], true);
    for (server_certificate, refusal) in [
        (
            openssl_style(),
            "is a CA certificate (basic constraints CA:TRUE, as `openssl req -x509` makes them), \
             trusted as a server's own only when source.ca_cert holds exactly it, and \
             source.ca_cert holds another (CN=other, self-signed)",
        ),
        (
            self_signed("localhost", &["localhost", "127.0.0.1"], false),
            "neither matches source.ca_cert (CN=other, self-signed) nor is signed by a trusted CA",
        ),
    ] {
        let files = tempfile::tempdir().unwrap();
        let server = https_server(
            &server_certificate.cert_pem,
            &server_certificate.key_pem,
            files.path(),
        );
        let source = with_ca_cert(&server, &other.cert_pem);
        assert_contains(
            &check_error(&source),
            &[
                "the server presented a certificate for CN=localhost issued by CN=localhost (self-signed)",
                refusal,
                "set source.ca_cert to the server's certificate",
            ],
        );
        // Without a timeout: a refused certificate fails at once rather than being retried.
        let run = run(
            Bin::Out,
            &put(&source, json!({"lock_op": "lock", "key": "k"})),
            &["/tmp"],
        );
        assert_contains(
            &run.error(),
            &["the server presented a certificate for CN=localhost"],
        );
    }
}

#[test]
fn the_servers_ca_signed_certificate_in_ca_cert_is_trusted_without_its_ca() {
    let pki = locker_testkit::TestCa::new();
    let files = tempfile::tempdir().unwrap();
    let server = https_server(&pki.cert_pem, &pki.key_pem, files.path());
    let locked = lock(&with_ca_cert(&server, &pki.cert_pem), "k", "r");
    assert_eq!(revision(&locked), 1);
}

#[test]
fn an_expired_pinned_certificate_is_refused() {
    let mut params = certificate_params("localhost", &["localhost", "127.0.0.1"], true);
    params.not_before = rcgen::date_time_ymd(2010, 1, 1);
    params.not_after = rcgen::date_time_ymd(2012, 1, 1);
    let expired = signed_by_itself(&params);
    let files = tempfile::tempdir().unwrap();
    let server = https_server(&expired.cert_pem, &expired.key_pem, files.path());
    assert_contains(
        &check_error(&with_ca_cert(&server, &expired.cert_pem)),
        &[
            "the server presented a certificate for CN=localhost",
            "which matches source.ca_cert but expired at 2012-01-01 00:00:00 UTC",
            "give the server a new certificate and put it in source.ca_cert",
        ],
    );
}

#[test]
fn a_pinned_certificate_for_another_name_is_refused() {
    let elsewhere = self_signed("other.example", &["other.example"], true);
    let files = tempfile::tempdir().unwrap();
    let server = https_server(&elsewhere.cert_pem, &elsewhere.key_pem, files.path());
    assert_contains(
        &check_error(&with_ca_cert(&server, &elsewhere.cert_pem)),
        &[
            "the server presented a certificate for CN=other.example",
            "which matches source.ca_cert but is not valid for 127.0.0.1 (it is for DNS:other.example)",
        ],
    );
}

/// Presents `certificate` but signs the handshake with another key.
#[derive(Debug)]
struct WrongKey(Arc<CertifiedKey>);

impl ResolvesServerCert for WrongKey {
    fn resolve(&self, _: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        Some(Arc::clone(&self.0))
    }
}

#[test]
fn a_server_without_the_pinned_certificates_key_is_refused() {
    let certificate = openssl_style();
    let other_key = KeyPair::generate().unwrap();
    let other_key = PrivateKeyDer::try_from(other_key.serialize_der()).unwrap();
    let signer = rustls::crypto::ring::sign::any_supported_type(&other_key).unwrap();
    let impostor = CertifiedKey::new(vec![certificate.cert_der.clone()], signer);
    let config = rustls::ServerConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .unwrap()
    .with_no_client_auth()
    .with_cert_resolver(Arc::new(WrongKey(Arc::new(impostor))));
    let config = Arc::new(config);
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let url = format!(
        "https://127.0.0.1:{}",
        listener.local_addr().unwrap().port()
    );
    thread::spawn(move || {
        for mut stream in listener.incoming().map_while(Result::ok) {
            let mut connection = rustls::ServerConnection::new(Arc::clone(&config)).unwrap();
            let _ = connection.complete_io(&mut stream);
        }
    });
    let source = json!({"locker_uri": url, "lock_name": "env", "ca_cert": certificate.cert_pem});
    let error = check_error(&source);
    assert!(
        error.contains("TLS connection to https://127.0.0.1:") && error.contains("BadSignature"),
        "expected the handshake signature to be refused, got:\n{error}"
    );
}

/// An HTTP proxy that answers `CONNECT host:port` and then passes bytes both ways. Returns its
/// URL and the `CONNECT` lines it was sent.
fn connect_proxy() -> (String, Arc<Mutex<Vec<String>>>) {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let url = format!("http://127.0.0.1:{}", listener.local_addr().unwrap().port());
    let requests = Arc::new(Mutex::new(Vec::new()));
    let seen = Arc::clone(&requests);
    thread::spawn(move || {
        for client in listener.incoming().map_while(Result::ok) {
            let mut reader = BufReader::new(client.try_clone().unwrap());
            let mut request_line = String::new();
            reader.read_line(&mut request_line).unwrap();
            let mut header = String::new();
            while reader.read_line(&mut header).is_ok_and(|read| read > 2) {
                header.clear();
            }
            seen.lock()
                .unwrap()
                .push(request_line.trim_end().to_owned());
            let target = request_line
                .split(' ')
                .nth(1)
                .unwrap_or_default()
                .to_owned();
            let Ok(server) = TcpStream::connect(target) else {
                continue;
            };
            let mut client = client;
            client
                .write_all(b"HTTP/1.1 200 Connection established\r\n\r\n")
                .unwrap();
            let (mut from_server, mut to_client) = (server.try_clone().unwrap(), client);
            let mut to_server = server;
            thread::spawn(move || std::io::copy(&mut from_server, &mut to_client));
            thread::spawn(move || std::io::copy(&mut reader, &mut to_server));
        }
    });
    (url, requests)
}

#[test]
fn https_through_a_connect_proxy_trusts_the_pinned_certificate() {
    let certificate = openssl_style();
    let files = tempfile::tempdir().unwrap();
    let server = https_server(&certificate.cert_pem, &certificate.key_pem, files.path());
    let (proxy, requests) = connect_proxy();
    let source = with_ca_cert(&server, &certificate.cert_pem);
    let check = Running::start(
        Bin::Check,
        &json!({"source": source}),
        &[],
        &[("HTTPS_PROXY", &proxy), ("NO_PROXY", ""), ("no_proxy", "")],
    );
    let versions = check.finish(Duration::from_secs(30)).json();
    assert_eq!(versions, json!([{"revision": "0"}]));
    let expected = format!(
        "CONNECT {} HTTP/1.1",
        server.url.trim_start_matches("https://")
    );
    assert_eq!(
        *requests.lock().unwrap(),
        vec![expected],
        "check should have gone through the proxy named in HTTPS_PROXY"
    );
}

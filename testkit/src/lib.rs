//! Test helpers shared by the workspace's integration tests.
//!
//! [`Locker`] starts the real `locker` binary on a free loopback port with a state file in a
//! temporary directory, captures its log, and stops, kills or restarts it. [`Client`] speaks
//! HTTP to it and returns status and JSON. [`TestCa`] makes certificates for TLS tests.
//! [`process`] has what the benchmark shares with them: finding the binaries, a free port, the
//! command that starts `locker`, and stopping a process.
//! [`prometheus::Scrape`] reads `/metrics` with the Prometheus project's own parser.

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde_json::Value;

pub mod postgres;
pub mod process;
pub mod prometheus;

use process::{Build, find_bins, locker_command, terminate};

/// How long a server may take to print its listening line.
const START_TIMEOUT: Duration = Duration::from_secs(20);

/// How long a server may take to exit after SIGTERM before it is killed: longer than its
/// shutdown grace period, so a test sees a hang as a killed server rather than waiting forever.
const STOP_TIMEOUT: Duration = Duration::from_secs(60);

/// The path of a binary built from this workspace (`locker`, `check`, `in`, `out`, ...).
///
/// Test executables live in `target/<profile>/deps/`; workspace binaries one level up. If the
/// binary is missing (a package's tests run alone), it is built with cargo first.
pub fn workspace_bin(name: &str) -> PathBuf {
    let exe = std::env::current_exe().expect("current_exe");
    let profile_dir = exe
        .parent()
        .and_then(Path::parent)
        .expect("test binary lives in target/<profile>/deps");
    find_bins(profile_dir, &[name], Build::IfMissing).unwrap_or_else(|e| panic!("{e}"));
    profile_dir.join(name)
}

/// Starts `command` with stdin, stdout and stderr piped and writes `input` to its stdin, the
/// way Concourse starts a resource binary.
pub fn spawn_with_stdin(command: &mut Command, input: &str) -> Child {
    use std::io::Write;
    let mut child = command
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| panic!("{command:?} does not start: {e}"));
    child
        .stdin
        .take()
        .expect("stdin is piped")
        .write_all(input.as_bytes())
        .expect("write stdin");
    child
}

/// How to start a server.
#[derive(Clone, Debug, Default)]
pub struct Options {
    /// Extra environment variables (`AUTH_USER`, `SSL_CERT`, ...).
    pub env: Vec<(String, String)>,
    /// The port; 0 (the default) picks a free one.
    pub port: u16,
}

impl Options {
    /// True when the server keeps its locks in PostgreSQL (`LOCKER_DATABASE_URL` is set).
    pub fn uses_database(&self) -> bool {
        self.env
            .iter()
            .any(|(k, v)| k == "LOCKER_DATABASE_URL" && !v.is_empty())
    }

    pub fn env(mut self, name: &str, value: impl AsRef<std::ffi::OsStr>) -> Self {
        self.env.push((
            name.to_string(),
            value.as_ref().to_string_lossy().into_owned(),
        ));
        self
    }
}

/// True when the tests run against the PostgreSQL backend (`LOCKER_TEST_BACKEND=postgres`):
/// [`Locker::start_with`] then gives each server a database of its own instead of a state
/// file, and tests of what only the state file does skip themselves.
pub fn backend_is_postgres() -> bool {
    std::env::var("LOCKER_TEST_BACKEND").is_ok_and(|b| b == "postgres")
}

/// A running `locker` process.
pub struct Locker {
    child: Option<Child>,
    /// The directory holding the state file; removed on drop unless shared.
    dir: Arc<tempfile::TempDir>,
    state_file: PathBuf,
    options: Options,
    port: u16,
    scheme: String,
    log: Arc<Mutex<String>>,
}

/// A server that exited instead of starting.
#[derive(Debug)]
pub struct StartFailure {
    pub status: Option<ExitStatus>,
    pub log: String,
}

impl Locker {
    /// Starts a server with a fresh state file and default options.
    pub fn start() -> Locker {
        Locker::start_with(Options::default())
    }

    /// Starts a server with a fresh state file, or, when the tests run against PostgreSQL
    /// (see [`backend_is_postgres`]), with a fresh database of the shared test cluster.
    pub fn start_with(options: Options) -> Locker {
        let options = if backend_is_postgres() && !options.uses_database() {
            options.env("LOCKER_DATABASE_URL", postgres::shared().create_database())
        } else {
            options
        };
        let dir = Arc::new(tempfile::tempdir().expect("tempdir"));
        let state_file = dir.path().join("locker.yml");
        Locker::start_on(dir, state_file, options)
            .unwrap_or_else(|f| panic!("locker did not start ({:?}):\n{}", f.status, f.log))
    }

    /// Starts a server on a given state file (in `dir`, which the handle keeps alive).
    pub fn start_on(
        dir: Arc<tempfile::TempDir>,
        state_file: PathBuf,
        options: Options,
    ) -> Result<Locker, StartFailure> {
        let mut cmd = locker_command(
            &workspace_bin("locker"),
            options.port,
            &state_file,
            dir.path(),
        );
        cmd.stderr(Stdio::piped());
        for (k, v) in &options.env {
            cmd.env(k, v);
        }
        if options.uses_database() {
            // The locks live in the database: the state file is not used (and may not be set).
            cmd.env_remove("LOCKER_CONFIG");
        }
        let mut child = cmd.spawn().expect("spawn locker");
        let log = Arc::new(Mutex::new(String::new()));
        let stderr = child.stderr.take().expect("stderr");
        let (tx, rx) = std::sync::mpsc::channel();
        {
            let log = log.clone();
            std::thread::spawn(move || {
                let mut tx = Some(tx);
                for line in BufReader::new(stderr).lines() {
                    let Ok(line) = line else { break };
                    {
                        let mut log = log.lock().unwrap();
                        log.push_str(&line);
                        log.push('\n');
                    }
                    if let Some(addr) = line
                        .split("listening on ")
                        .nth(1)
                        .and_then(|rest| rest.split([',', ' ']).next())
                        && let Some(tx) = tx.take()
                    {
                        let _ = tx.send(addr.to_string());
                    }
                }
            });
        }
        let deadline = Instant::now() + START_TIMEOUT;
        loop {
            match rx.recv_timeout(Duration::from_millis(20)) {
                Ok(addr) => {
                    let (scheme, hostport) = addr.split_once("://").expect("scheme://addr");
                    let port = hostport
                        .rsplit(':')
                        .next()
                        .and_then(|p| p.parse().ok())
                        .expect("port");
                    return Ok(Locker {
                        child: Some(child),
                        dir,
                        state_file,
                        options,
                        port,
                        scheme: scheme.to_string(),
                        log,
                    });
                }
                Err(_) => {
                    if let Ok(Some(status)) = child.try_wait() {
                        // Let the reader thread drain the last lines.
                        std::thread::sleep(Duration::from_millis(50));
                        return Err(StartFailure {
                            status: Some(status),
                            log: log.lock().unwrap().clone(),
                        });
                    }
                    if Instant::now() > deadline {
                        let _ = child.kill();
                        return Err(StartFailure {
                            status: None,
                            log: log.lock().unwrap().clone(),
                        });
                    }
                }
            }
        }
    }

    /// The base URL, e.g. `http://127.0.0.1:4711`.
    pub fn base_url(&self) -> String {
        format!("{}://127.0.0.1:{}", self.scheme, self.port)
    }

    /// The URL of `path` (which starts with `/`).
    pub fn url(&self, path: &str) -> String {
        format!("{}{path}", self.base_url())
    }

    pub fn port(&self) -> u16 {
        self.port
    }

    pub fn pid(&self) -> u32 {
        self.child.as_ref().expect("running").id()
    }

    pub fn state_file(&self) -> &Path {
        &self.state_file
    }

    pub fn dir(&self) -> Arc<tempfile::TempDir> {
        self.dir.clone()
    }

    /// Everything the server logged so far.
    pub fn log(&self) -> String {
        self.log.lock().unwrap().clone()
    }

    /// Waits until the log has a line containing `needle` (the log is written after the
    /// response is sent), and returns that line.
    pub fn wait_for_log(&self, needle: &str) -> String {
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            let log = self.log();
            if let Some(line) = log.lines().find(|l| l.contains(needle)) {
                return line.to_string();
            }
            assert!(
                Instant::now() < deadline,
                "no log line with {needle:?} in:\n{log}"
            );
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    /// Sends SIGTERM and waits for the exit (killing the server if it hangs).
    pub fn stop(&mut self) -> ExitStatus {
        let mut child = self.child.take().expect("running");
        let status = terminate(&mut child, STOP_TIMEOUT).expect("wait");
        std::thread::sleep(Duration::from_millis(20));
        status
    }

    /// Sends SIGKILL and waits for the exit.
    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Starts the server again on the same state file, port and options.
    pub fn restart(&mut self) {
        if self.child.is_some() {
            self.stop();
        }
        let options = Options {
            port: self.port,
            ..self.options.clone()
        };
        // The port was just released; retry briefly in case the kernel still holds it.
        let mut last = None;
        for _ in 0..50 {
            match Locker::start_on(self.dir.clone(), self.state_file.clone(), options.clone()) {
                Ok(mut started) => {
                    self.child = started.child.take();
                    self.log = started.log.clone();
                    return;
                }
                Err(f) => {
                    last = Some(f);
                    std::thread::sleep(Duration::from_millis(100));
                }
            }
        }
        panic!("locker did not restart: {last:?}");
    }

    /// True while the process runs.
    pub fn is_running(&mut self) -> bool {
        match self.child.as_mut() {
            Some(c) => c.try_wait().map(|s| s.is_none()).unwrap_or(false),
            None => false,
        }
    }
}

impl Drop for Locker {
    fn drop(&mut self) {
        self.kill();
    }
}

/// An HTTP client that returns every status instead of failing on 4xx/5xx.
#[derive(Clone)]
pub struct Client {
    agent: ureq::Agent,
    tls: ureq::tls::TlsConfig,
    headers: Vec<(String, String)>,
}

impl Default for Client {
    fn default() -> Self {
        Client::new()
    }
}

impl Client {
    pub fn new() -> Client {
        Client::with_tls(ureq::tls::TlsConfig::default())
    }

    /// A client that trusts exactly the given PEM CA certificate.
    pub fn trusting(ca_pem: &str) -> Client {
        let cert = ureq::tls::Certificate::from_pem(ca_pem.as_bytes()).expect("CA PEM");
        let tls = ureq::tls::TlsConfig::builder()
            .root_certs(ureq::tls::RootCerts::Specific(Arc::new(vec![cert])))
            .build();
        Client::with_tls(tls)
    }

    fn with_tls(tls: ureq::tls::TlsConfig) -> Client {
        Client {
            agent: Client::agent(&tls, Duration::from_secs(30)),
            tls,
            headers: Vec::new(),
        }
    }

    fn agent(tls: &ureq::tls::TlsConfig, timeout: Duration) -> ureq::Agent {
        ureq::Agent::config_builder()
            .http_status_as_error(false)
            .timeout_global(Some(timeout))
            .tls_config(tls.clone())
            .build()
            .into()
    }

    /// Gives up on a request (and closes its connection) after `timeout` instead of 30 s.
    pub fn timeout(mut self, timeout: Duration) -> Client {
        self.agent = Client::agent(&self.tls, timeout);
        self
    }

    /// Sends basic auth with every request.
    pub fn basic_auth(self, user: &str, pass: &str) -> Client {
        use std::io::Write;
        let mut raw = Vec::new();
        write!(raw, "{user}:{pass}").unwrap();
        self.authorization(&format!("Basic {}", base64(&raw)))
    }

    /// Sends a raw `Authorization` header value.
    pub fn authorization(self, value: &str) -> Client {
        self.header("authorization", value)
    }

    /// Sends `name: value` with every request (added to those already set, even of the same name).
    pub fn header(mut self, name: &str, value: &str) -> Client {
        self.headers.push((name.to_string(), value.to_string()));
        self
    }

    /// Sends a request; `body` is sent as is when given. Returns status and parsed JSON
    /// (`Value::String` of the raw text when the body is not JSON).
    pub fn call(
        &self,
        method: &str,
        url: &str,
        body: Option<&str>,
    ) -> Result<(u16, Value), ureq::Error> {
        let mut req = ureq::http::Request::builder().method(method).uri(url);
        for (name, value) in &self.headers {
            req = req.header(name, value);
        }
        let req = req.body(body.unwrap_or("").to_string()).expect("request");
        let mut resp = self.agent.run(req)?;
        let status = resp.status().as_u16();
        let text = resp.body_mut().read_to_string()?;
        let value = serde_json::from_str(&text).unwrap_or(Value::String(text));
        Ok((status, value))
    }

    pub fn get(&self, url: &str) -> (u16, Value) {
        self.call("GET", url, None).expect("GET")
    }

    pub fn put(&self, url: &str, body: &str) -> (u16, Value) {
        self.call("PUT", url, Some(body)).expect("PUT")
    }

    pub fn delete(&self, url: &str, body: &str) -> (u16, Value) {
        self.call("DELETE", url, Some(body)).expect("DELETE")
    }

    pub fn post(&self, url: &str, body: &str) -> (u16, Value) {
        self.call("POST", url, Some(body)).expect("POST")
    }
}

/// Standard base64 with padding, as basic auth wants it.
pub fn base64(data: &[u8]) -> String {
    use base64::Engine;
    base64::engine::general_purpose::STANDARD.encode(data)
}

/// Parameters of a certificate for `common_name` and `names` (DNS names or IP addresses),
/// CA:TRUE when `is_ca` (as `openssl req -x509` makes them), valid from 1975 to 4096
/// (rcgen's default).
pub fn certificate_params(
    common_name: &str,
    names: &[&str],
    is_ca: bool,
) -> rcgen::CertificateParams {
    use rcgen::{BasicConstraints, CertificateParams, DistinguishedName, DnType, IsCa};
    let names: Vec<String> = names.iter().map(|name| (*name).to_owned()).collect();
    let mut params = CertificateParams::new(names).expect("certificate names");
    params.distinguished_name = DistinguishedName::new();
    params
        .distinguished_name
        .push(DnType::CommonName, common_name);
    if is_ca {
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    }
    params
}

/// A certificate authority made for one test, and a server certificate it signed.
pub struct TestCa {
    pub ca_pem: String,
    pub cert_pem: String,
    pub key_pem: String,
}

impl TestCa {
    /// A CA and a certificate for `localhost` and `127.0.0.1`.
    pub fn new() -> TestCa {
        use rcgen::{BasicConstraints, CertificateParams, CertifiedIssuer, IsCa, KeyPair};
        let mut ca_params = CertificateParams::new(Vec::new()).expect("CA params");
        ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        ca_params
            .distinguished_name
            .push(rcgen::DnType::CommonName, "locker test CA");
        let ca = CertifiedIssuer::self_signed(ca_params, KeyPair::generate().expect("CA key"))
            .expect("CA");
        let key = KeyPair::generate().expect("key");
        let cert = CertificateParams::new(vec!["localhost".into(), "127.0.0.1".into()])
            .expect("params")
            .signed_by(&key, &ca)
            .expect("sign");
        TestCa {
            ca_pem: ca.pem(),
            cert_pem: cert.pem(),
            key_pem: key.serialize_pem(),
        }
    }

    /// Writes `cert.pem` and `key.pem` into `dir`; returns their paths.
    pub fn write_server_files(&self, dir: &Path) -> (PathBuf, PathBuf) {
        let cert = dir.join("cert.pem");
        let key = dir.join("key.pem");
        std::fs::write(&cert, &self.cert_pem).expect("write cert");
        std::fs::write(&key, &self.key_pem).expect("write key");
        (cert, key)
    }
}

impl Default for TestCa {
    fn default() -> Self {
        TestCa::new()
    }
}

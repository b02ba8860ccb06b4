//! Running the resource's binaries and the locker server for the tests.

use std::io::{BufRead, BufReader, Read};
use std::process::{Child, Command, ExitStatus};
use std::sync::{Arc, Mutex};
use std::thread;
use std::time::{Duration, Instant};

use locker_resource::client::{Lock, LockerClient};
use locker_resource::config::Source;
use locker_testkit::{Locker, Options, spawn_with_stdin};
use serde_json::{Value, json};

/// One of the resource's binaries.
#[derive(Debug, Clone, Copy)]
pub enum Bin {
    Check,
    In,
    Out,
}

impl Bin {
    fn path(self) -> &'static str {
        match self {
            Bin::Check => env!("CARGO_BIN_EXE_check"),
            Bin::In => env!("CARGO_BIN_EXE_in"),
            Bin::Out => env!("CARGO_BIN_EXE_out"),
        }
    }
}

/// What a finished binary left behind.
#[derive(Debug)]
pub struct Run {
    pub status: ExitStatus,
    pub stdout: String,
    pub stderr: String,
}

impl Run {
    /// stdout as the one JSON document it must be, after checking the run succeeded.
    pub fn json(&self) -> Value {
        assert!(
            self.status.success(),
            "expected success, got {}: stderr:\n{}",
            self.status,
            self.stderr
        );
        serde_json::from_str(&self.stdout).unwrap_or_else(|err| {
            panic!(
                "stdout must be exactly one JSON document ({err}), got:\n{}",
                self.stdout
            )
        })
    }

    /// The `error: ...` line of a failed run, after checking it failed cleanly.
    pub fn error(&self) -> String {
        assert!(
            !self.status.success(),
            "expected a failure, got success: stdout:\n{}",
            self.stdout
        );
        assert_eq!(
            self.status.code(),
            Some(1),
            "expected exit 1, stderr:\n{}",
            self.stderr
        );
        assert!(
            self.stdout.is_empty(),
            "a failed run must print nothing on stdout, got:\n{}",
            self.stdout
        );
        assert!(
            !self.stderr.contains("panicked"),
            "the binary panicked:\n{}",
            self.stderr
        );
        let line = self
            .stderr
            .lines()
            .find(|line| line.starts_with("error: "))
            .unwrap_or_else(|| {
                panic!(
                    "expected an `error: ...` line on stderr, got:\n{}",
                    self.stderr
                )
            });
        line.to_owned()
    }
}

fn command(bin: Bin, args: &[&str]) -> Command {
    let mut command = Command::new(bin.path());
    command.args(args);
    for var in [
        "http_proxy",
        "HTTP_PROXY",
        "https_proxy",
        "HTTPS_PROXY",
        "all_proxy",
        "ALL_PROXY",
        "BUILD_ID",
        "BUILD_NAME",
        "BUILD_JOB_NAME",
        "BUILD_PIPELINE_NAME",
        "BUILD_TEAM_NAME",
        "ATC_EXTERNAL_URL",
        "BUILD_URL",
    ] {
        command.env_remove(var);
    }
    command
}

/// Runs a binary to the end with `input` on stdin.
pub fn run(bin: Bin, input: &Value, args: &[&str]) -> Run {
    run_with_env(bin, input, args, &[])
}

/// Runs a binary to the end with `input` on stdin and `env` set (build variables, say).
pub fn run_with_env(bin: Bin, input: &Value, args: &[&str], env: &[(&str, &str)]) -> Run {
    let child = spawn_with_stdin(
        command(bin, args).envs(env.iter().copied()),
        &input.to_string(),
    );
    let output = child.wait_with_output().unwrap();
    Run {
        status: output.status,
        stdout: String::from_utf8(output.stdout).unwrap(),
        stderr: String::from_utf8(output.stderr).unwrap(),
    }
}

/// A binary running in the background, its stderr collected as it comes.
pub struct Running {
    child: Child,
    stderr: Arc<Mutex<String>>,
}

impl Running {
    pub fn start(bin: Bin, input: &Value, args: &[&str], env: &[(&str, &str)]) -> Self {
        let mut child = spawn_with_stdin(
            command(bin, args).envs(env.iter().copied()),
            &input.to_string(),
        );
        let stderr = Arc::new(Mutex::new(String::new()));
        let pipe = child.stderr.take().unwrap();
        let sink = Arc::clone(&stderr);
        thread::spawn(move || {
            for line in BufReader::new(pipe).lines().map_while(Result::ok) {
                let mut text = sink.lock().unwrap();
                text.push_str(&line);
                text.push('\n');
            }
        });
        Self { child, stderr }
    }

    pub fn stderr(&self) -> String {
        self.stderr.lock().unwrap().clone()
    }

    pub fn is_running(&mut self) -> bool {
        self.child.try_wait().unwrap().is_none()
    }

    /// Sends `signal` (`libc::SIGTERM`, ...), as Concourse does to abort a step.
    pub fn signal(&self, signal: i32) {
        let pid = libc::pid_t::try_from(self.child.id()).unwrap();
        // SAFETY: kill has no memory effects; the child is ours and not yet reaped (it is
        // reaped only by `finish` or on drop), so the pid is still its own.
        let sent = unsafe { libc::kill(pid, signal) };
        assert_eq!(sent, 0, "could not send signal {signal} to {pid}");
    }

    /// Waits until stderr contains `text`, failing the test after `limit`.
    pub fn wait_for_log(&mut self, text: &str, limit: Duration) {
        let deadline = Instant::now() + limit;
        while !self.stderr().contains(text) {
            assert!(
                self.is_running(),
                "the binary exited while we waited for {text:?} in its log:\n{}",
                self.stderr()
            );
            assert!(
                Instant::now() < deadline,
                "no {text:?} in the log after {limit:?}:\n{}",
                self.stderr()
            );
            thread::sleep(Duration::from_millis(20));
        }
    }

    /// Waits for the binary to exit, failing the test after `limit`.
    pub fn finish(mut self, limit: Duration) -> Run {
        let deadline = Instant::now() + limit;
        while self.is_running() {
            if Instant::now() > deadline {
                let _ = self.child.kill();
                panic!(
                    "the binary did not finish within {limit:?}; stderr:\n{}",
                    self.stderr()
                );
            }
            thread::sleep(Duration::from_millis(20));
        }
        let status = self.child.wait().unwrap();
        let mut stdout = String::new();
        self.child
            .stdout
            .take()
            .unwrap()
            .read_to_string(&mut stdout)
            .unwrap();
        // Give the reader thread a moment to collect the last lines.
        thread::sleep(Duration::from_millis(50));
        Run {
            status,
            stdout,
            stderr: self.stderr(),
        }
    }
}

impl Drop for Running {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The real `locker` server (started by the workspace's testkit) and `source` for its locks.
pub struct LockerServer {
    server: Locker,
    pub url: String,
}

impl LockerServer {
    pub fn start() -> Self {
        Self::start_with(&[])
    }

    /// Starts the server with extra environment (`AUTH_USER`, `SSL_CERT`, ...).
    pub fn start_with(env: &[(&str, &str)]) -> Self {
        let options = env
            .iter()
            .fold(Options::default(), |options, (name, value)| {
                options.env(name, value)
            });
        let server = Locker::start_with(options);
        Self {
            url: server.base_url(),
            server,
        }
    }

    /// Stops the server.
    pub fn stop(&mut self) {
        self.server.stop();
    }

    /// Starts the server again on the same port and state file.
    pub fn restart(&mut self) {
        self.server.restart();
    }

    /// A `source` for `lock_name` on this server, with short retry delays.
    pub fn source(&self, lock_name: &str) -> Value {
        json!({
            "locker_uri": self.url,
            "lock_name": lock_name,
            "retry_delay": "50ms",
            "max_retry_delay": "200ms",
        })
    }

    /// The lock as the server sees it (read with the library's client).
    pub fn lock_state(&self, source: &Value) -> Lock {
        let source = Source::from_json(source).unwrap();
        let name = locker_resource::resolve_lock_name(&source).unwrap();
        LockerClient::new(&source)
            .unwrap()
            .get_lock(&name)
            .unwrap_or_else(|err| {
                panic!(
                    "could not read lock {name:?}: {err}; server log:\n{}",
                    self.server.log()
                )
            })
    }
}

/// Waits until `condition` holds, failing the test with `what` after `limit`.
pub fn wait_until(limit: Duration, what: &str, mut condition: impl FnMut() -> bool) {
    let deadline = Instant::now() + limit;
    while !condition() {
        assert!(Instant::now() < deadline, "{what}: not so after {limit:?}");
        thread::sleep(Duration::from_millis(10));
    }
}

/// A put's input.
pub fn put(source: &Value, params: Value) -> Value {
    json!({"source": source, "params": params})
}

/// Locks as `key` and expects success; returns the output.
pub fn lock(source: &Value, key: &str, locked_by: &str) -> Value {
    run(
        Bin::Out,
        &put(
            source,
            json!({"lock_op": "lock", "key": key, "locked_by": locked_by}),
        ),
        &["/tmp"],
    )
    .json()
}

/// Unlocks as `key` and expects success; returns the output.
pub fn unlock(source: &Value, key: &str, locked_by: &str) -> Value {
    run(
        Bin::Out,
        &put(
            source,
            json!({"lock_op": "unlock", "key": key, "locked_by": locked_by}),
        ),
        &["/tmp"],
    )
    .json()
}

/// The revision in a version.
pub fn revision(output: &Value) -> u64 {
    output["version"]["revision"]
        .as_str()
        .expect("a revision string")
        .parse()
        .unwrap()
}

/// A metadata value by name.
pub fn metadata<'a>(output: &'a Value, name: &str) -> &'a str {
    output["metadata"]
        .as_array()
        .expect("metadata is a list")
        .iter()
        .find(|field| field["name"] == name)
        .unwrap_or_else(|| panic!("no metadata {name:?} in {output}"))["value"]
        .as_str()
        .unwrap_or_else(|| panic!("metadata {name:?} must be a string in {output}"))
}

/// Asserts the output of `in` or `out` follows the protocol: a non-empty version of strings and
/// metadata of string values.
pub fn assert_protocol_output(output: &Value) {
    let version = output["version"].as_object().expect("a version object");
    assert!(
        !version.is_empty(),
        "the version must not be empty: {output}"
    );
    assert!(
        version.values().all(Value::is_string),
        "version values must be strings: {output}"
    );
    for field in output["metadata"].as_array().expect("metadata is a list") {
        assert!(
            field["name"].is_string() && field["value"].is_string(),
            "bad metadata field {field} in {output}"
        );
    }
    assert_eq!(
        output.as_object().unwrap().len(),
        2,
        "only version and metadata: {output}"
    );
}

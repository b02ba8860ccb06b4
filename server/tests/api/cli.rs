//! The command-line client (`locker lock`, `status`, `run`, ...): the real `locker` binary as
//! a client of the real server, checked by what it prints, its exit code, and what the server
//! holds afterwards (read with plain HTTP).

use std::path::Path;
use std::process::{Child, Command, Output, Stdio};
use std::thread::sleep;
use std::time::{Duration, Instant};

use locker_testkit::{Client, Locker, Options, TestCa, workspace_bin};
use serde_json::{Value, json};

use crate::{body, encode};

/// Long enough for anything a test waits for; far below every wait that must not end.
const PATIENCE: Duration = Duration::from_secs(30);

/// The `locker` binary as a client of `server`, with nothing of this environment but PATH
/// (for the commands `run` starts).
fn locker(server: &Locker) -> Command {
    let mut command = Command::new(workspace_bin("locker"));
    command
        .env_clear()
        .env("PATH", std::env::var_os("PATH").unwrap_or_default())
        .env("LOCKER_URL", server.base_url())
        .stdin(Stdio::null());
    command
}

/// Runs the client to its end with the words of `line` as its arguments.
fn client(server: &Locker, line: &str) -> Outcome {
    run_client(locker(server).args(line.split_whitespace()))
}

/// Runs a client command to its end.
fn run_client(command: &mut Command) -> Outcome {
    Outcome::of(command.output().expect("locker runs"))
}

/// `locker run ... -- sh -c SCRIPT`, the words of `line` before the script.
fn run_script(server: &Locker, dir: &Path, line: &str, script: &str) -> Command {
    let mut command = locker(server);
    command
        .current_dir(dir)
        .args(line.split_whitespace())
        .args(["--", "sh", "-c", script]);
    command
}

/// Starts the client in the background, its output piped.
fn spawn(command: &mut Command) -> Child {
    command
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("locker starts")
}

/// How a client run ended.
#[derive(Debug)]
struct Outcome {
    code: Option<i32>,
    stdout: String,
    stderr: String,
}

impl Outcome {
    fn of(output: Output) -> Outcome {
        Outcome {
            code: output.status.code(),
            stdout: String::from_utf8_lossy(&output.stdout).into_owned(),
            stderr: String::from_utf8_lossy(&output.stderr).into_owned(),
        }
    }

    /// Asserts the exit code, and that stderr has `needle` (when the code is not 0) on one
    /// line that starts with `error: `.
    fn expect(&self, code: i32, needle: &str) -> &Self {
        assert_eq!(self.code, Some(code), "exit code; {self:#?}");
        if !needle.is_empty() {
            assert!(
                self.stderr
                    .lines()
                    .any(|l| l.starts_with("error: ") && l.contains(needle)),
                "no 'error: ...{needle}...' line; {self:#?}"
            );
        }
        self
    }
}

/// Waits (at most [`PATIENCE`]) for a background client to end.
fn finish(mut child: Child) -> Outcome {
    let deadline = Instant::now() + PATIENCE;
    while child.try_wait().expect("try_wait").is_none() {
        if Instant::now() > deadline {
            let _ = child.kill();
            let rest = child.wait_with_output().expect("output");
            panic!(
                "locker did not end within {PATIENCE:?}: {:#?}",
                Outcome::of(rest)
            );
        }
        sleep(Duration::from_millis(20));
    }
    Outcome::of(child.wait_with_output().expect("output"))
}

fn send_signal(child: &Child, signal: i32) {
    // SAFETY: kill(2) on a child this test spawned and has not reaped.
    unsafe {
        libc::kill(child.id() as libc::pid_t, signal);
    }
}

/// The lock `name` as `GET /lock/NAME` shows it.
fn lock_state(server: &Locker, name: &str) -> Value {
    let (status, lock) = Client::new().get(&server.url(&format!("/lock/{}", encode(name))));
    assert_eq!(status, 200, "{lock}");
    lock
}

/// Polls the lock until `done` holds for it, or fails after [`PATIENCE`] saying `what`.
fn eventually(server: &Locker, name: &str, what: &str, done: impl Fn(&Value) -> bool) -> Value {
    let deadline = Instant::now() + PATIENCE;
    loop {
        let lock = lock_state(server, name);
        if done(&lock) {
            return lock;
        }
        assert!(Instant::now() < deadline, "{what}: never; last seen {lock}");
        sleep(Duration::from_millis(20));
    }
}

fn requestors(lock: &Value) -> Vec<&str> {
    lock["holders"]
        .as_array()
        .expect("holders")
        .iter()
        .map(|h| h["requestor"].as_str().unwrap())
        .collect()
}

/// Waits (at most [`PATIENCE`]) for a file the command under `locker run` writes.
fn wait_for_file(path: &Path) {
    let deadline = Instant::now() + PATIENCE;
    while !path.exists() {
        assert!(
            Instant::now() < deadline,
            "{} never appeared",
            path.display()
        );
        sleep(Duration::from_millis(20));
    }
}

/// Lock, renew and unlock do what the API does, with the name percent-encoded, the ttl and
/// owner sent, and the server's message printed; refusals exit 3 (held, naming the holder's
/// build) and 4 (no claim to renew).
///
/// Broken on purpose (tried): with the name sent unencoded, `env/prod` reaches the server as
/// two path segments and the lock is refused (exit 1).
#[test]
fn lock_renew_and_unlock_speak_the_api() {
    let server = Locker::start();
    let lock = client(
        &server,
        "lock env/prod --key blue --by alice --ttl 10m --owner pipeline=main --owner job=deploy \
         --owner build=42 --owner build_url=https://ci.example.com/builds/42",
    );
    lock.expect(0, "");
    let acquired = "Lock for 'env/prod' acquired by 'alice' using key 'blue'";
    assert!(lock.stdout.contains(acquired), "{lock:#?}");
    let state = lock_state(&server, "env/prod");
    let holder = &state["holders"][0];
    assert_eq!(holder["requestor"], "alice");
    assert_eq!(
        holder["owner"]["build_url"],
        "https://ci.example.com/builds/42"
    );
    let first_end = holder["expires_at"].as_str().expect("a lease").to_owned();
    let token = format!("token: {}", state["token"]);
    assert!(lock.stdout.contains(&token), "{token} in {lock:#?}");

    client(&server, "lock env/prod --key green").expect(
        3,
        "held by 'main/deploy #42 (https://ci.example.com/builds/42)'",
    );

    sleep(Duration::from_millis(20));
    client(&server, "renew env/prod --key blue --by alice --ttl 20m").expect(0, "");
    let renewed = lock_state(&server, "env/prod");
    assert!(
        renewed["holders"][0]["expires_at"].as_str().unwrap() > first_end.as_str(),
        "the renewal moved the lease end: {renewed}"
    );
    client(&server, "renew env/prod --key blue --by bob --ttl 1m")
        .expect(4, "'bob' holds no claim");

    let unlock = client(&server, "unlock env/prod --key blue --by alice");
    unlock.expect(0, "");
    assert!(unlock.stdout.contains("released by 'alice'"), "{unlock:#?}");
    assert_eq!(lock_state(&server, "env/prod")["key"], "");
}

/// `status` prints a table a person reads (state, key, token, holder, build, lease, queue)
/// and, with `--json`, the server's JSON as it is.
///
/// Broken on purpose (tried): with the build column left empty, the table test fails.
#[test]
fn status_shows_holders_with_their_builds_and_json_for_scripts() {
    let server = Locker::start();
    let http = Client::new();
    let owner =
        json!({"pipeline": "main", "job": "deploy", "build": "7", "build_url": "https://ci/b/7"});
    let taken = json!({"key": "blue", "locked_by": "deployer", "ttl": "1h", "owner": owner});
    let (status, answer) = http.put(&server.url("/lock/staging"), &taken.to_string());
    assert_eq!(status, 200, "{answer}");
    let free = server.url("/lock/free-one");
    assert_eq!(http.put(&free, &body("k", "r")).0, 200);
    assert_eq!(http.delete(&free, &body("k", "r")).0, 200);

    let status = client(&server, "status");
    status.expect(0, "");
    let lines: Vec<&str> = status.stdout.lines().collect();
    assert_eq!(lines.len(), 3, "a header and a row per lock: {status:#?}");
    let columns = "NAME STATE KEY TOKEN HOLDER BUILD SINCE LEASE ENDS QUEUE";
    assert_eq!(
        lines[0].split_whitespace().collect::<Vec<_>>().join(" "),
        columns
    );
    let row = |name: &str| {
        *lines
            .iter()
            .find(|l| l.starts_with(name))
            .unwrap_or_else(|| panic!("no row for {name}: {status:#?}"))
    };
    let staging = row("staging");
    let token = lock_state(&server, "staging")["token"].to_string();
    let cells = [
        "held",
        "blue",
        &token,
        "deployer",
        "main/deploy #7 https://ci/b/7",
        "ago",
        "in 59m",
    ];
    for cell in cells {
        assert!(staging.contains(cell), "{cell:?} in {staging:?}");
    }
    assert!(row("free-one").contains("free"), "{status:#?}");

    let json = client(&server, "status --json");
    json.expect(0, "");
    let printed: Value = serde_json::from_str(&json.stdout).expect("status --json prints JSON");
    assert_eq!(printed, http.get(&server.url("/locks")).1);

    let one = client(&server, "status staging --json");
    let printed: Value = serde_json::from_str(&one.stdout).expect("JSON");
    assert_eq!(printed, lock_state(&server, "staging"));
    let one = client(&server, "status staging");
    one.expect(0, "");
    assert!(
        one.stdout.lines().nth(1).unwrap().starts_with("staging"),
        "{one:#?}"
    );
}

/// `force-release` frees a held lock with its reason (and refuses without one, or with the
/// API's credentials where `ADMIN_USER` is set), and `history` shows what happened, newest
/// first, with that reason.
#[test]
fn force_release_and_history_against_the_server() {
    let server = Locker::start();
    let http = Client::new();
    assert_eq!(
        http.put(&server.url("/lock/env"), &body("blue", "job-1")).0,
        200
    );
    let released = run_client(locker(&server).args([
        "force-release",
        "env",
        "--reason",
        "stuck since Friday",
        "--by",
        "alice",
    ]));
    released.expect(0, "");
    assert!(
        released.stdout.contains("force-released by 'alice'"),
        "{released:#?}"
    );
    assert_eq!(lock_state(&server, "env")["key"], "", "the lock is free");
    let no_reason = client(&server, "force-release env");
    no_reason.expect(2, "");
    assert!(no_reason.stderr.contains("--reason"), "{no_reason:#?}");

    let history = client(&server, "history env");
    history.expect(0, "");
    let lines: Vec<&str> = history.stdout.lines().collect();
    assert!(
        lines[0].contains("ID") && lines[0].contains("OP"),
        "{history:#?}"
    );
    assert!(
        lines[1].contains("force-release") && lines[1].contains("stuck since Friday"),
        "newest first, with the reason: {history:#?}"
    );
    assert!(
        lines[2].contains("lock") && lines[2].contains("job-1"),
        "{history:#?}"
    );

    let guarded = Locker::start_with(
        Options::default()
            .env("AUTH_USER", "ci")
            .env("AUTH_PASS", "ci-pass")
            .env("ADMIN_USER", "ops")
            .env("ADMIN_PASS", "ops-pass"),
    );
    let as_ci = run_client(
        locker(&guarded)
            .env("LOCKER_USERNAME", "ci")
            .env("LOCKER_PASSWORD", "ci-pass")
            .args(["force-release", "env", "--reason", "x"]),
    );
    as_ci.expect(5, "");
}

/// `lock --wait` queues with one request id, says where it stands, and is granted the moment
/// the holder unlocks; a wait that runs out, or a SIGTERM, gives the place back.
///
/// Broken on purpose (tried): with a fresh request id on every poll, the waiter's first
/// place outlives its first (short) poll, so the queue shows two places for it.
#[test]
fn lock_wait_queues_and_is_granted_when_the_holder_unlocks() {
    let server = Locker::start();
    let http = Client::new();
    let url = server.url("/lock/env");
    assert_eq!(http.put(&url, &body("blue", "holder")).0, 200);

    let waiter =
        spawn(locker(&server).args("lock env --key green --by waiter --wait 60s".split(' ')));
    eventually(&server, "env", "the waiter queues", |l| {
        l["queue"][0]["requestor"] == "waiter"
    });
    // Past its first poll (a second), it polls with its one id and keeps its one place.
    sleep(Duration::from_millis(1500));
    let queue = lock_state(&server, "env")["queue"].clone();
    assert_eq!(
        queue.as_array().map(Vec::len),
        Some(1),
        "one place: {queue}"
    );

    assert_eq!(http.delete(&url, &body("blue", "holder")).0, 200);
    let waited = finish(waiter);
    waited.expect(0, "");
    let told = "waiting for lock 'env': position 1 of 1";
    assert!(waited.stderr.contains(told), "{waited:#?}");
    let lock = lock_state(&server, "env");
    assert_eq!(
        (lock["key"].as_str(), requestors(&lock)),
        (Some("green"), vec!["waiter"])
    );

    let gave_up = client(&server, "lock env --key red --wait 2s");
    gave_up.expect(3, "gave up waiting for lock 'env' after 2s");
    assert!(gave_up.stderr.contains("held by 'waiter'"), "{gave_up:#?}");
    let lock = lock_state(&server, "env");
    assert_eq!(lock["queue"], json!([]), "the place was given back");

    let interrupted =
        spawn(locker(&server).args("lock env --key red --by impatient --wait 60s".split(' ')));
    eventually(&server, "env", "it queues", |l| {
        l["queue"][0]["requestor"] == "impatient"
    });
    send_signal(&interrupted, libc::SIGTERM);
    finish(interrupted).expect(128 + libc::SIGTERM, "interrupted");
    let lock = lock_state(&server, "env");
    assert_eq!(lock["queue"], json!([]), "SIGTERM gave the place back");
    assert_eq!(requestors(&lock), vec!["waiter"]);
}

/// Without an answer from the server, or with the wrong credentials, the client says which
/// URL or which variables, on one line, with their exit codes; a bad duration or URL is a
/// usage error.
///
/// Broken on purpose (tried): with 401 mapped like any other refusal, the message names no
/// variable and the exit code is 1.
#[test]
fn unreachable_servers_and_refused_credentials_are_named() {
    let server = Locker::start_with(
        Options::default()
            .env("AUTH_USER", "ci")
            .env("AUTH_PASS", "pw"),
    );
    client(&server, "status").expect(5, "set LOCKER_USERNAME and LOCKER_PASSWORD");
    let as_user = |password: &str, line: &str| {
        run_client(
            locker(&server)
                .args(line.split_whitespace())
                .env("LOCKER_USERNAME", "ci")
                .env("LOCKER_PASSWORD", password),
        )
    };
    as_user("nope", "status").expect(
        5,
        "refused the credentials in LOCKER_USERNAME and LOCKER_PASSWORD",
    );
    as_user("pw", "lock env --key k").expect(0, "");

    let port = locker_testkit::process::free_port().unwrap();
    let nowhere = format!("http://127.0.0.1:{port}");
    client(&server, &format!("status --server {nowhere}"))
        .expect(6, &format!("cannot reach the locker server at {nowhere}"));
    client(&server, "status --server ftp://x").expect(2, "must start with http://");
    let bad = client(&server, "lock env --key k --ttl soon");
    assert_eq!(bad.code, Some(2), "{bad:#?}");
    assert!(bad.stderr.contains("like 90s"), "{bad:#?}");
}

/// Over HTTPS the client trusts a private CA given with `--ca-cert` (or `LOCKER_CA_CERT`), and
/// without it says that is what is missing.
///
/// Broken on purpose (tried): with the CA file read but not used, every call fails TLS.
#[test]
fn a_private_ca_is_trusted_with_ca_cert() {
    let dir = tempfile::tempdir().unwrap();
    let ca = TestCa::new();
    let (cert, key) = ca.write_server_files(dir.path());
    let ca_file = dir.path().join("ca.pem");
    std::fs::write(&ca_file, &ca.ca_pem).unwrap();
    let server = Locker::start_with(
        Options::default()
            .env("SSL_CERT", &cert)
            .env("SSL_KEY", &key),
    );
    assert!(server.base_url().starts_with("https://"));
    client(&server, "status").expect(6, "--ca-cert");
    run_client(
        locker(&server)
            .arg("status")
            .env("LOCKER_CA_CERT", &ca_file),
    )
    .expect(0, "");
    run_client(locker(&server).arg("status").arg("--ca-cert").arg(&cert)).expect(6, "TLS");
    client(&server, "status --ca-cert /nonexistent/ca.pem").expect(2, "cannot read --ca-cert");
}

/// `run` holds the lock while a command runs that outlives its lease: the renewals move the
/// lease end, the lock is held at every look, and it is released after.
///
/// Broken on purpose (tried): with the renewer never sending a renewal, the lease lapses
/// after 3 s and a look while the command still runs sees the lock free.
#[test]
fn run_renews_the_lease_while_the_command_runs() {
    let server = Locker::start();
    let dir = tempfile::tempdir().unwrap();
    let run = spawn(&mut run_script(
        &server,
        dir.path(),
        "run env --key k --by runner --ttl 3s",
        "touch started; sleep 5; touch done",
    ));
    wait_for_file(&dir.path().join("started"));
    let mut lease_ends = Vec::new();
    loop {
        let lock = lock_state(&server, "env");
        // The command had not ended when this was read: the lock must be held.
        if dir.path().join("done").exists() {
            break;
        }
        assert_eq!(
            requestors(&lock),
            ["runner"],
            "held while the command runs: {lock}"
        );
        let end = lock["holders"][0]["expires_at"]
            .as_str()
            .unwrap()
            .to_owned();
        if lease_ends.last() != Some(&end) {
            lease_ends.push(end);
        }
        sleep(Duration::from_millis(100));
    }
    let ran = finish(run);
    ran.expect(0, "");
    assert!(
        lease_ends.len() >= 3,
        "the lease end moved with each renewal: {lease_ends:?}"
    );
    let lock = lock_state(&server, "env");
    assert!(requestors(&lock).is_empty(), "released after: {lock}");
    assert!(
        ran.stderr.contains("locker run: holding lock 'env'"),
        "{ran:#?}"
    );
}

/// The command's status is `run`'s; a command that cannot start is 127; the lock is released
/// either way; a lock held by another key runs nothing.
///
/// Broken on purpose (tried): with `run` exiting 1 for every failing command, the status test
/// sees 1, not 3.
#[test]
fn run_exits_with_the_commands_status() {
    let server = Locker::start();
    let dir = tempfile::tempdir().unwrap();
    run_client(&mut run_script(
        &server,
        dir.path(),
        "run env --key k --ttl 1m",
        "exit 3",
    ))
    .expect(3, "");
    assert!(
        requestors(&lock_state(&server, "env")).is_empty(),
        "released"
    );
    client(&server, "run env --key k --ttl 1m -- no-such-command-here")
        .expect(127, "cannot run no-such-command-here");
    assert!(
        requestors(&lock_state(&server, "env")).is_empty(),
        "released"
    );

    let http = Client::new();
    assert_eq!(
        http.put(&server.url("/lock/env"), &body("other", "o")).0,
        200
    );
    run_client(&mut run_script(
        &server,
        dir.path(),
        "run env --key k --ttl 1m",
        "touch ran",
    ))
    .expect(3, "held by 'o'");
    assert!(!dir.path().join("ran").exists(), "the command did not run");
}

/// SIGTERM to `run` reaches the command, which stops as it likes; then the lock is released
/// and `run` exits with the command's status (128 + the signal when it ended the command).
///
/// Broken on purpose (tried): with the signal not passed on, the command runs on and `run`
/// does not end within the test's patience.
#[test]
fn run_passes_sigterm_on_and_releases_the_lock() {
    let server = Locker::start();
    let dir = tempfile::tempdir().unwrap();
    let run = spawn(&mut run_script(
        &server,
        dir.path(),
        "run env --key k --by runner --ttl 1m",
        "trap 'kill $child; echo TERM > got; exit 42' TERM; sleep 60 & child=$!; touch started; wait",
    ));
    wait_for_file(&dir.path().join("started"));
    assert_eq!(requestors(&lock_state(&server, "env")), ["runner"]);
    send_signal(&run, libc::SIGTERM);
    finish(run).expect(42, "");
    let got = std::fs::read_to_string(dir.path().join("got")).expect("the command heard SIGTERM");
    assert_eq!(got.trim(), "TERM");
    assert!(
        requestors(&lock_state(&server, "env")).is_empty(),
        "released"
    );

    let run = spawn(&mut run_script(
        &server,
        dir.path(),
        "run env --key k --ttl 1m",
        "touch again; exec sleep 60",
    ));
    wait_for_file(&dir.path().join("again"));
    send_signal(&run, libc::SIGTERM);
    finish(run).expect(128 + libc::SIGTERM, "");
    assert!(
        requestors(&lock_state(&server, "env")).is_empty(),
        "released"
    );
}

/// When the lease is lost while the command runs (here its claim is released from outside,
/// so the next renewal is answered 409), `run` stops the command and exits 7 saying why.
///
/// Broken on purpose (tried): with a 409 on renewal treated as a passing failure, `run`
/// notices only when the lease has run out by time, and names that instead of the server's
/// reason.
#[test]
fn run_stops_the_command_when_the_lease_is_lost() {
    let server = Locker::start();
    let dir = tempfile::tempdir().unwrap();
    let run = spawn(&mut run_script(
        &server,
        dir.path(),
        "run env --key k --by runner --ttl 2s",
        "trap 'kill $child; echo TERM > got; exit 0' TERM; sleep 60 & child=$!; touch started; wait",
    ));
    wait_for_file(&dir.path().join("started"));
    let (status, answer) = Client::new().delete(&server.url("/lock/env"), &body("k", "runner"));
    assert_eq!(status, 200, "{answer}");
    let lost = finish(run);
    lost.expect(7, "lost lock 'env' while the command ran");
    let reason = "while the command ran: 'runner' holds no claim on lock 'env'";
    assert!(
        lost.stderr.contains(reason),
        "the server's reason: {lost:#?}"
    );
    let got = std::fs::read_to_string(dir.path().join("got")).expect("the command was stopped");
    assert_eq!(got.trim(), "TERM");
}

//! Command line and configuration errors.

use std::process::Command;

use locker_testkit::{Client, Locker, Options, workspace_bin};

fn locker(args: &[&str]) -> std::process::Output {
    Command::new(workspace_bin("locker"))
        .args(args)
        .env_clear()
        .output()
        .unwrap()
}

fn refuses(options: Options, expected: &str) {
    let dir = std::sync::Arc::new(tempfile::tempdir().unwrap());
    let path = dir.path().join("locker.yml");
    let failure = Locker::start_on(dir, path, options)
        .err()
        .expect("must not start");
    assert_eq!(
        failure.status.and_then(|s| s.code()),
        Some(1),
        "{}",
        failure.log
    );
    let last = failure.log.lines().last().unwrap_or_default();
    assert!(
        last.starts_with("error: ") && last.contains(expected),
        "{expected:?} not in {last:?}"
    );
    assert!(!failure.log.contains("panicked"), "{}", failure.log);
}

#[test]
fn help_lists_every_variable_and_version_prints() {
    let out = locker(&["--help"]);
    assert!(out.status.success());
    let help = String::from_utf8(out.stdout).unwrap();
    for var in [
        "LOCKER_CONFIG",
        "PORT",
        "AUTH_USER",
        "AUTH_PASS",
        "SSL_CERT",
        "SSL_KEY",
        "LOCKER_METRICS_PUBLIC",
    ] {
        assert!(help.contains(var), "{var} missing from --help");
    }
    let out = locker(&["--version"]);
    assert_eq!(
        String::from_utf8(out.stdout).unwrap(),
        format!("locker {}\n", env!("CARGO_PKG_VERSION"))
    );
    let out = locker(&["--bogus"]);
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("--bogus"));
}

#[test]
fn bad_configuration_stops_start_up_with_one_clear_line() {
    refuses(Options::default().env("AUTH_USER", "u"), "AUTH_PASS is not");
    refuses(Options::default().env("AUTH_PASS", "p"), "AUTH_USER is not");
    refuses(
        Options::default().env("SSL_CERT", "/nonexistent/cert.pem"),
        "SSL_KEY is not",
    );
    refuses(
        Options::default()
            .env("SSL_CERT", "/nonexistent/cert.pem")
            .env("SSL_KEY", "/nonexistent/key.pem"),
        "cannot read SSL_CERT=/nonexistent/cert.pem",
    );
    let dir = tempfile::tempdir().unwrap();
    let junk = dir.path().join("junk.pem");
    std::fs::write(&junk, "not a certificate").unwrap();
    refuses(
        Options::default()
            .env("SSL_CERT", &junk)
            .env("SSL_KEY", &junk),
        "holds no PEM certificate",
    );
    let mut options = Options::default();
    options.env.push(("PORT".into(), "70000".into()));
    refuses(options, "PORT=\"70000\" is not a port number");
    refuses(
        Options::default().env("LOCKER_METRICS_PUBLIC", "yes"),
        "LOCKER_METRICS_PUBLIC=\"yes\" is not true or false",
    );
}

#[test]
fn default_state_file_is_in_the_working_directory_and_said_so() {
    if crate::skipped_on_postgres("it is about the state file") {
        return;
    }
    let server = Locker::start_with(Options::default().env("LOCKER_CONFIG", ""));
    assert!(
        server
            .log()
            .contains("state file locker-data.yml (the default"),
        "{}",
        server.log()
    );
    assert!(server.dir().path().join("locker-data.yml").exists());
}

#[test]
fn the_server_answers_on_ipv6_and_ipv4() {
    let server = Locker::start();
    let (status, _) = Client::new().get(&server.url("/healthz"));
    assert_eq!(status, 200, "IPv4 (127.0.0.1)");
    if std::net::TcpListener::bind("[::1]:0").is_err() {
        eprintln!("SKIPPED the IPv6 half of the_server_answers_on_ipv6_and_ipv4: no ::1 here");
        return;
    }
    let url = format!("http://[::1]:{}/healthz", server.port());
    let (status, body) = Client::new().get(&url);
    assert_eq!(status, 200, "IPv6 (::1): {body}");
    assert!(
        server.log().contains("listening on http://[::]:"),
        "the log names the dual-stack address:\n{}",
        server.log()
    );
}

//! Running the workspace's binaries as processes, shared by the integration tests and the
//! benchmark: finding (and building) the binaries, picking a free port, the command that starts
//! `locker`, and stopping a process the way an operator would (SIGTERM, then SIGKILL if it hangs).
//!
//! How a caller watches the process start (a log pipe, or polling `/healthz`) stays with it.

use std::ffi::OsStr;
use std::fmt;
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

/// When [`find_bins`] runs `cargo build` before looking for the binaries.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Build {
    /// Never: the binaries are used as they are.
    Never,
    /// Only when one of them is missing (a package's tests run alone).
    IfMissing,
    /// Every time, so a stale binary is never used (cargo makes it quick when nothing changed).
    Always,
}

/// Why the workspace's binaries are not there to run.
#[derive(Debug)]
pub enum BinsError {
    /// `cargo` could not be started.
    Cargo(std::io::Error),
    /// `cargo build` ran and failed; it printed why.
    BuildFailed(ExitStatus),
    /// A binary is not in the directory.
    Missing(PathBuf),
}

impl fmt::Display for BinsError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            BinsError::Cargo(e) => write!(f, "cargo could not be run to build {BUILT}: {e}"),
            BinsError::BuildFailed(status) => {
                write!(
                    f,
                    "cargo build of {BUILT} failed ({status}); its output says why"
                )
            }
            BinsError::Missing(path) => write!(f, "{} was not built", path.display()),
        }
    }
}

impl std::error::Error for BinsError {}

/// The packages with the binaries the tests and the benchmark run (`locker`; `check`, `in`, `out`).
const BUILT: &str = "the locker-server and locker-resource binaries";

/// Makes sure the workspace's binaries `names` are in `dir` (a `target/<profile>` directory),
/// running `cargo build` for them first as `build` says, in the profile this crate was built in.
pub fn find_bins(dir: &Path, names: &[&str], build: Build) -> Result<(), BinsError> {
    let missing = || {
        names
            .iter()
            .map(|name| dir.join(name))
            .find(|p| !p.exists())
    };
    if build == Build::Always || (build == Build::IfMissing && missing().is_some()) {
        cargo_build()?;
    }
    match missing() {
        Some(path) => Err(BinsError::Missing(path)),
        None => Ok(()),
    }
}

fn cargo_build() -> Result<(), BinsError> {
    // The cargo that runs us, if any; else the one that built this crate.
    let cargo = std::env::var_os("CARGO");
    let mut cmd = Command::new(cargo.as_deref().unwrap_or(OsStr::new(env!("CARGO"))));
    // `cargo run` and `cargo test` describe the caller's own package in the environment; a build
    // script that watches one of those variables (ring's watches CARGO_MANIFEST_DIR) would
    // otherwise rebuild on every run, and again on the next plain `cargo build`.
    for (name, _) in std::env::vars_os() {
        let name = name.to_string_lossy();
        if name.starts_with("CARGO_PKG_")
            || matches!(
                &*name,
                "CARGO_MANIFEST_DIR"
                    | "CARGO_MANIFEST_PATH"
                    | "CARGO_CRATE_NAME"
                    | "CARGO_BIN_NAME"
                    | "CARGO_PRIMARY_PACKAGE"
            )
        {
            cmd.env_remove(&*name);
        }
    }
    cmd.args([
        "build",
        "-p",
        "locker-server",
        "-p",
        "locker-resource",
        "--bins",
    ]);
    if !cfg!(debug_assertions) {
        cmd.arg("--release");
    }
    let status = cmd.status().map_err(BinsError::Cargo)?;
    if !status.success() {
        return Err(BinsError::BuildFailed(status));
    }
    Ok(())
}

/// Asks the kernel for a free loopback port.
pub fn free_port() -> std::io::Result<u16> {
    Ok(TcpListener::bind("127.0.0.1:0")?.local_addr()?.port())
}

/// The command that starts the `locker` binary at `bin` on `port` with the state file
/// `state_file`, in `dir`: nothing else of this process's environment, stdin and stdout
/// null (it logs to stderr, which the caller directs).
pub fn locker_command(bin: &Path, port: u16, state_file: &Path, dir: &Path) -> Command {
    let mut cmd = Command::new(bin);
    cmd.env_clear()
        .env("PORT", port.to_string())
        .env("LOCKER_CONFIG", state_file)
        .current_dir(dir)
        .stdin(Stdio::null())
        .stdout(Stdio::null());
    cmd
}

/// Sends SIGTERM to `child` and waits for it to exit; kills it if it is still running after
/// `timeout`. Returns how it exited (at once, if it already had).
pub fn terminate(child: &mut Child, timeout: Duration) -> std::io::Result<ExitStatus> {
    if let Some(status) = child.try_wait()? {
        return Ok(status);
    }
    // SAFETY: kill(2) with a pid we spawned and still own (not yet reaped).
    unsafe {
        libc::kill(child.id() as libc::pid_t, libc::SIGTERM);
    }
    let deadline = Instant::now() + timeout;
    while Instant::now() < deadline {
        if let Some(status) = child.try_wait()? {
            return Ok(status);
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    child.kill()?;
    child.wait()
}

#[cfg(test)]
mod tests {
    use std::io::{BufRead, BufReader};
    use std::os::unix::process::ExitStatusExt;

    use super::*;

    #[test]
    fn missing_binary_is_named_when_not_built() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("locker"), "").unwrap();
        assert!(find_bins(dir.path(), &["locker"], Build::Never).is_ok());
        match find_bins(dir.path(), &["locker", "check"], Build::Never) {
            Err(BinsError::Missing(path)) => assert_eq!(path, dir.path().join("check")),
            other => panic!("expected check to be missing, got {other:?}"),
        }
    }

    #[test]
    fn free_port_can_be_bound() {
        let port = free_port().unwrap();
        assert_ne!(port, 0);
        TcpListener::bind(("127.0.0.1", port)).expect("the free port is free");
    }

    #[test]
    fn locker_command_sets_only_port_and_state_file() {
        let cmd = locker_command(
            Path::new("/bin/locker"),
            4711,
            Path::new("/s/locker.yml"),
            Path::new("/s"),
        );
        let envs: Vec<_> = cmd.get_envs().collect();
        assert_eq!(
            envs,
            [
                (
                    OsStr::new("LOCKER_CONFIG"),
                    Some(OsStr::new("/s/locker.yml"))
                ),
                (OsStr::new("PORT"), Some(OsStr::new("4711"))),
            ]
        );
        assert_eq!(cmd.get_current_dir(), Some(Path::new("/s")));
    }

    #[test]
    fn terminate_sends_sigterm() {
        let mut child = Command::new("sleep").arg("30").spawn().unwrap();
        let status = terminate(&mut child, Duration::from_secs(10)).unwrap();
        assert_eq!(status.signal(), Some(libc::SIGTERM), "{status}");
    }

    #[test]
    fn terminate_kills_a_process_that_ignores_sigterm() {
        let mut child = Command::new("sh")
            .args(["-c", "trap '' TERM; echo ready; exec sleep 30"])
            .stdout(Stdio::piped())
            .spawn()
            .unwrap();
        let mut line = String::new();
        BufReader::new(child.stdout.take().unwrap())
            .read_line(&mut line)
            .unwrap();
        assert_eq!(line, "ready\n");
        let began = Instant::now();
        let status = terminate(&mut child, Duration::from_millis(200)).unwrap();
        assert_eq!(status.signal(), Some(libc::SIGKILL), "{status}");
        assert!(began.elapsed() >= Duration::from_millis(200));
    }
}

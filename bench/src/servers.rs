//! The servers under test, each started on loopback in its own temporary directory and stopped
//! when its handle is dropped: the workspace's `locker` binary and Debian's `etcd`.
//!
//! Server logs go to a file in that directory rather than a pipe, so a server is never slowed
//! by the benchmark reading its log (and never blocks on a full pipe).

use std::fs::{self, File};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use locker_testkit::process::{BinsError, Build, find_bins, free_port, locker_command, terminate};

use crate::http::{Connection, request};

/// How long a server may take to start.
const START_TIMEOUT: Duration = Duration::from_secs(60);

/// How long a server may take to exit after SIGTERM before it is killed.
const STOP_TIMEOUT: Duration = Duration::from_secs(15);

/// Where the workspace's binaries (`locker`, `check`) are: next to this one.
///
/// Under `cargo run` they are built first (same profile, same target directory), so the
/// benchmark never measures a stale server. `LOCKER_BENCH_BINS=DIR` measures the binaries in
/// DIR instead, as they are (to compare another build, such as the previous commit's).
pub fn workspace_bins() -> anyhow::Result<PathBuf> {
    let (dir, build) = match std::env::var_os("LOCKER_BENCH_BINS") {
        Some(dir) => (PathBuf::from(dir), Build::Never),
        None => {
            let exe = std::env::current_exe().context("finding the benchmark's own path")?;
            let dir = exe
                .parent()
                .context("the benchmark binary has no directory")?
                .to_owned();
            // `cargo run` sets CARGO; run directly, the binaries are taken as they are.
            match std::env::var_os("CARGO") {
                Some(_) => (dir, Build::Always),
                None => (dir, Build::Never),
            }
        }
    };
    match find_bins(&dir, &["locker", "check"], build) {
        Ok(()) => Ok(dir),
        Err(BinsError::Missing(path)) => bail!(
            "{} is missing; run the benchmark with `cargo run --release -p locker-bench`, or build the workspace's binaries first (cargo build --release --bins)",
            path.display()
        ),
        Err(e) => Err(e.into()),
    }
}

/// A running `locker` server.
pub struct Locker {
    child: Child,
    pub addr: SocketAddr,
    /// How long from spawning the process until it answered its first request.
    pub started_in: Duration,
}

/// How to start a `locker`.
pub struct LockerOptions<'a> {
    pub bin_dir: &'a Path,
    /// The directory holding the state file and the log.
    pub dir: &'a Path,
    /// A state file to start from (copied into `dir`); none starts empty.
    pub initial_state: Option<&'a Path>,
    /// `RUST_LOG`: `info` logs a line per request, `warn` nothing per request.
    pub log_level: &'a str,
    /// A PostgreSQL URL to keep the locks in instead of a state file.
    pub database: Option<&'a str>,
}

impl Locker {
    /// Starts the server and waits until `GET /healthz` answers 200.
    pub async fn start(options: LockerOptions<'_>) -> anyhow::Result<Locker> {
        let state = options.dir.join("locker.yml");
        if let Some(initial) = options.initial_state {
            fs::copy(initial, &state)
                .with_context(|| format!("copying {} into place", initial.display()))?;
        }
        let log_path = options.dir.join("locker.log");
        let log = File::create(&log_path)?;
        let port = free_port()?;
        let began = Instant::now();
        let mut command =
            locker_command(&options.bin_dir.join("locker"), port, &state, options.dir);
        command.env("RUST_LOG", options.log_level).stderr(log);
        if let Some(url) = options.database {
            command
                .env_remove("LOCKER_CONFIG")
                .env("LOCKER_DATABASE_URL", url);
        }
        let child = command.spawn().context("starting locker")?;
        let mut server = Locker {
            child,
            addr: SocketAddr::from(([127, 0, 0, 1], port)),
            started_in: Duration::ZERO,
        };
        wait_until_healthy(&mut server.child, server.addr, "/healthz", &log_path).await?;
        server.started_in = began.elapsed();
        Ok(server)
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// The CPU time (user + system) the server has used so far, at clock-tick resolution.
    pub fn cpu_time(&self) -> anyhow::Result<Duration> {
        let stat = fs::read_to_string(format!("/proc/{}/stat", self.pid()))?;
        // Fields after the parenthesised command name; utime and stime are the 12th and 13th.
        let fields: Vec<&str> = stat
            .rsplit_once(')')
            .context("unexpected /proc/PID/stat")?
            .1
            .split_whitespace()
            .collect();
        let ticks: u64 = fields[11].parse::<u64>()? + fields[12].parse::<u64>()?;
        // SAFETY: sysconf has no preconditions.
        let per_second = unsafe { libc::sysconf(libc::_SC_CLK_TCK) }.max(1) as u64;
        Ok(Duration::from_nanos(ticks * 1_000_000_000 / per_second))
    }

    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// Kills the server with SIGKILL, as a crash would end it, and waits for it to be gone.
    pub fn kill(mut self) -> anyhow::Result<()> {
        self.child.kill()?;
        self.child.wait()?;
        Ok(())
    }

    /// Stops the server with SIGTERM (it drains and exits 0), killing it if it hangs.
    pub fn stop(mut self) -> anyhow::Result<()> {
        terminate(&mut self.child, STOP_TIMEOUT)?;
        Ok(())
    }
}

impl Drop for Locker {
    fn drop(&mut self) {
        let _ = terminate(&mut self.child, STOP_TIMEOUT);
    }
}

/// A running single-node etcd with its default durability (WAL fsync per commit).
pub struct Etcd {
    child: Child,
    pub addr: SocketAddr,
}

impl Etcd {
    /// Starts `etcd` from `PATH` with its data directory in `dir`.
    pub async fn start(dir: &Path) -> anyhow::Result<Etcd> {
        let client = free_port()?;
        let peer = free_port()?;
        let client_url = format!("http://127.0.0.1:{client}");
        let peer_url = format!("http://127.0.0.1:{peer}");
        let log_path = dir.join("etcd.log");
        let log = File::create(&log_path)?;
        let child = Command::new("etcd")
            .args(["--name", "bench", "--data-dir"])
            .arg(dir.join("data"))
            .args(["--listen-client-urls", &client_url])
            .args(["--advertise-client-urls", &client_url])
            .args(["--listen-peer-urls", &peer_url])
            .args(["--initial-advertise-peer-urls", &peer_url])
            .args(["--initial-cluster", &format!("bench={peer_url}")])
            .stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log)
            .spawn()
            .context("starting etcd (Debian: apt-get install etcd-server)")?;
        let mut server = Etcd {
            child,
            addr: SocketAddr::from(([127, 0, 0, 1], client)),
        };
        wait_until_healthy(&mut server.child, server.addr, "/health", &log_path).await?;
        Ok(server)
    }
}

impl Drop for Etcd {
    fn drop(&mut self) {
        let _ = terminate(&mut self.child, STOP_TIMEOUT);
    }
}

/// Whether `etcd` can be run.
pub fn etcd_version() -> Option<String> {
    let out = Command::new("etcd").arg("--version").output().ok()?;
    let text = String::from_utf8_lossy(&out.stdout);
    text.lines()
        .next()
        .map(|l| l.trim_start_matches("etcd Version:").trim().to_string())
}

async fn wait_until_healthy(
    child: &mut Child,
    addr: SocketAddr,
    path: &str,
    log: &Path,
) -> anyhow::Result<()> {
    let deadline = Instant::now() + START_TIMEOUT;
    let probe = request("GET", path, None, false);
    loop {
        if let Ok(mut conn) = Connection::connect(addr).await
            && let Ok(200) = conn.send(&probe).await
        {
            return Ok(());
        }
        if let Some(status) = child.try_wait()? {
            bail!(
                "the server exited ({status}) instead of starting; its log:\n{}",
                fs::read_to_string(log).unwrap_or_default()
            );
        }
        if Instant::now() > deadline {
            bail!(
                "the server did not answer {path} within {START_TIMEOUT:?}; its log:\n{}",
                fs::read_to_string(log).unwrap_or_default()
            );
        }
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
}

/// The peak resident set size of a process (`VmHWM`), in bytes.
pub fn peak_rss(pid: u32) -> anyhow::Result<u64> {
    status_bytes(pid, "VmHWM")
}

/// The resident set size of a process now (`VmRSS`), in bytes.
pub fn rss(pid: u32) -> anyhow::Result<u64> {
    status_bytes(pid, "VmRSS")
}

/// A size field (in kB) of `/proc/PID/status`, in bytes.
fn status_bytes(pid: u32, field: &str) -> anyhow::Result<u64> {
    let status = fs::read_to_string(format!("/proc/{pid}/status"))?;
    let line = status
        .lines()
        .find_map(|l| l.strip_prefix(field)?.strip_prefix(':'))
        .with_context(|| format!("no {field} in /proc/{pid}/status"))?;
    let kib: u64 = line.trim().trim_end_matches("kB").trim().parse()?;
    Ok(kib * 1024)
}

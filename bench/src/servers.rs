//! The servers under test, each started on loopback in its own temporary directory and stopped
//! when its handle is dropped: the workspace's `locker` binary and Debian's `etcd`.
//!
//! Server logs go to a file in that directory rather than a pipe, so a server is never slowed
//! by the benchmark reading its log (and never blocks on a full pipe).

use std::fs::{self, File};
use std::net::{SocketAddr, TcpListener};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::thread;
use std::time::{Duration, Instant};

use anyhow::{Context, bail};

use crate::http::{Connection, request};

/// How long a server may take to start.
const START_TIMEOUT: Duration = Duration::from_secs(60);

/// Where the workspace's binaries (`locker`, `check`) are: next to this one.
///
/// Under `cargo run` they are built first (same profile, same target directory), so the
/// benchmark never measures a stale server. `LOCKER_BENCH_BINS=DIR` measures the binaries in
/// DIR instead, as they are (to compare another build, such as the previous commit's).
pub fn workspace_bins() -> anyhow::Result<PathBuf> {
    let exe = std::env::current_exe().context("finding the benchmark's own path")?;
    let given = std::env::var_os("LOCKER_BENCH_BINS").map(PathBuf::from);
    let dir = match &given {
        Some(dir) => dir.clone(),
        None => exe
            .parent()
            .context("the benchmark binary has no directory")?
            .to_owned(),
    };
    if let (None, Some(cargo)) = (&given, std::env::var_os("CARGO")) {
        let mut cmd = Command::new(cargo);
        // `cargo run` describes the benchmark's own package in the environment; a build
        // script that watches one of those variables (ring's watches CARGO_MANIFEST_DIR)
        // would otherwise rebuild on every run, and again on the next plain `cargo build`.
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
        let status = cmd.status().context("running cargo build")?;
        if !status.success() {
            bail!("cargo build of the locker and check binaries failed");
        }
    }
    for bin in ["locker", "check"] {
        if !dir.join(bin).exists() {
            bail!(
                "{} is missing; run the benchmark with `cargo run --release -p locker-bench`, or build the workspace's binaries first (cargo build --release --bins)",
                dir.join(bin).display()
            );
        }
    }
    Ok(dir)
}

/// Asks the kernel for a free loopback port.
pub fn free_port() -> anyhow::Result<u16> {
    Ok(TcpListener::bind("127.0.0.1:0")?.local_addr()?.port())
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
        let child = Command::new(options.bin_dir.join("locker"))
            .env_clear()
            .env("PORT", port.to_string())
            .env("LOCKER_CONFIG", &state)
            .env("RUST_LOG", options.log_level)
            .current_dir(options.dir)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .context("starting locker")?;
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

    /// Stops the server with SIGTERM (it drains and exits 0), killing it if it hangs.
    pub fn stop(mut self) -> anyhow::Result<()> {
        terminate(&mut self.child)
    }
}

impl Drop for Locker {
    fn drop(&mut self) {
        let _ = terminate(&mut self.child);
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
        let _ = terminate(&mut self.child);
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

fn terminate(child: &mut Child) -> anyhow::Result<()> {
    if child.try_wait()?.is_some() {
        return Ok(());
    }
    // SAFETY: kill(2) with a pid we spawned and still own (not yet reaped).
    unsafe {
        libc::kill(child.id() as libc::pid_t, libc::SIGTERM);
    }
    let deadline = Instant::now() + Duration::from_secs(15);
    while Instant::now() < deadline {
        if child.try_wait()?.is_some() {
            return Ok(());
        }
        thread::sleep(Duration::from_millis(10));
    }
    child.kill()?;
    child.wait()?;
    Ok(())
}

/// The peak resident set size of a process (`VmHWM`), in bytes.
pub fn peak_rss(pid: u32) -> anyhow::Result<u64> {
    let status = fs::read_to_string(format!("/proc/{pid}/status"))?;
    let line = status
        .lines()
        .find(|l| l.starts_with("VmHWM:"))
        .context("no VmHWM in /proc/PID/status")?;
    let kib: u64 = line
        .trim_start_matches("VmHWM:")
        .trim()
        .trim_end_matches("kB")
        .trim()
        .parse()?;
    Ok(kib * 1024)
}

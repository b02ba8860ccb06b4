//! Throwaway PostgreSQL clusters for tests: `initdb` in a temporary directory, the server
//! started on a free loopback port as an unprivileged user (`postgres` when the tests run as
//! root, since PostgreSQL refuses to run as root), and stopped when the handle is dropped or
//! the test process ends.
//!
//! Debian's `postgresql` package provides the binaries (found under
//! `/usr/lib/postgresql/*/bin`, or in `LOCKER_TEST_PG_BIN`). [`shared`] is one cluster per test
//! process, in which each server under test gets a database of its own
//! ([`Postgres::create_database`]); a test that stops or kills the database starts its own
//! with [`Postgres::start`].

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Mutex, OnceLock, mpsc};
use std::time::{Duration, Instant};

use crate::process::free_port;

/// The superuser of the test clusters; trust authentication on loopback, so no password.
pub const USER: &str = "locker";

/// How long a cluster may take to accept connections.
const READY_TIMEOUT: Duration = Duration::from_secs(30);

/// A running (or stopped) test cluster.
pub struct Postgres {
    dir: tempfile::TempDir,
    bin: PathBuf,
    port: u16,
    /// Extra `-c name=value` settings given at start.
    settings: Vec<(String, String)>,
    /// The thread that started the server: the server gets SIGQUIT when it ends, so that no
    /// cluster outlives its test process. It owns the process and takes orders.
    keeper: Mutex<Option<mpsc::Sender<Order>>>,
    databases: AtomicU64,
}

enum Order {
    /// Stops the server (fast shutdown, or SIGKILL), then answers.
    Stop { kill: bool, done: mpsc::Sender<()> },
}

/// The cluster shared by the tests of this process.
pub fn shared() -> &'static Postgres {
    static SHARED: OnceLock<Postgres> = OnceLock::new();
    SHARED.get_or_init(Postgres::start)
}

impl Postgres {
    /// Makes and starts a fresh cluster.
    pub fn start() -> Postgres {
        Postgres::start_with(&[])
    }

    /// Makes and starts a fresh cluster that accepts TLS (`ssl=on`) with this certificate
    /// and key (PEM), and plain connections too.
    pub fn start_with_tls(cert_pem: &str, key_pem: &str) -> Postgres {
        Postgres::make(
            &[("ssl", "on")],
            &[("server.crt", cert_pem), ("server.key", key_pem)],
        )
    }

    /// Makes and starts a fresh cluster with extra server settings.
    pub fn start_with(settings: &[(&str, &str)]) -> Postgres {
        Postgres::make(settings, &[])
    }

    /// Makes and starts a fresh cluster whose files are in a new directory in `parent` (for
    /// a benchmark, which must measure the disk it is told to).
    pub fn start_in(parent: &Path) -> Postgres {
        Postgres::make_in(Some(parent), &[], &[])
    }

    fn make(settings: &[(&str, &str)], files: &[(&str, &str)]) -> Postgres {
        Postgres::make_in(None, settings, files)
    }

    /// Makes a cluster (in `parent`, or the system's temporary directory), writes `files` into
    /// its data directory (owned by the server's user, readable by it alone, as PostgreSQL
    /// wants a key), and starts it.
    fn make_in(
        parent: Option<&Path>,
        settings: &[(&str, &str)],
        files: &[(&str, &str)],
    ) -> Postgres {
        let bin = bin_dir();
        let mut builder = tempfile::Builder::new();
        builder.prefix("locker-pg-");
        let dir = match parent {
            Some(parent) => builder.tempdir_in(parent),
            None => builder.tempdir(),
        }
        .expect("tempdir");
        let data = dir.path().join("data");
        std::fs::create_dir(&data).expect("data dir");
        let owner = unprivileged_user();
        if let Some((uid, gid)) = owner {
            chown(dir.path(), uid, gid);
            chown(&data, uid, gid);
        }
        let mut initdb = as_user(Command::new(bin.join("initdb")), owner);
        initdb
            .args(["-D"])
            .arg(&data)
            .args(["-U", USER, "--auth=trust", "-E", "UTF8", "--no-sync"])
            .stdout(Stdio::null());
        let out = initdb.output().expect("run initdb");
        assert!(
            out.status.success(),
            "initdb failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        for (name, content) in files {
            use std::os::unix::fs::PermissionsExt;
            let path = data.join(name);
            std::fs::write(&path, content).expect("write a file of the cluster");
            std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600)).expect("chmod");
            if let Some((uid, gid)) = owner {
                chown(&path, uid, gid);
            }
        }
        let postgres = Postgres {
            dir,
            bin,
            port: free_port().expect("a free port"),
            settings: settings
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
            keeper: Mutex::new(None),
            databases: AtomicU64::new(0),
        };
        postgres.launch();
        postgres
    }

    /// The cluster's directory (its data directory is `data` inside), for files a test
    /// gives the server (certificates).
    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    pub fn port(&self) -> u16 {
        self.port
    }

    /// A URL for `database` as the superuser, without TLS.
    pub fn url(&self, database: &str) -> String {
        format!(
            "postgres://{USER}@127.0.0.1:{}/{database}?sslmode=disable",
            self.port
        )
    }

    /// Creates a fresh, empty database and returns its URL.
    pub fn create_database(&self) -> String {
        let n = self.databases.fetch_add(1, Ordering::Relaxed);
        let name = format!("locker_test_{}_{n}", std::process::id());
        self.psql("postgres", &format!("CREATE DATABASE {name}"));
        self.url(&name)
    }

    /// Runs `sql` in `database` with `psql`; returns what it printed (unaligned, tuples only).
    pub fn psql(&self, database: &str, sql: &str) -> String {
        let out = Command::new(self.bin.join("psql"))
            .args(["-h", "127.0.0.1", "-p", &self.port.to_string(), "-U", USER])
            .args(["-d", database, "-v", "ON_ERROR_STOP=1", "-At", "-c", sql])
            .output()
            .expect("run psql");
        assert!(
            out.status.success(),
            "psql {sql:?} failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    /// Stops the server (fast shutdown: connections are cut, nothing committed is lost).
    pub fn stop(&self) {
        self.order_stop(false);
    }

    /// Kills the server with SIGKILL, as a crash would; a start recovers from its WAL.
    pub fn kill(&self) {
        self.order_stop(true);
    }

    /// Starts the server again (after [`Postgres::stop`] or [`Postgres::kill`]), on the same
    /// port and data.
    pub fn restart(&self) {
        self.order_stop(false);
        self.launch();
    }

    /// Starts a stopped server again.
    pub fn resume(&self) {
        self.launch();
    }

    fn order_stop(&self, kill: bool) {
        let keeper = self.keeper.lock().unwrap().take();
        if let Some(keeper) = keeper {
            let (done, stopped) = mpsc::channel();
            if keeper.send(Order::Stop { kill, done }).is_ok() {
                let _ = stopped.recv();
            }
        }
    }

    /// Starts the server on a keeper thread and waits until it accepts connections.
    fn launch(&self) {
        let mut cmd = as_user(Command::new(self.bin.join("postgres")), unprivileged_user());
        cmd.arg("-D")
            .arg(self.dir.path().join("data"))
            .args(["-p", &self.port.to_string()])
            .arg("-k")
            .arg(self.dir.path())
            .args(["-c", "listen_addresses=127.0.0.1", "-c", "fsync=on"])
            .args(["-c", "max_connections=300"])
            .stdout(Stdio::null())
            .stderr(
                std::fs::File::create(self.dir.path().join("postgres.log"))
                    .map(Stdio::from)
                    .unwrap_or_else(|_| Stdio::null()),
            );
        for (name, value) in &self.settings {
            cmd.args(["-c", &format!("{name}={value}")]);
        }
        // SAFETY: prctl is async-signal-safe; it runs in the child after fork (and after the
        // change of user, which would clear it), before exec.
        unsafe {
            std::os::unix::process::CommandExt::pre_exec(&mut cmd, || {
                libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGQUIT);
                Ok(())
            });
        }
        let (orders, incoming) = mpsc::channel::<Order>();
        let (started, spawned) = mpsc::channel();
        std::thread::Builder::new()
            .name("postgres-keeper".into())
            .spawn(move || {
                let child = cmd.spawn();
                let mut child: Child = match child {
                    Ok(child) => {
                        let _ = started.send(Ok(()));
                        child
                    }
                    Err(e) => {
                        let _ = started.send(Err(e));
                        return;
                    }
                };
                // Lives as long as the handle (or the process): the server's parent-death
                // signal is tied to this thread. A dropped handle stops the server fast.
                let (signal, done) = match incoming.recv() {
                    Ok(Order::Stop { kill: true, done }) => (libc::SIGKILL, Some(done)),
                    Ok(Order::Stop { kill: false, done }) => (libc::SIGINT, Some(done)),
                    Err(_) => (libc::SIGINT, None),
                };
                // SAFETY: kill(2) on our own unreaped child.
                unsafe {
                    libc::kill(child.id() as libc::pid_t, signal);
                }
                let _ = child.wait();
                if let Some(done) = done {
                    let _ = done.send(());
                }
            })
            .expect("spawn the keeper thread");
        spawned
            .recv()
            .expect("keeper")
            .unwrap_or_else(|e| panic!("could not start postgres: {e}"));
        *self.keeper.lock().unwrap() = Some(orders);
        let deadline = Instant::now() + READY_TIMEOUT;
        loop {
            let ready = Command::new(self.bin.join("pg_isready"))
                .args(["-h", "127.0.0.1", "-p", &self.port.to_string(), "-U", USER])
                .stdout(Stdio::null())
                .status()
                .is_ok_and(|s| s.success());
            if ready {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "postgres did not accept connections within {READY_TIMEOUT:?}; its log:\n{}",
                std::fs::read_to_string(self.dir.path().join("postgres.log")).unwrap_or_default()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

impl Drop for Postgres {
    fn drop(&mut self) {
        self.order_stop(true);
    }
}

/// True when PostgreSQL's server binaries are installed (see [`Postgres::start`]).
pub fn available() -> bool {
    std::panic::catch_unwind(bin_dir).is_ok()
}

/// Where Debian's PostgreSQL binaries are (the newest version), or `LOCKER_TEST_PG_BIN`.
fn bin_dir() -> PathBuf {
    if let Some(dir) = std::env::var_os("LOCKER_TEST_PG_BIN") {
        return PathBuf::from(dir);
    }
    let mut found: Vec<(u32, PathBuf)> = std::fs::read_dir("/usr/lib/postgresql")
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|e| {
            let version = e.file_name().to_string_lossy().parse().ok()?;
            let bin = e.path().join("bin");
            bin.join("initdb").exists().then_some((version, bin))
        })
        .collect();
    found.sort();
    found.pop().map(|(_, bin)| bin).unwrap_or_else(|| {
        panic!(
            "PostgreSQL is not installed: these tests start a throwaway cluster with its initdb and postgres (Debian: apt-get install postgresql; or set LOCKER_TEST_PG_BIN to the directory holding them)"
        )
    })
}

/// The user to run PostgreSQL as when the tests run as root: `postgres` (Debian's package
/// makes it), else `nobody`.
fn unprivileged_user() -> Option<(u32, u32)> {
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        return None;
    }
    for name in [c"postgres", c"nobody"] {
        // SAFETY: getpwnam with a NUL-terminated name; the record is read at once.
        let entry = unsafe { libc::getpwnam(name.as_ptr()) };
        if !entry.is_null() {
            // SAFETY: non-null, points to a static passwd record.
            let (uid, gid) = unsafe { ((*entry).pw_uid, (*entry).pw_gid) };
            return Some((uid, gid));
        }
    }
    panic!("the tests run as root, and there is no user postgres or nobody to run PostgreSQL as")
}

fn as_user(mut cmd: Command, owner: Option<(u32, u32)>) -> Command {
    if let Some((uid, gid)) = owner {
        use std::os::unix::process::CommandExt;
        cmd.uid(uid).gid(gid);
    }
    cmd
}

fn chown(path: &Path, uid: u32, gid: u32) {
    std::os::unix::fs::chown(path, Some(uid), Some(gid))
        .unwrap_or_else(|e| panic!("chown {}: {e}", path.display()));
}

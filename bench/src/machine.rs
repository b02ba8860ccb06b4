//! What the numbers were measured on: CPU, memory, the disk under the data directory and how
//! fast it makes a write durable, how busy the machine was, and when.

use std::fs::{self, File, OpenOptions};
use std::io::Write;
use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

/// A description of the machine, each field one line of text.
#[derive(Debug, Clone)]
pub struct Machine {
    pub cpu: String,
    pub memory: String,
    pub disk: String,
    pub os: String,
    pub date: String,
}

impl Machine {
    /// Describes this machine; `data_dir` is where the servers keep their files.
    pub fn describe(data_dir: &Path) -> Machine {
        let cores = std::thread::available_parallelism().map_or(0, |n| n.get());
        let model = fs::read_to_string("/proc/cpuinfo")
            .ok()
            .and_then(|t| {
                t.lines()
                    .find(|l| l.starts_with("model name"))
                    .and_then(|l| l.split(':').nth(1))
                    .map(|m| m.trim().to_string())
            })
            .unwrap_or_else(|| "unknown CPU".into());
        let memory = meminfo_total()
            .map(|kib| format!("{:.1} GiB", kib as f64 / (1024.0 * 1024.0)))
            .unwrap_or_else(|| "unknown".into());
        Machine {
            cpu: format!("{cores} cores, {model}"),
            memory,
            disk: disk_description(data_dir),
            os: os_description(),
            date: command_output("date", &["-u", "+%Y-%m-%d %H:%M UTC"])
                .unwrap_or_else(|| "unknown".into()),
        }
    }
}

/// The 1-, 5- and 15-minute load averages, as `/proc/loadavg` shows them.
pub fn load_average() -> String {
    fs::read_to_string("/proc/loadavg")
        .map(|t| t.split_whitespace().take(3).collect::<Vec<_>>().join(" "))
        .unwrap_or_else(|_| "unknown".into())
}

/// Median times of the two durable writes the server is made of, on the disk under `dir`:
/// an fsync of a small overwritten file, and a whole-file atomic replace (write a temporary
/// file, fsync it, rename it over, fsync the directory).
pub fn durable_write_costs(dir: &Path) -> std::io::Result<(Duration, Duration)> {
    const ROUNDS: usize = 100;
    let block = [b'x'; 4096];
    let path = dir.join("fsync-probe");
    let mut file = File::create(&path)?;
    let mut fsyncs = Vec::with_capacity(ROUNDS);
    for _ in 0..ROUNDS {
        let began = Instant::now();
        file.write_all(&block)?;
        file.sync_all()?;
        fsyncs.push(began.elapsed());
    }
    drop(file);
    let dir_handle = File::open(dir)?;
    let tmp = dir.join("fsync-probe.tmp");
    let mut replaces = Vec::with_capacity(ROUNDS);
    for _ in 0..ROUNDS {
        let began = Instant::now();
        let mut f = OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .open(&tmp)?;
        f.write_all(&block)?;
        f.sync_all()?;
        drop(f);
        fs::rename(&tmp, &path)?;
        dir_handle.sync_all()?;
        replaces.push(began.elapsed());
    }
    fs::remove_file(&path)?;
    fsyncs.sort();
    replaces.sort();
    Ok((fsyncs[ROUNDS / 2], replaces[ROUNDS / 2]))
}

fn meminfo_total() -> Option<u64> {
    let text = fs::read_to_string("/proc/meminfo").ok()?;
    let line = text.lines().find(|l| l.starts_with("MemTotal:"))?;
    line.split_whitespace().nth(1)?.parse().ok()
}

/// The device and filesystem holding `dir`, with the device's model where the kernel knows it.
fn disk_description(dir: &Path) -> String {
    let dir = dir.to_string_lossy();
    let Some(df) = command_output("df", &["--output=source,fstype", &dir]) else {
        return "unknown".into();
    };
    let Some(fields) = df.lines().nth(1) else {
        return "unknown".into();
    };
    let mut fields = fields.split_whitespace();
    let source = fields.next().unwrap_or("?").to_string();
    let fstype = fields.next().unwrap_or("?").to_string();
    let device = source.trim_start_matches("/dev/").to_string();
    let sys = Path::new("/sys/class/block").join(&device);
    // A partition's model and queue live on its parent disk.
    let disk_sys = if sys.join("partition").exists() {
        sys.join("..")
    } else {
        sys
    };
    let model = fs::read_to_string(disk_sys.join("device/model"))
        .map(|m| m.trim().to_string())
        .ok()
        .filter(|m| !m.is_empty())
        .or_else(|| {
            fs::read_link(disk_sys.join("device/driver"))
                .ok()
                .and_then(|p| p.file_name().map(|n| n.to_string_lossy().into_owned()))
                .map(|driver| format!("{driver} device, no model reported"))
        })
        .unwrap_or_else(|| "model unknown".into());
    format!("{source} ({model}), {fstype}")
}

fn os_description() -> String {
    let pretty = fs::read_to_string("/etc/os-release")
        .ok()
        .and_then(|t| {
            t.lines().find(|l| l.starts_with("PRETTY_NAME=")).map(|l| {
                l.trim_start_matches("PRETTY_NAME=")
                    .trim_matches('"')
                    .to_string()
            })
        })
        .unwrap_or_else(|| "unknown OS".into());
    let kernel = command_output("uname", &["-r"]).unwrap_or_default();
    format!("{pretty}, Linux {kernel}")
}

fn command_output(program: &str, args: &[&str]) -> Option<String> {
    let out = Command::new(program).args(args).output().ok()?;
    out.status
        .success()
        .then(|| String::from_utf8_lossy(&out.stdout).trim().to_string())
}

//! `locker-bench`: runs the benchmark scenarios and writes `BENCHMARKS.md`.

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use locker_bench::load::Period;
use locker_bench::machine::{self, Machine};
use locker_bench::report::Report;
use locker_bench::scenarios::{Bench, LAST, Settings};

const USAGE: &str = "\
usage: locker-bench <command> [options]

commands:
  all          run every scenario (1-15) and write BENCHMARKS.md
  smoke        a 5-second run of scenario 2 that checks the benchmark still works
  N [N ...]    run only the scenarios numbered N (1-15) and print their table

options:
  --out PATH        where `all` writes its report (default: BENCHMARKS.md at the workspace root)
  --data-dir DIR    where servers keep their files (default: the system temporary directory);
                    it must be on the disk you mean to measure, not tmpfs
  --log-level L     RUST_LOG of the locker servers (default: warn)
  --runs N          run the scenarios N times and report each number's median (default: 1;
                    the issues' targets are judged on the median of 3)
";

fn main() -> ExitCode {
    match run() {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

enum Mode {
    All,
    Smoke,
    Only(Vec<u8>),
}

fn run() -> anyhow::Result<()> {
    let mut args = std::env::args().skip(1);
    let mut mode = None;
    let mut out = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .map(|root| root.join("BENCHMARKS.md"))
        .context("the bench crate has no parent directory")?;
    let mut data_dir = std::env::temp_dir();
    let mut log_level = "warn".to_string();
    let mut only = Vec::new();
    let mut runs = 1usize;
    while let Some(arg) = args.next() {
        let mut value = |name: &str| {
            args.next()
                .with_context(|| format!("{name} needs a value; see locker-bench --help"))
        };
        match arg.as_str() {
            "-h" | "--help" => {
                print!("{USAGE}");
                return Ok(());
            }
            "all" => mode = Some(Mode::All),
            "smoke" => mode = Some(Mode::Smoke),
            "--out" => out = PathBuf::from(value("--out")?),
            "--data-dir" => data_dir = PathBuf::from(value("--data-dir")?),
            "--log-level" => log_level = value("--log-level")?,
            "--runs" => {
                runs = value("--runs")?
                    .parse()
                    .ok()
                    .filter(|&n| n >= 1)
                    .context("--runs needs a whole number of at least 1")?;
            }
            n => match n.parse::<u8>() {
                Ok(n) if (1..=LAST).contains(&n) => only.push(n),
                _ => bail!("unexpected argument {n:?}; see locker-bench --help"),
            },
        }
    }
    let mode = match (mode, only.is_empty()) {
        (Some(mode), true) => mode,
        (None, false) => Mode::Only(only),
        (None, true) => bail!("no command given\n{USAGE}"),
        (Some(_), false) => bail!("give either a command or scenario numbers, not both"),
    };
    let period = match mode {
        Mode::Smoke => Period {
            warm_up: Duration::from_secs(1),
            measured: Duration::from_secs(4),
        },
        _ => Period {
            warm_up: Duration::from_secs(2),
            measured: Duration::from_secs(6),
        },
    };
    let settings = Settings {
        period,
        data_dir: data_dir.clone(),
        log_level: log_level.clone(),
    };
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    let began = Instant::now();
    let load_before = machine::load_average();
    // Other work on the machine shows in the disk's latency too: probe before and after.
    let disk_before = match mode {
        Mode::All => Some(machine::durable_write_costs(&data_dir)?),
        _ => None,
    };
    let mut reports = Vec::new();
    for run in 1..=runs {
        if runs > 1 {
            eprintln!("run {run} of {runs}");
        }
        // A fresh bench each run: comparisons within a run use that run's own numbers.
        let mut bench = Bench::new(settings.clone())?;
        match &mode {
            Mode::Smoke => runtime.block_on(bench.smoke())?,
            Mode::All => runtime.block_on(bench.run(&(1..=LAST).collect::<Vec<_>>()))?,
            Mode::Only(which) => runtime.block_on(bench.run(which))?,
        }
        reports.push(bench.report);
    }
    let report = Report::median_of(reports);
    let took = began.elapsed();
    println!("{}", report.table());
    for note in &report.notes {
        println!("- {note}");
    }
    if let Mode::All = mode {
        let machine = Machine::describe(&data_dir);
        let mut report = report;
        let after = machine::durable_write_costs(&data_dir)?;
        let before = disk_before.unwrap_or(after);
        let ms = locker_bench::report::ms;
        report.notes.insert(
            0,
            format!(
                "Disk, probed in the data directory before / after the run: median fsync of a 4 KiB write {} / {} ms; whole-file atomic replace (write, fsync, rename, fsync dir) {} / {} ms.",
                ms(before.0),
                ms(after.0),
                ms(before.1),
                ms(after.1)
            ),
        );
        report.notes.push(format!(
            "Load average (1/5/15 min) {load_before} before the run, {} after it; the generator and the servers share the machine's cores.",
            machine::load_average()
        ));
        report.notes.push(format!(
            "Servers ran with `RUST_LOG={log_level}` except where a row says otherwise; each measured period is {} s after a {} s warm-up, and the whole run took {:.0} s.",
            period.measured.as_secs(),
            period.warm_up.as_secs(),
            took.as_secs_f64()
        ));
        report.write(&machine, &out)?;
        eprintln!("wrote {}", out.display());
    }
    eprintln!("took {:.0} s", took.as_secs_f64());
    Ok(())
}

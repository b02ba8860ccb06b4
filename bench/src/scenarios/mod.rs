//! The scenarios of the benchmark, each starting the servers it needs and adding its rows (and
//! the verdict on its target) to the report; the queue's (11 to 13) are in [`queue`], the
//! burst (14) in [`burst`].

mod burst;
mod postgres;
mod queue;

use std::fs;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use tempfile::TempDir;

use crate::clients::{
    Asking, Contender, ContentionLog, EtcdLockCycle, FreshConnectionCycle, Health, OwnLockCycle,
};
use crate::http::{Connection, request};
use crate::load::{self, Client, Outcome, Period};
use crate::report::{Report, Row, ms, percent, thousands};
use crate::servers::{self, Etcd, Locker, LockerOptions};
use crate::state;

/// The number of the last scenario.
pub const LAST: u8 = 15;
/// Concurrent clients in the multi-client scenarios.
pub const CLIENTS: usize = 64;
/// Other held locks in the big-table scenario.
const BIG_TABLE: usize = 10_000;
/// Locks in the start-up scenario's state file.
const STARTUP_TABLE: usize = 100_000;
/// Leases that end in the same second in the expiry storm.
const EXPIRY_STORM: usize = 10_000;
/// How many times the state file's size of journal the crashed server of scenario 7c leaves
/// (it folds the journal in at four).
const CRASH_JOURNAL_PER_STATE: u64 = 3;
/// Held locks in the reader scenario: `GET /locks` of this many runs in a loop.
const READER_TABLE: usize = 100_000;
/// Held locks on the server the resource processes talk to.
const RESOURCE_TABLE: usize = 100;
/// Timed runs of each process in the resource scenario (after a few untimed ones).
const PROCESS_RUNS: usize = 25;

/// How a run is set up.
#[derive(Debug, Clone)]
pub struct Settings {
    pub period: Period,
    /// Where the servers keep their files; must be on the disk being measured (not tmpfs).
    pub data_dir: PathBuf,
    /// `RUST_LOG` of the locker servers, except in the row that compares log levels.
    pub log_level: String,
}

/// A locker server and the directory it lives in (dropped after the server stops).
struct Running {
    server: Locker,
    dir: TempDir,
}

/// One run of some scenarios; results of earlier scenarios feed later comparisons.
pub struct Bench {
    settings: Settings,
    bins: PathBuf,
    work: TempDir,
    pub report: Report,
    ceiling: Option<f64>,
    durable_many: Option<Outcome>,
    durable_one: Option<Outcome>,
    /// Scenario 6's etcd with 64 clients, for scenario 15 to compare with.
    etcd_many: Option<Outcome>,
}

impl Bench {
    pub fn new(settings: Settings) -> anyhow::Result<Bench> {
        let bins = servers::workspace_bins()?;
        let work = tempfile::Builder::new()
            .prefix("locker-bench-")
            .tempdir_in(&settings.data_dir)
            .with_context(|| format!("making a directory in {}", settings.data_dir.display()))?;
        Ok(Bench {
            settings,
            bins,
            work,
            report: Report::default(),
            ceiling: None,
            durable_many: None,
            durable_one: None,
            etcd_many: None,
        })
    }

    /// Runs the scenarios whose numbers are in `which`, in order.
    pub async fn run(&mut self, which: &[u8]) -> anyhow::Result<()> {
        for &n in which {
            eprintln!("scenario {n} ...");
            match n {
                1 => self.ceiling().await?,
                2 => self.durable_cycles().await?,
                3 => self.big_table().await?,
                4 => self.contention().await?,
                5 => self.connection_per_request().await?,
                6 => self.etcd().await?,
                7 => self.startup().await?,
                8 => self.resource_processes().await?,
                9 => self.big_reader().await?,
                10 => self.leases().await?,
                11 => self.hand_over().await?,
                12 => self.queue_contention().await?,
                13 => self.waiter_memory().await?,
                14 => self.burst().await?,
                15 => self.postgres().await?,
                _ => bail!("there is no scenario {n} (they are 1 to {LAST})"),
            }
        }
        Ok(())
    }

    /// The smoke test: scenario 2 with 64 clients, briefly. Fails only if requests fail.
    pub async fn smoke(&mut self) -> anyhow::Result<()> {
        let running = self.locker(None, &self.settings.log_level.clone()).await?;
        let outcome = self.measure(
            "2",
            |i| OwnLockCycle::connect(running.server.addr, i),
            CLIENTS,
        )?;
        let row = Row::measured("2", "Durable cycles (smoke)", &outcome, "cycles/s");
        self.report.rows.push(row);
        if !outcome.errors.is_empty() {
            bail!(
                "{} clients failed: {}",
                outcome.errors.len(),
                outcome.errors[0]
            );
        }
        if outcome.count == 0 {
            bail!("no cycle completed in the measured period");
        }
        running.server.stop()
    }

    async fn locker(&self, initial: Option<&Path>, log_level: &str) -> anyhow::Result<Running> {
        let dir = tempfile::Builder::new()
            .prefix("locker-")
            .tempdir_in(self.work.path())?;
        let server = Locker::start(LockerOptions {
            bin_dir: &self.bins,
            dir: dir.path(),
            initial_state: initial,
            log_level,
            database: None,
        })
        .await?;
        Ok(Running { server, dir })
    }

    /// As [`Bench::measure`], also returning the CPU time `server` spent meanwhile.
    fn measure_on<C, F, Fut>(
        &mut self,
        server: &Locker,
        id: &str,
        make: F,
        n: usize,
    ) -> anyhow::Result<(Outcome, Duration)>
    where
        C: Client,
        F: Fn(usize) -> Fut + Sync,
        Fut: Future<Output = anyhow::Result<C>>,
    {
        let before = server.cpu_time()?;
        let outcome = self.measure(id, make, n)?;
        Ok((outcome, server.cpu_time()? - before))
    }

    /// Runs `n` clients made by `make` on the load generator, and notes any that failed.
    fn measure<C, F, Fut>(&mut self, id: &str, make: F, n: usize) -> anyhow::Result<Outcome>
    where
        C: Client,
        F: Fn(usize) -> Fut + Sync,
        Fut: Future<Output = anyhow::Result<C>>,
    {
        let outcome = load::run(n, make, self.settings.period)?;
        if let Some(first) = outcome.errors.first() {
            self.report.notes.push(format!(
                "Scenario {id}: {} of {n} clients stopped on an error; the first: {first}",
                outcome.errors.len()
            ));
        }
        Ok(outcome)
    }

    async fn ceiling(&mut self) -> anyhow::Result<()> {
        let running = self.locker(None, &self.settings.log_level.clone()).await?;
        let addr = running.server.addr;
        let url = running.server.url();
        // wrk runs just before and just after the generator, so both see the same machine;
        // the generator is compared with wrk's better run.
        let wrk_before = wrk(&url, self.settings.period);
        let cpu = cpu_time(libc::RUSAGE_SELF);
        let (outcome, server_cpu) =
            self.measure_on(&running.server, "1", |_| Health::connect(addr), CLIENTS)?;
        let generator_cpu = cpu_time(libc::RUSAGE_SELF) - cpu;
        let wrk_after = wrk(&url, self.settings.period);
        self.ceiling = Some(outcome.rate());
        let mut row = Row::measured("1", "Ceiling: `GET /healthz`", &outcome, "req/s");
        row.comparison = format!(
            "what HTTP allows; server CPU {} µs/request",
            cpu_per(server_cpu, outcome.rate(), self.settings.period)
        );
        self.report.rows.push(row);

        let mut wrk_row = Row::plain("1w", "`wrk` on `GET /healthz` (generator check)");
        wrk_row.clients = CLIENTS.to_string();
        match (wrk_before, wrk_after) {
            (Ok((before, wrk_cpu)), Ok((after, _))) => {
                let best = before.max(after);
                // Busy machines make rates noisy; CPU time per request is steadier.
                let per_request = |cpu: Duration, rate: f64, period: Duration| {
                    cpu.as_secs_f64() * 1e6 / (rate * period.as_secs_f64())
                };
                let period = self.settings.period;
                wrk_row.rate = format!("{} req/s", thousands(best));
                wrk_row.comparison = format!(
                    "wrk -t{} -c{CLIENTS} before/after the generator: {} / {} req/s; the generator reaches {} of the better; CPU per request: generator {:.1} µs, wrk {:.1} µs",
                    cores(),
                    thousands(before),
                    thousands(after),
                    percent(outcome.rate(), best),
                    per_request(
                        generator_cpu,
                        outcome.rate(),
                        period.warm_up + period.measured
                    ),
                    per_request(wrk_cpu, before, period.measured),
                );
                wrk_row.judge("generator ≥ wrk", outcome.rate() >= best);
            }
            (Err(e), _) | (_, Err(e)) => wrk_row.comparison = format!("not run: {e:#}"),
        }
        self.report.rows.push(wrk_row);
        running.server.stop()
    }

    async fn durable_cycles(&mut self) -> anyhow::Result<()> {
        let level = self.settings.log_level.clone();
        let (many, one) = self.cycles("2", None, &level).await?;
        let len = self.report.rows.len();
        let many_row = &mut self.report.rows[len - 2];
        if let Some(ceiling) = self.ceiling {
            // The ceiling counts requests; a cycle is two requests, each durable.
            let requests = 2.0 * many.rate();
            many_row.comparison = format!(
                "{} req/s = {} of the ceiling; {}",
                thousands(requests),
                percent(requests, ceiling),
                many_row.comparison
            );
            many_row.judge(
                "≥ 75 % of ceiling, p99 < 8 ms",
                requests >= 0.75 * ceiling && many.percentile(99.0) < Duration::from_millis(8),
            );
        }
        let one_row = self.report.rows.last_mut().expect("row just added");
        one_row.comparison = format!("two durable commits per cycle; {}", one_row.comparison);
        one_row.judge(
            "p50 ≤ 0.35 ms",
            one.percentile(50.0) <= Duration::from_micros(350),
        );

        // The same at the other log level: info writes one line per request.
        let other = if level == "info" { "warn" } else { "info" };
        let running = self.locker(None, other).await?;
        let addr = running.server.addr;
        let (outcome, cpu) = self.measure_on(
            &running.server,
            "2",
            |i| OwnLockCycle::connect(addr, i),
            CLIENTS,
        )?;
        let mut row = Row::measured(
            "2",
            &format!("Durable cycles, `RUST_LOG={other}`"),
            &outcome,
            "cycles/s",
        );
        row.comparison = format!(
            "{} of `RUST_LOG={level}`; server CPU {} µs/request",
            percent(outcome.rate(), many.rate()),
            cpu_per(cpu, 2.0 * outcome.rate(), self.settings.period)
        );
        self.report.rows.push(row);
        running.server.stop()?;

        self.durable_many = Some(many);
        self.durable_one = Some(one);
        Ok(())
    }

    /// Durable own-lock cycles with 64 clients and with 1; adds both rows.
    async fn cycles(
        &mut self,
        id: &str,
        initial: Option<&Path>,
        level: &str,
    ) -> anyhow::Result<(Outcome, Outcome)> {
        let what = match initial {
            None => "Durable cycles (PUT+DELETE)".to_string(),
            Some(_) => format!(
                "Durable cycles, {} other locks held",
                thousands(BIG_TABLE as f64)
            ),
        };
        let mut outcomes = Vec::new();
        for n in [CLIENTS, 1] {
            // A fresh server for each, so the second does not inherit the first's file.
            let running = self.locker(initial, level).await?;
            let addr = running.server.addr;
            let (outcome, cpu) =
                self.measure_on(&running.server, id, |i| OwnLockCycle::connect(addr, i), n)?;
            let mut row = Row::measured(id, &what, &outcome, "cycles/s");
            row.comparison = format!(
                "server CPU {} µs/request",
                cpu_per(cpu, 2.0 * outcome.rate(), self.settings.period)
            );
            self.report.rows.push(row);
            running.server.stop()?;
            outcomes.push(outcome);
        }
        let one = outcomes.pop().expect("two runs");
        let many = outcomes.pop().expect("two runs");
        Ok((many, one))
    }

    async fn big_table(&mut self) -> anyhow::Result<()> {
        let file = self.work.path().join("big-table.yml");
        state::write_held_locks(&file, BIG_TABLE)?;
        let level = self.settings.log_level.clone();
        let (many, one) = self.cycles("3", Some(&file), &level).await?;
        let len = self.report.rows.len();
        if let Some(base) = &self.durable_many {
            let row = &mut self.report.rows[len - 2];
            let (p99, base_p99) = (many.percentile(99.0), base.percentile(99.0));
            row.comparison = format!(
                "{} of scenario 2, p99 {} × scenario 2's; {}",
                percent(many.rate(), base.rate()),
                ratio(p99, base_p99),
                row.comparison
            );
            row.judge(
                "≥ 95 % of scenario 2, p99 ≤ 1.25 × scenario 2's, max < 20 ms",
                many.rate() >= 0.95 * base.rate()
                    && p99.as_secs_f64() <= 1.25 * base_p99.as_secs_f64()
                    && many.max() < Duration::from_millis(20),
            );
        }
        if let Some(base) = &self.durable_one {
            let row = &mut self.report.rows[len - 1];
            row.comparison = format!(
                "p50 {} × scenario 2's; {}",
                ratio(one.percentile(50.0), base.percentile(50.0)),
                row.comparison
            );
        }
        Ok(())
    }

    /// 64 clients cycle their own locks on a server holding 100,000 others, first alone, then
    /// while one more client reads `GET /locks` (all 100,000) in a loop: a reader must not
    /// hold up the writers.
    async fn big_reader(&mut self) -> anyhow::Result<()> {
        let file = self.work.path().join("reader-table.yml");
        state::write_held_locks(&file, READER_TABLE)?;
        let level = self.settings.log_level.clone();
        let mut alone: Option<Outcome> = None;
        for with_reader in [false, true] {
            let running = self.locker(Some(&file), &level).await?;
            let addr = running.server.addr;
            let stop = Arc::new(AtomicBool::new(false));
            let reads = Arc::new(AtomicU64::new(0));
            let reader = with_reader.then(|| read_all_locks(addr, stop.clone(), reads.clone()));
            let (outcome, cpu) = self.measure_on(
                &running.server,
                "9",
                |i| OwnLockCycle::connect(addr, i),
                CLIENTS,
            )?;
            stop.store(true, Ordering::Relaxed);
            let reader_failed = match reader.map(|r| r.join()) {
                Some(Ok(Err(e))) => Some(format!("{e:#}")),
                Some(Err(_)) => Some("the reader thread panicked".into()),
                _ => None,
            };
            let what = if with_reader {
                "Durable cycles, 100,000 locks, one client reading them all in a loop"
            } else {
                "Durable cycles, 100,000 locks, no reader"
            };
            let mut row = Row::measured("9", what, &outcome, "cycles/s");
            let total = self.settings.period.warm_up + self.settings.period.measured;
            let cpu_note = format!(
                "server CPU {} µs/request (reads included)",
                cpu_per(cpu, 2.0 * outcome.rate(), self.settings.period)
            );
            row.comparison = match (&alone, with_reader) {
                (Some(base), true) => {
                    let p99 = outcome.percentile(99.0);
                    let base_p99 = base.percentile(99.0);
                    // The target is against scenario 2 (no table, no reader) when it ran.
                    let scenario_2 = self.durable_many.as_ref().map(|s| s.percentile(99.0));
                    let (target, against) = match scenario_2 {
                        Some(p) => ("p99 ≤ 1.25 × scenario 2's", p),
                        None => ("p99 ≤ 1.25 × no reader's (scenario 2 not run)", base_p99),
                    };
                    row.judge(target, p99.as_secs_f64() <= 1.25 * against.as_secs_f64());
                    format!(
                        "{} full reads/s; {} of the cycles without the reader, p99 {} ms vs {} ms ({} × {}); {cpu_note}",
                        thousands(reads.load(Ordering::Relaxed) as f64 / total.as_secs_f64()),
                        percent(outcome.rate(), base.rate()),
                        ms(p99),
                        ms(base_p99),
                        ratio(p99, against),
                        if scenario_2.is_some() {
                            "scenario 2's"
                        } else {
                            "no reader's"
                        },
                    )
                }
                _ => cpu_note,
            };
            if let Some(e) = reader_failed {
                self.report
                    .notes
                    .push(format!("Scenario 9: the reader failed: {e}"));
            }
            self.report.rows.push(row);
            running.server.stop()?;
            if !with_reader {
                alone = Some(outcome);
            }
        }
        Ok(())
    }

    /// Leases: 64 clients cycling with a ttl on every claim (against scenario 2, without), then
    /// an expiry storm: 10,000 leases that end in the same second while 64 clients cycle.
    async fn leases(&mut self) -> anyhow::Result<()> {
        let level = self.settings.log_level.clone();
        let running = self.locker(None, &level).await?;
        let addr = running.server.addr;
        let (outcome, cpu) = self.measure_on(
            &running.server,
            "10",
            |i| OwnLockCycle::with_ttl(addr, i, "1h"),
            CLIENTS,
        )?;
        running.server.stop()?;
        let mut row = Row::measured(
            "10",
            "Durable cycles, a 1h lease on every claim",
            &outcome,
            "cycles/s",
        );
        let cpu_note = format!(
            "server CPU {} µs/request",
            cpu_per(cpu, 2.0 * outcome.rate(), self.settings.period)
        );
        row.comparison = match &self.durable_many {
            Some(base) => {
                row.judge("≥ 90 % of scenario 2", outcome.rate() >= 0.9 * base.rate());
                format!(
                    "{} of scenario 2; {cpu_note}",
                    percent(outcome.rate(), base.rate())
                )
            }
            None => cpu_note,
        };
        self.report.rows.push(row);

        // The leases end a second into the measured period.
        let file = self.work.path().join("leased.yml");
        let period = self.settings.period;
        let ends = std::time::SystemTime::now()
            + Duration::from_secs(3)
            + period.warm_up
            + Duration::from_secs(1);
        state::write_leased_locks(&file, EXPIRY_STORM, ends)?;
        let running = self.locker(Some(&file), &level).await?;
        let addr = running.server.addr;
        let (outcome, cpu) = self.measure_on(
            &running.server,
            "10",
            |i| OwnLockCycle::connect(addr, i),
            CLIENTS,
        )?;
        let mut conn = Connection::connect(addr).await?;
        let status = conn
            .send(&request("GET", "/lock/leased-000000", None, false))
            .await?;
        let expired =
            status == 200 && String::from_utf8_lossy(conn.body()).contains("\"key\":\"\"");
        running.server.stop()?;
        let mut row = Row::measured(
            "10",
            "Durable cycles while 10,000 leases end in the same second",
            &outcome,
            "cycles/s",
        );
        let p99 = outcome.percentile(99.0);
        row.judge("p99 < 20 ms", p99 < Duration::from_millis(20) && expired);
        row.comparison = format!(
            "p99 {} ms, max {} ms; the leases {}; server CPU {} µs/request (expiry included)",
            ms(p99),
            ms(outcome.max()),
            if expired {
                "ended (checked on one)"
            } else {
                "did NOT end"
            },
            cpu_per(cpu, 2.0 * outcome.rate(), period)
        );
        self.report.rows.push(row);
        Ok(())
    }

    async fn contention(&mut self) -> anyhow::Result<()> {
        let running = self.locker(None, &self.settings.log_level.clone()).await?;
        let addr = running.server.addr;
        let log = Arc::new(ContentionLog::default());
        let (outcome, cpu) = self.measure_on(
            &running.server,
            "4",
            |i| Contender::connect(addr, i, Asking::AtOnce, log.clone()),
            CLIENTS,
        )?;
        let mut row = Row::measured("4", "Contention: 64 keys, 1 lock", &outcome, "grants/s");
        let min = outcome.per_client.iter().min().copied().unwrap_or(0);
        let max = outcome.per_client.iter().max().copied().unwrap_or(0);
        // Refusals are counted during warm-up and measurement alike: divide by both.
        let total = self.settings.period.warm_up + self.settings.period.measured;
        let refused = log.refusals.load(Ordering::Relaxed) as f64 / total.as_secs_f64();
        row.comparison = format!(
            "grants per client {min}–{max}, Jain fairness {:.2}; {} refusals (423)/s; latency is lock-wait + cycle; server CPU {} µs/request",
            outcome.fairness(),
            thousands(refused),
            cpu_per(cpu, 2.0 * outcome.rate() + refused, self.settings.period)
        );
        self.report.rows.push(row);
        running.server.stop()
    }

    async fn connection_per_request(&mut self) -> anyhow::Result<()> {
        let running = self.locker(None, &self.settings.log_level.clone()).await?;
        let addr = running.server.addr;
        let (outcome, cpu) = self.measure_on(
            &running.server,
            "5",
            |i| async move { Ok(FreshConnectionCycle::new(addr, i)) },
            CLIENTS,
        )?;
        let mut row = Row::measured("5", "One connection per request", &outcome, "cycles/s");
        let cpu_note = format!(
            "server CPU {} µs/request (a connection each)",
            cpu_per(cpu, 2.0 * outcome.rate(), self.settings.period)
        );
        row.comparison = match &self.durable_many {
            Some(base) => format!(
                "{} of keep-alive (scenario 2); {cpu_note}",
                percent(outcome.rate(), base.rate())
            ),
            None => cpu_note,
        };
        self.report.rows.push(row);
        running.server.stop()
    }

    async fn etcd(&mut self) -> anyhow::Result<()> {
        let Some(version) = servers::etcd_version() else {
            let mut row = Row::plain("6", "etcd lock API");
            row.comparison =
                "not run: `etcd` is not installed (Debian: apt-get install etcd-server)".into();
            self.report.rows.push(row);
            return Ok(());
        };
        let mut outcomes = Vec::new();
        for n in [CLIENTS, 1] {
            let dir = tempfile::Builder::new()
                .prefix("etcd-")
                .tempdir_in(self.work.path())?;
            let etcd = Etcd::start(dir.path()).await?;
            let addr = etcd.addr;
            let outcome = self.measure("6", |i| EtcdLockCycle::connect(addr, i), n)?;
            let mut row = Row::measured(
                "6",
                &format!("etcd {version} lock+unlock, own lock each"),
                &outcome,
                "cycles/s",
            );
            let locker = if n == 1 {
                &self.durable_one
            } else {
                &self.durable_many
            };
            if let Some(locker) = locker {
                if n == 1 {
                    let (ours, theirs) = (locker.percentile(50.0), outcome.percentile(50.0));
                    row.comparison = format!(
                        "locker p50 {} ms = {} × etcd's",
                        ms(ours),
                        ratio(ours, theirs)
                    );
                    row.judge("locker p50 ≤ etcd's", ours <= theirs);
                } else {
                    let x = locker.rate() / outcome.rate();
                    row.comparison = format!("locker/etcd = {x:.2}");
                    row.judge("locker ≥ 2 × etcd", x >= 2.0);
                }
            }
            self.report.rows.push(row);
            drop(etcd);
            if n == CLIENTS {
                self.etcd_many = Some(outcome.clone());
            }
            outcomes.push(outcome);
        }
        Ok(())
    }

    async fn startup(&mut self) -> anyhow::Result<()> {
        let file = self.work.path().join("startup.yml");
        state::write_held_locks(&file, STARTUP_TABLE)?;
        self.startup_from(&file, "7", "server-written").await?;
        let file = self.work.path().join("startup-block.yml");
        state::write_held_locks_block_yaml(&file, STARTUP_TABLE)?;
        self.startup_from(&file, "7b", "hand-written block YAML")
            .await?;
        self.startup_after_crash().await
    }

    /// Start-up after a crash: a server on 100,000 locks is killed (SIGKILL) once its journal
    /// holds about three times the state file, and started again on what it left, which it
    /// replays record by record.
    async fn startup_after_crash(&mut self) -> anyhow::Result<()> {
        let file = self.work.path().join("startup.yml");
        let level = self.settings.log_level.clone();
        let running = self.locker(Some(&file), &level).await?;
        let dir = running.dir.path().to_owned();
        let state_len = fs::metadata(dir.join("locker.yml"))?.len();
        let journal_len = || -> u64 {
            ["locker.yml.journal", "locker.yml.journal.2"]
                .iter()
                .filter_map(|name| fs::metadata(dir.join(name)).ok())
                .map(|m| m.len())
                .sum()
        };
        let addr = running.server.addr;
        let second = Period {
            warm_up: Duration::ZERO,
            measured: Duration::from_secs(1),
        };
        let mut seconds = 0;
        while journal_len() < CRASH_JOURNAL_PER_STATE * state_len {
            seconds += 1;
            if seconds > 120 {
                bail!(
                    "the journal grew to only {:.1} MB in two minutes",
                    mb(journal_len())
                );
            }
            load::run(CLIENTS, |i| OwnLockCycle::connect(addr, i), second)?;
        }
        // The directory stays until the restarted server is done with it.
        let Running { server, dir: kept } = running;
        server.kill()?;
        let journal = journal_len();

        let server = Locker::start(LockerOptions {
            bin_dir: &self.bins,
            dir: &dir,
            initial_state: None,
            log_level: &level,
            database: None,
        })
        .await?;
        let first = server.started_in;
        let cpu = server.cpu_time()?;
        let rss = servers::peak_rss(server.pid())?;
        connect_to_held_locks(&server, "after the crash").await?;
        let mut row = Row::plain(
            "7c",
            &format!(
                "Start-up after a crash: {} locks and their journal",
                thousands(STARTUP_TABLE as f64)
            ),
        );
        row.comparison = format!(
            "killed (SIGKILL) after {seconds} s of 64 clients' cycles; first response {} ms after spawn (server CPU {} ms), peak RSS {:.1} MB; journal {:.1} MB replayed over a {:.1} MB state file",
            ms(first),
            ms(cpu),
            mb(rss),
            mb(journal),
            mb(state_len)
        );
        row.target = "for comparison (the cost of folding the journal in less often)".into();
        self.report.rows.push(row);
        server.stop()?;
        drop(kept);
        Ok(())
    }

    async fn startup_from(&mut self, file: &Path, id: &str, form: &str) -> anyhow::Result<()> {
        let file_len = fs::metadata(file)?.len();
        let running = self
            .locker(Some(file), &self.settings.log_level.clone())
            .await?;
        let server = &running.server;
        let first = server.started_in;
        let rss_start = servers::peak_rss(server.pid())?;
        let cpu_start = server.cpu_time()?;

        let mut conn = connect_to_held_locks(server, "from its file").await?;
        let began = Instant::now();
        let put = request("PUT", "/lock/bench-0", Some(r#"{"key":"k"}"#), false);
        let status = conn.send(&put).await?;
        let write = began.elapsed();
        if status != 200 {
            bail!("PUT on the 100,000-lock server answered {status}");
        }
        let began = Instant::now();
        conn.send(&request("GET", "/locks", None, false)).await?;
        let list = began.elapsed();
        let list_len = conn.body().len();
        let rss_peak = servers::peak_rss(server.pid())?;

        let mut row = Row::plain(
            id,
            &format!(
                "Start-up with {} locks ({form} file)",
                thousands(STARTUP_TABLE as f64)
            ),
        );
        row.comparison = format!(
            "first response {} ms after spawn (server CPU {} ms); peak RSS {:.1} MB after start, {:.1} MB after one PUT ({} ms) and GET /locks ({} ms, {:.1} MB); state file {:.1} MB",
            ms(first),
            ms(cpu_start),
            mb(rss_start),
            mb(rss_peak),
            ms(write),
            ms(list),
            mb(list_len as u64),
            mb(file_len)
        );
        let target = "first response < 200 ms, peak RSS < 64 MB";
        if id == "7" {
            row.judge(
                target,
                first < Duration::from_millis(200) && rss_peak < 64 * 1_000_000,
            );
        } else {
            row.target = format!("for comparison ({target} applies to the server's own file)");
        }
        self.report.rows.push(row);
        running.server.stop()
    }

    async fn resource_processes(&mut self) -> anyhow::Result<()> {
        for tool in ["bash", "curl", "jq", "sha1sum"] {
            if Command::new("which")
                .arg(tool)
                .stdout(Stdio::null())
                .status()
                .map_or(true, |s| !s.success())
            {
                let mut row = Row::plain("8", "`check` vs shell pipeline");
                row.comparison = format!("not run: `{tool}` is not installed");
                self.report.rows.push(row);
                return Ok(());
            }
        }
        let file = self.work.path().join("resource.yml");
        state::write_held_locks(&file, RESOURCE_TABLE)?;
        let running = self
            .locker(Some(&file), &self.settings.log_level.clone())
            .await?;
        let input = format!(
            r#"{{"source":{{"locker_uri":"{}","lock_name":"held-000042"}},"version":null}}"#,
            running.server.url()
        );
        let check = self.bins.join("check");
        let cpu_before = running.server.cpu_time()?;
        let mut check_times = Vec::new();
        let mut shell_times = Vec::new();
        // Alternate the two so both see the same background noise.
        for i in 0..PROCESS_RUNS + 3 {
            let c = time_process(Command::new(&check), &input, "revision")?;
            let mut bash = Command::new("bash");
            bash.args(["-c", SHELL_CHECK]);
            let s = time_process(bash, &input, "sha")?;
            if i >= 3 {
                check_times.push(c);
                shell_times.push(s);
            }
        }
        // Each check and each shell run asks the server once.
        let served = 2 * (PROCESS_RUNS + 3);
        let cpu = running.server.cpu_time()? - cpu_before;
        check_times.sort();
        shell_times.sort();
        let (c, s) = (median(&check_times), median(&shell_times));
        let mut row = Row::plain("8", "Resource `check` process (median wall time)");
        row.p50 = ms(c);
        row.max = ms(*check_times.last().expect("runs"));
        row.comparison = format!(
            "shell pipeline (`curl \\| sha1sum` + 10 `jq`) median {} ms: check is {:.1} × faster ({PROCESS_RUNS} runs each, {RESOURCE_TABLE} locks held); server CPU {:.0} µs/request",
            ms(s),
            s.as_secs_f64() / c.as_secs_f64(),
            cpu.as_secs_f64() * 1e6 / served as f64
        );
        row.judge("≥ 10 × faster", s >= c * 10);
        self.report.rows.push(row);
        running.server.stop()
    }
}

/// What the original bash resource's `check` did: ten `jq` calls to read its input, then a
/// digest of the whole lock table as the version.
const SHELL_CHECK: &str = r#"set -euo pipefail
payload=$(cat)
uri=$(jq -r '.source.locker_uri // empty' <<<"$payload")
lock_name=$(jq -r '.source.lock_name // empty' <<<"$payload")
key=$(jq -r '.source.key // empty' <<<"$payload")
locked_by=$(jq -r '.source.locked_by // empty' <<<"$payload")
username=$(jq -r '.source.username // empty' <<<"$payload")
password=$(jq -r '.source.password // empty' <<<"$payload")
skip_ssl=$(jq -r '.source.skip_ssl_validation // false' <<<"$payload")
ca_cert=$(jq -r '.source.ca_cert // empty' <<<"$payload")
version=$(jq -r '.version.sha // empty' <<<"$payload")
params=$(jq -c '.params // {}' <<<"$payload")
sha=$(curl -fsS "$uri/locks" | sha1sum)
printf '[{"sha":"%s"}]\n' "${sha%% *}"
"#;

/// Runs a process with `input` on stdin and returns its wall time; its stdout must contain
/// `expected`.
fn time_process(mut cmd: Command, input: &str, expected: &str) -> anyhow::Result<Duration> {
    let began = Instant::now();
    let mut child = cmd
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()?;
    child
        .stdin
        .take()
        .expect("piped stdin")
        .write_all(input.as_bytes())?;
    let out = child.wait_with_output()?;
    let elapsed = began.elapsed();
    let stdout = String::from_utf8_lossy(&out.stdout);
    if !out.status.success() || !stdout.contains(expected) {
        bail!(
            "{:?} failed ({}): stdout {stdout:?}, stderr {:?}",
            cmd.get_program(),
            out.status,
            String::from_utf8_lossy(&out.stderr)
        );
    }
    Ok(elapsed)
}

/// Runs `wrk` with the generator's connection count and period; returns its requests/s and
/// the CPU time it used.
fn wrk(url: &str, period: Period) -> anyhow::Result<(f64, Duration)> {
    let cpu = cpu_time(libc::RUSAGE_CHILDREN);
    let out = Command::new("wrk")
        .arg(format!("-t{}", cores()))
        .arg(format!("-c{CLIENTS}"))
        .arg(format!("-d{}s", period.measured.as_secs().max(1)))
        .arg(format!("{url}/healthz"))
        .output()
        .context("`wrk` could not be run (Debian: apt-get install wrk)")?;
    let cpu = cpu_time(libc::RUSAGE_CHILDREN) - cpu;
    let text = String::from_utf8_lossy(&out.stdout);
    let rate = text
        .lines()
        .find_map(|l| l.strip_prefix("Requests/sec:"))
        .and_then(|v| v.trim().parse().ok())
        .with_context(|| format!("no Requests/sec in wrk's output: {text}"))?;
    Ok((rate, cpu))
}

/// User plus system CPU time of this process (`RUSAGE_SELF`) or of its reaped children.
fn cpu_time(who: libc::c_int) -> Duration {
    // SAFETY: getrusage only writes the struct it is given.
    let usage = unsafe {
        let mut usage = std::mem::zeroed::<libc::rusage>();
        libc::getrusage(who, &mut usage);
        usage
    };
    let tv = |t: libc::timeval| Duration::new(t.tv_sec as u64, t.tv_usec as u32 * 1000);
    tv(usage.ru_utime) + tv(usage.ru_stime)
}

/// Reads `GET /locks` on one keep-alive connection in a loop until `stop`, counting reads, on
/// a thread of its own (outside the load generator, whose clients are measured).
fn read_all_locks(
    addr: std::net::SocketAddr,
    stop: Arc<AtomicBool>,
    reads: Arc<AtomicU64>,
) -> std::thread::JoinHandle<anyhow::Result<()>> {
    std::thread::spawn(move || {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()?;
        runtime.block_on(async move {
            let mut conn = Connection::connect(addr).await?;
            let get = request("GET", "/locks", None, false);
            while !stop.load(Ordering::Relaxed) {
                let status = conn.send(&get).await?;
                if status != 200 {
                    bail!("GET /locks answered {status}");
                }
                if conn.body().len() < READER_TABLE * 50 {
                    bail!("GET /locks answered only {} bytes", conn.body().len());
                }
                reads.fetch_add(1, Ordering::Relaxed);
            }
            Ok(())
        })
    })
}

/// A connection to `server`, once it serves one of the 100,000 held locks of the start-up
/// scenarios; fails, saying `when` it should have loaded them, if it does not.
async fn connect_to_held_locks(server: &Locker, when: &str) -> anyhow::Result<Connection> {
    let mut conn = Connection::connect(server.addr).await?;
    let status = conn
        .send(&request("GET", "/lock/held-050000", None, false))
        .await?;
    if status != 200 || !String::from_utf8_lossy(conn.body()).contains("key-50000") {
        bail!(
            "the server did not load the 100,000 locks {when}: GET /lock/held-050000 answered {status}"
        );
    }
    Ok(conn)
}

/// Server CPU microseconds per request, over warm-up and measurement (both were loaded); "n/a"
/// when no request completed in the measured period.
fn cpu_per(cpu: Duration, requests_per_second: f64, period: Period) -> String {
    if requests_per_second <= 0.0 {
        return "n/a".into();
    }
    let seconds = (period.warm_up + period.measured).as_secs_f64();
    format!(
        "{:.0}",
        cpu.as_secs_f64() * 1e6 / (requests_per_second * seconds)
    )
}

fn cores() -> usize {
    std::thread::available_parallelism().map_or(1, |n| n.get())
}

fn median(sorted: &[Duration]) -> Duration {
    sorted[sorted.len() / 2]
}

fn ratio(a: Duration, b: Duration) -> String {
    if b.is_zero() {
        return "n/a".into();
    }
    format!("{:.2}", a.as_secs_f64() / b.as_secs_f64())
}

fn mb(bytes: u64) -> f64 {
    bytes as f64 / 1_000_000.0
}

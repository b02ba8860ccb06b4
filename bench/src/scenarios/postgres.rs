//! Scenario 15 (issue 15): durable cycles on the PostgreSQL backend, with one server and with
//! two servers sharing one database, beside etcd (scenario 6) in the same run.
//!
//! The cluster is a throwaway one (`initdb` in the data directory, PostgreSQL's defaults:
//! `fsync=on`; the server asks for `synchronous_commit=on`), started by the benchmark on
//! loopback. Each own-lock cycle is two transactions' worth of requests, grouped by each
//! server's writer into one transaction per batch.

use std::time::Duration;

use locker_testkit::postgres::{self, Postgres};
use tempfile::TempDir;

use super::{Bench, CLIENTS, Running, cpu_per};
use crate::clients::OwnLockCycle;
use std::net::SocketAddr;
use std::time::Instant;

use anyhow::bail;

use crate::http::{Connection, request};
use crate::load::{Outcome, percentile};
use crate::report::{Row, ms, percent, thousands};
use crate::servers::{Locker, LockerOptions};

impl Bench {
    pub(super) async fn postgres(&mut self) -> anyhow::Result<()> {
        if !postgres::available() {
            let mut row = Row::plain("15", "PostgreSQL backend");
            row.comparison =
                "not run: PostgreSQL is not installed (Debian: apt-get install postgresql)".into();
            self.report.rows.push(row);
            return Ok(());
        }
        let cluster = Postgres::start_in(self.work.path());
        for n in [CLIENTS, 1] {
            let url = cluster.create_database();
            let server = self.locker_on(&url).await?;
            let addr = server.server.addr;
            let (outcome, cpu) =
                self.measure_on(&server.server, "15", |i| OwnLockCycle::connect(addr, i), n)?;
            let mut row = Row::measured(
                "15",
                "Durable cycles on PostgreSQL, one server",
                &outcome,
                "cycles/s",
            );
            row.comparison = format!(
                "{}server CPU {} µs/request",
                self.against_etcd(&outcome, n),
                cpu_per(cpu, 2.0 * outcome.rate(), self.settings.period)
            );
            self.report.rows.push(row);
            server.server.stop()?;
        }

        // Two servers on one database, the clients split between them.
        let url = cluster.create_database();
        let a = self.locker_on(&url).await?;
        let b = self.locker_on(&url).await?;
        let (a_addr, b_addr) = (a.server.addr, b.server.addr);
        let before = a.server.cpu_time()? + b.server.cpu_time()?;
        let outcome = self.measure(
            "15",
            |i| OwnLockCycle::connect(if i % 2 == 0 { a_addr } else { b_addr }, i),
            CLIENTS,
        )?;
        let cpu = a.server.cpu_time()? + b.server.cpu_time()? - before;
        let mut row = Row::measured(
            "15",
            "Durable cycles on PostgreSQL, two servers, one database",
            &outcome,
            "cycles/s",
        );
        row.comparison = format!(
            "{}servers' CPU {} µs/request",
            self.against_etcd(&outcome, CLIENTS),
            cpu_per(cpu, 2.0 * outcome.rate(), self.settings.period)
        );
        if let Some(etcd) = &self.etcd_many {
            row.judge("≥ etcd's cycles/s", outcome.rate() >= etcd.rate());
        }
        self.report.rows.push(row);

        // The hand-over across servers, on the same two servers (and database).
        let row = match cross_server_hand_over(a_addr, b_addr).await {
            Ok(latencies) => {
                let mut row = Row::plain(
                    "15",
                    "Hand-over across servers: unlock on one, the waiter on the other",
                );
                row.clients = "2".into();
                row.p50 = ms(percentile(&latencies, 50.0));
                row.p90 = ms(percentile(&latencies, 90.0));
                row.p99 = ms(percentile(&latencies, 99.0));
                row.max = ms(percentile(&latencies, 100.0));
                row.comparison = format!(
                    "from the unlock's answer (server B) to the waiter's 200 (server A, `?wait=10s`), {} hand-overs, alternating sides; the waiter's server hears of the commit by NOTIFY",
                    latencies.len()
                );
                row.judge(
                    "p99 ≤ 50 ms",
                    percentile(&latencies, 99.0) <= Duration::from_millis(50),
                );
                row
            }
            Err(e) => {
                let mut row = Row::plain("15", "Hand-over across servers");
                row.comparison = format!("failed: {e:#}");
                row
            }
        };
        self.report.rows.push(row);
        a.server.stop()?;
        b.server.stop()?;
        drop(cluster);
        Ok(())
    }

    /// "N % of etcd's rate (scenario 6); " for 64 clients when etcd ran, else nothing.
    fn against_etcd(&self, outcome: &Outcome, clients: usize) -> String {
        match &self.etcd_many {
            Some(etcd) if clients == CLIENTS => format!(
                "{} of etcd's {} cycles/s; ",
                percent(outcome.rate(), etcd.rate()),
                thousands(etcd.rate())
            ),
            _ => String::new(),
        }
    }

    /// A locker server keeping its locks in the database at `url`.
    async fn locker_on(&self, url: &str) -> anyhow::Result<Running> {
        let dir: TempDir = tempfile::Builder::new()
            .prefix("locker-pg-server-")
            .tempdir_in(self.work.path())?;
        let server = Locker::start(LockerOptions {
            bin_dir: &self.bins,
            dir: dir.path(),
            initial_state: None,
            log_level: &self.settings.log_level,
            database: Some(url),
        })
        .await?;
        // The listener connects in the background; give it a moment before load starts.
        tokio::time::sleep(Duration::from_millis(100)).await;
        Ok(Running { server, dir })
    }
}

/// Hand-overs of the lock `hand-over` between two clients on two servers: the holder unlocks
/// on its server while the other waits (`?wait=10s`) on the other; then they swap. Returns, per
/// hand-over, the time from the unlock's answer to the waiter's 200, sorted, in nanoseconds.
async fn cross_server_hand_over(a: SocketAddr, b: SocketAddr) -> anyhow::Result<Vec<u64>> {
    const ROUNDS: usize = 200;
    let servers = [a, b];
    let claim = |side: usize| format!(r#"{{"key":"k{side}","locked_by":"client-{side}"}}"#);
    let mut holder = Connection::connect(servers[0]).await?;
    let status = holder
        .send(&request("PUT", "/lock/hand-over", Some(&claim(0)), false))
        .await?;
    if status != 200 {
        bail!("the first lock answered {status}");
    }
    let mut latencies = Vec::with_capacity(ROUNDS);
    let mut holder_side = 0;
    for _ in 0..ROUNDS {
        let waiter_side = 1 - holder_side;
        let waiter_addr = servers[waiter_side];
        let body = claim(waiter_side);
        let waiter = tokio::spawn(async move {
            let mut conn = Connection::connect(waiter_addr).await?;
            let status = conn
                .send(&request(
                    "PUT",
                    "/lock/hand-over?wait=10s",
                    Some(&body),
                    false,
                ))
                .await?;
            anyhow::Ok((status, Instant::now(), conn))
        });
        // Until the waiter is in the queue on its server.
        let mut reader = Connection::connect(waiter_addr).await?;
        let queued_by = Instant::now() + Duration::from_secs(10);
        loop {
            reader
                .send(&request("GET", "/lock/hand-over", None, false))
                .await?;
            if String::from_utf8_lossy(reader.body()).contains("\"queue\":[{") {
                break;
            }
            if Instant::now() > queued_by {
                bail!("the waiter never showed in the queue");
            }
            tokio::time::sleep(Duration::from_micros(200)).await;
        }
        let status = holder
            .send(&request(
                "DELETE",
                "/lock/hand-over",
                Some(&claim(holder_side)),
                false,
            ))
            .await?;
        let unlocked = Instant::now();
        if status != 200 {
            bail!("the unlock answered {status}");
        }
        let (status, granted, conn) = waiter.await??;
        if status != 200 {
            bail!("the waiter was answered {status}, not granted");
        }
        latencies.push(granted.saturating_duration_since(unlocked).as_nanos() as u64);
        holder = conn;
        holder_side = waiter_side;
    }
    latencies.sort_unstable();
    Ok(latencies)
}

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
use crate::load::Outcome;
use crate::report::{Row, percent, thousands};
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
        Ok(Running { server, _dir: dir })
    }
}

//! A burst (issue 16): 4,096 lock requests that arrive at once, each on a lock of its own, then
//! as many unlocks. What matters is that no batch's commit goes far beyond the others: the
//! writer takes whatever is queued, up to its largest batch, into one fsync. The server's own
//! histograms of batch sizes and commit durations are read before and after.

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use tokio::task::JoinSet;

use super::{Bench, cpu_per};
use crate::http::{Connection, request};
use crate::http2::Http2Connection;
use crate::load::{Period, percentile};
use crate::report::{Row, ms, thousands};

/// Requests in one burst.
const BURST: usize = 4096;
/// HTTP/2 connections the burst travels on, as streams: 64 × 64.
const CONNECTIONS: usize = 64;
/// Bursts of locks, each followed by a burst of unlocks.
const ROUNDS: usize = 3;

impl Bench {
    /// Scenario 14: bursts of 4,096 requests sent before any answer is read.
    pub(super) async fn burst(&mut self) -> anyhow::Result<()> {
        let running = self.locker(None, &self.settings.log_level.clone()).await?;
        let addr = running.server.addr;
        let mut connections = Vec::with_capacity(CONNECTIONS);
        for _ in 0..CONNECTIONS {
            let conn = Http2Connection::connect(addr).await?;
            // The server's settings (its stream limit) arrive with a first answer.
            conn.send("GET", "/healthz", None).await?;
            if conn.max_streams() < BURST / CONNECTIONS {
                bail!(
                    "the server allows {} streams per connection; the burst needs {}",
                    conn.max_streams(),
                    BURST / CONNECTIONS
                );
            }
            connections.push(conn);
        }
        let before = Commits::scrape(addr).await?;
        let cpu = running.server.cpu_time()?;
        let mut latencies = Vec::with_capacity(2 * ROUNDS * BURST);
        let mut completions = Vec::with_capacity(2 * ROUNDS);
        for round in 0..ROUNDS {
            for method in ["PUT", "DELETE"] {
                let (took, mut each) = burst(&connections, method, round).await?;
                completions.push(took);
                latencies.append(&mut each);
            }
        }
        let cpu = running.server.cpu_time()? - cpu;
        let after = Commits::scrape(addr).await?;
        running.server.stop()?;

        latencies.sort_unstable();
        completions.sort_unstable();
        let requests = latencies.len();
        let batches = after.batches - before.batches;
        let mut row = Row::plain("14", "Burst of 4,096 requests (locks, then unlocks)");
        row.clients = format!("{CONNECTIONS}×{}", BURST / CONNECTIONS);
        let median = completions[completions.len() / 2];
        row.rate = format!(
            "{} req/s",
            thousands(BURST as f64 / median.as_secs_f64().max(1e-9))
        );
        row.p50 = ms(percentile(&latencies, 50.0));
        row.p90 = ms(percentile(&latencies, 90.0));
        row.p99 = ms(percentile(&latencies, 99.0));
        row.max = ms(percentile(&latencies, 100.0));
        // One "second" of this many requests makes cpu_per's division a plain one.
        let once = Period {
            warm_up: Duration::ZERO,
            measured: Duration::from_secs(1),
        };
        row.comparison = format!(
            "{} bursts; completion median {} ms, max {} ms; {} batches, the largest ≤ {} requests; commit mean {} ms, the longest ≤ {} ms (bucket bounds of the server's histograms); server CPU {} µs/request",
            completions.len(),
            ms(median),
            ms(*completions.last().expect("bursts ran")),
            thousands(batches),
            bound(after.largest_batch(&before)),
            ms(Duration::from_secs_f64(
                (after.seconds - before.seconds) / batches.max(1.0)
            )),
            bound(after.longest_commit(&before).map(|s| s * 1000.0)),
            cpu_per(cpu, requests as f64, once),
        );
        self.report.rows.push(row);
        Ok(())
    }
}

/// Sends one burst: request `i` is `method` on lock `burst-{i}` with its own key, all sent
/// before any answer is read. Returns how long the whole burst took and each request's
/// latency (ns, from the burst's start, since all arrive at once).
async fn burst(
    connections: &[Http2Connection],
    method: &str,
    round: usize,
) -> anyhow::Result<(Duration, Vec<u64>)> {
    let bodies: Vec<String> = (0..BURST)
        .map(|i| {
            locker_protocol::ClaimBody {
                key: &format!("key-{round}-{i}"),
                locked_by: &format!("client-{i}"),
            }
            .to_json()
        })
        .collect();
    let paths: Vec<String> = (0..BURST).map(|i| format!("/lock/burst-{i}")).collect();
    let began = Instant::now();
    let mut answers = JoinSet::new();
    for (i, (path, body)) in paths.iter().zip(&bodies).enumerate() {
        let answer = connections[i % connections.len()]
            .start(method, path, Some(body))
            .await?;
        answers.spawn(async move {
            let (status, body) = answer.await?;
            if status != 200 {
                bail!(
                    "request {i} of the burst answered {status}: {}",
                    String::from_utf8_lossy(&body)
                );
            }
            Ok(began.elapsed().as_nanos() as u64)
        });
    }
    let mut latencies = Vec::with_capacity(BURST);
    while let Some(done) = answers.join_next().await {
        latencies.push(done??);
    }
    Ok((began.elapsed(), latencies))
}

/// The writer's commit histograms as `/metrics` shows them at one time.
struct Commits {
    batches: f64,
    seconds: f64,
    /// Cumulative counts by upper bound, of batch sizes and of commit durations (seconds).
    sizes: Vec<(f64, f64)>,
    durations: Vec<(f64, f64)>,
}

impl Commits {
    async fn scrape(addr: SocketAddr) -> anyhow::Result<Commits> {
        let mut conn = Connection::connect(addr).await?;
        let status = conn.send(&request("GET", "/metrics", None, false)).await?;
        if status != 200 {
            bail!("GET /metrics answered {status}");
        }
        let text = String::from_utf8_lossy(conn.body());
        let value = |name: &str| -> anyhow::Result<f64> {
            text.lines()
                .find_map(|l| l.strip_prefix(name)?.strip_prefix(' '))
                .and_then(|v| v.trim().parse().ok())
                .with_context(|| format!("no {name} in /metrics"))
        };
        Ok(Commits {
            batches: value("locker_commit_duration_seconds_count")?,
            seconds: value("locker_commit_duration_seconds_sum")?,
            sizes: buckets(&text, "locker_commit_batch_size_bucket"),
            durations: buckets(&text, "locker_commit_duration_seconds_bucket"),
        })
    }

    /// The upper bound of the highest bucket of batch sizes that grew since `before`.
    fn largest_batch(&self, before: &Commits) -> Option<f64> {
        highest_grown(&self.sizes, &before.sizes)
    }

    /// The upper bound (seconds) of the highest bucket of commit durations that grew since
    /// `before`.
    fn longest_commit(&self, before: &Commits) -> Option<f64> {
        highest_grown(&self.durations, &before.durations)
    }
}

/// The buckets of histogram samples `name{le="B"} N`, in bound order.
fn buckets(text: &str, name: &str) -> Vec<(f64, f64)> {
    let mut buckets: Vec<(f64, f64)> = text
        .lines()
        .filter_map(|l| {
            let rest = l.strip_prefix(name)?.strip_prefix("{le=\"")?;
            let (le, count) = rest.split_once("\"} ")?;
            let le = if le == "+Inf" {
                f64::INFINITY
            } else {
                le.parse().ok()?
            };
            Some((le, count.trim().parse().ok()?))
        })
        .collect();
    buckets.sort_by(|a, b| a.0.total_cmp(&b.0));
    buckets
}

/// The bound of the lowest cumulative bucket that holds every observation made between
/// `before` and `after`: the upper bound of the largest of them.
fn highest_grown(after: &[(f64, f64)], before: &[(f64, f64)]) -> Option<f64> {
    let total = after.last()?.1 - before.last()?.1;
    after
        .iter()
        .zip(before)
        .find(|((_, a), (_, b))| a - b >= total)
        .map(|((le, _), _)| *le)
}

fn bound(x: Option<f64>) -> String {
    match x {
        Some(x) if x.is_finite() => format!("{x}"),
        Some(_) => "∞".into(),
        None => "n/a".into(),
    }
}

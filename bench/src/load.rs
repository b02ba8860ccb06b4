//! The load generator: a fixed number of clients, each a tokio task running one operation after
//! another, a warm-up that is not counted, then a measured period.
//!
//! An operation is whatever a [`Client`] does once (one GET, or a lock-unlock cycle); its
//! latency is taken around the whole of it. Only operations that start and finish inside the
//! measured period count, so throughput is `count / period`.

use std::future::Future;
use std::time::{Duration, Instant};

/// How long to warm up and to measure.
#[derive(Debug, Clone, Copy)]
pub struct Period {
    pub warm_up: Duration,
    pub measured: Duration,
}

/// One simulated client.
pub trait Client: Send + 'static {
    /// Performs one operation. An error ends this client (and is reported); a result that is
    /// merely unwanted (a 423 in contention) is not an error.
    fn run_once(&mut self) -> impl Future<Output = anyhow::Result<()>> + Send;
}

/// What a run measured.
#[derive(Debug, Clone)]
pub struct Outcome {
    pub clients: usize,
    /// Operations completed in the measured period.
    pub count: u64,
    pub measured: Duration,
    /// Latencies of the counted operations, sorted, in nanoseconds.
    pub latencies: Vec<u64>,
    /// Counted operations per client, in client order.
    pub per_client: Vec<u64>,
    /// The first error of each client that failed.
    pub errors: Vec<String>,
}

impl Outcome {
    /// Operations per second.
    pub fn rate(&self) -> f64 {
        self.count as f64 / self.measured.as_secs_f64()
    }

    /// The latency below which `p` percent of operations finished (nearest rank).
    pub fn percentile(&self, p: f64) -> Duration {
        if self.latencies.is_empty() {
            return Duration::ZERO;
        }
        let rank = ((p / 100.0) * self.latencies.len() as f64).ceil() as usize;
        let index = rank.clamp(1, self.latencies.len()) - 1;
        Duration::from_nanos(self.latencies[index])
    }

    pub fn max(&self) -> Duration {
        Duration::from_nanos(self.latencies.last().copied().unwrap_or(0))
    }

    /// Jain's fairness index over the clients' counts: 1 when all got the same, 1/n when one
    /// client got everything.
    pub fn fairness(&self) -> f64 {
        let n = self.per_client.len() as f64;
        let sum: f64 = self.per_client.iter().map(|&c| c as f64).sum();
        let squares: f64 = self.per_client.iter().map(|&c| (c as f64).powi(2)).sum();
        if squares == 0.0 {
            return 0.0;
        }
        sum * sum / (n * squares)
    }
}

/// Runs `clients` concurrently for the warm-up and the measured period.
pub async fn run<C: Client>(clients: Vec<C>, period: Period) -> Outcome {
    let n = clients.len();
    let start = Instant::now();
    let from = start + period.warm_up;
    let until = from + period.measured;
    let tasks: Vec<_> = clients
        .into_iter()
        .map(|mut client| {
            tokio::spawn(async move {
                let mut latencies = Vec::with_capacity(64 * 1024);
                let mut error = None;
                loop {
                    let began = Instant::now();
                    if began >= until {
                        break;
                    }
                    if let Err(e) = client.run_once().await {
                        error = Some(format!("{e:#}"));
                        break;
                    }
                    let ended = Instant::now();
                    if began >= from && ended <= until {
                        latencies.push((ended - began).as_nanos() as u64);
                    }
                }
                (latencies, error)
            })
        })
        .collect();
    let mut all = Vec::new();
    let mut per_client = Vec::with_capacity(n);
    let mut errors = Vec::new();
    for task in tasks {
        match task.await {
            Ok((latencies, error)) => {
                per_client.push(latencies.len() as u64);
                all.extend_from_slice(&latencies);
                errors.extend(error);
            }
            Err(e) => {
                per_client.push(0);
                errors.push(format!("client task failed: {e}"));
            }
        }
    }
    all.sort_unstable();
    Outcome {
        clients: n,
        count: all.len() as u64,
        measured: period.measured,
        latencies: all,
        per_client,
        errors,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    struct Sleeper(Duration);

    impl Client for Sleeper {
        async fn run_once(&mut self) -> anyhow::Result<()> {
            tokio::time::sleep(self.0).await;
            Ok(())
        }
    }

    #[tokio::test]
    async fn counts_only_the_measured_period() {
        let period = Period {
            warm_up: Duration::from_millis(100),
            measured: Duration::from_millis(200),
        };
        let clients = (0..4).map(|_| Sleeper(Duration::from_millis(10))).collect();
        let outcome = run(clients, period).await;
        // 4 clients x 200 ms / 10 ms = 80 at most; sleeping overshoots, so expect fewer.
        assert!(
            (40..=80).contains(&outcome.count),
            "expected about 80 operations in the measured 200 ms, got {}",
            outcome.count
        );
        assert!(outcome.percentile(50.0) >= Duration::from_millis(10));
        assert!(outcome.errors.is_empty());
        assert!(outcome.fairness() > 0.9, "{:?}", outcome.per_client);
    }

    #[test]
    fn fairness_is_one_over_n_when_one_client_gets_everything() {
        let outcome = Outcome {
            clients: 4,
            count: 10,
            measured: Duration::from_secs(1),
            latencies: vec![],
            per_client: vec![10, 0, 0, 0],
            errors: vec![],
        };
        assert!((outcome.fairness() - 0.25).abs() < 1e-9);
    }
}

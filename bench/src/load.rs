//! The load generator: a fixed number of clients, each a tokio task running one operation after
//! another, a warm-up that is not counted, then a measured period.
//!
//! An operation is whatever a [`Client`] does once (one GET, or a lock-unlock cycle); its
//! latency is taken around the whole of it. Only operations that start and finish inside the
//! measured period count, so throughput is `count / period`.

use std::future::Future;
use std::sync::{Barrier, OnceLock};
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
        percentile(&self.latencies, p)
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

/// The latency below which `p` percent of the sorted latencies `sorted` (ns) lie (nearest
/// rank); zero if there are none.
pub fn percentile(sorted: &[u64], p: f64) -> Duration {
    if sorted.is_empty() {
        return Duration::ZERO;
    }
    let rank = ((p / 100.0) * sorted.len() as f64).ceil() as usize;
    let index = rank.clamp(1, sorted.len()) - 1;
    Duration::from_nanos(sorted[index])
}

/// Runs `n` clients made by `make` (given each client's index) for the warm-up and the
/// measured period, on one single-threaded tokio runtime per core.
///
/// Like `wrk`'s threads, each runtime owns its share of the connections outright: no work
/// stealing, no cross-thread wake-ups, so the generator costs as little CPU as it can.
pub fn run<C, F, Fut>(n: usize, make: F, period: Period) -> anyhow::Result<Outcome>
where
    C: Client,
    F: Fn(usize) -> Fut + Sync,
    Fut: Future<Output = anyhow::Result<C>>,
{
    let threads = std::thread::available_parallelism()
        .map_or(1, |t| t.get())
        .min(n.max(1));
    let ready = Barrier::new(threads);
    let start = OnceLock::new();
    let results = std::thread::scope(|scope| {
        let handles: Vec<_> = (0..threads)
            .map(|t| {
                let (make, ready, start) = (&make, &ready, &start);
                scope.spawn(move || {
                    let runtime = tokio::runtime::Builder::new_current_thread()
                        .enable_all()
                        .build()?;
                    runtime.block_on(async move {
                        let mut clients = Vec::new();
                        let mut failed = None;
                        for i in (t..n).step_by(threads) {
                            match make(i).await {
                                Ok(c) => clients.push((i, c)),
                                Err(e) => {
                                    failed = Some(e);
                                    break;
                                }
                            }
                        }
                        // Every thread waits here, failed or not, so none waits forever.
                        ready.wait();
                        if let Some(e) = failed {
                            return Err(e);
                        }
                        let start: Instant = *start.get_or_init(Instant::now);
                        let tasks: Vec<_> = clients
                            .into_iter()
                            .map(|(i, c)| (i, tokio::spawn(drive(c, start, period))))
                            .collect();
                        let mut out = Vec::new();
                        for (i, task) in tasks {
                            out.push((i, task.await));
                        }
                        Ok(out)
                    })
                })
            })
            .collect();
        handles
            .into_iter()
            .map(|h| h.join().expect("generator thread panicked"))
            .collect::<Vec<anyhow::Result<_>>>()
    });
    let mut per_client = vec![0; n];
    let mut all = Vec::new();
    let mut errors = Vec::new();
    for thread in results {
        for (i, result) in thread? {
            match result {
                Ok((latencies, error)) => {
                    per_client[i] = latencies.len() as u64;
                    all.extend_from_slice(&latencies);
                    errors.extend(error);
                }
                Err(e) => errors.push(format!("client task failed: {e}")),
            }
        }
    }
    all.sort_unstable();
    Ok(Outcome {
        clients: n,
        count: all.len() as u64,
        measured: period.measured,
        latencies: all,
        per_client,
        errors,
    })
}

/// Runs one client until the measured period ends; returns the latencies (ns) of its
/// operations that lay wholly inside the measured period, and its error if it failed.
async fn drive<C: Client>(
    mut client: C,
    start: Instant,
    period: Period,
) -> (Vec<u64>, Option<String>) {
    let from = start + period.warm_up;
    let until = from + period.measured;
    let mut latencies = Vec::with_capacity(64 * 1024);
    loop {
        let began = Instant::now();
        if began >= until {
            return (latencies, None);
        }
        if let Err(e) = client.run_once().await {
            return (latencies, Some(format!("{e:#}")));
        }
        let ended = Instant::now();
        if began >= from && ended <= until {
            latencies.push((ended - began).as_nanos() as u64);
        }
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

    #[test]
    fn counts_only_the_measured_period() {
        let period = Period {
            warm_up: Duration::from_millis(100),
            measured: Duration::from_millis(200),
        };
        let outcome = run(
            4,
            |_| async { Ok(Sleeper(Duration::from_millis(10))) },
            period,
        )
        .unwrap();
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

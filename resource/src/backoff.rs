//! Full-jitter exponential back-off between attempts to take a lock.
//!
//! Attempt `n` (counting from 0) waits a uniformly random time in `[0, min(cap, base × 2^n)]`
//! ("full jitter"), so builds queued behind one lock spread their retries instead of hammering the
//! server in step. The random source is injected so tests can seed it.

use std::time::Duration;

use rand::{Rng, RngExt};

/// The wait before each retry of one operation.
#[derive(Debug)]
pub struct Backoff<R> {
    base: Duration,
    cap: Duration,
    attempt: u32,
    rng: R,
}

impl<R: Rng> Backoff<R> {
    /// A back-off whose first wait is at most `base` and whose waits never exceed `cap`.
    pub fn new(base: Duration, cap: Duration, rng: R) -> Self {
        Self {
            base,
            cap,
            attempt: 0,
            rng,
        }
    }

    /// The longest wait the next call to [`Backoff::next_delay`] may return.
    pub fn ceiling(&self) -> Duration {
        let factor = 2u32.checked_pow(self.attempt).unwrap_or(u32::MAX);
        self.base.saturating_mul(factor).min(self.cap)
    }

    /// The wait before the next attempt; each call moves on to the next attempt.
    pub fn next_delay(&mut self) -> Duration {
        let ceiling = self.ceiling();
        self.attempt = self.attempt.saturating_add(1);
        let nanos = u64::try_from(ceiling.as_nanos()).unwrap_or(u64::MAX);
        Duration::from_nanos(self.rng.random_range(0..=nanos))
    }

    /// Starts again from the first attempt's wait.
    pub fn reset(&mut self) {
        self.attempt = 0;
    }

    /// How many waits have been handed out so far.
    pub fn attempts(&self) -> u32 {
        self.attempt
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::SeedableRng;
    use rand::rngs::StdRng;

    const BASE: Duration = Duration::from_millis(100);
    const CAP: Duration = Duration::from_secs(3);

    fn seeded(seed: u64) -> Backoff<StdRng> {
        Backoff::new(BASE, CAP, StdRng::seed_from_u64(seed))
    }

    #[test]
    fn never_waits_longer_than_the_cap() {
        for seed in 0..20 {
            let mut backoff = seeded(seed);
            for attempt in 0..200 {
                let delay = backoff.next_delay();
                assert!(
                    delay <= CAP,
                    "seed {seed} attempt {attempt}: {delay:?} is above the cap {CAP:?}"
                );
            }
        }
    }

    #[test]
    fn each_wait_stays_under_its_attempts_ceiling() {
        let mut backoff = seeded(7);
        for attempt in 0..10u32 {
            let ceiling = BASE.saturating_mul(2u32.pow(attempt)).min(CAP);
            assert_eq!(backoff.ceiling(), ceiling, "ceiling of attempt {attempt}");
            let delay = backoff.next_delay();
            assert!(
                delay <= ceiling,
                "attempt {attempt}: {delay:?} is above {ceiling:?}"
            );
        }
    }

    #[test]
    fn ceiling_doubles_until_the_cap_then_stays() {
        let mut backoff = seeded(1);
        let mut ceilings = Vec::new();
        for _ in 0..8 {
            ceilings.push(backoff.ceiling());
            backoff.next_delay();
        }
        let expected: Vec<Duration> = [100, 200, 400, 800, 1600, 3000, 3000, 3000]
            .into_iter()
            .map(Duration::from_millis)
            .collect();
        assert_eq!(ceilings, expected);
    }

    #[test]
    fn waits_grow_with_the_attempts_until_the_cap() {
        // Averaged over many seeds the n-th wait is about half its ceiling: it must grow until the
        // ceiling reaches the cap, and sit near half the cap afterwards.
        let runs = 2000;
        let mut sums = [Duration::ZERO; 8];
        for seed in 0..runs {
            let mut backoff = seeded(seed);
            for sum in &mut sums {
                *sum += backoff.next_delay();
            }
        }
        let means: Vec<Duration> = sums.iter().map(|sum| *sum / runs as u32).collect();
        for pair in means.windows(2).take(5) {
            assert!(
                pair[1] > pair[0],
                "mean waits should grow until the cap: {means:?}"
            );
        }
        for mean in &means[5..] {
            let half_cap = CAP / 2;
            let off = mean.abs_diff(half_cap);
            assert!(
                off < CAP / 10,
                "mean wait {mean:?} should be near {half_cap:?} once capped: {means:?}"
            );
        }
    }

    #[test]
    fn two_seeds_give_different_sequences() {
        let sequence = |seed| {
            let mut backoff = seeded(seed);
            (0..10).map(|_| backoff.next_delay()).collect::<Vec<_>>()
        };
        assert_ne!(sequence(1), sequence(2));
        assert_eq!(sequence(3), sequence(3), "one seed must give one sequence");
    }

    #[test]
    fn huge_attempt_counts_do_not_overflow() {
        let mut backoff = Backoff::new(
            Duration::from_secs(1),
            Duration::MAX,
            StdRng::seed_from_u64(0),
        );
        for _ in 0..100 {
            backoff.next_delay();
        }
        assert_eq!(backoff.attempts(), 100);
        assert!(backoff.ceiling() >= Duration::from_secs(u64::from(u32::MAX)));
    }
}

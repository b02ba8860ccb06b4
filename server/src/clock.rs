//! The one source of "now": the system clock in production, a clock that tests move by hand.
//!
//! Everything that needs the time (when a lock was taken, and later when a lease ends) asks a
//! [`Clock`], so a test can move time forward instead of sleeping.

use std::sync::atomic::{AtomicI64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

/// Tells the time.
pub trait Clock: Send + Sync + 'static {
    /// The current time.
    fn now(&self) -> SystemTime;
}

/// The system's wall clock.
#[derive(Debug, Clone, Copy, Default)]
pub struct SystemClock;

impl Clock for SystemClock {
    fn now(&self) -> SystemTime {
        SystemTime::now()
    }
}

/// A clock that stands still until it is told to move; clones share one time.
#[derive(Debug, Clone)]
pub struct ManualClock(Arc<Mutex<SystemTime>>);

impl ManualClock {
    /// A clock that reads `start`.
    pub fn new(start: SystemTime) -> ManualClock {
        ManualClock(Arc::new(Mutex::new(start)))
    }

    /// Moves the clock forward by `by`.
    pub fn advance(&self, by: Duration) {
        let mut now = self.0.lock().unwrap_or_else(|e| e.into_inner());
        *now += by;
    }

    /// Sets the clock to `to` (which may be in the past, as a wall clock can be set back).
    pub fn set(&self, to: SystemTime) {
        *self.0.lock().unwrap_or_else(|e| e.into_inner()) = to;
    }
}

impl Clock for ManualClock {
    fn now(&self) -> SystemTime {
        *self.0.lock().unwrap_or_else(|e| e.into_inner())
    }
}

/// Another clock's time, read off this server's: the base clock moved by the offset last
/// observed. The PostgreSQL backend decides on the database's clock and tells this one what it
/// read there, so that the server's reads and the writer's timers agree with the database even
/// when the two machines' clocks do not (a server whose clock is ahead would otherwise show a
/// lease as ended, and try to end it, before the database says it has).
#[derive(Clone)]
pub struct OffsetClock {
    base: Arc<dyn Clock>,
    /// The other clock's time minus the base clock's, in nanoseconds.
    offset: Arc<AtomicI64>,
}

impl OffsetClock {
    /// Reads like `base` until an offset is observed.
    pub fn new(base: Arc<dyn Clock>) -> OffsetClock {
        OffsetClock {
            base,
            offset: Arc::new(AtomicI64::new(0)),
        }
    }

    /// The other clock read `other` just now: from here on this clock reads as it does.
    /// (Read after a round trip, `other` is a little old, so this clock errs late, never
    /// early: a lease is not ended before the other clock says so.)
    pub fn observe(&self, other: SystemTime) {
        let base = self.base.now();
        let offset = match other.duration_since(base) {
            Ok(ahead) => i64::try_from(ahead.as_nanos()).unwrap_or(i64::MAX),
            Err(behind) => -i64::try_from(behind.duration().as_nanos()).unwrap_or(i64::MAX),
        };
        self.offset.store(offset, Ordering::Relaxed);
    }
}

impl Clock for OffsetClock {
    fn now(&self) -> SystemTime {
        let base = self.base.now();
        let offset = self.offset.load(Ordering::Relaxed);
        let by = Duration::from_nanos(offset.unsigned_abs());
        if offset >= 0 { base + by } else { base - by }
    }
}

impl std::fmt::Debug for OffsetClock {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("OffsetClock")
            .field("offset_ns", &self.offset.load(Ordering::Relaxed))
            .finish_non_exhaustive()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_manual_clock_moves_only_when_told_and_clones_share_it() {
        let start = SystemTime::UNIX_EPOCH + Duration::from_secs(1_000);
        let clock = ManualClock::new(start);
        let other = clock.clone();
        assert_eq!(clock.now(), start);
        other.advance(Duration::from_secs(90));
        assert_eq!(clock.now(), start + Duration::from_secs(90));
        clock.set(start);
        assert_eq!(other.now(), start);
    }

    #[test]
    fn an_offset_clock_reads_as_the_clock_it_observed_ahead_or_behind() {
        let start = SystemTime::UNIX_EPOCH + Duration::from_secs(1_000);
        let base = ManualClock::new(start);
        let clock = OffsetClock::new(Arc::new(base.clone()));
        assert_eq!(clock.now(), start, "no offset until one is observed");
        clock.observe(start + Duration::from_millis(3_600_250));
        base.advance(Duration::from_secs(2));
        assert_eq!(clock.now(), start + Duration::from_millis(3_602_250));
        clock.clone().observe(start - Duration::from_secs(10));
        assert_eq!(
            clock.now(),
            start - Duration::from_secs(10),
            "a clone shares the offset; behind works too"
        );
    }
}

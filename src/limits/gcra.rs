//! The generic cell rate algorithm (GCRA), pure: one number of state per key,
//! the theoretical arrival time (TAT), and `now` as an argument.
//!
//! GCRA is the algorithm of Envoy's local rate limiter and of Redis Cell: a
//! limit of `count` per `period` admits one call every emission interval
//! `T = period / count`, and tolerates `burst` calls at once. A call at `now`
//! is admitted when `max(TAT, now) + T <= now + burst × T`, and then moves
//! the TAT to `max(TAT, now) + T`; otherwise it is refused and may retry
//! exactly when that inequality will hold. The Redis script
//! (`redis.rs`) is the same arithmetic in Lua, in microseconds of Redis's
//! own clock; this is the in-process one, in nanoseconds.

use std::time::Duration;

/// One limit's parameters.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Gcra {
    /// The emission interval, nanoseconds (at least 1).
    interval: u64,
    /// How many calls may come at once (at least 1).
    burst: u32,
}

/// What one call at `now` gets.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Step {
    /// Admitted: the key's new TAT, and how many more calls would be
    /// admitted right now.
    Allowed {
        /// The TAT to store.
        tat: u64,
        /// Calls still admitted at `now` after this one.
        remaining: u32,
    },
    /// Refused: the call would be admitted after this long.
    Limited {
        /// Exactly when a retry is admitted, from `now`.
        retry_after: Duration,
    },
}

impl Gcra {
    /// A limit admitting one call per `interval` with `burst` at once;
    /// both are raised to at least 1.
    pub fn new(interval: Duration, burst: u32) -> Self {
        let interval = u64::try_from(interval.as_nanos()).unwrap_or(u64::MAX);
        Self {
            interval: interval.max(1),
            burst: burst.max(1),
        }
    }

    /// The emission interval.
    pub fn interval(&self) -> Duration {
        Duration::from_nanos(self.interval)
    }

    /// How many calls may come at once.
    pub fn burst(&self) -> u32 {
        self.burst
    }

    /// The same limit spread over `shares` holders: each admits one call per
    /// `shares × T`, `burst / shares` at once (at least one), so that
    /// together they admit about what the whole limit does.
    pub fn share(&self, shares: u32) -> Self {
        let shares = shares.max(1);
        Self {
            interval: self.interval.saturating_mul(u64::from(shares)),
            burst: self.burst.div_ceil(shares),
        }
    }

    /// The call at `now` against the stored `tat` (0 for a key never seen).
    pub fn step(&self, tat: u64, now: u64) -> Step {
        let tolerance = self.interval.saturating_mul(u64::from(self.burst));
        let next = tat.max(now).saturating_add(self.interval);
        let horizon = now.saturating_add(tolerance);
        if next > horizon {
            Step::Limited {
                retry_after: Duration::from_nanos(next - horizon),
            }
        } else {
            let remaining = (horizon - next) / self.interval;
            Step::Allowed {
                tat: next,
                remaining: u32::try_from(remaining).unwrap_or(u32::MAX),
            }
        }
    }

    /// How many calls would be admitted at `now` without consuming any, and
    /// when the next one is admitted if none is.
    pub fn budget(&self, tat: u64, now: u64) -> (u32, Option<Duration>) {
        match self.step(tat, now) {
            Step::Allowed { remaining, .. } => (remaining.saturating_add(1), None),
            Step::Limited { retry_after } => (0, Some(retry_after)),
        }
    }

    /// How long a key's state matters after `tat`: once `now` passes the TAT
    /// the key is as good as never seen, so a store may forget it.
    pub fn idle_after(&self, tat: u64, now: u64) -> Duration {
        Duration::from_nanos(tat.saturating_sub(now))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const SECOND: u64 = 1_000_000_000;

    fn run(gcra: &Gcra, tat: &mut u64, now: u64) -> Step {
        let step = gcra.step(*tat, now);
        if let Step::Allowed { tat: next, .. } = step {
            *tat = next;
        }
        step
    }

    #[test]
    fn a_burst_is_admitted_then_the_next_call_waits_exactly_one_interval() {
        // 10 per second, burst 3: T = 100 ms.
        let gcra = Gcra::new(Duration::from_millis(100), 3);
        let (mut tat, now) = (0, 50 * SECOND);
        let remaining: Vec<_> = (0..3)
            .map(|_| match run(&gcra, &mut tat, now) {
                Step::Allowed { remaining, .. } => remaining,
                other => panic!("{other:?}"),
            })
            .collect();
        assert_eq!(remaining, [2, 1, 0]);
        assert_eq!(
            run(&gcra, &mut tat, now),
            Step::Limited {
                retry_after: Duration::from_millis(100)
            }
        );
        // 40 ms later the wait is 60 ms, to the nanosecond.
        assert_eq!(
            run(&gcra, &mut tat, now + 40_000_000),
            Step::Limited {
                retry_after: Duration::from_millis(60)
            }
        );
        // One nanosecond early is still refused; on time is admitted.
        assert!(matches!(
            run(&gcra, &mut tat, now + 100_000_000 - 1),
            Step::Limited { .. }
        ));
        assert_eq!(
            run(&gcra, &mut tat, now + 100_000_000),
            Step::Allowed {
                tat: now + 400_000_000,
                remaining: 0
            }
        );
    }

    #[test]
    fn an_idle_key_refills_to_its_burst_and_no_further() {
        let gcra = Gcra::new(Duration::from_secs(1), 5);
        let mut tat = 0;
        for _ in 0..5 {
            assert!(matches!(run(&gcra, &mut tat, SECOND), Step::Allowed { .. }));
        }
        assert!(matches!(run(&gcra, &mut tat, SECOND), Step::Limited { .. }));
        // Two intervals later, two calls; an hour later, the burst and no more.
        assert_eq!(gcra.budget(tat, 3 * SECOND), (2, None));
        assert_eq!(gcra.budget(tat, 3600 * SECOND), (5, None));
        assert_eq!(gcra.idle_after(tat, SECOND), Duration::from_secs(5));
    }

    #[test]
    fn budget_never_consumes() {
        let gcra = Gcra::new(Duration::from_millis(10), 2);
        let tat = 0;
        assert_eq!(gcra.budget(tat, SECOND), (2, None));
        assert_eq!(gcra.budget(tat, SECOND), (2, None));
        let Step::Allowed { tat, .. } = gcra.step(tat, SECOND) else {
            panic!()
        };
        let Step::Allowed { tat, .. } = gcra.step(tat, SECOND) else {
            panic!()
        };
        assert_eq!(
            gcra.budget(tat, SECOND),
            (0, Some(Duration::from_millis(10)))
        );
    }

    #[test]
    fn a_share_admits_its_part_of_the_limit() {
        let gcra = Gcra::new(Duration::from_millis(100), 10).share(3);
        assert_eq!(gcra.interval(), Duration::from_millis(300));
        assert_eq!(gcra.burst(), 4);
        assert_eq!(Gcra::new(Duration::from_secs(1), 1).share(5).burst(), 1);
    }

    #[test]
    fn extreme_parameters_saturate_instead_of_overflowing() {
        let gcra = Gcra::new(Duration::from_secs(u64::MAX), u32::MAX);
        assert!(matches!(
            gcra.step(0, u64::MAX),
            Step::Limited { .. } | Step::Allowed { .. }
        ));
        let tiny = Gcra::new(Duration::ZERO, 0);
        assert_eq!(
            (tiny.interval(), tiny.burst()),
            (Duration::from_nanos(1), 1)
        );
    }
}

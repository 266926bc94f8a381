//! Per-deployment rate limits over a 60-second window, lock-free.
//!
//! Each limit is a GCRA (generic cell rate algorithm) cell: one atomic "theoretical arrival
//! time". A limit of N per minute is a bucket of N that refills continuously over 60 s, so a
//! burst of N is allowed and then one unit every 60/N s. Requests are checked (and, for
//! `rpm_limit`, charged) on admission; tokens are charged when the response's `usage` arrives,
//! so a deployment may overshoot `tpm_limit` by the requests in flight and is then refused
//! until the window has paid the debt back.

use std::sync::atomic::{AtomicU64, Ordering};

/// The window, in nanoseconds.
pub const WINDOW_NS: u64 = 60_000_000_000;

/// One GCRA cell.
#[derive(Debug, Default)]
pub struct Window {
    /// Theoretical arrival time, in [`crate::routing::Clock`] nanoseconds.
    tat: AtomicU64,
}

impl Window {
    /// Takes one unit if the window has room; else the seconds until it has.
    pub fn take_one(&self, limit: u64, now: u64) -> Result<(), u64> {
        let cost = cost(1, limit);
        let mut tat = self.tat.load(Ordering::Relaxed);
        loop {
            let next = tat.max(now) + cost;
            if next - now > WINDOW_NS {
                return Err(secs_until(next - now - WINDOW_NS));
            }
            match self
                .tat
                .compare_exchange_weak(tat, next, Ordering::Relaxed, Ordering::Relaxed)
            {
                Ok(_) => return Ok(()),
                Err(seen) => tat = seen,
            }
        }
    }

    /// Ok while the window is not exhausted (units already charged are below the limit).
    pub fn check(&self, now: u64) -> Result<(), u64> {
        let tat = self.tat.load(Ordering::Relaxed);
        if tat > now + WINDOW_NS {
            Err(secs_until(tat - now - WINDOW_NS))
        } else if tat == now + WINDOW_NS {
            Err(1)
        } else {
            Ok(())
        }
    }

    /// Charges `units` (e.g. tokens used) without checking.
    pub fn charge(&self, units: u64, limit: u64, now: u64) {
        let cost = cost(units, limit);
        let _ = self
            .tat
            .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |tat| {
                Some(tat.max(now).saturating_add(cost))
            });
    }
}

fn cost(units: u64, limit: u64) -> u64 {
    let v = u128::from(units) * u128::from(WINDOW_NS) / u128::from(limit.max(1));
    u64::try_from(v).unwrap_or(u64::MAX / 2)
}

/// Whole seconds, rounded up, at least 1.
fn secs_until(ns: u64) -> u64 {
    ns.div_ceil(1_000_000_000).max(1)
}

#[cfg(test)]
mod tests {
    use super::*;

    const S: u64 = 1_000_000_000;

    #[test]
    fn rpm_allows_a_burst_of_the_limit_then_refills() {
        let w = Window::default();
        let t0 = 1000 * S;
        for _ in 0..3 {
            w.take_one(3, t0).unwrap();
        }
        let wait = w.take_one(3, t0).unwrap_err();
        assert_eq!(wait, 20, "one unit comes back every 60/3 s");
        assert!(w.take_one(3, t0 + 19 * S).is_err());
        w.take_one(3, t0 + 20 * S).unwrap();
    }

    #[test]
    fn tokens_are_charged_after_the_fact_and_block_until_paid_back() {
        let w = Window::default();
        let t0 = 1000 * S;
        w.check(t0).unwrap();
        w.charge(60, 100, t0);
        w.check(t0).unwrap();
        w.charge(60, 100, t0); // 120 of 100 used
        let wait = w.check(t0).unwrap_err();
        assert_eq!(wait, 12, "20 tokens over at 100/min take 12 s");
        w.check(t0 + 13 * S).unwrap();
    }
}

//! `decide(...)`: the autoscaler's target for one deployment, from the calls in flight and
//! queued at the gateway.
//!
//! Pure: no I/O, no clock (the caller passes `now` and the signals), so it is table-tested
//! (`autoscale/tests.rs`). The reconciler samples every autoscaled deployment on each pass (at
//! least every `tick`), calls [`decide`], writes a new target to the store and plans it in the
//! same pass.
//!
//! The rules:
//! - demand = calls in flight + calls queued for a replica; replicas wanted =
//!   ceil(average demand / `target_inflight_per_replica`), over a stable window (60 s) and a
//!   short panic window (6 s); the larger wins, so a burst scales up within seconds while a
//!   slow rise or fall follows the stable window;
//! - up at once; down only after the lower want held for `scale_down_delay_secs` without a
//!   break (a flapping load keeps its replicas), to the highest want seen meanwhile;
//! - never while a replica is still starting (it would be the first one stopped);
//! - never below `min_capacity` or above `max_capacity`; with `min_capacity` 0, the last
//!   replica goes only after `scale_to_zero_after_secs` without a single call (and with no
//!   replica starting);
//! - at zero, any call wakes the deployment at once (the gateway holds it meanwhile).

use std::collections::VecDeque;
use std::time::{Duration, Instant};

use berth_core::Autoscaling;

/// What the gateway measured for one deployment at one instant.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Demand {
    /// Calls being answered by the deployment's routed replicas.
    pub in_flight: u32,
    /// Calls waiting for a ready replica (the bounded hold).
    pub queued: u32,
    /// Calls admitted since the gateway started (counts calls too short to be seen in flight).
    pub calls: u64,
}

/// The windows the averages are taken over.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Windows {
    pub stable: Duration,
    pub panic: Duration,
}

impl Default for Windows {
    fn default() -> Self {
        Self {
            stable: Duration::from_secs(60),
            panic: Duration::from_secs(6),
        }
    }
}

/// What the autoscaler remembers of one deployment between passes.
#[derive(Debug, Clone, Default)]
pub struct ScaleState {
    /// Demand samples in the stable window, oldest first.
    samples: VecDeque<(Instant, u32)>,
    last_calls: Option<u64>,
    /// The last time a call was in flight, queued, or admitted.
    last_active: Option<Instant>,
    /// Since when fewer replicas have been wanted than there are, and the most wanted since.
    below: Option<(Instant, u32)>,
    /// The generation the state was built under: an API change restarts the scale-down wait.
    generation: i64,
}

/// The signals of one pass.
#[derive(Debug, Clone, Copy)]
pub struct Signals {
    pub demand: Demand,
    /// The current target, in replicas (`capacity / base_capacity`).
    pub replicas: u32,
    /// Live replicas that are not ready yet.
    pub starting: u32,
    pub generation: i64,
    pub now: Instant,
}

/// Which way a decision goes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Direction {
    Up,
    Down,
}

impl Direction {
    pub fn as_str(self) -> &'static str {
        match self {
            Direction::Up => "up",
            Direction::Down => "down",
        }
    }
}

/// A new target, with the signal values that caused it.
#[derive(Debug, Clone, PartialEq)]
pub struct Decision {
    /// Replicas before and after.
    pub from: u32,
    pub to: u32,
    pub direction: Direction,
    /// `wake` (a call for a deployment at zero), `burst` (the panic window), `load` (the
    /// stable window), `quiet` (lower demand for the scale-down delay), `idle` (no call for
    /// the scale-to-zero time), `bounds` (the target was outside min..max).
    pub reason: &'static str,
    pub in_flight: u32,
    pub queued: u32,
    pub stable_avg: f64,
    pub panic_avg: f64,
}

fn wanted(avg: f64, per_replica: u32) -> u32 {
    let v = (avg / f64::from(per_replica.max(1))).ceil();
    if v.is_finite() && v > 0.0 {
        v.min(f64::from(u32::MAX)) as u32
    } else {
        0
    }
}

/// Records this pass's signals in `state` and returns the new target when it changes.
/// `sample` says whether this pass adds a point to the windows (the caller samples at a steady
/// rate; extra passes, e.g. on a nudge, only decide).
pub fn decide(
    a: &Autoscaling,
    base_capacity: u32,
    windows: &Windows,
    state: &mut ScaleState,
    s: &Signals,
    sample: bool,
) -> Option<Decision> {
    let now = s.now;
    let base = base_capacity.max(1);
    let (min_r, max_r) = (a.min_capacity / base, a.max_capacity / base);
    let demand = s.demand.in_flight.saturating_add(s.demand.queued);

    if state.generation != s.generation {
        state.generation = s.generation;
        state.below = None;
    }
    if sample || state.samples.is_empty() {
        state.samples.push_back((now, demand));
    }
    while state
        .samples
        .front()
        .is_some_and(|(t, _)| now.saturating_duration_since(*t) > windows.stable)
    {
        state.samples.pop_front();
    }
    let called = state.last_calls.is_some_and(|c| c != s.demand.calls);
    state.last_calls = Some(s.demand.calls);
    if demand > 0 || called || s.starting > 0 || state.last_active.is_none() {
        // A replica starting counts as activity (it was asked for), so the idle time runs
        // from when it is ready; so does the first pass: a restart does not scale to zero at
        // once.
        state.last_active = Some(now);
    }
    let idle_for = state
        .last_active
        .map_or(Duration::ZERO, |t| now.saturating_duration_since(t));

    let avg = |window: Duration| {
        let (sum, n) = state
            .samples
            .iter()
            .filter(|(t, _)| now.saturating_duration_since(*t) <= window)
            .fold((0u64, 0u64), |(sum, n), (_, v)| {
                (sum + u64::from(*v), n + 1)
            });
        if n == 0 {
            0.0
        } else {
            sum as f64 / n as f64
        }
    };
    let stable_avg = avg(windows.stable);
    let panic_avg = avg(windows.panic);
    let want_stable = wanted(stable_avg, a.target_inflight_per_replica);
    let want_panic = wanted(panic_avg, a.target_inflight_per_replica);
    let current = s.replicas;

    let decision = |to: u32, reason: &'static str| {
        Some(Decision {
            from: current,
            to,
            direction: if to > current {
                Direction::Up
            } else {
                Direction::Down
            },
            reason,
            in_flight: s.demand.in_flight,
            queued: s.demand.queued,
            stable_avg,
            panic_avg,
        })
    };

    // Bounds changed under the target: bring it back first.
    let bounded = current.clamp(min_r, max_r);
    if bounded != current {
        state.below = None;
        return decision(bounded, "bounds");
    }

    if current == 0 {
        if demand > 0 || called {
            // Woken: at least one replica, more at once if the burst asks for them.
            state.below = None;
            let to = want_panic.max(want_stable).clamp(1, max_r.max(1));
            return decision(to, "wake");
        }
        return None;
    }

    // The floor: with min 0, one replica stays until the deployment has been idle long enough.
    let zero_after = Duration::from_secs(u64::from(a.scale_to_zero_after_secs));
    let floor = if min_r == 0 && idle_for < zero_after {
        1
    } else {
        min_r
    };
    let want = want_stable.max(want_panic).clamp(floor, max_r);

    if want > current {
        state.below = None;
        let reason = if want_panic > want_stable {
            "burst"
        } else {
            "load"
        };
        return decision(want, reason);
    }
    if want == current {
        state.below = None;
        return None;
    }
    // Fewer wanted. A replica that is still starting would be the one stopped: wait for it.
    let (since, peak) = state.below.get_or_insert((now, want));
    *peak = (*peak).max(want);
    if s.starting > 0 {
        return None;
    }
    if want == 0 {
        // Idle for the scale-to-zero time (only then is the floor 0): straight to zero.
        state.below = None;
        return decision(0, "idle");
    }
    let delay = Duration::from_secs(u64::from(a.scale_down_delay_secs));
    if now.saturating_duration_since(*since) >= delay {
        let to = *peak;
        state.below = None;
        return decision(to, "quiet");
    }
    None
}

#[cfg(test)]
mod tests;

//! Choosing a replica: least outstanding requests, behind a small trait.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use crate::routing::Backend;

/// Picks one of a deployment's ready replicas for a request.
pub trait Balancer: Send + Sync + std::fmt::Debug + 'static {
    /// The replica to use, or `None` if every one is ejected (or there are none).
    fn pick<'a>(&self, backends: &'a [Arc<Backend>], now: u64) -> Option<&'a Arc<Backend>>;
}

/// Least outstanding requests: the replica with the fewest responses in flight. Ties are
/// broken round-robin, so sequential requests still spread over all replicas.
#[derive(Debug, Default)]
pub struct LeastOutstanding {
    next: AtomicUsize,
}

impl Balancer for LeastOutstanding {
    fn pick<'a>(&self, backends: &'a [Arc<Backend>], now: u64) -> Option<&'a Arc<Backend>> {
        let n = backends.len();
        if n == 0 {
            return None;
        }
        if n == 1 {
            return backends.first().filter(|b| !b.is_ejected(now));
        }
        let start = self.next.fetch_add(1, Ordering::Relaxed) % n;
        let mut best: Option<&Arc<Backend>> = None;
        for i in 0..n {
            let b = &backends[(start + i) % n];
            if b.is_ejected(now) {
                continue;
            }
            if best.is_none_or(|cur| b.in_flight() < cur.in_flight()) {
                best = Some(b);
            }
        }
        best
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::routing::InFlight;

    fn backends(n: u16) -> Vec<Arc<Backend>> {
        (0..n)
            .map(|i| {
                Arc::new(Backend::new(
                    format!("r{i}"),
                    ([127, 0, 0, 1], 9000 + i).into(),
                    "",
                ))
            })
            .collect()
    }

    #[test]
    fn picks_the_least_loaded_and_skips_ejected() {
        let bs = backends(3);
        let lb = LeastOutstanding::default();
        let _a = InFlight::new(bs[0].clone());
        let _b = InFlight::new(bs[0].clone());
        let _c = InFlight::new(bs[2].clone());
        for _ in 0..5 {
            assert_eq!(lb.pick(&bs, 0).unwrap().replica_id, "r1");
        }
        bs[1].eject_until(100);
        for _ in 0..5 {
            assert_eq!(lb.pick(&bs, 50).unwrap().replica_id, "r2");
        }
        assert_eq!(
            lb.pick(&bs, 100).unwrap().replica_id,
            "r1",
            "ejection expires"
        );
    }

    #[test]
    fn ties_rotate_and_all_ejected_is_none() {
        let bs = backends(3);
        let lb = LeastOutstanding::default();
        let mut seen: Vec<_> = (0..3)
            .map(|_| lb.pick(&bs, 0).unwrap().replica_id.clone())
            .collect();
        seen.sort();
        assert_eq!(seen, ["r0", "r1", "r2"]);
        for b in &bs {
            b.eject_until(10);
        }
        assert!(lb.pick(&bs, 5).is_none());
        assert!(lb.pick(&[], 5).is_none());
    }

    #[test]
    fn the_guard_releases_on_drop() {
        let bs = backends(1);
        let g = InFlight::new(bs[0].clone());
        assert_eq!(bs[0].in_flight(), 1);
        drop(g);
        assert_eq!(bs[0].in_flight(), 0);
    }
}

//! Engine metrics and their Prometheus text rendering.
//!
//! Small enough to own: counters and gauges are atomics, histograms hold a short mutex only
//! while observing or rendering (never across an `.await`).

use std::fmt::Write as _;
use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};
use std::sync::Mutex;

/// A fixed-bucket histogram.
#[derive(Debug)]
pub struct Histogram {
    bounds: &'static [f64],
    inner: Mutex<HistogramData>,
}

#[derive(Debug, Default, Clone)]
struct HistogramData {
    counts: Vec<u64>,
    sum: f64,
    count: u64,
}

impl Histogram {
    /// A histogram with the given upper bounds (ascending); `+Inf` is implied.
    pub fn new(bounds: &'static [f64]) -> Self {
        Self {
            bounds,
            inner: Mutex::new(HistogramData {
                counts: vec![0; bounds.len()],
                ..HistogramData::default()
            }),
        }
    }

    /// Records one observation.
    pub fn observe(&self, v: f64) {
        let mut d = self.inner.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(i) = self.bounds.iter().position(|b| v <= *b) {
            d.counts[i] += 1;
        }
        d.sum += v;
        d.count += 1;
    }

    fn render(&self, out: &mut String, name: &str, help: &str) {
        let d = self.inner.lock().unwrap_or_else(|e| e.into_inner()).clone();
        let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} histogram");
        let mut cumulative = 0;
        for (b, c) in self.bounds.iter().zip(&d.counts) {
            cumulative += c;
            let _ = writeln!(out, "{name}_bucket{{le=\"{b}\"}} {cumulative}");
        }
        let _ = writeln!(out, "{name}_bucket{{le=\"+Inf\"}} {}", d.count);
        let _ = writeln!(out, "{name}_sum {}", d.sum);
        let _ = writeln!(out, "{name}_count {}", d.count);
    }
}

const LATENCY_BOUNDS: &[f64] = &[
    0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0,
];
const TOKEN_BOUNDS: &[f64] = &[
    0.002, 0.005, 0.01, 0.015, 0.02, 0.03, 0.05, 0.075, 0.1, 0.25, 0.5, 1.0,
];
const BATCH_BOUNDS: &[f64] = &[1.0, 2.0, 3.0, 4.0, 6.0, 8.0, 12.0, 16.0, 32.0, 64.0];

/// How a request ended, for `berth_engine_requests_total{outcome}`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    /// Finished normally (`stop` or `length`).
    Ok,
    /// Refused with 400.
    Invalid,
    /// Refused with 503 (loading, queue full, draining).
    Rejected,
    /// The client went away before it finished.
    Cancelled,
    /// The engine failed while generating.
    Failed,
}

const OUTCOMES: [(Outcome, &str); 5] = [
    (Outcome::Ok, "ok"),
    (Outcome::Invalid, "invalid"),
    (Outcome::Rejected, "rejected"),
    (Outcome::Cancelled, "cancelled"),
    (Outcome::Failed, "failed"),
];

/// All engine metrics.
#[derive(Debug)]
pub struct Metrics {
    requests: [AtomicU64; 5],
    pub prompt_tokens: AtomicU64,
    pub generated_tokens: AtomicU64,
    pub queue_depth: AtomicI64,
    pub active_sequences: AtomicI64,
    pub max_active_sequences: AtomicI64,
    pub decode_steps: AtomicU64,
    pub slots: AtomicI64,
    pub ready: AtomicI64,
    pub ttft: Histogram,
    pub inter_token: Histogram,
    pub request_duration: Histogram,
    pub batch_sequences: Histogram,
}

impl Default for Metrics {
    fn default() -> Self {
        Self {
            requests: Default::default(),
            prompt_tokens: AtomicU64::new(0),
            generated_tokens: AtomicU64::new(0),
            queue_depth: AtomicI64::new(0),
            active_sequences: AtomicI64::new(0),
            max_active_sequences: AtomicI64::new(0),
            decode_steps: AtomicU64::new(0),
            slots: AtomicI64::new(0),
            ready: AtomicI64::new(0),
            ttft: Histogram::new(LATENCY_BOUNDS),
            inter_token: Histogram::new(TOKEN_BOUNDS),
            request_duration: Histogram::new(LATENCY_BOUNDS),
            batch_sequences: Histogram::new(BATCH_BOUNDS),
        }
    }
}

impl Metrics {
    /// Counts one finished request.
    pub fn request(&self, outcome: Outcome) {
        let i = OUTCOMES
            .iter()
            .position(|(o, _)| *o == outcome)
            .unwrap_or(0);
        self.requests[i].fetch_add(1, Ordering::Relaxed);
    }

    /// Sets the number of active sequences and tracks its high-water mark.
    pub fn set_active(&self, n: usize) {
        let n = n as i64;
        self.active_sequences.store(n, Ordering::Relaxed);
        self.max_active_sequences.fetch_max(n, Ordering::Relaxed);
    }

    /// The Prometheus text exposition (format 0.0.4).
    pub fn render(&self) -> String {
        let mut out = String::with_capacity(4096);
        let _ = writeln!(
            out,
            "# HELP berth_engine_requests_total Completion requests by outcome.\n\
             # TYPE berth_engine_requests_total counter"
        );
        for (i, (_, label)) in OUTCOMES.iter().enumerate() {
            let v = self.requests[i].load(Ordering::Relaxed);
            let _ = writeln!(
                out,
                "berth_engine_requests_total{{outcome=\"{label}\"}} {v}"
            );
        }
        let counters = [
            (
                "berth_engine_prompt_tokens_total",
                "Prompt tokens processed.",
                self.prompt_tokens.load(Ordering::Relaxed),
            ),
            (
                "berth_engine_generated_tokens_total",
                "Tokens generated.",
                self.generated_tokens.load(Ordering::Relaxed),
            ),
            (
                "berth_engine_decode_steps_total",
                "llama.cpp decode calls.",
                self.decode_steps.load(Ordering::Relaxed),
            ),
        ];
        for (name, help, v) in counters {
            let _ = writeln!(
                out,
                "# HELP {name} {help}\n# TYPE {name} counter\n{name} {v}"
            );
        }
        let gauges = [
            (
                "berth_engine_queue_depth",
                "Requests waiting for a free sequence slot.",
                &self.queue_depth,
            ),
            (
                "berth_engine_active_sequences",
                "Sequences being prefilled or decoded.",
                &self.active_sequences,
            ),
            (
                "berth_engine_max_active_sequences",
                "Most sequences ever decoded together.",
                &self.max_active_sequences,
            ),
            (
                "berth_engine_slots",
                "Sequence slots (--parallel).",
                &self.slots,
            ),
            (
                "berth_engine_ready",
                "1 once the model is loaded and warmed up.",
                &self.ready,
            ),
        ];
        for (name, help, v) in gauges {
            let v = v.load(Ordering::Relaxed);
            let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} gauge\n{name} {v}");
        }
        self.ttft.render(
            &mut out,
            "berth_engine_time_to_first_token_seconds",
            "Time from request arrival to its first generated token.",
        );
        self.inter_token.render(
            &mut out,
            "berth_engine_time_per_output_token_seconds",
            "Time between consecutive generated tokens of a sequence.",
        );
        self.request_duration.render(
            &mut out,
            "berth_engine_request_duration_seconds",
            "Time from request arrival to its last token.",
        );
        self.batch_sequences.render(
            &mut out,
            "berth_engine_batch_sequences",
            "Sequences in each decode step (more than 1: continuous batching at work).",
        );
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn histogram_buckets_are_cumulative() {
        let m = Metrics::default();
        m.batch_sequences.observe(1.0);
        m.batch_sequences.observe(4.0);
        m.batch_sequences.observe(4.0);
        m.batch_sequences.observe(100.0);
        let text = m.render();
        assert!(text.contains("berth_engine_batch_sequences_bucket{le=\"1\"} 1\n"));
        assert!(text.contains("berth_engine_batch_sequences_bucket{le=\"3\"} 1\n"));
        assert!(text.contains("berth_engine_batch_sequences_bucket{le=\"4\"} 3\n"));
        assert!(text.contains("berth_engine_batch_sequences_bucket{le=\"64\"} 3\n"));
        assert!(text.contains("berth_engine_batch_sequences_bucket{le=\"+Inf\"} 4\n"));
        assert!(text.contains("berth_engine_batch_sequences_count 4\n"));
        assert!(text.contains("berth_engine_batch_sequences_sum 109\n"));
    }

    #[test]
    fn counters_gauges_and_high_water_mark() {
        let m = Metrics::default();
        m.request(Outcome::Ok);
        m.request(Outcome::Invalid);
        m.request(Outcome::Ok);
        m.set_active(3);
        m.set_active(1);
        let text = m.render();
        assert!(text.contains("berth_engine_requests_total{outcome=\"ok\"} 2\n"));
        assert!(text.contains("berth_engine_requests_total{outcome=\"invalid\"} 1\n"));
        assert!(text.contains("berth_engine_active_sequences 1\n"));
        assert!(text.contains("berth_engine_max_active_sequences 3\n"));
        assert!(text.contains("# TYPE berth_engine_time_to_first_token_seconds histogram\n"));
    }
}

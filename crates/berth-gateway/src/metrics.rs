//! What the gateway measures: Prometheus families for the admin listener's `/metrics`, and each
//! deployment's recent intervals for its workspace's `/stats`.
//!
//! Every call is recorded once, when it ends (its last byte went out, it failed, or the client
//! left): outcome code, duration, time to first streamed chunk, tokens. A deployment's metric
//! handles are looked up once, when it first appears in routing, and kept in its state, so the
//! answered path only adds to atomics; other outcomes look their series up by label.
//! Gauges (in flight per replica, waiting calls) are read from the routing snapshot when
//! scraped, not kept up to date on the hot path.

use std::sync::{Arc, Mutex};
use std::time::{Instant, SystemTime, UNIX_EPOCH};

use berth_api::stats::{interval_starts, StatsPoint, INTERVAL_SECS, POINTS};
use prometheus_client::encoding::{EncodeLabelSet, EncodeLabelValue, LabelValueEncoder};
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::registry::{Registry, Unit};

/// Which API a call came through.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Api {
    /// `/api/v1/services/aigc/text-generation/generation`.
    Native,
    /// `/compatible-mode/v1/chat/completions`.
    Compatible,
}

impl Api {
    fn index(self) -> usize {
        match self {
            Api::Native => 0,
            Api::Compatible => 1,
        }
    }
}

impl EncodeLabelValue for Api {
    fn encode(&self, encoder: &mut LabelValueEncoder) -> Result<(), std::fmt::Error> {
        use std::fmt::Write;
        encoder.write_str(match self {
            Api::Native => "native",
            Api::Compatible => "compatible",
        })
    }
}

/// A workspace and one of its deployments. `deployment` is empty for calls that named no
/// deployment of the workspace (a tenant cannot grow the label set with made-up names).
#[derive(Debug, Clone, PartialEq, Eq, Hash, EncodeLabelSet)]
pub struct DeploymentLabels {
    pub workspace: Arc<String>,
    pub deployment: Arc<String>,
}

#[derive(Debug, Clone, PartialEq, Eq, Hash, EncodeLabelSet)]
pub struct CallLabels {
    pub workspace: Arc<String>,
    pub deployment: Arc<String>,
    pub api: Api,
    /// The HTTP status the client got.
    pub code: u16,
}

#[derive(Debug, Clone, PartialEq, Eq, Hash, EncodeLabelSet)]
pub struct ApiLabels {
    pub workspace: Arc<String>,
    pub deployment: Arc<String>,
    pub api: Api,
}

#[derive(Debug, Clone, PartialEq, Eq, Hash, EncodeLabelSet)]
pub struct ThrottleLabels {
    pub workspace: Arc<String>,
    pub deployment: Arc<String>,
    /// `rpm` or `tpm`.
    pub limit: &'static str,
}

#[derive(Debug, Clone, PartialEq, Eq, Hash, EncodeLabelSet)]
pub struct ReplicaLabels {
    pub workspace: Arc<String>,
    pub deployment: Arc<String>,
    pub replica: String,
}

type Histograms<L> = Family<L, Histogram, fn() -> Histogram>;

fn duration_histogram() -> Histogram {
    Histogram::new([
        0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0,
    ])
}

fn ttft_histogram() -> Histogram {
    Histogram::new([
        0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.0, 5.0, 10.0, 30.0,
    ])
}

fn hold_histogram() -> Histogram {
    Histogram::new([0.01, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0])
}

/// The gateway's Prometheus families. Cheap to clone (the families are shared).
#[derive(Debug, Clone)]
pub struct GatewayMetrics {
    requests: Family<CallLabels, Counter>,
    duration: Histograms<ApiLabels>,
    ttft: Histograms<ApiLabels>,
    input_tokens: Family<DeploymentLabels, Counter>,
    output_tokens: Family<DeploymentLabels, Counter>,
    throttled: Family<ThrottleLabels, Counter>,
    hold: Histograms<DeploymentLabels>,
    pub(crate) in_flight: Family<ReplicaLabels, Gauge>,
    pub(crate) waiting: Family<DeploymentLabels, Gauge>,
}

impl Default for GatewayMetrics {
    fn default() -> Self {
        Self {
            requests: Family::default(),
            duration: Family::new_with_constructor(duration_histogram),
            ttft: Family::new_with_constructor(ttft_histogram),
            input_tokens: Family::default(),
            output_tokens: Family::default(),
            throttled: Family::default(),
            hold: Family::new_with_constructor(hold_histogram),
            in_flight: Family::default(),
            waiting: Family::default(),
        }
    }
}

impl GatewayMetrics {
    /// Adds the families to `registry` (names get the registry's prefix, `berth_` in berth).
    pub fn register(&self, registry: &mut Registry) {
        registry.register(
            "requests",
            "Inference calls by workspace, deployment, API and HTTP status answered",
            self.requests.clone(),
        );
        registry.register_with_unit(
            "request_duration",
            "Time from a call's arrival to its last byte",
            Unit::Seconds,
            self.duration.clone(),
        );
        registry.register_with_unit(
            "time_to_first_token",
            "Time from a streamed call's arrival to its first chunk",
            Unit::Seconds,
            self.ttft.clone(),
        );
        registry.register(
            "input_tokens",
            "Prompt tokens of answered calls, as the replicas reported them",
            self.input_tokens.clone(),
        );
        registry.register(
            "output_tokens",
            "Generated tokens of answered calls, as the replicas reported them",
            self.output_tokens.clone(),
        );
        registry.register(
            "throttled",
            "Calls refused by a deployment's rpm_limit or tpm_limit",
            self.throttled.clone(),
        );
        registry.register_with_unit(
            "hold",
            "Time calls waited for a ready replica (those that had to wait)",
            Unit::Seconds,
            self.hold.clone(),
        );
        registry.register(
            "replica_in_flight",
            "Calls in flight per routed replica",
            self.in_flight.clone(),
        );
        registry.register(
            "hold_queue_depth",
            "Calls waiting for a ready replica, per deployment",
            self.waiting.clone(),
        );
    }

    /// Counts a call that never reached a deployment: malformed, or naming no deployment of
    /// the workspace.
    pub(crate) fn unrouted(&self, workspace: &str, api: Api, code: u16) {
        self.requests
            .get_or_create(&CallLabels {
                workspace: Arc::new(workspace.to_owned()),
                deployment: Arc::default(),
                api,
                code,
            })
            .inc();
    }

    /// The handles of one deployment, looked up once.
    pub(crate) fn deployment(&self, workspace: &str, deployment: &str) -> DeploymentMetrics {
        let labels = DeploymentLabels {
            workspace: Arc::new(workspace.to_owned()),
            deployment: Arc::new(deployment.to_owned()),
        };
        let per_api = |api: Api| {
            let l = ApiLabels {
                workspace: labels.workspace.clone(),
                deployment: labels.deployment.clone(),
                api,
            };
            ApiHandles {
                ok: self.requests.get_or_create_owned(&CallLabels {
                    workspace: l.workspace.clone(),
                    deployment: l.deployment.clone(),
                    api,
                    code: 200,
                }),
                duration: self.duration.get_or_create_owned(&l),
                ttft: self.ttft.get_or_create_owned(&l),
            }
        };
        DeploymentMetrics {
            apis: [per_api(Api::Native), per_api(Api::Compatible)],
            input_tokens: self.input_tokens.get_or_create_owned(&labels),
            output_tokens: self.output_tokens.get_or_create_owned(&labels),
            hold: self.hold.get_or_create_owned(&labels),
            family: self.clone(),
            labels,
            series: Mutex::default(),
        }
    }
}

#[derive(Debug)]
struct ApiHandles {
    ok: Counter,
    duration: Histogram,
    ttft: Histogram,
}

/// One deployment's metric handles and recent intervals; kept in its routing state.
#[derive(Debug)]
pub(crate) struct DeploymentMetrics {
    apis: [ApiHandles; 2],
    input_tokens: Counter,
    output_tokens: Counter,
    hold: Histogram,
    family: GatewayMetrics,
    pub labels: DeploymentLabels,
    series: Mutex<Series>,
}

/// How one call ended.
#[derive(Debug, Clone, Copy, PartialEq)]
pub(crate) struct Ended {
    pub api: Api,
    pub code: u16,
    pub duration_s: f64,
    pub ttft_s: Option<f64>,
    pub input_tokens: u64,
    pub output_tokens: u64,
}

impl DeploymentMetrics {
    pub fn ended(&self, call: &Ended) {
        let h = &self.apis[call.api.index()];
        if call.code == 200 {
            h.ok.inc();
        } else {
            self.family
                .requests
                .get_or_create(&CallLabels {
                    workspace: self.labels.workspace.clone(),
                    deployment: self.labels.deployment.clone(),
                    api: call.api,
                    code: call.code,
                })
                .inc();
        }
        h.duration.observe(call.duration_s);
        if let Some(t) = call.ttft_s {
            h.ttft.observe(t);
        }
        if call.input_tokens > 0 {
            self.input_tokens.inc_by(call.input_tokens);
        }
        if call.output_tokens > 0 {
            self.output_tokens.inc_by(call.output_tokens);
        }
        self.series
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .record(unix_now(), call);
    }

    /// A call refused by a rate limit (it is also counted as ended, with 429).
    pub fn throttled(&self, limit: &'static str) {
        self.family
            .throttled
            .get_or_create(&ThrottleLabels {
                workspace: self.labels.workspace.clone(),
                deployment: self.labels.deployment.clone(),
                limit,
            })
            .inc();
    }

    /// A call waited `since.elapsed()` for a ready replica.
    pub fn held(&self, since: Instant) {
        self.hold.observe(since.elapsed().as_secs_f64());
    }

    /// The recent intervals, oldest first, up to the current one.
    pub fn points(&self) -> Vec<StatsPoint> {
        self.series
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .points(unix_now())
    }
}

fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

/// One interval as it fills.
#[derive(Debug, Clone, Copy, Default)]
struct Bucket {
    start: u64,
    requests: u64,
    errors: u64,
    throttled: u64,
    ttft_ms: f64,
    ttft_n: u64,
    duration_ms: f64,
    input_tokens: u64,
    output_tokens: u64,
}

/// The last [`POINTS`] intervals of [`INTERVAL_SECS`], in a ring indexed by interval number.
#[derive(Debug)]
struct Series {
    ring: [Bucket; POINTS],
}

impl Default for Series {
    fn default() -> Self {
        Self {
            ring: [Bucket::default(); POINTS],
        }
    }
}

impl Series {
    fn record(&mut self, now: u64, call: &Ended) {
        let start = now - now % INTERVAL_SECS;
        let b = &mut self.ring[(start / INTERVAL_SECS) as usize % POINTS];
        if b.start != start {
            *b = Bucket {
                start,
                ..Bucket::default()
            };
        }
        b.requests += 1;
        match call.code {
            429 => b.throttled += 1,
            c if c >= 400 => b.errors += 1,
            _ => {}
        }
        if let Some(t) = call.ttft_s {
            b.ttft_ms += t * 1000.0;
            b.ttft_n += 1;
        }
        b.duration_ms += call.duration_s * 1000.0;
        b.input_tokens += call.input_tokens;
        b.output_tokens += call.output_tokens;
    }

    fn points(&self, now: u64) -> Vec<StatsPoint> {
        interval_starts(now)
            .map(|start| {
                let b = &self.ring[(start / INTERVAL_SECS) as usize % POINTS];
                if b.start != start || b.requests == 0 {
                    return StatsPoint {
                        start,
                        ..StatsPoint::default()
                    };
                }
                StatsPoint {
                    start,
                    requests: b.requests,
                    errors: b.errors,
                    throttled: b.throttled,
                    ttft_ms: (b.ttft_n > 0).then(|| b.ttft_ms / b.ttft_n as f64),
                    duration_ms: Some(b.duration_ms / b.requests as f64),
                    input_tokens: b.input_tokens,
                    output_tokens: b.output_tokens,
                }
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn call(code: u16, ttft: Option<f64>) -> Ended {
        Ended {
            api: Api::Compatible,
            code,
            duration_s: 0.5,
            ttft_s: ttft,
            input_tokens: 10,
            output_tokens: 5,
        }
    }

    #[test]
    fn series_keeps_the_last_intervals_and_answers_gaps_as_zeros() {
        let mut s = Series::default();
        let t0 = 1_000_000; // an interval start
        s.record(t0 + 1, &call(200, Some(0.1)));
        s.record(t0 + 9, &call(200, Some(0.3)));
        s.record(t0 + 9, &call(429, None));
        s.record(t0 + 25, &call(500, None));
        let p = s.points(t0 + 25);
        assert_eq!(p.len(), POINTS);
        assert_eq!(p[POINTS - 1].start, t0 + 20);
        let first = p[POINTS - 3];
        assert_eq!(first.start, t0);
        assert_eq!((first.requests, first.errors, first.throttled), (3, 0, 1));
        assert!((first.ttft_ms.unwrap() - 200.0).abs() < 1e-9);
        assert_eq!(first.duration_ms, Some(500.0));
        assert_eq!((first.input_tokens, first.output_tokens), (30, 15));
        assert_eq!(p[POINTS - 2].requests, 0, "the quiet interval");
        assert_eq!(p[POINTS - 2].duration_ms, None);
        assert_eq!(p[POINTS - 1].errors, 1);
        // Five minutes on, the old intervals have left the window even though their ring
        // slots were never overwritten.
        let later = s.points(t0 + 20 + INTERVAL_SECS * POINTS as u64);
        assert!(later.iter().all(|p| p.requests == 0));
        assert!(later
            .windows(2)
            .all(|w| w[1].start == w[0].start + INTERVAL_SECS));
    }

    #[test]
    fn answered_and_failed_calls_land_in_their_own_series() {
        let m = GatewayMetrics::default();
        let d = m.deployment("ws", "dep");
        d.ended(&call(200, Some(0.2)));
        d.ended(&call(200, None));
        d.ended(&call(503, None));
        m.unrouted("ws", Api::Native, 404);
        let mut registry = Registry::with_prefix("berth");
        m.register(&mut registry);
        let mut text = String::new();
        prometheus_client::encoding::text::encode(&mut text, &registry).unwrap();
        let line = |needle: &str| {
            text.lines()
                .find(|l| l.starts_with(needle))
                .unwrap_or_else(|| panic!("{needle} missing in\n{text}"))
                .rsplit(' ')
                .next()
                .unwrap()
                .to_owned()
        };
        let ok = "berth_requests_total{workspace=\"ws\",deployment=\"dep\",api=\"compatible\",code=\"200\"}";
        assert_eq!(line(ok), "2");
        assert_eq!(line("berth_requests_total{workspace=\"ws\",deployment=\"dep\",api=\"compatible\",code=\"503\"}"), "1");
        assert_eq!(line("berth_requests_total{workspace=\"ws\",deployment=\"\",api=\"native\",code=\"404\"}"), "1");
        assert_eq!(
            line("berth_input_tokens_total{workspace=\"ws\",deployment=\"dep\"}"),
            "30"
        );
        assert_eq!(line("berth_time_to_first_token_seconds_count{workspace=\"ws\",deployment=\"dep\",api=\"compatible\"}"), "1");
        assert_eq!(line("berth_request_duration_seconds_count{workspace=\"ws\",deployment=\"dep\",api=\"compatible\"}"), "3");
    }
}

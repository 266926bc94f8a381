//! `berth engine`: one replica's model server. llama.cpp (through `llama-cpp-2`) behind an
//! OpenAI-compatible HTTP API, with continuous batching, `/health` readiness, Prometheus
//! `/metrics` and graceful draining.
//!
//! Layout: [`worker`] owns llama.cpp on a dedicated decode thread; [`http`] is the axum surface;
//! [`params`] checks requests; [`render`] builds responses and SSE frames; [`reply`] shapes
//! generated text into content, tool calls and log-probabilities; [`structured`] compiles output
//! constraints (`response_format`, forced tool calls) with llguidance; [`tools`] checks tools,
//! writes them into the prompt and finds calls in the text; [`template`] renders tool-aware
//! GGUF chat templates; [`text`] holds the incremental UTF-8
//! and stop-sequence logic; [`metrics`] renders Prometheus text.

pub mod api;
pub mod guard;
pub mod http;
pub mod metrics;
pub mod params;
pub mod render;
pub mod reply;
pub mod structured;
pub mod template;
pub mod text;
pub mod tools;
pub mod worker;

use std::path::PathBuf;
use std::sync::atomic::Ordering;
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use anyhow::Context as _;
use clap::Args;
use tokio::sync::{oneshot, Semaphore};

use crate::http::AppState;
use crate::metrics::Metrics;
use crate::worker::WorkerConfig;

/// Flags of `berth engine`.
#[derive(Debug, Clone, Args)]
pub struct EngineArgs {
    /// GGUF model file.
    #[arg(long)]
    pub model: PathBuf,
    /// Address to listen on.
    #[arg(long, default_value = "127.0.0.1")]
    pub host: String,
    /// Port to listen on (0 picks a free one; the chosen port is logged).
    #[arg(long)]
    pub port: u16,
    /// Model id served by /v1/models and echoed in responses [default: the file stem].
    #[arg(long)]
    pub alias: Option<String>,
    /// Total context size in tokens, shared by the slots: each sequence gets ctx/parallel
    /// positions for prompt plus completion.
    #[arg(long, default_value_t = 2048, value_parser = clap::value_parser!(u32).range(64..=1_048_576))]
    pub ctx: u32,
    /// Sequences decoded together (continuous batching slots).
    #[arg(long, default_value_t = 4, value_parser = clap::value_parser!(u32).range(1..=256))]
    pub parallel: u32,
    /// llama.cpp threads for prompt processing and decoding [default: available cores].
    #[arg(long, value_parser = clap::value_parser!(u32).range(1..=1024))]
    pub threads: Option<u32>,
    /// Requests allowed to wait for a free slot; beyond that the engine answers 503.
    #[arg(long, default_value_t = 64)]
    pub queue: u32,
    /// Tokens per llama.cpp decode call (prompt chunks plus one token per running sequence).
    #[arg(long, default_value_t = 512, value_parser = clap::value_parser!(u32).range(16..=65_536))]
    pub batch: u32,
    /// Seconds in-flight requests get to finish after SIGTERM/SIGINT.
    #[arg(long, default_value_t = 30)]
    pub grace_secs: u64,
    /// Answer only calls that carry this secret as a bearer token (berth gives each replica
    /// its own at spawn).
    #[arg(long, env = guard::SECRET_ENV, hide_env_values = true, value_name = "SECRET")]
    pub replica_secret: Option<String>,
    /// With a secret: stop (draining first) after this many seconds without an authenticated
    /// health check, i.e. when the berth that started this replica is gone for good.
    #[arg(long, env = guard::ORPHAN_TIMEOUT_ENV, value_name = "SECS", value_parser = parse_secs)]
    pub orphan_timeout_secs: Option<f64>,
}

fn parse_secs(v: &str) -> Result<f64, String> {
    match v.trim().parse::<f64>() {
        Ok(s) if s.is_finite() && (0.0..=1e9).contains(&s) => Ok(s),
        _ => Err(format!("{v:?} is not a number of seconds")),
    }
}

impl EngineArgs {
    fn model_id(&self) -> String {
        self.alias.clone().unwrap_or_else(|| {
            self.model
                .file_stem()
                .map(|s| s.to_string_lossy().into_owned())
                .unwrap_or_else(|| "model".into())
        })
    }

    fn threads(&self) -> u32 {
        self.threads.unwrap_or_else(|| {
            std::thread::available_parallelism()
                .map(|n| n.get() as u32)
                .unwrap_or(1)
        })
    }
}

/// Runs the engine until SIGINT/SIGTERM, then drains in-flight requests for up to
/// `--grace-secs` and returns `Ok`. Fails if the model cannot be loaded.
pub async fn run(args: EngineArgs) -> anyhow::Result<()> {
    anyhow::ensure!(
        args.model.is_file(),
        "model file {} does not exist (fetch models with scripts/fetch-models)",
        args.model.display()
    );
    // llama.cpp is chatty; its logs go through tracing, and only when debug logging is on.
    let verbose = tracing::enabled!(tracing::Level::DEBUG);
    llama_cpp_2::send_logs_to_tracing(
        llama_cpp_2::LogOptions::default().with_logs_enabled(verbose),
    );

    let listener = tokio::net::TcpListener::bind((args.host.as_str(), args.port))
        .await
        .with_context(|| format!("cannot listen on {}:{}", args.host, args.port))?;
    let addr = listener.local_addr()?;
    let metrics = Arc::new(Metrics::default());
    let state = Arc::new(AppState {
        model_id: args.model_id(),
        created: std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_secs())
            .unwrap_or(0),
        metrics: metrics.clone(),
        engine: OnceLock::new(),
        admission: Arc::new(Semaphore::new((args.parallel + args.queue) as usize)),
        draining: Default::default(),
        guard: Arc::new(guard::Guard::new(
            args.replica_secret.clone(),
            args.orphan_timeout_secs.map(Duration::from_secs_f64),
        )),
    });
    if state.guard.enforced() {
        tracing::info!("calls must carry this replica's secret");
    }
    tracing::info!(%addr, model = %args.model.display(), id = %state.model_id, "berth engine listening; loading model");

    let (ready_tx, ready_rx) = oneshot::channel();
    let config = WorkerConfig {
        model: args.model.clone(),
        ctx: args.ctx,
        parallel: args.parallel,
        threads: args.threads() as i32,
        batch: args.batch,
    };
    worker::spawn(config, metrics.clone(), ready_tx).context("cannot start the decode thread")?;

    let shutdown = tokio_util::sync::CancellationToken::new();
    let server = axum::serve(listener, http::router(state.clone()))
        .with_graceful_shutdown(shutdown.clone().cancelled_owned());
    let mut server = tokio::spawn(async move { server.await });

    let loading = async {
        match ready_rx.await {
            Ok(Ok(loaded)) => {
                let _ = state.engine.set(loaded);
                metrics.ready.store(1, Ordering::Relaxed);
                tracing::info!(%addr, "engine ready");
                std::future::pending::<anyhow::Result<()>>().await
            }
            Ok(Err(e)) => Err(anyhow::anyhow!(e)),
            Err(_) => Err(anyhow::anyhow!("the decode thread exited while loading")),
        }
    };
    tokio::select! {
        r = loading => {
            shutdown.cancel();
            return r;
        }
        r = &mut server => {
            return r.context("server task")?.context("server failed");
        }
        sig = shutdown_signal() => tracing::info!(signal = sig, "draining"),
        since = state.guard.orphaned() => tracing::warn!(
            silent_secs = since.as_secs_f64(),
            "no health check from berth for too long (its berth is gone): stopping, draining first"
        ),
    }

    state.draining.store(true, Ordering::Relaxed);
    shutdown.cancel();
    let grace = Duration::from_secs(args.grace_secs);
    match tokio::time::timeout(grace, &mut server).await {
        Ok(r) => r.context("server task")?.context("server failed")?,
        Err(_) => tracing::warn!(
            active = metrics.active_sequences.load(Ordering::Relaxed),
            "grace period over; cutting remaining requests"
        ),
    }
    tracing::info!("engine stopped");
    Ok(())
}

async fn shutdown_signal() -> &'static str {
    use tokio::signal::unix::{signal, SignalKind};
    let mut term = match signal(SignalKind::terminate()) {
        Ok(s) => s,
        Err(e) => {
            tracing::warn!(error = %e, "cannot watch SIGTERM; only SIGINT stops the engine");
            let _ = tokio::signal::ctrl_c().await;
            return "SIGINT";
        }
    };
    tokio::select! {
        _ = term.recv() => "SIGTERM",
        _ = tokio::signal::ctrl_c() => "SIGINT",
    }
}

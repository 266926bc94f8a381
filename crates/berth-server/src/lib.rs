//! `berth serve`: the HTTP server, its configuration, and how the parts are wired together.
//!
//! Only this crate knows axum and maps errors to HTTP statuses.

pub mod admin;
pub mod auth;
pub mod bench;
pub mod config;
pub mod console;
pub mod datadir;
pub mod error;
pub mod extract;
pub mod front;
pub mod keys;
pub mod openapi;
pub mod request_id;
pub mod routes;
pub mod state;

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::atomic::AtomicBool;
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use berth_control::{Reconciler, ReconcilerSettings};
use berth_core::ReplicaRecord;
use berth_runtime::{JournalError, LocalRuntime, LocalRuntimeConfig, ReplicaJournal};
use berth_store::{CachedStore, Metered, PostgresStore, SqliteStore, Store, StoreMetrics};
use tokio_util::sync::CancellationToken;

pub use config::Config;

use crate::config::DatabaseUrl;

use crate::auth::KeyRing;
use crate::state::{AppInner, AppState};

/// Errors that stop `berth serve`.
#[derive(Debug, thiserror::Error)]
pub enum ServeError {
    /// `location` is the SQLite file, or the database URL with its password hidden.
    #[error("cannot open the store at {location}: {source}")]
    Store {
        location: String,
        source: berth_store::StoreError,
    },
    #[error("cannot listen on {addr}: {source}")]
    Listen {
        addr: std::net::SocketAddr,
        source: std::io::Error,
    },
    #[error("server error: {0}")]
    Io(#[from] std::io::Error),
    #[error(transparent)]
    Keys(#[from] berth_store::StoreError),
    #[error(transparent)]
    DataDir(#[from] datadir::LockError),
    #[error(transparent)]
    Bootstrap(#[from] keys::BootstrapError),
}

/// What the process around the server supplies.
#[derive(Debug, Clone)]
pub struct ServeEnv {
    /// Path of the running `berth` binary (for `{berth}` in engine commands).
    pub berth_exe: PathBuf,
    /// Environment passed to replicas (PATH, HOME, ...); nothing else is inherited.
    pub replica_env: BTreeMap<String, String>,
    /// Set before `shutdown` is cancelled to leave the replicas running for the next start to
    /// adopt (an upgrade), instead of stopping them.
    pub keep_replicas: Arc<AtomicBool>,
}

/// The store as the runtime's replica journal.
struct StoreJournal(Arc<dyn Store>);

#[async_trait]
impl ReplicaJournal for StoreJournal {
    async fn record(&self, replica: &ReplicaRecord) -> Result<(), JournalError> {
        Ok(self.0.put_replica(replica).await?)
    }

    async fn forget(&self, id: &str) -> Result<(), JournalError> {
        self.0.remove_replica(id).await?;
        Ok(())
    }
}

/// Opens the configured store (what `berth keys` uses): PostgreSQL when `database_url` is set,
/// else the SQLite database under the data dir.
pub async fn open_store(config: &Config) -> Result<Arc<dyn Store>, ServeError> {
    Ok(match &config.database_url {
        Some(url) => Arc::new(open_postgres(url).await?),
        None => Arc::new(open_sqlite(config).await?),
    })
}

async fn open_sqlite(config: &Config) -> Result<SqliteStore, ServeError> {
    let path = config.database_path();
    SqliteStore::open(&path)
        .await
        .map_err(|source| ServeError::Store {
            location: path.display().to_string(),
            source,
        })
}

async fn open_postgres(url: &DatabaseUrl) -> Result<PostgresStore, ServeError> {
    let store = PostgresStore::connect(url.expose())
        .await
        .map_err(|source| ServeError::Store {
            location: url.redacted(),
            source,
        })?;
    tracing::info!(database = %url.redacted(), "store: PostgreSQL");
    Ok(store)
}

/// The store `berth serve` runs on: the configured one with deployments mirrored in memory, so
/// reads of the API and the reconciler's passes never wait on SQL (this process is their only
/// writer: several instances on one PostgreSQL database are not supported yet); its writes are
/// timed into `metrics`.
async fn open_serving_store(
    config: &Config,
    metrics: &StoreMetrics,
) -> Result<Arc<dyn Store>, ServeError> {
    match &config.database_url {
        Some(url) => mirrored(open_postgres(url).await?, metrics, url.redacted()).await,
        None => {
            let location = config.database_path().display().to_string();
            mirrored(open_sqlite(config).await?, metrics, location).await
        }
    }
}

async fn mirrored<S: Store>(
    store: S,
    metrics: &StoreMetrics,
    location: String,
) -> Result<Arc<dyn Store>, ServeError> {
    let cached = CachedStore::new(Metered::new(store, metrics.clone()))
        .await
        .map_err(|source| ServeError::Store { location, source })?;
    Ok(Arc::new(cached))
}

fn secs(v: f64) -> Duration {
    Duration::from_secs_f64(v)
}

/// Runs `berth serve` until `shutdown` is cancelled, then drains: stops accepting, stops the
/// replicas (or leaves them running, see [`ServeEnv::keep_replicas`]), and returns.
pub async fn serve(
    config: Config,
    env: ServeEnv,
    shutdown: CancellationToken,
) -> Result<(), ServeError> {
    // Before anything is read or written: a second server on this directory stops here.
    let _owner = datadir::DataDirLock::acquire(&config.data_dir)?;
    let fd_limit = front::raise_fd_limit();
    let store_metrics = StoreMetrics::default();
    let store = open_serving_store(&config, &store_metrics).await?;
    if let Some(secret) = &config.bootstrap_key {
        keys::ensure_bootstrap(store.as_ref(), secret).await?;
    }
    let catalog = Arc::new(config.catalog());
    for m in &catalog.models {
        if let Some(reason) = m.missing_weights_reason() {
            tracing::warn!(model = %m.model_name, "{reason}");
        }
    }

    let gateway = berth_gateway::Gateway::new(berth_gateway::GatewayConfig {
        hold: secs(config.gateway.hold_secs),
        queue_bound: config.gateway.hold_queue,
        read_timeout: secs(config.gateway.read_timeout_secs),
        ..berth_gateway::GatewayConfig::default()
    })
    .map_err(|e| ServeError::Io(std::io::Error::other(e)))?;

    let orphan = config.runtime.orphan_timeout_secs;
    let runtime = LocalRuntime::with_journal(
        LocalRuntimeConfig {
            berth_exe: env.berth_exe.clone(),
            ready_timeout: secs(config.reconciler.ready_timeout_secs),
            stop_grace: secs(config.reconciler.stop_grace_secs),
            base_env: env.replica_env.clone(),
            log_dir: config.data_dir.join("replicas"),
            orphan_timeout: (orphan > 0.0).then(|| secs(orphan)),
            ..LocalRuntimeConfig::default()
        },
        Arc::new(StoreJournal(store.clone())),
    );
    // Before the first reconcile pass: replicas of an earlier run that still live are taken
    // over, so the pass sees them ready and starts nothing in their place.
    let report = runtime.adopt(store.list_replicas().await?).await;
    if !report.adopted.is_empty() || !report.gone.is_empty() {
        tracing::info!(
            adopted = report.adopted.len(),
            gone = report.gone.len(),
            "replicas of the previous run: adopted the live ones, forgot the rest"
        );
    }
    let in_flight_gateway = gateway.clone();
    let events = berth_control::EventHub::default();
    let reconciler_metrics = berth_control::ReconcilerMetrics::default();
    let admin = Arc::new(admin::Admin::new(
        gateway.clone(),
        reconciler_metrics.clone(),
        &store_metrics,
        shutdown.clone(),
    ));
    let reconciler = Reconciler::new(
        store.clone(),
        runtime.clone(),
        catalog.clone(),
        ReconcilerSettings {
            resync: secs(config.reconciler.resync_secs),
            max_start_failures: config.reconciler.max_start_failures,
            backoff: secs(config.reconciler.backoff_secs),
            node_units: config.node.capacity_units,
            replica_env: BTreeMap::new(),
            drain: secs(config.reconciler.drain_secs),
        },
        gateway.publisher(),
    )
    .with_in_flight(Arc::new(move |id| in_flight_gateway.in_flight(id)))
    .with_autoscaler(
        {
            let gateway = gateway.clone();
            Arc::new(move |ws, name| {
                let d = gateway.demand(ws, name);
                berth_control::Demand {
                    in_flight: d.in_flight,
                    queued: d.queued,
                    calls: d.calls,
                }
            })
        },
        berth_control::AutoscaleSettings {
            tick: secs(config.autoscaler.tick_secs),
            windows: berth_control::Windows {
                stable: secs(config.autoscaler.stable_window_secs),
                panic: secs(config.autoscaler.panic_window_secs),
            },
        },
    )
    .with_events(events.clone())
    .with_metrics(reconciler_metrics)
    .keep_replicas_flag(env.keep_replicas.clone());
    let nudge = reconciler.nudge_handle();
    // A call held for a deployment without a ready replica (one scaled to zero) asks for a
    // pass at once: the autoscaler wakes it without waiting for its next sample.
    {
        let nudge = nudge.clone();
        gateway.on_hold(move |_, _| nudge.nudge());
    }
    let keys = KeyRing::new(store.clone());
    keys.refresh().await?;
    keys.spawn_refresh(Duration::from_secs(2), shutdown.clone());

    let state = AppState::new(AppInner {
        store,
        catalog,
        keys,
        nudge,
        gateway,
        quotas: state::Quotas::new(config.quota.clone()),
        events,
        replica_logs: config.data_dir.join("replicas"),
        replicas: {
            let runtime = runtime.clone();
            Arc::new(move || berth_runtime::Runtime::observe(runtime.as_ref()))
        },
    });

    let listener = tokio::net::TcpListener::bind(config.listen)
        .await
        .map_err(|source| ServeError::Listen {
            addr: config.listen,
            source,
        })?;
    tracing::info!(addr = %listener.local_addr()?, data_dir = %config.data_dir.display(), "berth serving");

    let limits = front::Limits::from_config(&config.server);
    tracing::info!(
        max_connections = limits.max_connections,
        fd_limit = fd_limit,
        "client connection limit"
    );
    if let Some(addr) = config.admin_listen {
        let admin_listener = tokio::net::TcpListener::bind(addr)
            .await
            .map_err(|source| ServeError::Listen { addr, source })?;
        tracing::info!(addr = %admin_listener.local_addr()?, "admin listener (/metrics, /livez, /readyz)");
        let app = admin::router(admin.clone());
        let stop = shutdown.clone();
        tokio::spawn(async move {
            let served = axum::serve(admin_listener, app)
                .with_graceful_shutdown(stop.cancelled_owned())
                .await;
            if let Err(e) = served {
                tracing::error!(error = %e, "admin listener failed");
            }
        });
    }
    let reconciler_stop = CancellationToken::new();
    let reconciler_task = tokio::spawn(reconciler.run(reconciler_stop.clone()));
    admin
        .serving
        .store(true, std::sync::atomic::Ordering::Relaxed);
    front::serve_with(listener, state, shutdown.clone(), limits).await?;
    let keep = env.keep_replicas.load(std::sync::atomic::Ordering::SeqCst);
    if keep {
        // Nothing may kill them from here on, not even the supervisors' guards at exit.
        runtime.detach();
    } else {
        tracing::info!("stopping replicas");
    }
    reconciler_stop.cancel();
    let _ = reconciler_task.await;
    tracing::info!(replicas_left_running = keep, "berth stopped");
    Ok(())
}

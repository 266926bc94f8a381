//! `berth gateway-bench` (hidden): the production router and gateway in front of fixed upstream
//! replicas, without the control plane, for measuring the gateway's overhead.
//!
//! Everything a request touches is what `berth serve` runs: the same listener, router, middleware
//! (request ids, body limit), the same key authentication (an in-memory store holding one key),
//! the same inference handlers and the same gateway. Only the routing table is fixed: one
//! deployment whose ready replicas are the `--upstream` addresses, published once, instead of
//! one the reconciler publishes after starting replicas.

use std::net::SocketAddr;
use std::sync::Arc;

use berth_core::{Endpoint, RoutingEntry, RoutingTable, Status};
use berth_store::{SqliteStore, Store};

use crate::auth::KeyRing;
use crate::state::AppState;
use crate::{keys, ServeError};

/// Arguments of `berth gateway-bench`.
#[derive(Debug, Clone, clap::Args)]
pub struct GatewayBenchArgs {
    /// Address to listen on.
    #[arg(long, default_value = "127.0.0.1:8000")]
    pub listen: SocketAddr,
    /// A replica address (repeat for several).
    #[arg(long = "upstream", required = true)]
    pub upstreams: Vec<SocketAddr>,
    /// The deployment name clients call (`model`).
    #[arg(long, default_value = "stub")]
    pub model: String,
    /// The API key clients send.
    #[arg(long, default_value = "sk-bench")]
    pub key: String,
}

/// Serves until the process ends.
pub async fn run(args: GatewayBenchArgs) -> Result<(), ServeError> {
    let store: Arc<dyn Store> = Arc::new(SqliteStore::open_in_memory().await?);
    store
        .insert_api_key(&keys::from_secret(&args.key, "default"))
        .await?;
    let keys = KeyRing::new(store.clone());
    keys.refresh().await?;
    let gateway = berth_gateway::Gateway::new(berth_gateway::GatewayConfig::default())
        .map_err(|e| ServeError::Io(std::io::Error::other(e)))?;
    let entry = RoutingEntry {
        workspace_id: "default".into(),
        deployed_model: args.model.clone(),
        model_name: args.model.clone(),
        status: Status::Running,
        endpoints: args
            .upstreams
            .iter()
            .enumerate()
            .map(|(i, addr)| Endpoint {
                replica_id: format!("bench-{i}"),
                addr: *addr,
                secret: String::new(),
            })
            .collect(),
        rpm_limit: None,
        tpm_limit: None,
        created: berth_core::Timestamp::now().millis() / 1000,
        start_secs: None,
    };
    let mut table = RoutingTable::default();
    table
        .entries
        .insert(("default".into(), args.model.clone()), Arc::new(entry));
    gateway.publish(Arc::new(table));
    let state = AppState::inference_only(store, keys, gateway);
    let listener = tokio::net::TcpListener::bind(args.listen)
        .await
        .map_err(|source| ServeError::Listen {
            addr: args.listen,
            source,
        })?;
    tracing::info!(addr = %args.listen, upstreams = ?args.upstreams, "gateway bench serving");
    crate::front::serve(listener, state, tokio_util::sync::CancellationToken::new()).await?;
    Ok(())
}

//! berth's configuration: one typed [`Config`], loaded once.
//!
//! Layers, later wins: built-in defaults < TOML file < `BERTH_*` environment < command-line flags.
//! Everything is validated at start-up and every problem is reported at once.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use berth_core::{CatalogModel, ModelCatalog};
use serde::Deserialize;

/// The whole configuration of `berth serve`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Config {
    /// Address the API listens on.
    pub listen: SocketAddr,
    /// Address of the admin listener (`/metrics`, `/livez`, `/readyz`); off when unset. It shows
    /// every workspace's deployment names, so keep it on loopback or a private network.
    pub admin_listen: Option<SocketAddr>,
    /// Where the embedded database (when `database_url` is unset), the replicas' logs and the
    /// directory lock live.
    pub data_dir: PathBuf,
    /// The PostgreSQL database to keep the desired state in (`postgres://` or `postgresql://`);
    /// unset: the embedded SQLite database under `data_dir`.
    pub database_url: Option<DatabaseUrl>,
    /// Where the default catalog looks for weights files.
    pub models_dir: PathBuf,
    /// If set, this API key is made sure to exist in workspace `default` at start-up.
    pub bootstrap_key: Option<String>,
    pub node: NodeConfig,
    pub server: ServerConfig,
    pub reconciler: ReconcilerConfig,
    pub autoscaler: AutoscalerConfig,
    pub gateway: GatewayConfig,
    pub runtime: RuntimeConfig,
    pub quota: QuotaConfig,
    /// The model catalog; when absent, the default catalog (the two shipped models).
    pub models: Option<Vec<ModelConfig>>,
}

/// This node's resources.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct NodeConfig {
    /// Capacity units this node offers; replicas that do not fit wait.
    pub capacity_units: u32,
}

/// The client side of the listener: how many connections, and how long clients may take.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ServerConfig {
    /// Open client connections at most; beyond it new ones wait in the kernel's accept queue.
    /// Unset: sized from the file-descriptor limit ([`crate::front::default_max_connections`]).
    pub max_connections: Option<usize>,
    /// How long a connection may stay open without a request under way (before its first
    /// byte, and between requests), seconds.
    pub idle_timeout_secs: f64,
    /// From the first byte of a request to the end of its body, seconds.
    pub request_timeout_secs: f64,
    /// How long one write to a client may wait for the client to read, seconds.
    pub write_timeout_secs: f64,
    /// Idle time before TCP keepalive probes on client connections, seconds.
    pub tcp_keepalive_secs: f64,
    /// On SIGTERM, how long requests under way may take to finish before their connections are
    /// closed, seconds.
    pub shutdown_grace_secs: f64,
}

/// Per-workspace quotas on what the deployments API may allocate.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct QuotaConfig {
    /// Deployments a workspace may have (those being deleted not counted).
    pub max_deployments: u32,
    /// Capacity units a workspace's deployments may ask for together; unset: no quota.
    pub max_capacity_units: Option<u32>,
    /// Quotas of named workspaces, replacing the ones above for them (each field on its own).
    pub workspaces: BTreeMap<String, WorkspaceQuota>,
}

/// One workspace's quotas in `[quota.workspaces.NAME]`; an unset field takes the default.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct WorkspaceQuota {
    pub max_deployments: Option<u32>,
    pub max_capacity_units: Option<u32>,
}

/// The quotas that apply to one workspace.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Quota {
    pub max_deployments: u32,
    pub max_capacity_units: Option<u32>,
}

impl QuotaConfig {
    /// The quotas of `workspace_id`: its own section's values over the defaults.
    pub fn of(&self, workspace_id: &str) -> Quota {
        let own = self.workspaces.get(workspace_id);
        Quota {
            max_deployments: own
                .and_then(|q| q.max_deployments)
                .unwrap_or(self.max_deployments),
            max_capacity_units: own
                .and_then(|q| q.max_capacity_units)
                .or(self.max_capacity_units),
        }
    }
}

/// Reconciler timing.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ReconcilerConfig {
    /// Periodic resync, seconds.
    pub resync_secs: f64,
    /// Failed replica starts of a deployment before it is `FAILED`.
    pub max_start_failures: u32,
    /// First retry delay after a failed start, seconds (doubles each time).
    pub backoff_secs: f64,
    /// How long a replica may take to become ready, seconds.
    pub ready_timeout_secs: f64,
    /// Grace between SIGTERM and SIGKILL when stopping a replica, seconds.
    pub stop_grace_secs: f64,
    /// How long a replica taken out of routing (scale-down, delete) may finish its calls in
    /// flight before it is stopped, seconds.
    pub drain_secs: f64,
}

/// Autoscaler timing (deployments with `autoscaling`).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct AutoscalerConfig {
    /// How often autoscaled deployments are sampled, seconds.
    pub tick_secs: f64,
    /// The stable window demand is averaged over, seconds.
    pub stable_window_secs: f64,
    /// The short window that catches bursts, seconds.
    pub panic_window_secs: f64,
}

impl Default for AutoscalerConfig {
    fn default() -> Self {
        Self {
            tick_secs: 1.0,
            stable_window_secs: 60.0,
            panic_window_secs: 6.0,
        }
    }
}

/// Replica processes.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RuntimeConfig {
    /// A replica that has had no authenticated health check from its berth for this long stops
    /// by itself (its berth is gone and did not come back), seconds; 0 turns that off.
    pub orphan_timeout_secs: f64,
}

impl Default for RuntimeConfig {
    fn default() -> Self {
        Self {
            orphan_timeout_secs: 600.0,
        }
    }
}

/// Inference gateway settings.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct GatewayConfig {
    /// How long a call waits for a replica of a deployment that has none ready, seconds.
    pub hold_secs: f64,
    /// Calls that may wait per deployment; beyond it they are answered 503 at once.
    pub hold_queue: usize,
    /// How long a replica may send nothing while an answer is expected (the whole answer of a
    /// call that is not streamed is one wait), seconds.
    pub read_timeout_secs: f64,
}

/// One catalog entry in the config file.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ModelConfig {
    pub model_name: String,
    pub display_name: Option<String>,
    /// Weights file; relative paths are resolved against `models_dir`.
    pub weights: PathBuf,
    /// Engine command template; defaults to `berth engine` (see [`DEFAULT_ENGINE_COMMAND`]).
    pub engine_command: Option<Vec<String>>,
    #[serde(default = "one")]
    pub base_capacity: u32,
    #[serde(default = "default_ctx")]
    pub context_length: u32,
    #[serde(default = "one")]
    pub threads: u32,
    #[serde(default = "default_parallel")]
    pub parallel: u32,
}

fn one() -> u32 {
    1
}
fn default_ctx() -> u32 {
    2048
}
fn default_parallel() -> u32 {
    4
}

/// The engine command the default catalog uses.
pub const DEFAULT_ENGINE_COMMAND: &[&str] = &[
    "{berth}",
    "engine",
    "--model",
    "{weights}",
    "--host",
    "{host}",
    "--port",
    "{port}",
    "--alias",
    "{alias}",
    "--ctx",
    "{ctx}",
    "--threads",
    "{threads}",
    "--parallel",
    "{parallel}",
];

impl Default for Config {
    fn default() -> Self {
        Self {
            listen: SocketAddr::from(([127, 0, 0, 1], 8080)),
            admin_listen: None,
            data_dir: PathBuf::from("./berth-data"),
            database_url: None,
            models_dir: PathBuf::from("./models"),
            bootstrap_key: None,
            node: NodeConfig::default(),
            server: ServerConfig::default(),
            reconciler: ReconcilerConfig::default(),
            autoscaler: AutoscalerConfig::default(),
            gateway: GatewayConfig::default(),
            runtime: RuntimeConfig::default(),
            quota: QuotaConfig::default(),
            models: None,
        }
    }
}

impl Default for NodeConfig {
    fn default() -> Self {
        Self { capacity_units: 8 }
    }
}

impl Default for ServerConfig {
    fn default() -> Self {
        Self {
            max_connections: None,
            idle_timeout_secs: 30.0,
            request_timeout_secs: 60.0,
            write_timeout_secs: 30.0,
            tcp_keepalive_secs: 60.0,
            shutdown_grace_secs: 10.0,
        }
    }
}

impl Default for QuotaConfig {
    fn default() -> Self {
        Self {
            max_deployments: 100,
            max_capacity_units: None,
            workspaces: BTreeMap::new(),
        }
    }
}

impl Default for ReconcilerConfig {
    fn default() -> Self {
        Self {
            resync_secs: 5.0,
            max_start_failures: 3,
            backoff_secs: 1.0,
            ready_timeout_secs: 120.0,
            stop_grace_secs: 10.0,
            drain_secs: 30.0,
        }
    }
}

impl Default for GatewayConfig {
    fn default() -> Self {
        Self {
            hold_secs: 30.0,
            hold_queue: 256,
            read_timeout_secs: 300.0,
        }
    }
}

/// Command-line overrides (the top layer).
#[derive(Debug, Clone, Default)]
pub struct Overrides {
    pub listen: Option<SocketAddr>,
    pub admin_listen: Option<SocketAddr>,
    pub data_dir: Option<PathBuf>,
    pub database_url: Option<DatabaseUrl>,
    pub models_dir: Option<PathBuf>,
}

/// A database URL. It may carry a password, so it is shown (`Debug`, [`Self::redacted`]) with
/// the password replaced by `***`; only [`Self::expose`] gives the whole of it.
#[derive(Clone, PartialEq, Eq, Deserialize)]
#[serde(transparent)]
pub struct DatabaseUrl(String);

impl DatabaseUrl {
    pub fn new(url: impl Into<String>) -> Self {
        Self(url.into())
    }

    /// The URL itself, password included: for connecting, never for showing.
    pub fn expose(&self) -> &str {
        &self.0
    }

    /// The URL with its password hidden, for logs and messages.
    pub fn redacted(&self) -> String {
        berth_store::postgres::redacted_url(&self.0)
    }

    /// Whether it names a PostgreSQL database.
    pub fn is_postgres(&self) -> bool {
        berth_store::postgres::is_postgres_url(&self.0)
    }
}

impl std::fmt::Debug for DatabaseUrl {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "DatabaseUrl({:?})", self.redacted())
    }
}

impl std::str::FromStr for DatabaseUrl {
    type Err = std::convert::Infallible;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Ok(Self::new(s))
    }
}

/// A loaded configuration and what start-up should warn about.
#[derive(Debug)]
pub struct Loaded {
    pub config: Config,
    /// `BERTH_*` variables that are not settings but look like misspelled ones.
    pub warnings: Vec<String>,
}

/// Every `BERTH_*` variable berth reads. [`Config::apply_env`] handles exactly these (a test
/// holds the two together); misspellings are found by their distance to these names.
pub const ENV_SETTINGS: &[&str] = &[
    "BERTH_LISTEN",
    "BERTH_ADMIN_LISTEN",
    "BERTH_DATA_DIR",
    "BERTH_DATABASE_URL",
    "BERTH_MODELS_DIR",
    "BERTH_BOOTSTRAP_KEY",
    "BERTH_NODE_CAPACITY_UNITS",
    "BERTH_SERVER_MAX_CONNECTIONS",
    "BERTH_SERVER_IDLE_TIMEOUT_SECS",
    "BERTH_SERVER_REQUEST_TIMEOUT_SECS",
    "BERTH_SERVER_WRITE_TIMEOUT_SECS",
    "BERTH_SERVER_TCP_KEEPALIVE_SECS",
    "BERTH_SERVER_SHUTDOWN_GRACE_SECS",
    "BERTH_RECONCILER_RESYNC_SECS",
    "BERTH_RECONCILER_MAX_START_FAILURES",
    "BERTH_RECONCILER_BACKOFF_SECS",
    "BERTH_RECONCILER_READY_TIMEOUT_SECS",
    "BERTH_RECONCILER_STOP_GRACE_SECS",
    "BERTH_RECONCILER_DRAIN_SECS",
    "BERTH_AUTOSCALER_TICK_SECS",
    "BERTH_AUTOSCALER_STABLE_WINDOW_SECS",
    "BERTH_AUTOSCALER_PANIC_WINDOW_SECS",
    "BERTH_RUNTIME_ORPHAN_TIMEOUT_SECS",
    "BERTH_GATEWAY_HOLD_SECS",
    "BERTH_GATEWAY_HOLD_QUEUE",
    "BERTH_GATEWAY_READ_TIMEOUT_SECS",
    "BERTH_QUOTA_MAX_DEPLOYMENTS",
    "BERTH_QUOTA_MAX_CAPACITY_UNITS",
    "BERTH_BIN",
    "BERTH_MODELS_CACHE",
];

enum EnvError {
    /// Not a setting: ignored, or a warning when it looks like a misspelled one.
    Unknown,
    /// A setting with a value that does not parse.
    Invalid(String),
}

/// The setting `key` most probably meant to name: one within two edits (one for short names)
/// after `BERTH_`, compared without regard to case.
fn near_setting(key: &str) -> Option<&'static str> {
    let rest = key
        .strip_prefix("BERTH_")
        .unwrap_or(key)
        .to_ascii_uppercase();
    ENV_SETTINGS
        .iter()
        .map(|name| {
            let known = &name["BERTH_".len()..];
            (strsim::levenshtein(&rest, known), known.len(), *name)
        })
        .filter(|&(d, len, _)| d > 0 && d <= if len <= 6 { 1 } else { 2 })
        .min_by_key(|&(d, _, _)| d)
        .map(|(_, _, name)| name)
        .or_else(|| {
            // Right name, wrong case (`berth_listen` is not read).
            ENV_SETTINGS
                .iter()
                .find(|n| n.eq_ignore_ascii_case(key) && **n != key)
                .copied()
        })
}

/// Everything wrong with a configuration, reported together.
#[derive(Debug, thiserror::Error)]
#[error("invalid configuration:\n  - {}", .0.join("\n  - "))]
pub struct ConfigError(pub Vec<String>);

impl Config {
    /// Loads the layers. `env` is the process environment (only `BERTH_*` entries are read).
    ///
    /// A `BERTH_*` variable that is not a setting is ignored: orchestrators and scripts put their
    /// own there (Kubernetes' service links for a Service named `berth`: `BERTH_PORT`,
    /// `BERTH_SERVICE_HOST`, ...). One that looks like a misspelled setting comes back as a
    /// warning that names it (never its value, which may be a secret).
    pub fn load(
        file: Option<&Path>,
        env: impl IntoIterator<Item = (String, String)>,
        overrides: &Overrides,
    ) -> Result<Loaded, ConfigError> {
        let mut problems = Vec::new();
        let mut config = match file {
            None => Config::default(),
            Some(path) => match std::fs::read_to_string(path) {
                Err(e) => {
                    return Err(ConfigError(vec![format!(
                        "cannot read {}: {e}",
                        path.display()
                    )]))
                }
                Ok(text) => match toml::from_str::<Config>(&text) {
                    Ok(c) => c,
                    Err(e) => return Err(ConfigError(vec![format!("{}: {e}", path.display())])),
                },
            },
        };
        let env: BTreeMap<String, String> = env
            .into_iter()
            .filter(|(k, _)| k.starts_with("BERTH_"))
            .collect();
        let mut warnings = Vec::new();
        for (key, value) in &env {
            match config.apply_env(key, value) {
                Ok(()) => {}
                Err(EnvError::Unknown) => {
                    if let Some(near) = near_setting(key) {
                        warnings.push(format!(
                            "environment variable {key} is not a berth setting and is ignored; did you mean {near}?"
                        ));
                    }
                }
                // The value is not shown: it may be a secret.
                Err(EnvError::Invalid(e)) => problems.push(format!("{key}: {e}")),
            }
        }
        if let Some(v) = overrides.listen {
            config.listen = v;
        }
        if let Some(v) = overrides.admin_listen {
            config.admin_listen = Some(v);
        }
        if let Some(v) = &overrides.data_dir {
            config.data_dir = v.clone();
        }
        if let Some(v) = &overrides.database_url {
            config.database_url = Some(v.clone());
        }
        if let Some(v) = &overrides.models_dir {
            config.models_dir = v.clone();
        }
        problems.extend(config.problems());
        if problems.is_empty() {
            Ok(Loaded { config, warnings })
        } else {
            Err(ConfigError(problems))
        }
    }

    fn apply_env(&mut self, key: &str, value: &str) -> Result<(), EnvError> {
        fn num<T: std::str::FromStr>(v: &str) -> Result<T, EnvError>
        where
            T::Err: std::fmt::Display,
        {
            v.trim()
                .parse::<T>()
                .map_err(|e| EnvError::Invalid(e.to_string()))
        }
        match key {
            "BERTH_LISTEN" => self.listen = num(value)?,
            // Empty or `off`: no admin listener.
            "BERTH_ADMIN_LISTEN" => {
                self.admin_listen = match value.trim() {
                    "" | "off" => None,
                    v => Some(num(v)?),
                }
            }
            "BERTH_DATA_DIR" => self.data_dir = PathBuf::from(value),
            // Empty: the embedded SQLite database, as when unset.
            "BERTH_DATABASE_URL" => {
                self.database_url = match value.trim() {
                    "" => None,
                    v => Some(DatabaseUrl::new(v)),
                }
            }
            "BERTH_MODELS_DIR" => self.models_dir = PathBuf::from(value),
            "BERTH_BOOTSTRAP_KEY" => self.bootstrap_key = Some(value.to_owned()),
            "BERTH_NODE_CAPACITY_UNITS" => self.node.capacity_units = num(value)?,
            "BERTH_SERVER_MAX_CONNECTIONS" => self.server.max_connections = Some(num(value)?),
            "BERTH_SERVER_IDLE_TIMEOUT_SECS" => self.server.idle_timeout_secs = num(value)?,
            "BERTH_SERVER_REQUEST_TIMEOUT_SECS" => self.server.request_timeout_secs = num(value)?,
            "BERTH_SERVER_WRITE_TIMEOUT_SECS" => self.server.write_timeout_secs = num(value)?,
            "BERTH_SERVER_TCP_KEEPALIVE_SECS" => self.server.tcp_keepalive_secs = num(value)?,
            "BERTH_SERVER_SHUTDOWN_GRACE_SECS" => self.server.shutdown_grace_secs = num(value)?,
            "BERTH_RECONCILER_RESYNC_SECS" => self.reconciler.resync_secs = num(value)?,
            "BERTH_RECONCILER_MAX_START_FAILURES" => {
                self.reconciler.max_start_failures = num(value)?
            }
            "BERTH_RECONCILER_BACKOFF_SECS" => self.reconciler.backoff_secs = num(value)?,
            "BERTH_RECONCILER_READY_TIMEOUT_SECS" => {
                self.reconciler.ready_timeout_secs = num(value)?
            }
            "BERTH_RECONCILER_STOP_GRACE_SECS" => self.reconciler.stop_grace_secs = num(value)?,
            "BERTH_RECONCILER_DRAIN_SECS" => self.reconciler.drain_secs = num(value)?,
            "BERTH_AUTOSCALER_TICK_SECS" => self.autoscaler.tick_secs = num(value)?,
            "BERTH_AUTOSCALER_STABLE_WINDOW_SECS" => {
                self.autoscaler.stable_window_secs = num(value)?
            }
            "BERTH_AUTOSCALER_PANIC_WINDOW_SECS" => self.autoscaler.panic_window_secs = num(value)?,
            "BERTH_RUNTIME_ORPHAN_TIMEOUT_SECS" => self.runtime.orphan_timeout_secs = num(value)?,
            "BERTH_GATEWAY_HOLD_SECS" => self.gateway.hold_secs = num(value)?,
            "BERTH_GATEWAY_HOLD_QUEUE" => self.gateway.hold_queue = num(value)?,
            "BERTH_GATEWAY_READ_TIMEOUT_SECS" => self.gateway.read_timeout_secs = num(value)?,
            "BERTH_QUOTA_MAX_DEPLOYMENTS" => self.quota.max_deployments = num(value)?,
            "BERTH_QUOTA_MAX_CAPACITY_UNITS" => self.quota.max_capacity_units = Some(num(value)?),
            // Read by other parts of berth, not by the configuration.
            "BERTH_BIN" | "BERTH_MODELS_CACHE" => {}
            _ => return Err(EnvError::Unknown),
        }
        Ok(())
    }

    fn problems(&self) -> Vec<String> {
        let mut p = Vec::new();
        if let Some(url) = self.database_url.as_ref().filter(|u| !u.is_postgres()) {
            // Not shown whole: it may carry a password.
            p.push(format!(
                "database_url: {} is not a postgres:// or postgresql:// URL (leave it unset for \
                 the embedded SQLite database under data_dir)",
                url.redacted()
            ));
        }
        if self.admin_listen == Some(self.listen) && self.listen.port() != 0 {
            p.push(format!(
                "admin_listen: {} is the API's address; the admin listener needs its own",
                self.listen
            ));
        }
        let secs = [
            ("reconciler.resync_secs", self.reconciler.resync_secs),
            ("reconciler.backoff_secs", self.reconciler.backoff_secs),
            (
                "reconciler.ready_timeout_secs",
                self.reconciler.ready_timeout_secs,
            ),
            (
                "reconciler.stop_grace_secs",
                self.reconciler.stop_grace_secs,
            ),
            ("gateway.hold_secs", self.gateway.hold_secs),
            ("reconciler.drain_secs", self.reconciler.drain_secs),
            (
                "runtime.orphan_timeout_secs",
                self.runtime.orphan_timeout_secs,
            ),
            ("gateway.read_timeout_secs", self.gateway.read_timeout_secs),
            (
                "server.shutdown_grace_secs",
                self.server.shutdown_grace_secs,
            ),
        ];
        for (name, v) in secs {
            if !(v.is_finite() && (0.0..=86_400.0).contains(&v)) {
                p.push(format!(
                    "{name} must be between 0 and 86400 seconds, got {v}"
                ));
            }
        }
        // Client timeouts of zero would close every connection at once.
        for (name, v) in [
            ("server.idle_timeout_secs", self.server.idle_timeout_secs),
            (
                "server.request_timeout_secs",
                self.server.request_timeout_secs,
            ),
            ("server.write_timeout_secs", self.server.write_timeout_secs),
            ("server.tcp_keepalive_secs", self.server.tcp_keepalive_secs),
        ] {
            if !(v.is_finite() && (0.1..=86_400.0).contains(&v)) {
                p.push(format!(
                    "{name} must be between 0.1 and 86400 seconds, got {v}"
                ));
            }
        }
        if self.gateway.read_timeout_secs < 0.1 {
            p.push("gateway.read_timeout_secs must be at least 0.1".to_owned());
        }
        if self.server.max_connections == Some(0) {
            p.push("server.max_connections must be at least 1".to_owned());
        }
        for name in self.quota.workspaces.keys() {
            if let Err(e) = crate::keys::validate_workspace(name) {
                p.push(format!("quota.workspaces: {e}"));
            }
        }
        let a = &self.autoscaler;
        for (name, v, lo, hi) in [
            ("autoscaler.tick_secs", a.tick_secs, 0.05, 60.0),
            (
                "autoscaler.stable_window_secs",
                a.stable_window_secs,
                0.1,
                3600.0,
            ),
            (
                "autoscaler.panic_window_secs",
                a.panic_window_secs,
                0.1,
                3600.0,
            ),
        ] {
            if !(v.is_finite() && (lo..=hi).contains(&v)) {
                p.push(format!(
                    "{name} must be between {lo} and {hi} seconds, got {v}"
                ));
            }
        }
        if a.panic_window_secs > a.stable_window_secs {
            p.push(
                "autoscaler.panic_window_secs must not be longer than autoscaler.stable_window_secs"
                    .to_owned(),
            );
        }
        if self.reconciler.resync_secs < 0.05 {
            p.push("reconciler.resync_secs must be at least 0.05".to_owned());
        }
        if let Some(key) = &self.bootstrap_key {
            if key.trim().len() < 8 || key.chars().any(char::is_whitespace) {
                p.push("bootstrap_key must be at least 8 characters without spaces".to_owned());
            }
        }
        if let Some(models) = &self.models {
            let mut seen = std::collections::HashSet::new();
            for m in models {
                let n = &m.model_name;
                if !seen.insert(n.clone()) {
                    p.push(format!("models: model_name {n} appears twice"));
                }
                if n.is_empty()
                    || n.len() > 64
                    || !n
                        .bytes()
                        .all(|b| b.is_ascii_alphanumeric() || b"-_.".contains(&b))
                {
                    p.push(format!("models: model_name {n:?} must be 1 to 64 of letters, digits, '-', '_', '.'"));
                }
                for (field, v) in [
                    ("base_capacity", m.base_capacity),
                    ("context_length", m.context_length),
                    ("threads", m.threads),
                    ("parallel", m.parallel),
                ] {
                    if v == 0 {
                        p.push(format!("models.{n}.{field} must be at least 1"));
                    }
                }
                if m.base_capacity >= 1000 {
                    p.push(format!("models.{n}.base_capacity must be below 1000"));
                }
                if m.engine_command.as_ref().is_some_and(|c| c.is_empty()) {
                    p.push(format!("models.{n}.engine_command must not be empty"));
                }
            }
        }
        p
    }

    /// The embedded database file (used when `database_url` is unset).
    pub fn database_path(&self) -> PathBuf {
        self.data_dir.join("berth.db")
    }

    /// The model catalog: the configured one, or the default.
    pub fn catalog(&self) -> ModelCatalog {
        let entries = self.models.clone().unwrap_or_else(default_models);
        ModelCatalog {
            models: entries
                .into_iter()
                .map(|m| CatalogModel {
                    display_name: m.display_name.unwrap_or_else(|| m.model_name.clone()),
                    weights: if m.weights.is_absolute() {
                        m.weights
                    } else {
                        self.models_dir.join(m.weights)
                    },
                    engine_command: m.engine_command.unwrap_or_else(|| {
                        DEFAULT_ENGINE_COMMAND
                            .iter()
                            .map(|s| (*s).to_owned())
                            .collect()
                    }),
                    model_name: m.model_name,
                    base_capacity: m.base_capacity,
                    context_length: m.context_length,
                    threads: m.threads,
                    parallel: m.parallel,
                })
                .collect(),
        }
    }
}

/// The two shipped models.
fn default_models() -> Vec<ModelConfig> {
    vec![
        ModelConfig {
            model_name: "smollm2-135m-instruct".to_owned(),
            display_name: Some("SmolLM2 135M Instruct (Q4_1)".to_owned()),
            weights: PathBuf::from("SmolLM2-135M-Instruct.Q4_1.gguf"),
            engine_command: None,
            base_capacity: 1,
            context_length: 2048,
            // One thread per replica: for these small models one thread decodes about as fast
            // as two, so replicas spread over the cores instead of fighting for them.
            threads: 1,
            parallel: 4,
        },
        ModelConfig {
            model_name: "gemma3-270m".to_owned(),
            display_name: Some("Gemma 3 270M (Q4_K_M)".to_owned()),
            weights: PathBuf::from("gemma-3-270m-q4_k_m.gguf"),
            engine_command: None,
            base_capacity: 1,
            context_length: 2048,
            threads: 1,
            parallel: 4,
        },
    ]
}

#[cfg(test)]
mod tests {
    use super::*;

    fn env(pairs: &[(&str, &str)]) -> Vec<(String, String)> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    #[test]
    fn layers_in_order() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("berth.toml");
        std::fs::write(
            &file,
            "listen = \"127.0.0.1:9000\"\ndata_dir = \"/from-file\"\n[node]\ncapacity_units = 3\n",
        )
        .unwrap();
        let c = Config::load(
            Some(&file),
            env(&[
                ("BERTH_DATA_DIR", "/from-env"),
                ("BERTH_NODE_CAPACITY_UNITS", "5"),
                ("PATH", "/bin"),
            ]),
            &Overrides {
                data_dir: Some("/from-flag".into()),
                ..Default::default()
            },
        )
        .unwrap()
        .config;
        assert_eq!(c.listen.port(), 9000);
        assert_eq!(c.data_dir, PathBuf::from("/from-flag"));
        assert_eq!(c.node.capacity_units, 5);
    }

    #[test]
    fn every_problem_reported_at_once() {
        let err = Config::load(
            None,
            env(&[
                ("BERTH_LISTEN", "nope"),
                ("BERTH_NODE_CAPACITY_UNITS", "-1"),
                ("BERTH_TYPO", "1"),
                ("BERTH_GATEWAY_HOLD_SECS", "-3"),
                ("BERTH_BOOTSTRAP_KEY", "sk secret value"),
            ]),
            &Overrides::default(),
        )
        .unwrap_err();
        assert_eq!(err.0.len(), 4, "{err}");
        assert!(!err.to_string().contains("secret"), "{err}");
    }

    #[test]
    fn foreign_variables_ignored_and_misspellings_warned_by_name() {
        // Kubernetes' service links for a Service named `berth`, and a script's own variables.
        let foreign = [
            ("BERTH_PORT", "tcp://10.96.0.12:8080"),
            ("BERTH_PORT_8080_TCP", "tcp://10.96.0.12:8080"),
            ("BERTH_PORT_8080_TCP_ADDR", "10.96.0.12"),
            ("BERTH_PORT_8080_TCP_PORT", "8080"),
            ("BERTH_PORT_8080_TCP_PROTO", "tcp"),
            ("BERTH_SERVICE_HOST", "10.96.0.12"),
            ("BERTH_SERVICE_PORT", "8080"),
            ("BERTH_SERVICE_PORT_HTTP", "8080"),
            ("BERTH_URL", "http://berth:8080"),
            ("BERTH_KEY", "sk-0123456789"),
        ];
        let loaded = Config::load(None, env(&foreign), &Overrides::default()).unwrap();
        assert_eq!(loaded.warnings, Vec::<String>::new());

        let loaded = Config::load(
            None,
            env(&[
                ("BERTH_NODE_CAPACITY_UNIT", "4"),
                ("BERTH_GATEWAY_HOLDSECS", "1"),
                ("BERTH_LISTEN", "127.0.0.1:9"),
            ]),
            &Overrides::default(),
        )
        .unwrap();
        assert_eq!(loaded.warnings.len(), 2, "{:?}", loaded.warnings);
        assert!(loaded.warnings[0].contains("BERTH_GATEWAY_HOLDSECS"));
        assert!(loaded.warnings[0].contains("BERTH_GATEWAY_HOLD_SECS"));
        assert!(loaded.warnings[1].contains("did you mean BERTH_NODE_CAPACITY_UNITS"));
        assert!(!loaded.warnings.iter().any(|w| w.contains('4')));
        assert_eq!(
            loaded.config.node.capacity_units, 8,
            "a misspelling is not applied"
        );
    }

    #[test]
    fn database_url_layers_and_is_checked_without_showing_its_password() {
        let env = |v: &str| vec![("BERTH_DATABASE_URL".to_owned(), v.to_owned())];
        let none = Config::load(None, Vec::new(), &Overrides::default()).unwrap();
        assert!(none.config.database_url.is_none(), "unset: SQLite");
        let empty = Config::load(None, env(""), &Overrides::default()).unwrap();
        assert!(empty.config.database_url.is_none(), "empty: SQLite");
        let from_env = Config::load(None, env("postgres://u:pw@db/berth"), &Overrides::default())
            .unwrap()
            .config;
        assert_eq!(
            from_env.database_url,
            Some(DatabaseUrl::new("postgres://u:pw@db/berth"))
        );
        let flag = Overrides {
            database_url: Some(DatabaseUrl::new("postgresql://flag/berth")),
            ..Overrides::default()
        };
        let from_flag = Config::load(None, env("postgres://u:pw@db/berth"), &flag).unwrap();
        assert_eq!(
            from_flag.config.database_url.unwrap().expose(),
            "postgresql://flag/berth"
        );
        assert!(!format!("{from_env:?}").contains("pw"), "Debug hides it");

        let err = Config::load(None, env("mysql://u:s3cret@db/x"), &Overrides::default())
            .unwrap_err()
            .to_string();
        assert!(err.contains("database_url"), "{err}");
        assert!(err.contains("mysql://u:***@db/x"), "{err}");
        assert!(!err.contains("s3cret"), "{err}");
    }

    #[test]
    fn every_listed_setting_is_read() {
        let mut c = Config::default();
        for name in ENV_SETTINGS {
            assert!(
                !matches!(c.apply_env(name, "1"), Err(EnvError::Unknown)),
                "{name} is listed but not read"
            );
        }
        assert!(matches!(
            c.apply_env("BERTH_NOT_A_SETTING", "1"),
            Err(EnvError::Unknown)
        ));
    }

    #[test]
    fn quotas_have_per_workspace_overrides() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("berth.toml");
        std::fs::write(
            &file,
            "[quota]\nmax_deployments = 5\nmax_capacity_units = 8\n[quota.workspaces.team-a]\nmax_capacity_units = 32\n[server]\nmax_connections = 100\nidle_timeout_secs = 5\n",
        )
        .unwrap();
        let c = Config::load(
            Some(&file),
            env(&[("BERTH_QUOTA_MAX_DEPLOYMENTS", "7")]),
            &Overrides::default(),
        )
        .unwrap()
        .config;
        assert_eq!(
            c.quota.of("team-a"),
            Quota {
                max_deployments: 7,
                max_capacity_units: Some(32)
            }
        );
        assert_eq!(
            c.quota.of("other"),
            Quota {
                max_deployments: 7,
                max_capacity_units: Some(8)
            }
        );
        assert_eq!(c.server.max_connections, Some(100));
        assert_eq!(c.server.idle_timeout_secs, 5.0);
        assert_eq!(Config::default().quota.of("x").max_capacity_units, None);

        std::fs::write(&file, "[quota.workspaces.\"bad name\"]\nmax_deployments = 1\n[server]\nidle_timeout_secs = 0\nmax_connections = 0\n").unwrap();
        let err = Config::load(Some(&file), env(&[]), &Overrides::default()).unwrap_err();
        assert_eq!(err.0.len(), 3, "{err}");
    }

    #[test]
    fn unknown_file_keys_rejected() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("berth.toml");
        std::fs::write(&file, "listen = \"127.0.0.1:9000\"\nlisten_typo = 1\n").unwrap();
        let err = Config::load(Some(&file), env(&[]), &Overrides::default()).unwrap_err();
        assert!(err.to_string().contains("listen_typo"), "{err}");
    }

    #[test]
    fn default_catalog_resolves_weights() {
        let c = Config::load(
            None,
            env(&[("BERTH_MODELS_DIR", "/m")]),
            &Overrides::default(),
        )
        .unwrap()
        .config;
        let cat = c.catalog();
        assert_eq!(cat.models.len(), 2);
        let m = cat.get("smollm2-135m-instruct").unwrap();
        assert_eq!(
            m.weights,
            PathBuf::from("/m/SmolLM2-135M-Instruct.Q4_1.gguf")
        );
        assert_eq!(m.engine_command[1], "engine");
        assert!(cat.get("gemma3-270m").is_some());
    }
}

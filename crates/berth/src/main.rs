//! The `berth` binary: `berth serve`, `berth engine`, `berth keys ...`.

mod chat;
mod client;
mod deployments;
mod keys;

use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use anyhow::Context;
use berth_server::config::{Config, Overrides};
use clap::{Args, Parser, Subcommand};
use tokio_util::sync::CancellationToken;

#[derive(Debug, Parser)]
#[command(
    name = "berth",
    version,
    about = "Self-hosted model deployments that speak Model Studio's API"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Run the control plane and gateway: the Model Studio deployments API and its replicas.
    Serve(ServeArgs),
    /// Run one replica: a model server for a GGUF model (OpenAI-compatible API).
    Engine(berth_engine::EngineArgs),
    /// Manage API keys (each belongs to one workspace).
    Keys(keys::KeysArgs),
    /// Create, list, scale, update, delete and wait for deployments of a running berth.
    #[command(visible_alias = "d")]
    Deployments(deployments::DeploymentsArgs),
    /// Talk to a deployment: one prompt, or a conversation from standard input.
    Chat(chat::ChatArgs),
    /// An instant OpenAI-compatible stub replica, for tests and benchmarks.
    #[command(hide = true)]
    StubEngine(berth_stub::StubArgs),
    /// The gateway in front of fixed upstreams, without the control plane, for benchmarks.
    #[command(hide = true)]
    GatewayBench(berth_server::bench::GatewayBenchArgs),
}

/// Where the configuration comes from (shared by `serve` and `keys`).
#[derive(Debug, Clone, Args)]
pub struct ConfigArgs {
    /// TOML configuration file.
    #[arg(long, value_name = "FILE", global = true)]
    pub config: Option<PathBuf>,
    /// Directory of berth's database (default ./berth-data).
    #[arg(long, value_name = "DIR", global = true)]
    pub data_dir: Option<PathBuf>,
    /// PostgreSQL database to keep the state in (postgres://USER:PASSWORD@HOST:PORT/DB);
    /// default: the embedded SQLite database under --data-dir.
    #[arg(long, value_name = "URL", global = true)]
    pub database_url: Option<berth_server::config::DatabaseUrl>,
}

#[derive(Debug, Args)]
struct ServeArgs {
    #[command(flatten)]
    config: ConfigArgs,
    /// Address to listen on (default 127.0.0.1:8080).
    #[arg(long, value_name = "ADDR")]
    listen: Option<std::net::SocketAddr>,
    /// Address of the admin listener: /metrics, /livez, /readyz (default: off).
    #[arg(long, value_name = "ADDR")]
    admin_listen: Option<std::net::SocketAddr>,
    /// Directory the default catalog finds model weights in (default ./models).
    #[arg(long, value_name = "DIR")]
    models_dir: Option<PathBuf>,
}

/// Loads the layered configuration.
pub fn load_config(args: &ConfigArgs, overrides: Overrides) -> anyhow::Result<Config> {
    let overrides = Overrides {
        data_dir: args.data_dir.clone(),
        database_url: args.database_url.clone(),
        ..overrides
    };
    let loaded = Config::load(args.config.as_deref(), std::env::vars(), &overrides)?;
    for warning in &loaded.warnings {
        tracing::warn!("{warning}");
    }
    Ok(loaded.config)
}

fn main() -> std::process::ExitCode {
    let cli = Cli::parse();
    // The API clients report their own errors, with an exit code per class of failure.
    if let Command::Deployments(_) | Command::Chat(_) = &cli.command {
        let rt = match runtime() {
            Ok(rt) => rt,
            Err(e) => return client::Failure::new(client::exit::SERVER, e.to_string()).exit(),
        };
        let result = match cli.command {
            Command::Deployments(args) => rt.block_on(deployments::run(args)),
            Command::Chat(args) => rt.block_on(chat::run(args)),
            _ => Ok(()),
        };
        return match result {
            Ok(()) => std::process::ExitCode::SUCCESS,
            Err(f) => f.exit(),
        };
    }
    match serve_main(cli) {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("Error: {e:?}");
            std::process::ExitCode::FAILURE
        }
    }
}

fn serve_main(cli: Cli) -> anyhow::Result<()> {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
        )
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .init();
    let rt = runtime()?;
    match cli.command {
        Command::Engine(args) => rt.block_on(berth_engine::run(args)),
        Command::Keys(args) => rt.block_on(keys::run(args)),
        Command::StubEngine(args) => rt.block_on(berth_stub::run(args)),
        Command::GatewayBench(args) => Ok(rt.block_on(berth_server::bench::run(args))?),
        Command::Deployments(_) | Command::Chat(_) => Ok(()),
        Command::Serve(args) => {
            let config = load_config(
                &args.config,
                Overrides {
                    listen: args.listen,
                    admin_listen: args.admin_listen,
                    models_dir: args.models_dir,
                    ..Overrides::default()
                },
            )?;
            rt.block_on(serve(config))
        }
    }
}

/// The async runtime: one worker thread per core this process may run on, and on a single core
/// a single-threaded runtime, which does the same work without the cross-thread wake-ups and
/// work-stealing bookkeeping of a one-worker multi-threaded one.
fn runtime() -> std::io::Result<tokio::runtime::Runtime> {
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
    if cores == 1 {
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
    } else {
        tokio::runtime::Builder::new_multi_thread()
            .worker_threads(cores)
            .enable_all()
            .build()
    }
}

async fn serve(config: Config) -> anyhow::Result<()> {
    let berth_exe = std::env::current_exe().context("cannot find the berth executable")?;
    let replica_env = std::env::vars()
        .filter(|(k, _)| matches!(k.as_str(), "PATH" | "HOME" | "RUST_LOG"))
        .collect();
    let shutdown = CancellationToken::new();
    let keep_replicas = Arc::new(AtomicBool::new(false));
    tokio::spawn(stop_on_signal(shutdown.clone(), keep_replicas.clone()));
    berth_server::serve(
        config,
        berth_server::ServeEnv {
            berth_exe,
            replica_env,
            keep_replicas,
        },
        shutdown,
    )
    .await?;
    Ok(())
}

/// Cancels `token` on SIGINT or SIGTERM (replicas are stopped), or on SIGUSR2 after setting
/// `keep_replicas` (replicas keep running for the next start to adopt: an upgrade).
async fn stop_on_signal(token: CancellationToken, keep_replicas: Arc<AtomicBool>) {
    use tokio::signal::unix::{signal, SignalKind};
    let (Ok(mut term), Ok(mut int), Ok(mut usr2)) = (
        signal(SignalKind::terminate()),
        signal(SignalKind::interrupt()),
        signal(SignalKind::user_defined2()),
    ) else {
        tracing::error!("cannot install signal handlers");
        return;
    };
    tokio::select! {
        _ = term.recv() => tracing::info!("SIGTERM: shutting down"),
        _ = int.recv() => tracing::info!("SIGINT: shutting down"),
        _ = usr2.recv() => {
            tracing::info!("SIGUSR2: shutting down, leaving the replicas running for the next start");
            keep_replicas.store(true, Ordering::SeqCst);
        }
    }
    token.cancel();
}

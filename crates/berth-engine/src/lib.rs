//! `berth engine`: the replica server (placeholder until the engine lands).

use clap::Args;

/// Flags of `berth engine`.
#[derive(Debug, Clone, Args)]
pub struct EngineArgs {
    /// GGUF model file.
    #[arg(long)]
    pub model: std::path::PathBuf,
    /// Address to listen on.
    #[arg(long, default_value = "127.0.0.1")]
    pub host: String,
    /// Port to listen on.
    #[arg(long)]
    pub port: u16,
}

/// Runs the engine until SIGINT/SIGTERM.
pub async fn run(_args: EngineArgs) -> anyhow::Result<()> {
    anyhow::bail!("berth engine is not built yet")
}

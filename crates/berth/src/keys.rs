//! `berth keys`: create, list and revoke API keys in the store.

use berth_server::config::Overrides;
use berth_server::keys;
use clap::{Args, Subcommand};

use crate::{load_config, ConfigArgs};

#[derive(Debug, Args)]
pub struct KeysArgs {
    #[command(subcommand)]
    command: KeysCommand,
    #[command(flatten)]
    config: ConfigArgs,
}

#[derive(Debug, Subcommand)]
enum KeysCommand {
    /// Make a new key and print it once (only its hash is stored).
    Create {
        /// Workspace the key belongs to.
        #[arg(long, default_value = "default")]
        workspace: String,
    },
    /// List keys: ids, workspaces, creation times (never secrets).
    List,
    /// Revoke a key by id.
    Revoke {
        /// The key id (`ak-...`), as `keys list` shows it.
        id: String,
    },
}

pub async fn run(args: KeysArgs) -> anyhow::Result<()> {
    let config = load_config(&args.config, Overrides::default())?;
    let store = berth_server::open_store(&config).await?;
    match args.command {
        KeysCommand::Create { workspace } => {
            keys::validate_workspace(&workspace).map_err(anyhow::Error::msg)?;
            let new = keys::generate(&workspace);
            store.insert_api_key(&new.record).await?;
            eprintln!(
                "Created key {} in workspace {}. It is shown only once:",
                new.record.id, workspace
            );
            println!("{}", new.secret);
        }
        KeysCommand::List => {
            println!("{:<18} {:<24} {:<24} STATUS", "ID", "WORKSPACE", "CREATED");
            for k in store.list_api_keys().await? {
                println!(
                    "{:<18} {:<24} {:<24} {}",
                    k.id,
                    k.workspace_id,
                    k.created.to_gmt_string(),
                    if k.revoked { "revoked" } else { "active" }
                );
            }
        }
        KeysCommand::Revoke { id } => {
            if !store.revoke_api_key(&id).await? {
                anyhow::bail!("no key with id {id}");
            }
            println!("Revoked {id}.");
            let bootstrap = config.bootstrap_key.as_deref().map(keys::hash);
            let is_bootstrap = store
                .list_api_keys()
                .await?
                .iter()
                .any(|k| k.id == id && Some(k.hash) == bootstrap);
            if is_bootstrap {
                eprintln!(
                    "This was the bootstrap key (bootstrap_key / BERTH_BOOTSTRAP_KEY): `berth serve` \
                     refuses to start with it until that setting is changed or removed."
                );
            }
        }
    }
    Ok(())
}

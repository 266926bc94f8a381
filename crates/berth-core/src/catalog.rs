//! The model catalog: which models this node can deploy and how to start a replica of each.

use std::path::PathBuf;

/// One deployable model.
#[derive(Debug, Clone, PartialEq)]
pub struct CatalogModel {
    /// The `model_name` clients deploy.
    pub model_name: String,
    pub display_name: String,
    /// The GGUF weights file.
    pub weights: PathBuf,
    /// Engine command template; see [`EngineArgs`] for the placeholders it may use.
    pub engine_command: Vec<String>,
    /// Capacity units one replica needs.
    pub base_capacity: u32,
    /// Context length a replica is started with.
    pub context_length: u32,
    /// CPU threads per replica.
    pub threads: u32,
    /// Sequences a replica decodes together.
    pub parallel: u32,
}

impl CatalogModel {
    /// Whether the weights file is present.
    pub fn available(&self) -> bool {
        self.weights.is_file()
    }

    /// The reason a replica cannot start, if the weights are missing.
    pub fn missing_weights_reason(&self) -> Option<String> {
        (!self.available()).then(|| {
            format!(
                "Model weights file {} for model {} is missing; run scripts/fetch-models.",
                self.weights.display(),
                self.model_name
            )
        })
    }

    /// The engine command with its placeholders filled in.
    pub fn render_command(&self, args: &EngineArgs<'_>) -> Vec<String> {
        self.engine_command
            .iter()
            .map(|part| {
                part.replace("{berth}", args.berth_exe)
                    .replace("{weights}", &self.weights.to_string_lossy())
                    .replace("{host}", args.host)
                    .replace("{port}", &args.port.to_string())
                    .replace("{alias}", args.alias)
                    .replace("{ctx}", &self.context_length.to_string())
                    .replace("{threads}", &self.threads.to_string())
                    .replace("{parallel}", &self.parallel.to_string())
            })
            .collect()
    }
}

/// Values substituted into an engine command template:
/// `{berth}`, `{weights}`, `{host}`, `{port}`, `{alias}`, `{ctx}`, `{threads}`, `{parallel}`.
#[derive(Debug, Clone)]
pub struct EngineArgs<'a> {
    pub berth_exe: &'a str,
    pub host: &'a str,
    pub port: u16,
    pub alias: &'a str,
}

/// The catalog, in configuration order.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct ModelCatalog {
    pub models: Vec<CatalogModel>,
}

impl ModelCatalog {
    /// Looks a model up by `model_name`.
    pub fn get(&self, model_name: &str) -> Option<&CatalogModel> {
        self.models.iter().find(|m| m.model_name == model_name)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renders_placeholders() {
        let m = CatalogModel {
            model_name: "m".into(),
            display_name: "M".into(),
            weights: PathBuf::from("/models/m.gguf"),
            engine_command: [
                "{berth}",
                "engine",
                "--model",
                "{weights}",
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
            ]
            .map(String::from)
            .to_vec(),
            base_capacity: 1,
            context_length: 2048,
            threads: 1,
            parallel: 4,
        };
        let cmd = m.render_command(&EngineArgs {
            berth_exe: "/bin/berth",
            host: "127.0.0.1",
            port: 9000,
            alias: "m-a",
        });
        assert_eq!(
            cmd.join(" "),
            "/bin/berth engine --model /models/m.gguf --port 9000 --alias m-a --ctx 2048 --threads 1 --parallel 4"
        );
        assert!(!m.available());
        assert!(m
            .missing_weights_reason()
            .unwrap()
            .contains("/models/m.gguf"));
    }
}

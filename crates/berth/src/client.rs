//! Talking to a running `berth serve` over its HTTP API, as the CLI commands do: where to
//! connect, which key to use, and how an answer or an error maps to an exit code.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::Args;
use serde_json::Value;

/// Where the API is and which key to use. Flags, else the variables the dashscope SDK reads,
/// else the local `scripts/run` setup.
#[derive(Debug, Clone, Args)]
pub struct Target {
    /// API base URL [env: DASHSCOPE_HTTP_BASE_URL; default: http://127.0.0.1:8080/api/v1]
    #[arg(long, env = "DASHSCOPE_HTTP_BASE_URL", hide_env = true, global = true)]
    pub base_url: Option<String>,
    /// API key [env: DASHSCOPE_API_KEY; default: the key in berth-data/dev-key]
    #[arg(
        long,
        env = "DASHSCOPE_API_KEY",
        hide_env = true,
        hide_env_values = true,
        global = true
    )]
    pub api_key: Option<String>,
}

/// Exit codes, one per class of failure (documented in `--help`).
pub mod exit {
    pub const USAGE: u8 = 2;
    pub const AUTH: u8 = 3;
    pub const NOT_FOUND: u8 = 4;
    pub const CONFLICT: u8 = 5;
    pub const SERVER: u8 = 6;
    pub const FAILED: u8 = 7;
    pub const TIMEOUT: u8 = 8;
}

/// The exit-code table, for `--help`.
pub const EXIT_CODES: &str = "\
Exit codes:
  0  success
  2  usage: bad flags, or the server refused the request as invalid (400)
  3  auth: missing, wrong or revoked key, or another workspace (401, 403)
  4  not found (404)
  5  conflict: the name is taken, or the deployment is being deleted (409)
  6  server: berth could not be reached, or answered 429 or 5xx
  7  the deployment is FAILED (with --wait or wait)
  8  --wait or wait ran out of time";

/// A failure of a command: the message for stderr and the exit code.
#[derive(Debug)]
pub struct Failure {
    pub code: u8,
    pub message: String,
}

impl Failure {
    pub fn new(code: u8, message: impl Into<String>) -> Self {
        Self {
            code,
            message: message.into(),
        }
    }

    pub fn exit(self) -> ExitCode {
        eprintln!("error: {}", self.message);
        ExitCode::from(self.code)
    }
}

/// An HTTP client bound to one berth.
pub struct Client {
    http: reqwest::Client,
    pub base: String,
    key: String,
}

impl Client {
    pub fn new(target: &Target) -> Result<Self, Failure> {
        let base = target
            .base_url
            .clone()
            .unwrap_or_else(|| "http://127.0.0.1:8080/api/v1".to_owned())
            .trim_end_matches('/')
            .to_owned();
        let key = match &target.api_key {
            Some(k) => k.clone(),
            None => {
                let path = PathBuf::from("berth-data/dev-key");
                std::fs::read_to_string(&path)
                    .map(|k| k.trim().to_owned())
                    .map_err(|_| {
                        Failure::new(
                            exit::AUTH,
                            "no API key: pass --api-key, set DASHSCOPE_API_KEY, or run from the \
                             directory where scripts/run keeps berth-data/dev-key",
                        )
                    })?
            }
        };
        let http = reqwest::Client::builder()
            .build()
            .map_err(|e| Failure::new(exit::SERVER, e.to_string()))?;
        Ok(Self { http, base, key })
    }

    /// The OpenAI-compatible base next to the native one (`.../api/v1` ->
    /// `.../compatible-mode/v1`).
    pub fn compatible_base(&self) -> String {
        match self.base.strip_suffix("/api/v1") {
            Some(root) => format!("{root}/compatible-mode/v1"),
            None => format!("{}/compatible-mode/v1", self.base),
        }
    }

    pub fn request(&self, method: reqwest::Method, url: &str) -> reqwest::RequestBuilder {
        self.http.request(method, url).bearer_auth(&self.key)
    }

    /// Sends `req` and hands back a 200 answer unread (for streams); anything else is the
    /// failure its envelope describes.
    pub async fn open(&self, req: reqwest::RequestBuilder) -> Result<reqwest::Response, Failure> {
        let resp = req
            .send()
            .await
            .map_err(|e| Failure::new(exit::SERVER, format!("cannot reach berth: {e}")))?;
        let status = resp.status().as_u16();
        if status == 200 {
            return Ok(resp);
        }
        let text = resp.text().await.unwrap_or_default();
        let json = serde_json::from_str(&text).unwrap_or(Value::Null);
        Err(failure_of(status, &json, &text))
    }

    /// Calls `method path` with an optional JSON body; returns the raw body text and its JSON
    /// on success, or the failure the server's `code` and `message` describe.
    pub async fn call(
        &self,
        method: reqwest::Method,
        path: &str,
        body: Option<&Value>,
    ) -> Result<(String, Value), Failure> {
        let mut req = self.request(method, &format!("{}{path}", self.base));
        if let Some(b) = body {
            req = req.json(b);
        }
        let resp = req.send().await.map_err(|e| {
            Failure::new(
                exit::SERVER,
                format!("cannot reach berth at {}: {e}", self.base),
            )
        })?;
        let status = resp.status().as_u16();
        let text = resp
            .text()
            .await
            .map_err(|e| Failure::new(exit::SERVER, format!("reading the answer: {e}")))?;
        let json: Value = serde_json::from_str(&text).unwrap_or(Value::Null);
        if (200..300).contains(&status) {
            return Ok((text, json));
        }
        Err(failure_of(status, &json, &text))
    }
}

/// The failure for an error answer: its class from the status, its words from the envelope.
pub fn failure_of(status: u16, json: &Value, text: &str) -> Failure {
    let code = match status {
        400 | 405 | 413 | 422 => exit::USAGE,
        401 | 403 => exit::AUTH,
        404 => exit::NOT_FOUND,
        409 => exit::CONFLICT,
        _ => exit::SERVER,
    };
    let (c, m) = (
        json.get("code")
            .or_else(|| json.pointer("/error/code"))
            .and_then(Value::as_str),
        json.get("message")
            .or_else(|| json.pointer("/error/message"))
            .and_then(Value::as_str),
    );
    let message = match (c, m) {
        (Some(c), Some(m)) => format!("{c}: {m} (HTTP {status})"),
        _ => format!("HTTP {status}: {}", text.trim()),
    };
    Failure::new(code, message)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn error_classes_and_words() {
        let native =
            json!({"request_id": "r", "code": "NotFound", "message": "Model: x not found!"});
        let f = failure_of(404, &native, "");
        assert_eq!(f.code, exit::NOT_FOUND);
        assert_eq!(f.message, "NotFound: Model: x not found! (HTTP 404)");
        let openai = json!({"error": {"code": "invalid_api_key", "message": "bad key"}});
        assert_eq!(failure_of(401, &openai, "").code, exit::AUTH);
        assert_eq!(failure_of(409, &native, "").code, exit::CONFLICT);
        assert_eq!(failure_of(400, &native, "").code, exit::USAGE);
        let f = failure_of(502, &Value::Null, "bad gateway\n");
        assert_eq!(
            (f.code, f.message.as_str()),
            (exit::SERVER, "HTTP 502: bad gateway")
        );
    }

    #[test]
    fn compatible_base_sits_beside_the_native_one() {
        let c = Client {
            http: reqwest::Client::new(),
            base: "http://h:1/api/v1".into(),
            key: String::new(),
        };
        assert_eq!(c.compatible_base(), "http://h:1/compatible-mode/v1");
    }
}

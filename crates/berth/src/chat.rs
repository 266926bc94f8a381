//! `berth chat DEPLOYMENT [PROMPT]`: talk to a deployment through the OpenAI-compatible route,
//! the answer streamed as it comes. One-shot with a prompt; otherwise a conversation, a line a
//! turn, until end of input.

use std::io::{BufRead, Write};

use clap::Args;
use futures::StreamExt;
use reqwest::Method;
use serde_json::{json, Value};

use crate::client::{exit, Client, Failure, Target, EXIT_CODES};

#[derive(Debug, Args)]
#[command(after_help = EXIT_CODES)]
pub struct ChatArgs {
    /// The deployment to talk to (its `deployed_model`).
    deployment: String,
    /// Ask this once and exit; without it, read one turn per line from standard input.
    prompt: Option<String>,
    /// Most tokens an answer may have.
    #[arg(long)]
    max_tokens: Option<u32>,
    #[arg(long)]
    temperature: Option<f64>,
    #[command(flatten)]
    target: Target,
}

pub async fn run(args: ChatArgs) -> Result<(), Failure> {
    let client = Client::new(&args.target)?;
    let mut messages: Vec<Value> = Vec::new();
    if let Some(prompt) = &args.prompt {
        messages.push(json!({"role": "user", "content": prompt}));
        turn(&client, &args, &messages).await?;
        return Ok(());
    }
    let stdin = std::io::stdin();
    let interactive = std::io::IsTerminal::is_terminal(&stdin);
    loop {
        if interactive {
            eprint!("> ");
            let _ = std::io::stderr().flush();
        }
        let mut line = String::new();
        if stdin.lock().read_line(&mut line).unwrap_or(0) == 0 {
            return Ok(());
        }
        let line = line.trim();
        if line.is_empty() {
            continue;
        }
        messages.push(json!({"role": "user", "content": line}));
        let answer = turn(&client, &args, &messages).await?;
        messages.push(json!({"role": "assistant", "content": answer}));
    }
}

/// One streamed answer, printed as it arrives; returns its text.
async fn turn(client: &Client, args: &ChatArgs, messages: &[Value]) -> Result<String, Failure> {
    let mut body = json!({
        "model": args.deployment,
        "messages": messages,
        "stream": true,
    });
    if let Some(m) = args.max_tokens {
        body["max_tokens"] = json!(m);
    }
    if let Some(t) = args.temperature {
        body["temperature"] = json!(t);
    }
    let url = format!("{}/chat/completions", client.compatible_base());
    let resp = client
        .open(client.request(Method::POST, &url).json(&body))
        .await?;
    let mut stream = resp.bytes_stream();
    let mut pending = Vec::new();
    let mut answer = String::new();
    let mut out = std::io::stdout();
    while let Some(chunk) = stream.next().await {
        let chunk = chunk.map_err(|e| Failure::new(exit::SERVER, format!("stream broke: {e}")))?;
        pending.extend_from_slice(&chunk);
        while let Some(end) = pending.iter().position(|b| *b == b'\n') {
            let line: Vec<u8> = pending.drain(..=end).collect();
            let line = String::from_utf8_lossy(&line);
            let Some(data) = line.trim_end().strip_prefix("data: ") else {
                continue;
            };
            if data == "[DONE]" {
                continue;
            }
            let v: Value = serde_json::from_str(data).unwrap_or(Value::Null);
            if let Some(err) = v.get("error") {
                return Err(Failure::new(exit::SERVER, format!("stream error: {err}")));
            }
            if let Some(piece) = v
                .pointer("/choices/0/delta/content")
                .and_then(Value::as_str)
            {
                answer.push_str(piece);
                let _ = out.write_all(piece.as_bytes());
                let _ = out.flush();
            }
        }
    }
    println!();
    Ok(answer)
}

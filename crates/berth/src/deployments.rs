//! `berth deployments` (alias `berth d`): the deployments API from a terminal. Human output by
//! default (aligned tables, relative times), `-o json` for the API's JSON unchanged.

use std::io::IsTerminal;
use std::time::{Duration, Instant};

use clap::{Args, Subcommand, ValueEnum};
use reqwest::Method;
use serde_json::{json, Map, Value};

use crate::client::{exit, Client, Failure, Target, EXIT_CODES};

#[derive(Debug, Args)]
#[command(after_help = EXIT_CODES)]
pub struct DeploymentsArgs {
    #[command(subcommand)]
    command: Command,
    #[command(flatten)]
    target: Target,
    /// Output: a table for people, or the API's JSON unchanged.
    #[arg(short = 'o', long, value_enum, default_value_t = Output::Table, global = true)]
    output: Output,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
enum Output {
    Table,
    Json,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// What can be deployed here.
    Models,
    /// Create a deployment.
    Create {
        /// The catalog model to deploy.
        model: String,
        #[arg(long)]
        capacity: u32,
        /// Appended to the model name to make the deployment's name.
        #[arg(long)]
        suffix: Option<String>,
        /// A display name.
        #[arg(long)]
        name: Option<String>,
        #[arg(long)]
        rpm_limit: Option<u64>,
        #[arg(long)]
        tpm_limit: Option<u64>,
        #[command(flatten)]
        wait: WaitFlags,
    },
    /// List deployments, newest first.
    List {
        #[arg(long, default_value_t = 1)]
        page_no: u64,
        #[arg(long, default_value_t = 10)]
        page_size: u64,
    },
    /// One deployment.
    Get { id: String },
    /// Set the capacity target.
    Scale {
        id: String,
        #[arg(long)]
        capacity: u32,
        #[command(flatten)]
        wait: WaitFlags,
    },
    /// Change the rate limits.
    Update {
        id: String,
        #[arg(long)]
        rpm_limit: Option<u64>,
        #[arg(long)]
        tpm_limit: Option<u64>,
    },
    /// Delete a deployment.
    Delete {
        id: String,
        #[command(flatten)]
        wait: WaitFlags,
    },
    /// Follow live changes of one deployment (until it is deleted) or, without an ID, of every
    /// deployment of the workspace.
    Watch { id: Option<String> },
    /// What a deployment's replicas wrote (stdout and stderr), each line marked with its replica.
    Logs {
        id: String,
        /// Keep following new output until the deployment is gone.
        #[arg(short, long)]
        follow: bool,
        /// Recent lines of each replica to start with.
        #[arg(long, default_value_t = 100)]
        lines: u32,
    },
    /// Wait until a deployment is RUNNING (or gone).
    Wait {
        id: String,
        #[arg(long = "for", value_enum, default_value_t = Goal::Running)]
        goal: Goal,
        #[arg(long, default_value_t = 600)]
        timeout: u64,
    },
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
enum Goal {
    Running,
    Deleted,
}

#[derive(Debug, Clone, Args)]
struct WaitFlags {
    /// Wait until the change has taken effect, showing progress.
    #[arg(long)]
    wait: bool,
    /// Seconds `--wait` waits at most.
    #[arg(long, default_value_t = 600)]
    timeout: u64,
}

pub async fn run(args: DeploymentsArgs) -> Result<(), Failure> {
    let client = Client::new(&args.target)?;
    let out = args.output;
    match args.command {
        Command::Models => {
            let (text, v) = client
                .call(Method::GET, "/deployments/models?page_size=200", None)
                .await?;
            print_models(out, &text, &v);
        }
        Command::Create {
            model,
            capacity,
            suffix,
            name,
            rpm_limit,
            tpm_limit,
            wait,
        } => {
            let mut body = Map::new();
            body.insert("model_name".into(), json!(model));
            body.insert("capacity".into(), json!(capacity));
            for (k, v) in [("suffix", suffix), ("name", name)] {
                if let Some(v) = v {
                    body.insert(k.into(), json!(v));
                }
            }
            for (k, v) in [("rpm_limit", rpm_limit), ("tpm_limit", tpm_limit)] {
                if let Some(v) = v {
                    body.insert(k.into(), json!(v));
                }
            }
            let (text, v) = client
                .call(Method::POST, "/deployments", Some(&Value::Object(body)))
                .await?;
            print_one(out, &text, &v["output"]);
            if wait.wait {
                let id = v["output"]["deployed_model"].as_str().unwrap_or_default();
                wait_for(&client, id, Goal::Running, wait.timeout, out).await?;
            }
        }
        Command::List { page_no, page_size } => {
            let (text, v) = client
                .call(
                    Method::GET,
                    &format!("/deployments?page_no={page_no}&page_size={page_size}"),
                    None,
                )
                .await?;
            print_list(out, &text, &v["output"]);
        }
        Command::Get { id } => {
            let (text, v) = client
                .call(Method::GET, &format!("/deployments/{id}"), None)
                .await?;
            print_one(out, &text, &v["output"]);
        }
        Command::Scale { id, capacity, wait } => {
            let (text, v) = client
                .call(
                    Method::PUT,
                    &format!("/deployments/{id}/scale"),
                    Some(&json!({ "capacity": capacity })),
                )
                .await?;
            print_one(out, &text, &v["output"]);
            if wait.wait {
                wait_for(&client, &id, Goal::Running, wait.timeout, out).await?;
            }
        }
        Command::Update {
            id,
            rpm_limit,
            tpm_limit,
        } => {
            if rpm_limit.is_none() && tpm_limit.is_none() {
                return Err(Failure::new(
                    exit::USAGE,
                    "update needs --rpm-limit or --tpm-limit",
                ));
            }
            let mut body = Map::new();
            for (k, v) in [("rpm_limit", rpm_limit), ("tpm_limit", tpm_limit)] {
                if let Some(v) = v {
                    body.insert(k.into(), json!(v));
                }
            }
            let (text, v) = client
                .call(
                    Method::PUT,
                    &format!("/deployments/{id}/update"),
                    Some(&Value::Object(body)),
                )
                .await?;
            print_one(out, &text, &v["output"]);
        }
        Command::Delete { id, wait } => {
            let (text, v) = client
                .call(Method::DELETE, &format!("/deployments/{id}"), None)
                .await?;
            print_one(out, &text, &v["output"]);
            if wait.wait {
                wait_for(&client, &id, Goal::Deleted, wait.timeout, out).await?;
            }
        }
        Command::Wait { id, goal, timeout } => wait_for(&client, &id, goal, timeout, out).await?,
        Command::Watch { id } => watch(&client, id.as_deref(), out).await?,
        Command::Logs { id, follow, lines } => logs(&client, &id, follow, lines).await?,
    }
    Ok(())
}

/// Polls the deployment until `goal`; progress on a terminal (a bar of ready replicas), plain
/// lines otherwise (one per change), nothing with `-o json`.
async fn wait_for(
    client: &Client,
    id: &str,
    goal: Goal,
    timeout: u64,
    out: Output,
) -> Result<(), Failure> {
    let started = Instant::now();
    let deadline = started + Duration::from_secs(timeout);
    let tty = out == Output::Table && std::io::stderr().is_terminal();
    let bar = tty.then(|| {
        let bar = indicatif::ProgressBar::new(1);
        bar.set_style(
            indicatif::ProgressStyle::with_template(
                "{spinner} {prefix} {wide_msg} [{bar:20}] {pos}/{len} ready  {elapsed}",
            )
            .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar())
            .progress_chars("=> "),
        );
        bar.set_prefix(id.to_owned());
        bar.enable_steady_tick(Duration::from_millis(120));
        bar
    });
    let mut last = String::new();
    let result = loop {
        let got = client
            .call(Method::GET, &format!("/deployments/{id}"), None)
            .await;
        let d = match got {
            Err(f) if f.code == exit::NOT_FOUND && goal == Goal::Deleted => break Ok(()),
            Err(f) => break Err(f),
            Ok((_, v)) => v["output"].clone(),
        };
        let status = d["status"].as_str().unwrap_or("?").to_owned();
        let ready = d["ready_capacity"].as_u64().unwrap_or(0);
        let capacity = d["capacity"].as_u64().unwrap_or(0);
        let line = format!("{status} {ready}/{capacity}");
        if let Some(bar) = &bar {
            bar.set_length(capacity.max(1));
            bar.set_position(ready);
            bar.set_message(status.clone());
        } else if line != last && out == Output::Table {
            eprintln!(
                "{id}: {status}, {ready}/{capacity} ready ({:.0}s)",
                started.elapsed().as_secs_f64()
            );
        }
        last = line;
        match (goal, status.as_str()) {
            (Goal::Running, "RUNNING") if ready == capacity => break Ok(()),
            (_, "FAILED") => {
                let reason = d["fail_reason"].as_str().unwrap_or("no reason given");
                break Err(Failure::new(exit::FAILED, format!("{id} FAILED: {reason}")));
            }
            _ => {}
        }
        if Instant::now() >= deadline {
            break Err(Failure::new(
                exit::TIMEOUT,
                format!("{id} is still {status} ({ready}/{capacity} ready) after {timeout}s"),
            ));
        }
        tokio::time::sleep(Duration::from_millis(300)).await;
    };
    if let Some(bar) = bar {
        bar.finish_and_clear();
    }
    if result.is_ok() && out == Output::Table {
        let what = match goal {
            Goal::Running => "RUNNING",
            Goal::Deleted => "deleted",
        };
        eprintln!("{id}: {what} after {:.1}s", started.elapsed().as_secs_f64());
    }
    result
}

/// Copies a deployment's log lines to stdout as they come.
async fn logs(client: &Client, id: &str, follow: bool, lines: u32) -> Result<(), Failure> {
    use futures::StreamExt;
    use std::io::Write;
    let url = format!(
        "{}/deployments/{id}/logs?lines={lines}&follow={follow}",
        client.base
    );
    let resp = client.open(client.request(Method::GET, &url)).await?;
    let mut body = resp.bytes_stream();
    let mut stdout = std::io::stdout();
    while let Some(chunk) = body.next().await {
        let chunk = chunk.map_err(|e| Failure::new(exit::SERVER, format!("stream broke: {e}")))?;
        let _ = stdout.write_all(&chunk);
        let _ = stdout.flush();
    }
    Ok(())
}

/// Prints each event of a deployment's (or the workspace's) event stream as it comes.
async fn watch(client: &Client, id: Option<&str>, out: Output) -> Result<(), Failure> {
    use futures::StreamExt;
    let url = match id {
        Some(id) => format!("{}/deployments/{id}/stream", client.base),
        None => format!("{}/events", client.base),
    };
    let resp = client.open(client.request(Method::GET, &url)).await?;
    let mut body = resp.bytes_stream();
    let mut pending = Vec::new();
    while let Some(chunk) = body.next().await {
        let chunk = chunk.map_err(|e| Failure::new(exit::SERVER, format!("stream broke: {e}")))?;
        pending.extend_from_slice(&chunk);
        while let Some(end) = pending.iter().position(|b| *b == b'\n') {
            let line: Vec<u8> = pending.drain(..=end).collect();
            let line = String::from_utf8_lossy(&line);
            let Some(data) = line.trim_end().strip_prefix("data:") else {
                continue;
            };
            if out == Output::Json {
                println!("{}", data.trim());
                continue;
            }
            let v: Value = serde_json::from_str(data.trim()).unwrap_or(Value::Null);
            let now = chrono::Utc::now().format("%H:%M:%S");
            match v["type"].as_str() {
                Some("deployment") => {
                    let d = &v["deployment"];
                    let note = d["status_message"]
                        .as_str()
                        .or(d["fail_reason"].as_str())
                        .unwrap_or_default();
                    println!(
                        "{now}  {}  {}  {}/{} ready  {note}",
                        s(&d["deployed_model"]),
                        s(&d["status"]),
                        s(&d["ready_capacity"]),
                        s(&d["capacity"])
                    )
                }
                Some("replica") => println!(
                    "{now}  {}  replica {} {}{}",
                    s(&v["deployed_model"]),
                    s(&v["replica_id"]),
                    s(&v["state"]),
                    v["reason"]
                        .as_str()
                        .map(|r| format!(": {r}"))
                        .unwrap_or_default()
                ),
                Some("deleted") => println!("{now}  {}  deleted", s(&v["deployed_model"])),
                _ => println!("{now}  {}", data.trim()),
            }
        }
    }
    Ok(())
}

fn print_one(out: Output, text: &str, d: &Value) {
    if out == Output::Json {
        println!("{text}");
        return;
    }
    let fields = [
        "deployed_model",
        "model_name",
        "status",
        "capacity",
        "ready_capacity",
        "base_capacity",
        "rpm_limit",
        "tpm_limit",
        "status_message",
        "fail_reason",
        "workspace_id",
        "gmt_create",
        "gmt_modified",
    ];
    for f in fields {
        if let Some(v) = d.get(f).filter(|v| !v.is_null()) {
            let shown = match v {
                Value::String(s) if f == "gmt_create" || f == "gmt_modified" => {
                    format!("{s} ({})", age(s))
                }
                Value::String(s) => s.clone(),
                other => other.to_string(),
            };
            println!("{:<16} {shown}", format!("{f}:"));
        }
    }
}

fn print_list(out: Output, text: &str, page: &Value) {
    if out == Output::Json {
        println!("{text}");
        return;
    }
    let rows: Vec<Vec<String>> = page["deployments"]
        .as_array()
        .map(|a| {
            a.iter()
                .map(|d| {
                    vec![
                        s(&d["deployed_model"]),
                        s(&d["status"]),
                        format!("{}/{}", s(&d["ready_capacity"]), s(&d["capacity"])),
                        limit(&d["rpm_limit"]),
                        limit(&d["tpm_limit"]),
                        age(d["gmt_create"].as_str().unwrap_or_default()),
                    ]
                })
                .collect()
        })
        .unwrap_or_default();
    table(&["NAME", "STATUS", "READY", "RPM", "TPM", "AGE"], &rows);
    println!(
        "page {} of {} deployment(s)",
        s(&page["page_no"]),
        s(&page["total"])
    );
}

fn print_models(out: Output, text: &str, v: &Value) {
    if out == Output::Json {
        println!("{text}");
        return;
    }
    let rows: Vec<Vec<String>> = v["output"]["models"]
        .as_array()
        .map(|a| {
            a.iter()
                .map(|m| {
                    vec![
                        s(&m["model_name"]),
                        s(&m["base_capacity"]),
                        if m["available"].as_bool() == Some(false) {
                            "no".into()
                        } else {
                            "yes".into()
                        },
                        s(&m["display_name"]),
                    ]
                })
                .collect()
        })
        .unwrap_or_default();
    table(
        &["MODEL", "BASE CAPACITY", "AVAILABLE", "DISPLAY NAME"],
        &rows,
    );
}

fn s(v: &Value) -> String {
    match v {
        Value::String(s) => s.clone(),
        Value::Null => "-".into(),
        other => other.to_string(),
    }
}

fn limit(v: &Value) -> String {
    if v.is_null() {
        "-".into()
    } else {
        s(v)
    }
}

/// Prints aligned columns.
fn table(head: &[&str], rows: &[Vec<String>]) {
    let mut widths: Vec<usize> = head.iter().map(|h| h.len()).collect();
    for r in rows {
        for (w, c) in widths.iter_mut().zip(r) {
            *w = (*w).max(c.chars().count());
        }
    }
    let line = |cells: Vec<&str>| {
        let mut out = String::new();
        for (i, (c, w)) in cells.iter().zip(&widths).enumerate() {
            if i + 1 == cells.len() {
                out.push_str(c);
            } else {
                out.push_str(&format!("{c:<w$}  "));
            }
        }
        println!("{}", out.trim_end());
    };
    line(head.to_vec());
    for r in rows {
        line(r.iter().map(String::as_str).collect());
    }
}

/// "3m ago" for an API timestamp (UTC `YYYY-MM-DDTHH:MM:SS.fff`).
fn age(ts: &str) -> String {
    let Ok(t) = chrono::NaiveDateTime::parse_from_str(ts, "%Y-%m-%dT%H:%M:%S%.f") else {
        return ts.to_owned();
    };
    let secs = (chrono::Utc::now().naive_utc() - t).num_seconds().max(0);
    relative(secs)
}

fn relative(secs: i64) -> String {
    match secs {
        s if s < 60 => format!("{s}s ago"),
        s if s < 3600 => format!("{}m ago", s / 60),
        s if s < 86_400 => format!("{}h ago", s / 3600),
        s => format!("{}d ago", s / 86_400),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn relative_times() {
        assert_eq!(relative(5), "5s ago");
        assert_eq!(relative(125), "2m ago");
        assert_eq!(relative(7200), "2h ago");
        assert_eq!(relative(3 * 86_400 + 5), "3d ago");
        assert_eq!(age("not a time"), "not a time");
    }
}

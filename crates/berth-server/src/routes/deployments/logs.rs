//! `GET /api/v1/deployments/{deployed_model}/logs`: what the deployment's replicas wrote to
//! stdout and stderr, from their log files (`data_dir/replicas/<replica id>.log`, kept below
//! 16 MiB each). `?lines=N` (1..=10000, default 100) picks how many recent lines of each replica;
//! `?follow=true` then keeps the answer open and streams new lines as they are written, from
//! replicas started later too, until the deployment is gone. Each line is `[replica id] text`.

use std::collections::HashMap;
use std::convert::Infallible;
use std::io::SeekFrom;
use std::path::PathBuf;
use std::time::Duration;

use axum::body::{Body, Bytes};
use axum::extract::State;
use axum::http::header;
use axum::response::{IntoResponse, Response};
use berth_api::envelope::ErrorBody;
use serde::Deserialize;
use tokio::io::{AsyncReadExt, AsyncSeekExt};

use super::load;
use crate::auth::Caller;
use crate::error::ApiError;
use crate::extract::{Path, Query};
use crate::state::AppState;

const POLL: Duration = Duration::from_millis(250);
const MAX_LINES: usize = 10_000;

#[derive(Debug, Deserialize, utoipa::IntoParams)]
pub struct LogsQuery {
    /// Recent lines of each replica, 1..=10000 (default 100).
    #[param(value_type = Option<u32>, minimum = 1, maximum = 10000)]
    pub lines: Option<String>,
    /// `true` keeps the answer open and streams new lines.
    #[param(value_type = Option<bool>)]
    pub follow: Option<String>,
}

/// The deployment's replica output.
#[utoipa::path(get, path = "/api/v1/deployments/{deployed_model}/logs", tag = "deployments",
    params(("deployed_model" = String, Path), LogsQuery),
    responses((status = 200, description = "lines `[replica id] text`", content_type = "text/plain", body = String),
        (status = 400, body = ErrorBody), (status = 401, body = ErrorBody), (status = 403, body = ErrorBody), (status = 404, body = ErrorBody)))]
pub async fn logs(
    State(state): State<AppState>,
    caller: Caller,
    Path(name): Path<String>,
    Query(q): Query<LogsQuery>,
) -> Result<Response, ApiError> {
    let invalid = |m: String| ApiError::new(berth_core::ErrorCode::InvalidParameter, m);
    // An empty value (`?lines=`) is the default, as if it were absent.
    let lines = match q.lines.as_deref().filter(|v| !v.is_empty()) {
        None => 100,
        Some(v) => v
            .parse::<usize>()
            .ok()
            .filter(|n| (1..=MAX_LINES).contains(n))
            .ok_or_else(|| invalid(format!("lines must be between 1 and {MAX_LINES}")))?,
    };
    let follow = match q.follow.as_deref().filter(|v| !v.is_empty()) {
        None | Some("false") => false,
        Some("true") => true,
        Some(_) => return Err(invalid("follow must be true or false".into())),
    };
    load(&state, &caller, &name).await?;
    let workspace = caller.workspace_id.clone();
    let mut files = Files::default();
    let mut text = String::new();
    for id in replica_ids(&state, &workspace, &name).await? {
        let path = state.replica_logs.join(format!("{id}.log"));
        let (tail, end) = tail_of(&path, lines).await;
        for l in tail {
            text.push_str(&format!("[{id}] {l}\n"));
        }
        files.0.insert(id, (path, end));
    }
    let head = [(header::CONTENT_TYPE, "text/plain; charset=utf-8")];
    if !follow {
        return Ok((head, text).into_response());
    }
    let (tx, rx) = tokio::sync::mpsc::channel::<Result<Bytes, Infallible>>(64);
    tokio::spawn(async move {
        if tx.send(Ok(Bytes::from(text))).await.is_err() {
            return;
        }
        let mut rounds = 0u32;
        loop {
            tokio::time::sleep(POLL).await;
            rounds += 1;
            if rounds.is_multiple_of(8) {
                match state.store.get_deployment(&workspace, &name).await {
                    Ok(Some(_)) => {}
                    _ => return,
                }
                if let Ok(ids) = replica_ids(&state, &workspace, &name).await {
                    for id in ids {
                        let path = state.replica_logs.join(format!("{id}.log"));
                        files.0.entry(id).or_insert((path, 0));
                    }
                }
            }
            let fresh = files.read_new().await;
            if !fresh.is_empty() && tx.send(Ok(Bytes::from(fresh))).await.is_err() {
                return;
            }
        }
    });
    let body = Body::from_stream(tokio_stream::wrappers::ReceiverStream::new(rx));
    Ok((head, body).into_response())
}

async fn replica_ids(
    state: &AppState,
    workspace: &str,
    name: &str,
) -> Result<Vec<String>, ApiError> {
    let mut ids: Vec<String> = state
        .store
        .list_replicas()
        .await?
        .into_iter()
        .filter(|r| r.workspace_id == workspace && r.deployed_model == name)
        .map(|r| r.id)
        .collect();
    ids.sort();
    Ok(ids)
}

/// The last `n` lines of a file and its length.
async fn tail_of(path: &PathBuf, n: usize) -> (Vec<String>, u64) {
    let Ok(bytes) = tokio::fs::read(path).await else {
        return (Vec::new(), 0);
    };
    let text = String::from_utf8_lossy(&bytes);
    let all: Vec<&str> = text.lines().collect();
    let start = all.len().saturating_sub(n);
    (
        all[start..].iter().map(|l| (*l).to_owned()).collect(),
        bytes.len() as u64,
    )
}

/// Followed files: replica id -> (path, position read up to).
#[derive(Default)]
struct Files(HashMap<String, (PathBuf, u64)>);

impl Files {
    /// What was appended since the last read, as `[id] line` lines (whole lines only).
    async fn read_new(&mut self) -> String {
        let mut out = String::new();
        for (id, (path, pos)) in self.0.iter_mut() {
            let Ok(mut f) = tokio::fs::File::open(&*path).await else {
                continue;
            };
            let len = f.metadata().await.map(|m| m.len()).unwrap_or(0);
            if len < *pos {
                *pos = 0; // emptied when it grew too large
            }
            if len == *pos || f.seek(SeekFrom::Start(*pos)).await.is_err() {
                continue;
            }
            let mut buf = Vec::new();
            if f.read_to_end(&mut buf).await.is_err() {
                continue;
            }
            let Some(last_nl) = buf.iter().rposition(|b| *b == b'\n') else {
                continue;
            };
            *pos += last_nl as u64 + 1;
            for l in String::from_utf8_lossy(&buf[..last_nl]).lines() {
                out.push_str(&format!("[{id}] {l}\n"));
            }
        }
        out
    }
}

//! Test fixtures: a temporary directory holding the stand-in replica script, runtimes with short
//! timings, and process inspection helpers.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use berth_core::CatalogModel;
use berth_runtime::{
    LocalRuntime, LocalRuntimeConfig, ObservedReplica, ReplicaSpec, ReplicaState, Runtime,
};

const REPLICA_PY: &str = include_str!("replica.py");

/// A directory removed on drop, with the replica script in it.
pub struct Fixture {
    pub dir: PathBuf,
    pub script: PathBuf,
}

impl Fixture {
    pub fn new() -> Self {
        static NEXT: AtomicU32 = AtomicU32::new(0);
        let dir = std::env::temp_dir().join(format!(
            "berth-runtime-it-{}-{}",
            std::process::id(),
            NEXT.fetch_add(1, Ordering::Relaxed)
        ));
        std::fs::create_dir_all(&dir).unwrap();
        let script = dir.join("replica.py");
        std::fs::write(&script, REPLICA_PY).unwrap();
        Self { dir, script }
    }

    pub fn path(&self, name: &str) -> PathBuf {
        self.dir.join(name)
    }

    /// A spec whose engine command runs the replica script with `extra` arguments.
    pub fn spec(&self, id: &str, extra: &[&str]) -> ReplicaSpec {
        let mut command: Vec<String> = [
            python(),
            &self.script.to_string_lossy(),
            "--host",
            "{host}",
            "--port",
            "{port}",
            "--alias",
            "{alias}",
        ]
        .iter()
        .map(|s| s.to_string())
        .collect();
        command.extend(extra.iter().map(|s| s.to_string()));
        spec_with_command(id, command)
    }
}

impl Drop for Fixture {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// The real Python interpreter: `python3` on PATH may be a shim (pyenv) that is slow to start
/// and edits the environment the replica would report.
fn python() -> &'static str {
    static PYTHON: OnceLock<String> = OnceLock::new();
    PYTHON.get_or_init(|| {
        let out = std::process::Command::new("python3")
            .args(["-c", "import sys; print(sys.executable)"])
            .output()
            .expect("python3 runs");
        String::from_utf8(out.stdout).unwrap().trim().to_owned()
    })
}

pub fn spec_with_command(id: &str, engine_command: Vec<String>) -> ReplicaSpec {
    ReplicaSpec {
        id: id.to_owned(),
        workspace_id: "ws-test".to_owned(),
        deployed_model: format!("tiny-{id}"),
        model: CatalogModel {
            model_name: "tiny".to_owned(),
            display_name: "Tiny".to_owned(),
            weights: PathBuf::from("/nonexistent/tiny.gguf"),
            engine_command,
            base_capacity: 1,
            context_length: 512,
            threads: 1,
            parallel: 1,
        },
        env: BTreeMap::new(),
    }
}

/// Short timings so the suite stays fast.
pub fn config() -> LocalRuntimeConfig {
    LocalRuntimeConfig {
        startup_health_interval: Duration::from_millis(50),
        health_interval: Duration::from_millis(100),
        health_timeout: Duration::from_millis(500),
        ready_timeout: Duration::from_secs(10),
        stop_grace: Duration::from_secs(3),
        unhealthy_after: 2,
        ..LocalRuntimeConfig::default()
    }
}

pub fn runtime() -> Arc<LocalRuntime> {
    LocalRuntime::new(config())
}

pub fn find(rt: &LocalRuntime, id: &str) -> Option<ObservedReplica> {
    rt.observe().into_iter().find(|r| r.id == id)
}

/// Waits, through `changed()`, until replica `id` satisfies `pred`; panics after 10 s.
pub async fn wait_until(
    rt: &LocalRuntime,
    id: &str,
    pred: impl Fn(&ReplicaState) -> bool,
) -> ObservedReplica {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    loop {
        let current = find(rt, id);
        if let Some(r) = current.as_ref().filter(|r| pred(&r.state)) {
            return r.clone();
        }
        if tokio::time::timeout_at(deadline, rt.changed())
            .await
            .is_err()
        {
            panic!("replica {id} did not reach the expected state; last seen {current:?}");
        }
    }
}

pub fn is_ready(s: &ReplicaState) -> bool {
    *s == ReplicaState::Ready
}

pub fn is_exited(s: &ReplicaState) -> bool {
    matches!(s, ReplicaState::Exited { .. })
}

pub fn exit_reason(r: &ObservedReplica) -> &str {
    match &r.state {
        ReplicaState::Exited { reason } => reason,
        other => panic!("not exited: {other:?}"),
    }
}

/// `(state, process group)` of a process, from `/proc/<pid>/stat`.
fn stat(pid: i32) -> Option<(char, i32)> {
    let text = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // "pid (comm) state ppid pgrp ..."; comm may contain anything, so parse after the last ')'.
    let mut rest = text[text.rfind(')')? + 1..].split_whitespace();
    let state = rest.next()?.chars().next()?;
    let pgrp = rest.nth(1)?.parse().ok()?;
    Some((state, pgrp))
}

/// Whether `pid` names a live (not zombie) process.
pub fn alive(pid: i32) -> bool {
    stat(pid).is_some_and(|(state, _)| state != 'Z')
}

/// Whether `pid` still names a child of this test process, zombies included: the replica has
/// not been reaped yet. (The parent is checked because pids are reused, and on a machine with a
/// small `pid_max` a busy test run wraps around within seconds.)
pub fn pid_exists(pid: u32) -> bool {
    let exists = nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid as i32), None).is_ok();
    let ppid = std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .ok()
        .and_then(|t| {
            t.rsplit_once(')')?
                .1
                .split_whitespace()
                .nth(1)?
                .parse::<u32>()
                .ok()
        });
    exists && ppid == Some(std::process::id())
}

/// Live (not zombie) members of process group `pgid`. Zombies are left out because orphans are
/// reaped by whatever runs as PID 1, which in a container may never do it.
pub fn live_group_members(pgid: i32) -> Vec<i32> {
    let Ok(entries) = std::fs::read_dir("/proc") else {
        return Vec::new();
    };
    entries
        .filter_map(|e| e.ok()?.file_name().to_str()?.parse::<i32>().ok())
        .filter(|&pid| stat(pid).is_some_and(|(state, pgrp)| pgrp == pgid && state != 'Z'))
        .collect()
}

/// Waits up to 5 s for a file the replica writes.
pub async fn read_file_eventually(path: &Path) -> String {
    for _ in 0..100 {
        if let Ok(text) = std::fs::read_to_string(path) {
            return text;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("{} was never written", path.display());
}

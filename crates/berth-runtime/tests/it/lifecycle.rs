//! Starting, readiness, health, crashes and start failures.

use std::time::Duration;

use berth_runtime::{LocalRuntime, ReplicaState, Runtime, RuntimeError};

use crate::support::*;

#[tokio::test]
async fn start_becomes_ready_and_changed_wakes() {
    let fx = Fixture::new();
    let rt = runtime();
    let started = rt.start(fx.spec("r1", &["--delay", "0.3"])).await.unwrap();
    assert_eq!(started.state, ReplicaState::Starting);
    assert_eq!(started.addr.ip().to_string(), "127.0.0.1");
    assert_ne!(started.addr.port(), 0);
    assert_eq!(started.deployed_model, "tiny-r1");
    assert_eq!(started.workspace_id, "ws-test");
    let pid = started.pid.expect("a pid");
    assert!(pid_exists(pid));

    // Observe, then wait: the wake-up for readiness (0.3 s away) must come through changed().
    let observed = rt.observe();
    assert_eq!(observed.len(), 1);
    assert_eq!(observed[0].state, ReplicaState::Starting);
    tokio::time::timeout(Duration::from_secs(10), async {
        while find(&rt, "r1").unwrap().state != ReplicaState::Ready {
            rt.changed().await;
        }
    })
    .await
    .expect("changed() woke on readiness");
    let ready = find(&rt, "r1").unwrap();
    assert_eq!(ready.pid, Some(pid));
    assert_eq!(ready.addr, started.addr);
    assert_eq!(ready.started_at, started.started_at);

    rt.stop("r1").await.unwrap();
}

#[tokio::test]
async fn changed_does_not_miss_a_change_before_it_is_called() {
    let fx = Fixture::new();
    let rt = runtime();
    rt.start(fx.spec("r1", &[])).await.unwrap();
    assert_eq!(find(&rt, "r1").unwrap().state, ReplicaState::Starting);
    // Readiness happens while nobody is waiting in changed(): watch for it on a private cursor.
    let mut private = rt.subscribe();
    tokio::time::timeout(Duration::from_secs(10), private.changed())
        .await
        .expect("the replica became ready")
        .unwrap();
    tokio::time::timeout(Duration::from_millis(100), rt.changed())
        .await
        .expect("changed() returned at once for a change since the last observe()");
    assert_eq!(find(&rt, "r1").unwrap().state, ReplicaState::Ready);
    // Nothing has changed since: now changed() waits.
    assert!(
        tokio::time::timeout(Duration::from_millis(300), rt.changed())
            .await
            .is_err()
    );
    rt.stop("r1").await.unwrap();
}

#[tokio::test]
async fn crash_is_reported_with_its_status() {
    let fx = Fixture::new();
    let rt = runtime();
    rt.start(fx.spec("r1", &["--exit-after", "0.5", "--exit-code", "3"]))
        .await
        .unwrap();
    wait_until(&rt, "r1", is_ready).await;
    let exited = wait_until(&rt, "r1", is_exited).await;
    assert_eq!(exit_reason(&exited), "replica process exited with status 3");
    assert_eq!(exited.pid, None);
    // Exited replicas stay visible until stopped; stopping them is quick and forgets them.
    assert_eq!(rt.observe().len(), 1);
    rt.stop("r1").await.unwrap();
    assert!(rt.observe().is_empty());
}

#[tokio::test]
async fn killed_replica_names_the_signal() {
    let fx = Fixture::new();
    let rt = runtime();
    let started = rt.start(fx.spec("r1", &[])).await.unwrap();
    wait_until(&rt, "r1", is_ready).await;
    let pid = nix::unistd::Pid::from_raw(started.pid.unwrap() as i32);
    nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGKILL).unwrap();
    let exited = wait_until(&rt, "r1", is_exited).await;
    assert_eq!(
        exit_reason(&exited),
        "replica process was killed by signal 9 (SIGKILL)"
    );
    rt.stop("r1").await.unwrap();
}

#[tokio::test]
async fn never_ready_is_killed_after_ready_timeout() {
    let fx = Fixture::new();
    let rt = LocalRuntime::new(berth_runtime::LocalRuntimeConfig {
        ready_timeout: Duration::from_secs(1),
        ..config()
    });
    let started = rt
        .start(fx.spec("r1", &["--unready-for", "600"]))
        .await
        .unwrap();
    let t0 = std::time::Instant::now();
    let exited = wait_until(&rt, "r1", is_exited).await;
    assert!(
        t0.elapsed() >= Duration::from_millis(800),
        "{:?}",
        t0.elapsed()
    );
    assert_eq!(
        exit_reason(&exited),
        "replica did not become ready within 1s"
    );
    let pid = started.pid.unwrap();
    assert!(!pid_exists(pid), "the replica was reaped");
    assert!(live_group_members(pid as i32).is_empty());
    rt.stop("r1").await.unwrap();
}

#[tokio::test]
async fn failing_health_checks_make_it_unhealthy_then_ready_again() {
    let fx = Fixture::new();
    let rt = runtime();
    let fail = fx.path("fail");
    rt.start(fx.spec("r1", &["--fail-file", &fail.to_string_lossy()]))
        .await
        .unwrap();
    wait_until(&rt, "r1", is_ready).await;
    std::fs::write(&fail, "").unwrap();
    wait_until(&rt, "r1", |s| *s == ReplicaState::Unhealthy).await;
    std::fs::remove_file(&fail).unwrap();
    wait_until(&rt, "r1", is_ready).await;
    rt.stop("r1").await.unwrap();
}

#[tokio::test]
async fn missing_binary_is_a_spawn_error() {
    let rt = runtime();
    let spec = spec_with_command(
        "r1",
        vec![
            "/nonexistent/engine".into(),
            "--port".into(),
            "{port}".into(),
        ],
    );
    let err = rt.start(spec).await.unwrap_err();
    assert!(matches!(err, RuntimeError::Spawn { .. }), "{err:?}");
    let msg = err.to_string();
    assert!(msg.contains("/nonexistent/engine --port "), "{msg}");
    assert!(rt.observe().is_empty());

    let err = rt.start(spec_with_command("r2", vec![])).await.unwrap_err();
    assert!(matches!(err, RuntimeError::EmptyCommand), "{err:?}");
}

#[tokio::test]
async fn duplicate_id_is_refused() {
    let fx = Fixture::new();
    let rt = runtime();
    rt.start(fx.spec("r1", &[])).await.unwrap();
    let err = rt.start(fx.spec("r1", &[])).await.unwrap_err();
    assert!(err.to_string().contains("already running"), "{err}");
    assert_eq!(rt.observe().len(), 1);
    rt.stop("r1").await.unwrap();
}

//! Stopping: SIGTERM, grace, SIGKILL, no zombies, no orphaned process groups.

use std::time::{Duration, Instant};

use berth_runtime::{LocalRuntime, LocalRuntimeConfig, Runtime};

use crate::support::*;

#[tokio::test]
async fn stop_ends_the_process_and_its_group() {
    let fx = Fixture::new();
    let rt = runtime();
    let child_pid_file = fx.path("child.pid");
    let started = rt
        .start(fx.spec("r1", &["--spawn-child", &child_pid_file.to_string_lossy()]))
        .await
        .unwrap();
    wait_until(&rt, "r1", is_ready).await;
    let pid = started.pid.unwrap();
    let grandchild: i32 = read_file_eventually(&child_pid_file)
        .await
        .trim()
        .parse()
        .unwrap();
    assert!(alive(grandchild));
    assert_eq!(live_group_members(pid as i32).len(), 2);

    let t0 = Instant::now();
    rt.stop("r1").await.unwrap();
    assert!(
        t0.elapsed() < Duration::from_secs(2),
        "SIGTERM was enough: {:?}",
        t0.elapsed()
    );
    assert!(!pid_exists(pid), "the replica was reaped");
    assert!(!alive(grandchild), "the replica's own child is gone too");
    assert!(live_group_members(pid as i32).is_empty());
    assert!(rt.observe().is_empty());
}

#[tokio::test]
async fn sigterm_ignored_means_sigkill_after_grace() {
    let fx = Fixture::new();
    let rt = LocalRuntime::new(LocalRuntimeConfig {
        stop_grace: Duration::from_millis(700),
        ..config()
    });
    let child_pid_file = fx.path("child.pid");
    let started = rt
        .start(fx.spec(
            "r1",
            &[
                "--ignore-term",
                "--spawn-child",
                &child_pid_file.to_string_lossy(),
            ],
        ))
        .await
        .unwrap();
    wait_until(&rt, "r1", is_ready).await;
    let pid = started.pid.unwrap();
    // The child inherits the ignored SIGTERM: only the group SIGKILL can end it.
    let grandchild: i32 = read_file_eventually(&child_pid_file)
        .await
        .trim()
        .parse()
        .unwrap();

    let t0 = Instant::now();
    rt.stop("r1").await.unwrap();
    let took = t0.elapsed();
    assert!(
        took >= Duration::from_millis(700),
        "waited the grace: {took:?}"
    );
    assert!(took < Duration::from_secs(3), "then killed: {took:?}");
    assert!(!pid_exists(pid));
    // The group's SIGKILL has been sent; the kernel delivers it to the grandchild (which nobody
    // waits for) asynchronously, so allow it a moment to die.
    let deadline = Instant::now() + Duration::from_secs(2);
    while (alive(grandchild) || !live_group_members(pid as i32).is_empty())
        && Instant::now() < deadline
    {
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert!(!alive(grandchild));
    assert!(live_group_members(pid as i32).is_empty());
    assert!(rt.observe().is_empty());
}

#[tokio::test]
async fn stop_is_idempotent_and_unknown_ids_are_fine() {
    let fx = Fixture::new();
    let rt = runtime();
    rt.stop("never-started").await.unwrap();
    let started = rt.start(fx.spec("r1", &[])).await.unwrap();
    // Stop while still starting, twice at once, then again.
    let (a, b) = tokio::join!(rt.stop("r1"), rt.stop("r1"));
    a.unwrap();
    b.unwrap();
    rt.stop("r1").await.unwrap();
    assert!(!pid_exists(started.pid.unwrap()));
    assert!(rt.observe().is_empty());
}

#[tokio::test]
async fn shutdown_all_stops_everything() {
    let fx = Fixture::new();
    let rt = runtime();
    let mut pids = Vec::new();
    for id in ["a", "b", "c"] {
        pids.push(rt.start(fx.spec(id, &[])).await.unwrap().pid.unwrap());
    }
    for id in ["a", "b"] {
        wait_until(&rt, id, is_ready).await;
    }
    assert_eq!(rt.observe().len(), 3);
    rt.shutdown_all().await.unwrap();
    assert!(rt.observe().is_empty());
    for pid in pids {
        assert!(!pid_exists(pid), "{pid} gone");
    }
}

#[tokio::test]
async fn dropping_the_tokio_runtime_kills_replica_groups() {
    let fx = Fixture::new();
    let (pid, grandchild) = std::thread::scope(|s| {
        s.spawn(|| {
            let tokio_rt = tokio::runtime::Builder::new_multi_thread()
                .worker_threads(1)
                .enable_all()
                .build()
                .unwrap();
            let child_pid_file = fx.path("child.pid");
            let result = tokio_rt.block_on(async {
                let rt = runtime();
                let started = rt
                    .start(fx.spec("r1", &["--spawn-child", &child_pid_file.to_string_lossy()]))
                    .await
                    .unwrap();
                wait_until(&rt, "r1", is_ready).await;
                let grandchild: i32 = read_file_eventually(&child_pid_file)
                    .await
                    .trim()
                    .parse()
                    .unwrap();
                (started.pid.unwrap(), grandchild)
            });
            drop(tokio_rt);
            result
        })
        .join()
        .unwrap()
    });
    // The group guard's SIGKILL is immediate; reaping the leader is up to tokio's orphan queue.
    let deadline = Instant::now() + Duration::from_secs(5);
    while (alive(pid as i32) || alive(grandchild)) && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(50));
    }
    assert!(!alive(pid as i32));
    assert!(!alive(grandchild));
}

//! What a replica is given: its command line, an explicit environment, drained pipes.

use std::collections::BTreeMap;

use berth_runtime::Runtime;

use crate::support::*;

#[tokio::test]
async fn replica_sees_only_the_explicit_environment() {
    let fx = Fixture::new();
    let rt = runtime();
    let report = fx.path("report");
    let mut spec = fx.spec("r1", &["--report", &report.to_string_lossy()]);
    spec.env = BTreeMap::from([("BERTH_REPLICA_TEST".to_owned(), "hello world".to_owned())]);
    let started = rt.start(spec).await.unwrap();
    let text = read_file_eventually(&report).await;
    rt.stop("r1").await.unwrap();

    let argv: Vec<&str> = text
        .lines()
        .filter_map(|l| l.strip_prefix("argv:"))
        .collect();
    let env: BTreeMap<&str, &str> = text
        .lines()
        .filter_map(|l| l.strip_prefix("env:")?.split_once('='))
        .collect();

    let port = started.addr.port().to_string();
    assert!(
        argv.windows(2).any(|w| w == ["--port", port.as_str()]),
        "{argv:?}"
    );
    assert!(
        argv.windows(2).any(|w| w == ["--alias", "tiny-r1"]),
        "{argv:?}"
    );
    assert!(
        argv.windows(2).any(|w| w == ["--host", "127.0.0.1"]),
        "{argv:?}"
    );

    assert_eq!(env.get("BERTH_REPLICA_TEST"), Some(&"hello world"));
    assert_eq!(env.get("LANG"), Some(&"C.UTF-8"));
    let base = config().base_env;
    assert_eq!(
        env.get("PATH").copied(),
        base.get("PATH").map(String::as_str)
    );
    assert_eq!(
        env.get("HOME").copied(),
        base.get("HOME").map(String::as_str)
    );
    // Its identity and secret, for adoption after a restart and for calls to it.
    assert_eq!(env.get("BERTH_REPLICA_ID"), Some(&"r1"));
    let secret = env.get("BERTH_REPLICA_SECRET").copied().unwrap_or_default();
    assert_eq!(secret.len(), 48, "{secret}");
    assert_eq!(secret, started.secret);
    // Python may add LC_CTYPE itself (PEP 538) when C.UTF-8 is not installed.
    let allowed = [
        "BERTH_REPLICA_TEST",
        "BERTH_REPLICA_ID",
        "BERTH_REPLICA_SECRET",
        "LANG",
        "PATH",
        "HOME",
        "LC_CTYPE",
    ];
    let unexpected: Vec<_> = env.keys().filter(|k| !allowed.contains(k)).collect();
    assert!(unexpected.is_empty(), "inherited: {unexpected:?}");
    // The test process has plenty of other variables (cargo sets CARGO_*), none of which leaked.
    let parent_has_more =
        std::env::vars_os().any(|(k, _)| k.to_str().is_some_and(|k| !allowed.contains(&k)));
    assert!(parent_has_more);
}

#[tokio::test]
async fn chatty_replica_does_not_block_on_its_pipes() {
    let fx = Fixture::new();
    let rt = runtime();
    // About 2 MiB on each pipe, far beyond a pipe buffer, before it starts serving.
    rt.start(fx.spec("r1", &["--spam", "20000"])).await.unwrap();
    wait_until(&rt, "r1", is_ready).await;
    rt.stop("r1").await.unwrap();
}

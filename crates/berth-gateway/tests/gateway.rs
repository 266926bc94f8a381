//! The gateway on real sockets: stub replicas on 127.0.0.1:0, the gateway's real upstream client.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use berth_core::{Endpoint, RoutingEntry, RoutingTable, Status};
use berth_gateway::{
    Backend, Balancer, Gateway, GatewayConfig, GatewayError, GatewayResponse, LeastOutstanding,
    ResponseBody,
};
use berth_stub::StubArgs;
use bytes::Bytes;
use futures::StreamExt;

const WS: &str = "ws-1";
const MODEL: &str = "m1";

fn entry(model: &str, addrs: &[SocketAddr]) -> RoutingEntry {
    RoutingEntry {
        workspace_id: WS.into(),
        deployed_model: model.into(),
        model_name: "stub".into(),
        status: Status::Running,
        endpoints: addrs
            .iter()
            .enumerate()
            .map(|(i, a)| Endpoint {
                replica_id: format!("r{i}"),
                addr: *a,
                secret: String::new(),
            })
            .collect(),
        rpm_limit: None,
        tpm_limit: None,
        created: 0,
        start_secs: None,
    }
}

fn table(entries: impl IntoIterator<Item = RoutingEntry>) -> Arc<RoutingTable> {
    let entries = entries
        .into_iter()
        .map(|e| {
            (
                (e.workspace_id.clone(), e.deployed_model.clone()),
                Arc::new(e),
            )
        })
        .collect();
    Arc::new(RoutingTable { entries })
}

fn gateway(config: GatewayConfig) -> Gateway {
    Gateway::new(config).unwrap()
}

async fn stub(args: StubArgs) -> SocketAddr {
    berth_stub::spawn(args).await.unwrap()
}

async fn stub_requests(addr: SocketAddr) -> u64 {
    let text = reqwest::get(format!("http://{addr}/metrics"))
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    text.lines()
        .find_map(|l| l.strip_prefix("berth_stub_requests_total "))
        .unwrap()
        .parse()
        .unwrap()
}

fn chat(stream: bool) -> Bytes {
    let s = if stream { r#","stream":true"# } else { "" };
    Bytes::from(format!(
        r#"{{"model":"{MODEL}","messages":[{{"role":"user","content":"hi"}}]{s}}}"#
    ))
}

async fn text(resp: GatewayResponse) -> String {
    String::from_utf8(resp.into_bytes().await.unwrap().to_vec()).unwrap()
}

/// A port nothing listens on.
async fn dead_addr() -> SocketAddr {
    let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    l.local_addr().unwrap()
}

#[tokio::test]
async fn json_and_stream_pass_through() {
    let addr = stub(StubArgs {
        tokens: 3,
        ..Default::default()
    })
    .await;
    let gw = gateway(GatewayConfig::default());
    gw.publish(table([entry(MODEL, &[addr])]));

    let resp = gw.chat_completions(WS, chat(false)).await.unwrap();
    assert_eq!((resp.status, resp.content_type), (200, "application/json"));
    let body = text(resp).await;
    assert!(body.contains(r#""object":"chat.completion""#), "{body}");
    assert_eq!(gw.tokens_used(WS, MODEL), Some(13));

    // The client did not ask for usage: the gateway asked the replica for it, counted it and
    // took the usage chunk out.
    let resp = gw.chat_completions(WS, chat(true)).await.unwrap();
    assert_eq!(resp.content_type, "text/event-stream");
    let body = text(resp).await;
    assert_eq!(body.matches("\"content\":\"tok \"").count(), 3);
    assert!(!body.contains("\"usage\""), "{body}");
    assert!(body.ends_with("data: [DONE]\n\n"));
    assert_eq!(gw.tokens_used(WS, MODEL), Some(26));

    // The client asked for it: the chunk is there.
    let body = Bytes::from(format!(
        r#"{{"model":"{MODEL}","messages":[],"stream":true,"stream_options":{{"include_usage":true}}}}"#
    ));
    let body = text(gw.chat_completions(WS, body).await.unwrap()).await;
    assert!(
        body.contains(r#""choices":[],"usage":{"prompt_tokens":10"#),
        "{body}"
    );
    assert_eq!(stub_requests(addr).await, 3);
}

#[tokio::test]
async fn unknown_deployment_and_other_workspace_are_404() {
    let addr = stub(StubArgs::default()).await;
    let gw = gateway(GatewayConfig::default());
    let mut other = entry("theirs", &[addr]);
    other.workspace_id = "ws-2".into();
    let mut deleting = entry("going", &[addr]);
    deleting.status = Status::Deleting;
    gw.publish(table([entry(MODEL, &[addr]), other, deleting]));
    for model in ["nope", "theirs", "going"] {
        let body = Bytes::from(format!(r#"{{"model":"{model}","messages":[]}}"#));
        let err = gw.chat_completions(WS, body).await.unwrap_err();
        assert!(
            matches!(err, GatewayError::ModelNotFound(_)),
            "{model}: {err:?}"
        );
        assert_eq!(err.code().http_status(), 404);
    }
    let names: Vec<_> = gw
        .deployments(WS)
        .iter()
        .map(|e| e.deployed_model.clone())
        .collect();
    assert_eq!(names, [MODEL]);
    assert_eq!(stub_requests(addr).await, 0);
}

#[tokio::test]
async fn bad_bodies_are_400_and_never_sent() {
    let addr = stub(StubArgs::default()).await;
    let gw = gateway(GatewayConfig::default());
    gw.publish(table([entry(MODEL, &[addr])]));
    for body in [
        "",
        "[]",
        "{\"messages\":[]}",
        "{\"model\":3}",
        "{\"model\":\"\"}",
    ] {
        let err = gw
            .chat_completions(WS, Bytes::from(body))
            .await
            .unwrap_err();
        assert_eq!(err.code().as_str(), "InvalidParameter", "{body}");
    }
    let native = [
        r#"{"model":"m1","input":{}}"#,
        r#"{"model":"m1","input":{"prompt":"x"},"parameters":{"temperature":2}}"#,
        r#"{"model":"m1","input":{"prompt":"x"},"parameters":{"top_p":1.5}}"#,
        r#"{"model":"m1","input":{"prompt":"x"},"parameters":{"max_tokens":0}}"#,
    ];
    for body in native {
        let err = gw
            .generation(WS, "rid", false, Bytes::from(body))
            .await
            .unwrap_err();
        assert_eq!(err.code().as_str(), "InvalidParameter", "{body}");
    }
    assert_eq!(stub_requests(addr).await, 0);
}

#[tokio::test(flavor = "current_thread")]
async fn least_outstanding_spreads_concurrent_requests() {
    let args = StubArgs {
        tokens: 4,
        token_delay_ms: 20,
        ..Default::default()
    };
    let addrs = [
        stub(args.clone()).await,
        stub(args.clone()).await,
        stub(args).await,
    ];
    let gw = gateway(GatewayConfig::default());
    gw.publish(table([entry(MODEL, &addrs)]));
    let calls = (0..30).map(|_| {
        let gw = gw.clone();
        async move { text(gw.chat_completions(WS, chat(true)).await.unwrap()).await }
    });
    let bodies = futures::future::join_all(calls).await;
    assert!(bodies.iter().all(|b| b.ends_with("data: [DONE]\n\n")));
    for a in addrs {
        assert_eq!(stub_requests(a).await, 10, "{a}");
    }
}

#[tokio::test]
async fn a_busy_replica_is_avoided() {
    let slow = stub(StubArgs {
        tokens: 20,
        token_delay_ms: 50,
        ..Default::default()
    })
    .await;
    let fast = stub(StubArgs::default()).await;
    let gw = gateway(GatewayConfig::default());
    gw.publish(table([entry(MODEL, &[slow, fast])]));
    // Occupy one replica with a long stream (whichever LOR picked), then every sequential
    // request must go to the other.
    let held = gw.chat_completions(WS, chat(true)).await.unwrap();
    let busy_is_slow = stub_requests(slow).await == 1;
    for _ in 0..6 {
        text(gw.chat_completions(WS, chat(false)).await.unwrap()).await;
    }
    let (busy, idle) = if busy_is_slow {
        (slow, fast)
    } else {
        (fast, slow)
    };
    assert_eq!(stub_requests(busy).await, 1);
    assert_eq!(stub_requests(idle).await, 6);
    drop(held);
}

#[tokio::test]
async fn a_request_is_held_until_a_replica_is_published() {
    let addr = stub(StubArgs::default()).await;
    let gw = gateway(GatewayConfig::default());
    gw.publish(table([entry(MODEL, &[])]));
    let started = Instant::now();
    let call = tokio::spawn({
        let gw = gw.clone();
        async move { gw.chat_completions(WS, chat(false)).await }
    });
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(!call.is_finished());
    // An unrelated re-publish wakes the waiter, which goes back to waiting.
    gw.publish(table([entry(MODEL, &[])]));
    tokio::time::sleep(Duration::from_millis(50)).await;
    assert!(!call.is_finished());
    gw.publish(table([entry(MODEL, &[addr])]));
    let resp = call.await.unwrap().unwrap();
    assert_eq!(resp.status, 200);
    assert!(started.elapsed() >= Duration::from_millis(350));
    assert_eq!(stub_requests(addr).await, 1);
}

#[tokio::test]
async fn no_replica_within_the_hold_is_503_with_retry_after() {
    let gw = gateway(GatewayConfig {
        hold: Duration::from_millis(200),
        ..Default::default()
    });
    gw.publish(table([entry(MODEL, &[])]));
    let started = Instant::now();
    let err = gw.chat_completions(WS, chat(false)).await.unwrap_err();
    assert!(started.elapsed() >= Duration::from_millis(200));
    assert!(started.elapsed() < Duration::from_secs(2));
    assert_eq!(err.code().as_str(), "ModelUnavailable");
    assert_eq!(err.code().http_status(), 503);
    assert_eq!(err.retry_after(), Some(5));
    let err = gw.generation(
        WS,
        "rid",
        false,
        Bytes::from(r#"{"model":"m1","input":{"prompt":"x"}}"#),
    );
    assert_eq!(err.await.unwrap_err().code().as_str(), "ModelUnavailable");
}

#[tokio::test]
async fn a_full_wait_queue_answers_503_at_once() {
    let gw = gateway(GatewayConfig {
        hold: Duration::from_secs(3),
        queue_bound: 1,
        ..Default::default()
    });
    gw.publish(table([entry(MODEL, &[])]));
    let first = tokio::spawn({
        let gw = gw.clone();
        async move { gw.chat_completions(WS, chat(false)).await }
    });
    tokio::time::sleep(Duration::from_millis(100)).await;
    let started = Instant::now();
    let err = gw.chat_completions(WS, chat(false)).await.unwrap_err();
    assert_eq!(err.code().as_str(), "ModelUnavailable");
    assert!(started.elapsed() < Duration::from_millis(500));
    first.abort();
}

#[tokio::test]
async fn rpm_limit_is_429_with_retry_after() {
    let addr = stub(StubArgs::default()).await;
    let gw = gateway(GatewayConfig::default());
    let mut e = entry(MODEL, &[addr]);
    e.rpm_limit = Some(2);
    gw.publish(table([e.clone()]));
    for _ in 0..2 {
        gw.chat_completions(WS, chat(false)).await.unwrap();
    }
    // A re-publish (the reconciler's next pass) keeps the window.
    gw.publish(table([e]));
    let err = gw.chat_completions(WS, chat(false)).await.unwrap_err();
    assert_eq!(err.code().as_str(), "Throttling.RateQuota");
    assert_eq!(err.code().openai_code(), "rate_limit_exceeded");
    assert_eq!(err.code().http_status(), 429);
    assert!(
        err.retry_after().is_some_and(|s| (1..=30).contains(&s)),
        "{err:?}"
    );
    assert_eq!(stub_requests(addr).await, 2);
}

#[tokio::test]
async fn tpm_limit_counts_real_usage_from_streams() {
    // Each answer uses 10 + 16 = 26 tokens.
    let addr = stub(StubArgs::default()).await;
    let gw = gateway(GatewayConfig::default());
    let mut e = entry(MODEL, &[addr]);
    e.tpm_limit = Some(40);
    gw.publish(table([e]));
    text(gw.chat_completions(WS, chat(true)).await.unwrap()).await;
    let native = Bytes::from(r#"{"model":"m1","input":{"prompt":"x"}}"#);
    text(
        gw.generation(WS, "rid", true, native.clone())
            .await
            .unwrap(),
    )
    .await;
    assert_eq!(gw.tokens_used(WS, MODEL), Some(52));
    let err = gw.generation(WS, "rid", true, native).await.unwrap_err();
    assert_eq!(err.code().as_str(), "Throttling.RateQuota");
    assert!(err.retry_after().is_some_and(|s| s >= 1));
    assert_eq!(stub_requests(addr).await, 2);
}

/// Records which replica the balancer picked.
#[derive(Debug, Default)]
struct Recording {
    inner: LeastOutstanding,
    picks: Mutex<Vec<SocketAddr>>,
}

impl Balancer for Recording {
    fn pick<'a>(&self, backends: &'a [Arc<Backend>], now: u64) -> Option<&'a Arc<Backend>> {
        let b = self.inner.pick(backends, now)?;
        self.picks.lock().unwrap().push(b.addr);
        Some(b)
    }
}

#[tokio::test]
async fn refused_connections_retry_elsewhere_and_eject_the_replica() {
    let live = stub(StubArgs::default()).await;
    let dead = dead_addr().await;
    let lb = Arc::new(Recording::default());
    let gw = Gateway::with_balancer(GatewayConfig::default(), lb.clone()).unwrap();
    gw.publish(table([entry(MODEL, &[dead, live])]));
    for _ in 0..6 {
        let resp = gw.chat_completions(WS, chat(false)).await.unwrap();
        assert_eq!(resp.status, 200);
    }
    assert_eq!(stub_requests(live).await, 6);
    let picks = lb.picks.lock().unwrap().clone();
    assert_eq!(
        picks.iter().filter(|a| **a == dead).count(),
        1,
        "ejected after one refusal: {picks:?}"
    );
    assert_eq!(picks.iter().filter(|a| **a == live).count(), 6);
}

#[tokio::test]
async fn ejection_expires_and_an_all_dead_deployment_is_503() {
    let dead = dead_addr().await;
    let lb = Arc::new(Recording::default());
    let gw = Gateway::with_balancer(
        GatewayConfig {
            hold: Duration::from_millis(700),
            eject_for: Duration::from_millis(300),
            ..Default::default()
        },
        lb.clone(),
    )
    .unwrap();
    gw.publish(table([entry(MODEL, &[dead])]));
    let err = gw.chat_completions(WS, chat(false)).await.unwrap_err();
    assert_eq!(err.code().as_str(), "ModelUnavailable");
    let tries = lb.picks.lock().unwrap().len();
    assert!(
        (2..=4).contains(&tries),
        "retried after each cool-down, not in a loop: {tries}"
    );
}

#[tokio::test]
async fn streamed_chunks_are_not_held_back() {
    let addr = stub(StubArgs {
        tokens: 5,
        token_delay_ms: 60,
        ..Default::default()
    })
    .await;
    let gw = gateway(GatewayConfig::default());
    gw.publish(table([entry(MODEL, &[addr])]));
    for native in [false, true] {
        let started = Instant::now();
        let resp = if native {
            let body = Bytes::from(
                r#"{"model":"m1","input":{"prompt":"x"},"parameters":{"incremental_output":true}}"#,
            );
            gw.generation(WS, "rid", true, body).await.unwrap()
        } else {
            gw.chat_completions(WS, chat(true)).await.unwrap()
        };
        let ResponseBody::Stream(mut s) = resp.body else {
            panic!("not a stream")
        };
        let mut arrivals = Vec::new();
        while let Some(chunk) = s.next().await {
            let chunk = chunk.unwrap();
            let n = String::from_utf8_lossy(&chunk).matches("tok ").count();
            for _ in 0..n {
                arrivals.push(started.elapsed());
            }
        }
        assert_eq!(arrivals.len(), 5, "native={native}");
        assert!(
            arrivals[0] < Duration::from_millis(150),
            "first token late: {arrivals:?}"
        );
        for w in arrivals.windows(2) {
            let gap = w[1] - w[0];
            assert!(
                gap >= Duration::from_millis(30),
                "chunks were batched: {arrivals:?}"
            );
        }
    }
}

/// A replica that streams forever and reports when its response body is dropped (hyper drops
/// it when the connection closes).
async fn endless_stub(dropped: Arc<AtomicBool>) -> SocketAddr {
    struct OnDrop(Arc<AtomicBool>);
    impl Drop for OnDrop {
        fn drop(&mut self) {
            self.0.store(true, Ordering::SeqCst);
        }
    }
    let app = axum::Router::new().route(
        "/v1/chat/completions",
        axum::routing::post(move || {
            let guard = OnDrop(dropped.clone());
            async move {
                let s = futures::stream::unfold(guard, |g| async move {
                    tokio::time::sleep(Duration::from_millis(20)).await;
                    let chunk = r#"data: {"choices":[{"index":0,"delta":{"content":"x"},"finish_reason":null}]}"#;
                    Some((Ok::<_, std::io::Error>(format!("{chunk}\n\n")), g))
                });
                ([("content-type", "text/event-stream")], axum::body::Body::from_stream(s))
            }
        }),
    );
    serve_axum(app).await
}

async fn serve_axum(app: axum::Router) -> SocketAddr {
    let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = l.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(l, app).await.unwrap() });
    addr
}

#[tokio::test]
async fn dropping_the_response_cancels_the_upstream_request() {
    for native in [false, true] {
        let dropped = Arc::new(AtomicBool::new(false));
        let addr = endless_stub(dropped.clone()).await;
        let gw = gateway(GatewayConfig::default());
        gw.publish(table([entry(MODEL, &[addr])]));
        let resp = if native {
            let body = Bytes::from(r#"{"model":"m1","input":{"prompt":"x"}}"#);
            gw.generation(WS, "rid", true, body).await.unwrap()
        } else {
            gw.chat_completions(WS, chat(true)).await.unwrap()
        };
        let ResponseBody::Stream(mut s) = resp.body else {
            panic!("not a stream")
        };
        s.next().await.unwrap().unwrap();
        s.next().await.unwrap().unwrap();
        assert!(!dropped.load(Ordering::SeqCst));
        assert_eq!(gw.tokens_used(WS, MODEL), Some(0));
        drop(s);
        // No usage chunk came: the two content chunks delivered are charged.
        assert_eq!(gw.tokens_used(WS, MODEL), Some(2), "native={native}");
        let deadline = Instant::now() + Duration::from_secs(2);
        while !dropped.load(Ordering::SeqCst) {
            assert!(
                Instant::now() < deadline,
                "the replica kept streaming (native={native})"
            );
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }
}

fn native_event(id: u32, data: &str) -> String {
    format!("id:{id}\nevent:result\n:HTTP_STATUS/200\ndata:{data}\n\n")
}

#[tokio::test]
async fn native_sse_framing_is_exact() {
    let addr = stub(StubArgs {
        tokens: 2,
        ..Default::default()
    })
    .await;
    let gw = gateway(GatewayConfig::default());
    gw.publish(table([entry(MODEL, &[addr])]));
    let call = |params: &str| {
        let body = format!(
            r#"{{"model":"m1","input":{{"messages":[{{"role":"user","content":"hi"}}]}},"parameters":{params}}}"#
        );
        let gw = gw.clone();
        async move {
            text(
                gw.generation(WS, "rid-1", true, Bytes::from(body))
                    .await
                    .unwrap(),
            )
            .await
        }
    };
    let usage = |i: u32, o: u32| {
        format!(
            r#""usage":{{"input_tokens":{i},"output_tokens":{o},"total_tokens":{}}}"#,
            i + o
        )
    };

    // Text format, full text so far.
    let got = call("{}").await;
    let want = [
        native_event(1, &format!(r#"{{"output":{{"text":"tok ","finish_reason":"null"}},{},"request_id":"rid-1"}}"#, usage(0, 1))),
        native_event(2, &format!(r#"{{"output":{{"text":"tok tok ","finish_reason":"null"}},{},"request_id":"rid-1"}}"#, usage(0, 2))),
        native_event(3, &format!(r#"{{"output":{{"text":"tok tok ","finish_reason":"stop"}},{},"request_id":"rid-1"}}"#, usage(10, 2))),
    ]
    .concat();
    assert_eq!(got, want);

    // Message format, deltas.
    let got = call(r#"{"result_format":"message","incremental_output":true}"#).await;
    let msg = |content: &str, finish: &str, u: String| {
        format!(
            r#"{{"output":{{"choices":[{{"finish_reason":"{finish}","message":{{"role":"assistant","content":"{content}"}}}}]}},{u},"request_id":"rid-1"}}"#
        )
    };
    let want = [
        native_event(1, &msg("tok ", "null", usage(0, 1))),
        native_event(2, &msg("tok ", "null", usage(0, 2))),
        native_event(3, &msg("", "stop", usage(10, 2))),
    ]
    .concat();
    assert_eq!(got, want);
}

#[tokio::test]
async fn native_non_streaming_in_both_formats() {
    let addr = stub(StubArgs {
        tokens: 3,
        ..Default::default()
    })
    .await;
    let gw = gateway(GatewayConfig::default());
    gw.publish(table([entry(MODEL, &[addr])]));
    let body = Bytes::from(r#"{"model":"m1","input":{"prompt":"hi"}}"#);
    let resp = gw.generation(WS, "rid-2", false, body).await.unwrap();
    assert_eq!(resp.content_type, "application/json");
    assert_eq!(
        text(resp).await,
        r#"{"output":{"text":"tok tok tok ","finish_reason":"stop"},"usage":{"input_tokens":10,"output_tokens":3,"total_tokens":13},"request_id":"rid-2"}"#
    );
    let body = Bytes::from(
        r#"{"model":"m1","input":{"prompt":"hi"},"parameters":{"result_format":"message"}}"#,
    );
    let v: serde_json::Value =
        serde_json::from_str(&text(gw.generation(WS, "rid-3", false, body).await.unwrap()).await)
            .unwrap();
    assert_eq!(
        v["output"]["choices"][0]["message"]["content"],
        "tok tok tok "
    );
    assert_eq!(v["output"]["choices"][0]["message"]["role"], "assistant");
    assert_eq!(v["output"]["choices"][0]["finish_reason"], "stop");
    assert_eq!(v["usage"]["total_tokens"], 13);
    assert_eq!(v["request_id"], "rid-3");
}

/// A replica that sends one chunk and then breaks the connection, or answers 400.
async fn broken_stub() -> SocketAddr {
    let app = axum::Router::new().route(
        "/v1/chat/completions",
        axum::routing::post(|body: String| async move {
            if body.contains("\"bad\"") {
                let err = r#"{"error":{"message":"the prompt is too long","type":"invalid_request_error","param":null,"code":"context_length_exceeded"}}"#;
                return (axum::http::StatusCode::BAD_REQUEST, [("content-type", "application/json")], axum::body::Body::from(err));
            }
            let first = r#"data: {"choices":[{"index":0,"delta":{"content":"Hi"},"finish_reason":null}]}"#;
            let s = futures::stream::iter([
                Ok(format!("{first}\n\n")),
                Err(std::io::Error::other("replica crashed")),
            ])
            .then(|item| async move {
                tokio::time::sleep(Duration::from_millis(20)).await;
                item
            });
            (axum::http::StatusCode::OK, [("content-type", "text/event-stream")], axum::body::Body::from_stream(s))
        }),
    );
    serve_axum(app).await
}

#[tokio::test]
async fn failures_after_the_stream_started_are_error_events() {
    let addr = broken_stub().await;
    let gw = gateway(GatewayConfig::default());
    gw.publish(table([entry(MODEL, &[addr])]));
    let body = Bytes::from(r#"{"model":"m1","input":{"prompt":"x"}}"#);
    let got = text(gw.generation(WS, "rid-4", true, body).await.unwrap()).await;
    let want = [
        native_event(1, r#"{"output":{"text":"Hi","finish_reason":"null"},"usage":{"input_tokens":0,"output_tokens":1,"total_tokens":1},"request_id":"rid-4"}"#),
        "id:2\nevent:error\n:HTTP_STATUS/500\ndata:{\"code\":\"InternalError\",\"message\":\"Failed to request model service.\",\"request_id\":\"rid-4\"}\n\n".to_string(),
    ]
    .concat();
    assert_eq!(got, want);

    // Compatible mode: the stream ends in an error, which the server turns into an aborted body.
    let resp = gw.chat_completions(WS, chat(true)).await.unwrap();
    let ResponseBody::Stream(s) = resp.body else {
        panic!("not a stream")
    };
    let items: Vec<_> = s.collect().await;
    assert!(items.first().unwrap().is_ok());
    assert!(items.last().unwrap().is_err());
}

#[tokio::test]
async fn replica_error_statuses() {
    let addr = broken_stub().await;
    let gw = gateway(GatewayConfig::default());
    gw.publish(table([entry(MODEL, &[addr])]));
    // Compatible mode passes the replica's status and OpenAI envelope through.
    let body = Bytes::from(r#"{"model":"m1","messages":[{"role":"user","content":"bad"}]}"#);
    let resp = gw.chat_completions(WS, body).await.unwrap();
    assert_eq!(resp.status, 400);
    assert!(text(resp).await.contains("context_length_exceeded"));
    // Native mode maps it to InvalidParameter with the replica's message.
    let body = Bytes::from(r#"{"model":"m1","input":{"prompt":"bad"}}"#);
    let err = gw.generation(WS, "rid", false, body).await.unwrap_err();
    assert_eq!(err.code().as_str(), "InvalidParameter");
    assert_eq!(err.message(), "the prompt is too long");
}

/// Records the first replica's in-flight count at every pick.
#[derive(Debug, Default)]
struct Probe(Mutex<Vec<u32>>);

impl Balancer for Probe {
    fn pick<'a>(&self, b: &'a [Arc<Backend>], _: u64) -> Option<&'a Arc<Backend>> {
        self.0.lock().unwrap().push(b[0].in_flight());
        b.first()
    }
}

#[tokio::test]
async fn in_flight_counts_are_released_when_responses_end_or_drop() {
    let addr = stub(StubArgs {
        tokens: 3,
        token_delay_ms: 5,
        ..Default::default()
    })
    .await;
    let probe = Arc::new(Probe::default());
    let gw = Gateway::with_balancer(GatewayConfig::default(), probe.clone()).unwrap();
    gw.publish(table([entry(MODEL, &[addr])]));
    let held = gw.chat_completions(WS, chat(true)).await.unwrap();
    let ResponseBody::Stream(mut held) = held.body else {
        panic!("not a stream")
    };
    held.next().await.unwrap().unwrap();
    text(gw.chat_completions(WS, chat(false)).await.unwrap()).await; // sees 1 in flight
    drop(held); // dropped half read
    text(gw.chat_completions(WS, chat(true)).await.unwrap()).await; // sees 0
    text(gw.chat_completions(WS, chat(false)).await.unwrap()).await; // sees 0
    assert_eq!(*probe.0.lock().unwrap(), [0, 1, 0, 0]);
}

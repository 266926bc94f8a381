//! The listener on real sockets: which requests take the short lane, HTTP/1.1 framing both
//! ways, hand-over to the router mid-connection, disconnects and shutdown.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use berth_core::{Endpoint, RoutingEntry, RoutingTable, Status};
use berth_store::{SqliteStore, Store};
use serde_json::Value;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::task::JoinHandle;

use super::head::MAX_HEAD;
use super::*;
use crate::auth::KeyRing;
use crate::keys;
use crate::routes::inference::{CHAT_PATH, NATIVE_PATH};

const KEY: &str = "sk-front-test";
const CHAT_BODY: &str = r#"{"model":"m1","messages":[{"role":"user","content":"hi"}]}"#;

struct Server {
    addr: SocketAddr,
    stop: CancellationToken,
    task: JoinHandle<io::Result<()>>,
}

/// berth's listener in front of one replica at `replica`, deployment `m1`, key [`KEY`].
async fn server(replica: SocketAddr) -> Server {
    server_with(replica, Limits::default()).await
}

/// [`server`] with other client limits.
async fn server_with(replica: SocketAddr, limits: Limits) -> Server {
    let store: Arc<dyn Store> = Arc::new(SqliteStore::open_in_memory().await.unwrap());
    store
        .insert_api_key(&keys::from_secret(KEY, "default"))
        .await
        .unwrap();
    let keys = KeyRing::new(store.clone());
    keys.refresh().await.unwrap();
    let gateway = berth_gateway::Gateway::new(Default::default()).unwrap();
    let mut table = RoutingTable::default();
    table.entries.insert(
        ("default".into(), "m1".into()),
        Arc::new(RoutingEntry {
            workspace_id: "default".into(),
            deployed_model: "m1".into(),
            model_name: "tiny".into(),
            status: Status::Running,
            endpoints: vec![Endpoint {
                replica_id: "r1".into(),
                addr: replica,
                secret: String::new(),
            }],
            rpm_limit: None,
            tpm_limit: None,
            created: 1,
            start_secs: None,
        }),
    );
    gateway.publish(Arc::new(table));
    let state = AppState::inference_only(store, keys, gateway);
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let stop = CancellationToken::new();
    let task = tokio::spawn(serve_with(listener, state, stop.clone(), limits));
    Server { addr, stop, task }
}

async fn stub(tokens: u32) -> SocketAddr {
    berth_stub::spawn(berth_stub::StubArgs {
        tokens,
        ..Default::default()
    })
    .await
    .unwrap()
}

fn chat(extra_headers: &str, body: &str) -> String {
    format!(
        "POST /compatible-mode/v1/chat/completions HTTP/1.1\r\nhost: x\r\nauthorization: Bearer {KEY}\r\ncontent-type: application/json\r\n{extra_headers}content-length: {}\r\n\r\n{body}",
        body.len()
    )
}

/// A response as read off the wire.
#[derive(Debug)]
struct Reply {
    status: u16,
    headers: Vec<(String, String)>,
    body: Vec<u8>,
}

impl Reply {
    fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }

    fn json(&self) -> Value {
        serde_json::from_slice(&self.body).unwrap()
    }
}

/// Reads one response (interim ones skipped) from `conn`, keeping extra bytes in `buf`.
async fn read_reply(conn: &mut TcpStream, buf: &mut Vec<u8>) -> Reply {
    loop {
        let parsed = {
            let mut headers = [httparse::EMPTY_HEADER; 32];
            let mut resp = httparse::Response::new(&mut headers);
            match resp.parse(buf).unwrap() {
                httparse::Status::Complete(len) => Some((
                    len,
                    resp.code.unwrap(),
                    resp.headers
                        .iter()
                        .map(|h| {
                            (
                                h.name.to_ascii_lowercase(),
                                String::from_utf8_lossy(h.value).into_owned(),
                            )
                        })
                        .collect::<Vec<_>>(),
                )),
                httparse::Status::Partial => None,
            }
        };
        let Some((len, status, headers)) = parsed else {
            read_some(conn, buf).await;
            continue;
        };
        buf.drain(..len);
        if status == 100 {
            continue;
        }
        let mut reply = Reply {
            status,
            headers,
            body: Vec::new(),
        };
        if reply.header("transfer-encoding") == Some("chunked") {
            loop {
                let (start, size) = loop {
                    match httparse::parse_chunk_size(buf).unwrap() {
                        httparse::Status::Complete(c) => break c,
                        httparse::Status::Partial => read_some(conn, buf).await,
                    }
                };
                let size = size as usize;
                while buf.len() < start + size + 2 {
                    read_some(conn, buf).await;
                }
                reply.body.extend_from_slice(&buf[start..start + size]);
                assert_eq!(&buf[start + size..start + size + 2], b"\r\n");
                buf.drain(..start + size + 2);
                if size == 0 {
                    return reply;
                }
            }
        }
        let n: usize = reply.header("content-length").unwrap().parse().unwrap();
        while buf.len() < n {
            read_some(conn, buf).await;
        }
        reply.body = buf.drain(..n).collect();
        return reply;
    }
}

async fn read_some(conn: &mut TcpStream, buf: &mut Vec<u8>) {
    let mut chunk = [0u8; 4096];
    let n = tokio::time::timeout(Duration::from_secs(10), conn.read(&mut chunk))
        .await
        .expect("no answer within 10 s")
        .unwrap();
    assert!(n > 0, "connection closed; read so far: {buf:?}");
    buf.extend_from_slice(&chunk[..n]);
}

/// True when the peer closes `conn` within 5 s without sending anything more.
async fn closed(conn: &mut TcpStream) -> bool {
    let mut b = [0u8; 64];
    matches!(
        tokio::time::timeout(Duration::from_secs(5), conn.read(&mut b)).await,
        Ok(Ok(0)) | Ok(Err(_))
    )
}

#[test]
fn only_plain_inference_posts_take_the_short_lane() {
    let short = |req: &str| matches!(parse(req.as_bytes()), Parsed::Short(_));
    let other = |req: &str| matches!(parse(req.as_bytes()), Parsed::Other);
    assert!(short(&chat("", "{}")));
    assert!(short(
        "POST /compatible-mode/v1/chat/completions?x=1 HTTP/1.1\r\ncontent-length: 0\r\n\r\n"
    ));
    assert!(short(
        "POST /api/v1/services/aigc/text-generation/generation HTTP/1.1\r\nX-DashScope-SSE: enable\r\ncontent-length: 2\r\n\r\n{}"
    ));
    assert!(short(&chat("expect: 100-continue\r\n", "{}")));
    assert!(matches!(
        parse(b"POST /compatible-mode/v1/chat/completions HTTP/1.1\r\nhost"),
        Parsed::Partial
    ));
    for req in [
        "GET /compatible-mode/v1/chat/completions HTTP/1.1\r\n\r\n",
        "GET /compatible-mode/v1/models HTTP/1.1\r\n\r\n",
        "POST /api/v1/deployments HTTP/1.1\r\ncontent-length: 0\r\n\r\n",
        "POST /compatible-mode/v1/chat/completions/ HTTP/1.1\r\n\r\n",
        "POST /compatible-mode/v1/chat/completions HTTP/1.0\r\n\r\n",
        "POST /compatible-mode/v1/chat/completions HTTP/1.1\r\ntransfer-encoding: chunked\r\n\r\n",
        "POST /compatible-mode/v1/chat/completions HTTP/1.1\r\ncontent-length: 2\r\ncontent-length: 2\r\n\r\n",
        "POST /compatible-mode/v1/chat/completions HTTP/1.1\r\ncontent-length: +2\r\n\r\n",
        "POST /compatible-mode/v1/chat/completions HTTP/1.1\r\ncontent-length: 99999999\r\n\r\n",
        "POST /compatible-mode/v1/chat/completions HTTP/1.1\r\nexpect: something\r\n\r\n",
        "POST /compatible-mode/v1/chat/completions HTTP/1.1\r\nconnection: upgrade\r\nupgrade: h2c\r\n\r\n",
        "POST /compatible-mode/v1/chat/completions HTTP/1.1\r\nbad header\r\n\r\n",
        "PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n",
    ] {
        assert!(other(req), "{req}");
    }
    let long = format!(
        "POST /compatible-mode/v1/chat/completions HTTP/1.1\r\nx: {}",
        "a".repeat(MAX_HEAD)
    );
    assert!(other(&long));
}

#[test]
fn arbitrary_heads_never_break_the_parser() {
    // A deterministic sweep of mutations of real heads, on top of the fuzz target
    // (fuzz/fuzz_targets/request_head.rs), so the normal test suite covers the parser too.
    let seeds = [
        chat("x-request-id: a\r\nexpect: 100-continue\r\nx-dashscope-workspace: w\r\n", "{}"),
        "POST /api/v1/services/aigc/text-generation/generation HTTP/1.1\r\nX-DashScope-SSE: enable\r\ncontent-length: 2\r\nconnection: close\r\n\r\n{}".to_owned(),
    ];
    let mut rng = fastrand::Rng::with_seed(3);
    for seed in &seeds {
        check_parse(seed.as_bytes());
        for _ in 0..20_000 {
            let mut bytes = seed.as_bytes().to_vec();
            for _ in 0..rng.usize(1..6) {
                let alphabet = b"\r\n: ,0123456789+-";
                match rng.u8(0..4) {
                    0 if !bytes.is_empty() => {
                        let at = rng.usize(..bytes.len());
                        bytes[at] = rng.u8(..);
                    }
                    1 => {
                        let at = rng.usize(..=bytes.len());
                        bytes.insert(at, alphabet[rng.usize(..alphabet.len())]);
                    }
                    2 if !bytes.is_empty() => {
                        let at = rng.usize(..bytes.len());
                        bytes.remove(at);
                    }
                    _ => bytes.truncate(rng.usize(..=bytes.len())),
                }
            }
            check_parse(&bytes);
        }
    }
}

#[test]
fn chunk_sizes_are_written_in_hex() {
    assert_eq!(hex(0, &mut [0; 16]), b"0");
    assert_eq!(hex(0x1a2f, &mut [0; 16]), b"1a2f");
}

#[tokio::test]
async fn pipelined_calls_are_answered_in_order_on_one_connection() {
    let s = server(stub(2).await).await;
    let mut conn = TcpStream::connect(s.addr).await.unwrap();
    let both = format!(
        "{}{}",
        chat("x-request-id: first-id\r\n", CHAT_BODY),
        chat("", CHAT_BODY)
    );
    conn.write_all(both.as_bytes()).await.unwrap();
    let mut buf = Vec::new();
    let a = read_reply(&mut conn, &mut buf).await;
    let b = read_reply(&mut conn, &mut buf).await;
    for r in [&a, &b] {
        assert_eq!(r.status, 200, "{r:?}");
        assert_eq!(r.header("content-type"), Some("application/json"));
        assert!(r.header("date").unwrap().ends_with(" GMT"));
        assert_eq!(r.json()["object"], "chat.completion");
    }
    assert_eq!(a.header("x-request-id"), Some("first-id"));
    let generated = b.header("x-request-id").unwrap();
    assert_eq!(generated.len(), 36, "{generated}");
    // Still open for more.
    conn.write_all(chat("", CHAT_BODY).as_bytes())
        .await
        .unwrap();
    assert_eq!(read_reply(&mut conn, &mut buf).await.status, 200);
    assert!(buf.is_empty());
}

#[tokio::test]
async fn errors_are_the_routes_envelopes() {
    let s = server(stub(2).await).await;
    let mut conn = TcpStream::connect(s.addr).await.unwrap();
    let mut buf = Vec::new();
    let unknown = CHAT_BODY.replace("m1", "nope");
    let bad_key = chat("", CHAT_BODY).replace(KEY, "sk-wrong");
    let native = "POST /api/v1/services/aigc/text-generation/generation HTTP/1.1\r\nauthorization: Bearer sk-wrong\r\nx-request-id: rid-7\r\ncontent-length: 2\r\n\r\n{}";
    conn.write_all(format!("{}{bad_key}{native}", chat("", &unknown)).as_bytes())
        .await
        .unwrap();
    let not_found = read_reply(&mut conn, &mut buf).await;
    assert_eq!(not_found.status, 404);
    assert_eq!(not_found.json()["error"]["code"], "model_not_found");
    let unauthorized = read_reply(&mut conn, &mut buf).await;
    assert_eq!(unauthorized.status, 401);
    assert_eq!(
        unauthorized.json()["error"]["message"],
        "Incorrect API key provided."
    );
    let native = read_reply(&mut conn, &mut buf).await;
    assert_eq!(native.status, 401);
    assert_eq!(native.json()["code"], "InvalidApiKey");
    assert_eq!(native.json()["request_id"], "rid-7");
    assert_eq!(native.header("x-request-id"), Some("rid-7"));
}

#[tokio::test]
async fn other_requests_hand_the_connection_to_the_router() {
    let s = server(stub(2).await).await;
    let mut conn = TcpStream::connect(s.addr).await.unwrap();
    let mut buf = Vec::new();
    // A short-lane call, then a route the router serves, then another call: the rest of the
    // connection is the router's, and it answers the call the same way.
    let models = format!(
        "GET /compatible-mode/v1/models HTTP/1.1\r\nhost: x\r\nauthorization: Bearer {KEY}\r\n\r\n"
    );
    conn.write_all(format!("{}{models}", chat("", CHAT_BODY)).as_bytes())
        .await
        .unwrap();
    assert_eq!(read_reply(&mut conn, &mut buf).await.status, 200);
    let list = read_reply(&mut conn, &mut buf).await;
    assert_eq!(list.status, 200);
    assert_eq!(list.json()["data"][0]["id"], "m1");
    conn.write_all(chat("x-request-id: via-router\r\n", CHAT_BODY).as_bytes())
        .await
        .unwrap();
    let call = read_reply(&mut conn, &mut buf).await;
    assert_eq!(call.status, 200);
    assert_eq!(call.header("x-request-id"), Some("via-router"));
    assert_eq!(call.json()["object"], "chat.completion");

    // A request body in chunks is read by hyper.
    let mut conn = TcpStream::connect(s.addr).await.unwrap();
    let chunked = format!(
        "POST /compatible-mode/v1/chat/completions HTTP/1.1\r\nhost: x\r\nauthorization: Bearer {KEY}\r\ntransfer-encoding: chunked\r\n\r\n{:x}\r\n{CHAT_BODY}\r\n0\r\n\r\n",
        CHAT_BODY.len()
    );
    conn.write_all(chunked.as_bytes()).await.unwrap();
    let mut buf = Vec::new();
    assert_eq!(read_reply(&mut conn, &mut buf).await.status, 200);

    // Garbage gets hyper's 400.
    let mut conn = TcpStream::connect(s.addr).await.unwrap();
    conn.write_all(b"POST /x HTTP/1.1\r\nbad header\r\n\r\n")
        .await
        .unwrap();
    let mut buf = Vec::new();
    assert_eq!(read_reply(&mut conn, &mut buf).await.status, 400);
}

#[tokio::test]
async fn expect_continue_and_connection_close() {
    let s = server(stub(2).await).await;
    let mut conn = TcpStream::connect(s.addr).await.unwrap();
    let full = chat("expect: 100-continue\r\nconnection: close\r\n", CHAT_BODY);
    let (head, body) = full.split_at(full.len() - CHAT_BODY.len());
    conn.write_all(head.as_bytes()).await.unwrap();
    let mut buf = Vec::new();
    while !buf.ends_with(b"\r\n\r\n") {
        read_some(&mut conn, &mut buf).await;
    }
    assert!(buf.starts_with(b"HTTP/1.1 100 Continue\r\n"), "{buf:?}");
    buf.clear();
    conn.write_all(body.as_bytes()).await.unwrap();
    let reply = read_reply(&mut conn, &mut buf).await;
    assert_eq!(reply.status, 200);
    assert_eq!(reply.header("connection"), Some("close"));
    assert!(closed(&mut conn).await);
}

#[tokio::test]
async fn streams_are_chunked_and_the_connection_goes_on() {
    let s = server(stub(3).await).await;
    let mut conn = TcpStream::connect(s.addr).await.unwrap();
    let body = r#"{"model":"m1","stream":true,"messages":[{"role":"user","content":"hi"}]}"#;
    conn.write_all(chat("", body).as_bytes()).await.unwrap();
    let mut buf = Vec::new();
    let reply = read_reply(&mut conn, &mut buf).await;
    assert_eq!(reply.status, 200);
    assert_eq!(reply.header("content-type"), Some("text/event-stream"));
    assert_eq!(reply.header("cache-control"), Some("no-cache"));
    let text = String::from_utf8(reply.body).unwrap();
    assert_eq!(text.matches("\"content\":\"tok \"").count(), 3, "{text}");
    assert!(text.ends_with("data: [DONE]\n\n"), "{text}");
    // The client did not ask for usage, so it was taken out.
    assert!(!text.contains("\"usage\""), "{text}");
    conn.write_all(chat("", CHAT_BODY).as_bytes())
        .await
        .unwrap();
    assert_eq!(read_reply(&mut conn, &mut buf).await.status, 200);
}

#[tokio::test]
async fn a_client_that_leaves_cancels_the_replica_call() {
    // A replica that reads the request and never answers; it reports when the gateway closes
    // the connection.
    let replica = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let replica_addr = replica.local_addr().unwrap();
    let (closed_tx, closed_rx) = tokio::sync::oneshot::channel();
    tokio::spawn(async move {
        let (mut conn, _) = replica.accept().await.unwrap();
        let mut b = [0u8; 4096];
        assert!(conn.read(&mut b).await.unwrap() > 0);
        let rest = conn.read(&mut b).await;
        let _ = closed_tx.send(matches!(rest, Ok(0) | Err(_)));
    });
    let s = server(replica_addr).await;
    let mut conn = TcpStream::connect(s.addr).await.unwrap();
    conn.write_all(chat("", CHAT_BODY).as_bytes())
        .await
        .unwrap();
    tokio::time::sleep(Duration::from_millis(200)).await;
    drop(conn);
    let replica_saw_close = tokio::time::timeout(Duration::from_secs(5), closed_rx)
        .await
        .expect("the call to the replica was not cancelled")
        .unwrap();
    assert!(replica_saw_close);
}

#[tokio::test]
async fn shutdown_closes_idle_connections_and_returns() {
    let s = server(stub(2).await).await;
    let mut conn = TcpStream::connect(s.addr).await.unwrap();
    let mut buf = Vec::new();
    conn.write_all(chat("", CHAT_BODY).as_bytes())
        .await
        .unwrap();
    assert_eq!(read_reply(&mut conn, &mut buf).await.status, 200);
    let mut handed_over = TcpStream::connect(s.addr).await.unwrap();
    handed_over
        .write_all(b"GET /healthz HTTP/1.1\r\nhost: x\r\n\r\n")
        .await
        .unwrap();
    assert_eq!(read_reply(&mut handed_over, &mut buf).await.status, 200);
    s.stop.cancel();
    assert!(closed(&mut conn).await);
    assert!(closed(&mut handed_over).await);
    tokio::time::timeout(Duration::from_secs(5), s.task)
        .await
        .expect("serve did not return")
        .unwrap()
        .unwrap();
    assert!(TcpStream::connect(s.addr).await.is_err());
}

#[tokio::test]
async fn streamed_events_go_out_as_they_come() {
    // A replica that sends its first event, then waits until the client has seen it before
    // it finishes: if the listener held anything back, this would never complete.
    let replica = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let replica_addr = replica.local_addr().unwrap();
    let (seen_tx, seen_rx) = tokio::sync::oneshot::channel::<()>();
    tokio::spawn(async move {
        let (mut conn, _) = replica.accept().await.unwrap();
        let mut b = [0u8; 4096];
        assert!(conn.read(&mut b).await.unwrap() > 0);
        let chunk = |s: &str| format!("{:x}\r\n{s}\r\n", s.len());
        let first = r#"data: {"choices":[{"index":0,"delta":{"content":"first"}}]}"#;
        let head = "HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\ntransfer-encoding: chunked\r\n\r\n";
        conn.write_all(format!("{head}{}", chunk(&format!("{first}\n\n"))).as_bytes())
            .await
            .unwrap();
        seen_rx.await.unwrap();
        let second = r#"data: {"choices":[{"index":0,"delta":{"content":"second"}}]}"#;
        let rest = format!(
            "{}{}0\r\n\r\n",
            chunk(&format!("{second}\n\n")),
            chunk("data: [DONE]\n\n")
        );
        conn.write_all(rest.as_bytes()).await.unwrap();
    });
    let s = server(replica_addr).await;
    let mut conn = TcpStream::connect(s.addr).await.unwrap();
    let body = r#"{"model":"m1","stream":true,"messages":[{"role":"user","content":"hi"}]}"#;
    conn.write_all(chat("", body).as_bytes()).await.unwrap();
    let mut buf = Vec::new();
    while !String::from_utf8_lossy(&buf).contains("\"first\"") {
        read_some(&mut conn, &mut buf).await;
    }
    assert!(buf.starts_with(b"HTTP/1.1 200 OK\r\n"));
    assert!(!String::from_utf8_lossy(&buf).contains("second"));
    seen_tx.send(()).unwrap();
    while !buf.ends_with(b"0\r\n\r\n") {
        read_some(&mut conn, &mut buf).await;
    }
    let text = String::from_utf8_lossy(&buf);
    assert!(
        text.contains("\"second\"") && text.contains("data: [DONE]"),
        "{text}"
    );
}

/// Short limits for the tests of client timeouts.
fn short_limits() -> Limits {
    Limits {
        idle: Duration::from_millis(600),
        request: Duration::from_millis(1200),
        write: Duration::from_millis(600),
        shutdown_grace: Duration::from_millis(500),
        ..Limits::default()
    }
}

#[tokio::test]
async fn idle_connections_are_closed_and_busy_ones_kept() {
    let s = server_with(stub(2).await, short_limits()).await;
    let request = chat("", CHAT_BODY);

    // A connection that sends nothing is closed after the idle timeout.
    let mut silent = TcpStream::connect(s.addr).await.unwrap();
    let started = std::time::Instant::now();
    assert!(closed(&mut silent).await);
    let waited = started.elapsed();
    assert!(waited >= Duration::from_millis(500), "{waited:?}");

    // One that sends a request now and then stays open; once it idles, it is closed too.
    let mut conn = TcpStream::connect(s.addr).await.unwrap();
    let mut buf = Vec::new();
    for _ in 0..4 {
        conn.write_all(request.as_bytes()).await.unwrap();
        assert_eq!(read_reply(&mut conn, &mut buf).await.status, 200);
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
    assert!(closed(&mut conn).await);

    // The same on a connection the router has taken over (hyper's header timer).
    let mut routed = TcpStream::connect(s.addr).await.unwrap();
    routed
        .write_all(b"GET /healthz HTTP/1.1\r\nhost: x\r\n\r\n")
        .await
        .unwrap();
    assert_eq!(read_reply(&mut routed, &mut Vec::new()).await.status, 200);
    let started = std::time::Instant::now();
    assert!(closed(&mut routed).await);
    assert!(started.elapsed() >= Duration::from_millis(500));
}

#[tokio::test]
async fn a_request_must_be_whole_within_its_deadline_however_it_trickles() {
    let s = server_with(stub(2).await, short_limits()).await;
    let request = chat("", CHAT_BODY);
    let head_end = request.find("\r\n\r\n").unwrap() + 4;
    let chunked = format!(
        "POST /compatible-mode/v1/chat/completions HTTP/1.1\r\nhost: x\r\nauthorization: Bearer {KEY}\r\ntransfer-encoding: chunked\r\n\r\n{:x}\r\n{CHAT_BODY}\r\n0\r\n\r\n",
        CHAT_BODY.len()
    );
    let chunked_head_end = chunked.find("\r\n\r\n").unwrap() + 4;
    // A byte every 100 ms: never a long pause, but the whole request takes longer than the
    // deadline. Head, short-lane body, router body.
    for (sent_at_once, rest) in [
        ("", &request[..]),
        (&request[..head_end], &request[head_end..]),
        (&chunked[..chunked_head_end], &chunked[chunked_head_end..]),
    ] {
        let mut conn = TcpStream::connect(s.addr).await.unwrap();
        conn.write_all(sent_at_once.as_bytes()).await.unwrap();
        let started = std::time::Instant::now();
        let mut cut_off = false;
        for b in rest.as_bytes() {
            if conn.write_all(&[*b]).await.is_err() {
                cut_off = true;
                break;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
            if started.elapsed() > Duration::from_secs(5) {
                break;
            }
        }
        let mut tail = Vec::new();
        let _ = tokio::time::timeout(Duration::from_secs(3), conn.read_to_end(&mut tail)).await;
        let text = String::from_utf8_lossy(&tail);
        assert!(
            cut_off || tail.is_empty() || text.starts_with("HTTP/1.1 400"),
            "{sent_at_once:?}: {text}"
        );
        assert!(
            started.elapsed() < Duration::from_secs(4),
            "{sent_at_once:?} was not cut off in time"
        );
    }
}

/// On a connection the router serves, the deadline counts from a request's first byte, not from
/// the end of its head; and each request of the connection has its own.
#[tokio::test]
async fn on_the_router_the_deadline_runs_from_the_first_byte_of_each_request() {
    let limits = Limits {
        idle: Duration::from_secs(5),
        request: Duration::from_millis(1500),
        ..short_limits()
    };
    let s = server_with(stub(2).await, limits).await;
    let chunked = format!(
        "POST /compatible-mode/v1/chat/completions HTTP/1.1\r\nhost: x\r\nauthorization: Bearer {KEY}\r\ntransfer-encoding: chunked\r\n\r\n{:x}\r\n{CHAT_BODY}\r\n0\r\n\r\n",
        CHAT_BODY.len()
    );
    let head_end = chunked.find("\r\n\r\n").unwrap() + 4;
    let (head, body) = chunked.split_at(head_end);

    // The head takes 1 s in three pieces, then the body trickles: the answer (or the close)
    // comes 1.5 s after the first byte, not 1.5 s after the head.
    let conn = TcpStream::connect(s.addr).await.unwrap();
    let (mut rd, mut wr) = conn.into_split();
    let started = std::time::Instant::now();
    let answered = tokio::spawn(async move {
        let mut first = [0u8; 64];
        let n = rd.read(&mut first).await.unwrap_or(0);
        (
            started.elapsed(),
            String::from_utf8_lossy(&first[..n]).into_owned(),
        )
    });
    for (i, piece) in [&head[..20], &head[20..40], &head[40..]].iter().enumerate() {
        if i > 0 {
            tokio::time::sleep(Duration::from_millis(500)).await;
        }
        wr.write_all(piece.as_bytes()).await.unwrap();
    }
    for b in body.as_bytes() {
        tokio::time::sleep(Duration::from_millis(100)).await;
        if answered.is_finished() || wr.write_all(&[*b]).await.is_err() {
            break;
        }
    }
    let (cut_at, text) = tokio::time::timeout(Duration::from_secs(5), answered)
        .await
        .expect("an answer or a close")
        .unwrap();
    assert!(!text.starts_with("HTTP/1.1 200"), "answered: {text}");
    assert!(
        cut_at > Duration::from_millis(1400) && cut_at < Duration::from_millis(2000),
        "cut off after {cut_at:?}: {text}"
    );

    // Keep-alive: a request on the router, an idle second, then a second request that takes
    // 1.2 s in all: within its own deadline, so it is answered.
    let mut conn = TcpStream::connect(s.addr).await.unwrap();
    let list = format!(
        "GET /api/v1/deployments HTTP/1.1\r\nhost: x\r\nauthorization: Bearer {KEY}\r\n\r\n"
    );
    conn.write_all(list.as_bytes()).await.unwrap();
    let mut buf = Vec::new();
    assert_eq!(read_reply(&mut conn, &mut buf).await.status, 200);
    tokio::time::sleep(Duration::from_secs(1)).await;
    conn.write_all(head.as_bytes()).await.unwrap();
    let pieces = body.len().div_ceil(4);
    for piece in body.as_bytes().chunks(pieces) {
        tokio::time::sleep(Duration::from_millis(300)).await;
        conn.write_all(piece).await.unwrap();
    }
    let reply = read_reply(&mut conn, &mut buf).await;
    assert_eq!(reply.status, 200, "{reply:?}");
}

#[tokio::test]
async fn a_caller_without_a_key_is_answered_before_its_body() {
    let s = server(stub(2).await).await;
    for route in [CHAT_PATH, NATIVE_PATH] {
        let mut conn = TcpStream::connect(s.addr).await.unwrap();
        let head = format!(
            "POST {route} HTTP/1.1\r\nhost: x\r\nauthorization: Bearer sk-wrong\r\nexpect: 100-continue\r\ncontent-length: 100000\r\n\r\n"
        );
        conn.write_all(head.as_bytes()).await.unwrap();
        // No body at all: the answer comes at once, with no invitation to send it.
        let mut buf = Vec::new();
        read_some(&mut conn, &mut buf).await;
        assert!(buf.starts_with(b"HTTP/1.1 401 "), "{buf:?}");
        let reply = read_reply(&mut conn, &mut buf).await;
        assert_eq!(reply.status, 401, "{reply:?}");
        assert_eq!(reply.header("connection"), Some("close"));
        let text = String::from_utf8_lossy(&reply.body);
        assert!(!text.is_empty());
        assert!(buf.is_empty(), "nothing after the answer: {buf:?}");
        assert!(closed(&mut conn).await);
    }
    // The same request with the key gets its `100 Continue`.
    let mut conn = TcpStream::connect(s.addr).await.unwrap();
    let full = chat("expect: 100-continue\r\n", CHAT_BODY);
    conn.write_all(&full.as_bytes()[..full.len() - CHAT_BODY.len()])
        .await
        .unwrap();
    let mut buf = Vec::new();
    read_some(&mut conn, &mut buf).await;
    assert!(buf.starts_with(b"HTTP/1.1 100 Continue\r\n\r\n"), "{buf:?}");
}

/// Writes all of `request` before reading anything (as Python's `urllib` does), then reads the
/// answer to its end.
async fn send_all_then_read(addr: SocketAddr, request: Vec<u8>) -> String {
    let mut conn = TcpStream::connect(addr).await.unwrap();
    let (mut rd, mut wr) = conn.split();
    wr.write_all(&request)
        .await
        .expect("the whole request was sent");
    let mut answer = Vec::new();
    let read = tokio::time::timeout(Duration::from_secs(10), rd.read_to_end(&mut answer)).await;
    assert!(matches!(read, Ok(Ok(_))), "{read:?}: {answer:?}");
    String::from_utf8_lossy(&answer).into_owned()
}

#[tokio::test]
async fn clients_that_send_everything_first_still_read_early_answers() {
    let s = server(stub(2).await).await;
    // Too large: the router answers before reading the body.
    let big = vec![b'x'; 2 * crate::extract::BODY_LIMIT];
    let mut request = format!(
        "POST {CHAT_PATH} HTTP/1.1\r\nhost: x\r\nauthorization: Bearer {KEY}\r\ncontent-length: {}\r\n\r\n",
        big.len()
    )
    .into_bytes();
    request.extend_from_slice(&big);
    let answer = send_all_then_read(s.addr, request).await;
    assert!(answer.starts_with("HTTP/1.1 400"), "{answer}");
    assert!(answer.contains("too large"), "{answer}");
    // No key: the short lane answers before reading the body.
    let body = vec![b' '; 512 * 1024];
    let mut request = format!(
        "POST {NATIVE_PATH} HTTP/1.1\r\nhost: x\r\nauthorization: Bearer sk-wrong\r\ncontent-length: {}\r\n\r\n",
        body.len()
    )
    .into_bytes();
    request.extend_from_slice(&body);
    let answer = send_all_then_read(s.addr, request).await;
    assert!(answer.starts_with("HTTP/1.1 401"), "{answer}");
    assert!(answer.contains("InvalidApiKey"), "{answer}");
}

#[tokio::test]
async fn at_the_cap_new_connections_wait_until_others_close() {
    let limits = Limits {
        max_connections: 4,
        ..short_limits()
    };
    let s = server_with(stub(2).await, limits).await;
    let mut idle = Vec::new();
    for _ in 0..4 {
        idle.push(TcpStream::connect(s.addr).await.unwrap());
    }
    tokio::time::sleep(Duration::from_millis(100)).await;
    // The fifth is accepted by the kernel, not by berth: no answer while the four are open.
    let mut waiting = TcpStream::connect(s.addr).await.unwrap();
    waiting
        .write_all(chat("", CHAT_BODY).as_bytes())
        .await
        .unwrap();
    let mut b = [0u8; 64];
    assert!(
        tokio::time::timeout(Duration::from_millis(300), waiting.read(&mut b))
            .await
            .is_err(),
        "served over the cap"
    );
    // The idle ones time out; the waiting one is served, with no help.
    let started = std::time::Instant::now();
    let reply = read_reply(&mut waiting, &mut Vec::new()).await;
    assert_eq!(reply.status, 200);
    assert!(started.elapsed() < Duration::from_secs(3));
    for mut c in idle {
        assert!(closed(&mut c).await);
    }
}

#[tokio::test]
async fn a_client_that_does_not_read_its_stream_is_cut_off() {
    // A replica that streams events for as long as it is read, and reports when its connection
    // closes.
    let replica = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let replica_addr = replica.local_addr().unwrap();
    let (closed_tx, closed_rx) = tokio::sync::oneshot::channel();
    tokio::spawn(async move {
        let (mut conn, _) = replica.accept().await.unwrap();
        let mut b = [0u8; 4096];
        assert!(conn.read(&mut b).await.unwrap() > 0);
        let head = "HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\ntransfer-encoding: chunked\r\n\r\n";
        conn.write_all(head.as_bytes()).await.unwrap();
        let event = format!(
            "data: {{\"choices\":[{{\"index\":0,\"delta\":{{\"content\":\"{}\"}}}}]}}\n\n",
            "x".repeat(4000)
        );
        let chunk = format!("{:x}\r\n{event}\r\n", event.len());
        loop {
            if conn.write_all(chunk.as_bytes()).await.is_err() {
                break;
            }
        }
        let _ = closed_tx.send(());
    });
    let s = server_with(replica_addr, short_limits()).await;
    let mut conn = TcpStream::connect(s.addr).await.unwrap();
    let body = r#"{"model":"m1","stream":true,"messages":[{"role":"user","content":"hi"}]}"#;
    conn.write_all(chat("", body).as_bytes()).await.unwrap();
    // Never read: berth gives up on the client and so on the replica's stream.
    tokio::time::timeout(Duration::from_secs(10), closed_rx)
        .await
        .expect("the stream to a client that does not read was not cut off")
        .unwrap();
    drop(conn);
}

#[tokio::test]
async fn shutdown_ends_within_the_grace_whatever_clients_do() {
    let s = server_with(stub(2).await, short_limits()).await;
    // A body trickling in, and a stream nobody reads.
    let request = chat("", CHAT_BODY);
    let head_end = request.find("\r\n\r\n").unwrap() + 4;
    let mut trickle = TcpStream::connect(s.addr).await.unwrap();
    trickle
        .write_all(&request.as_bytes()[..head_end + 1])
        .await
        .unwrap();
    let mut idle = TcpStream::connect(s.addr).await.unwrap();
    tokio::time::sleep(Duration::from_millis(100)).await;
    let started = std::time::Instant::now();
    s.stop.cancel();
    tokio::time::timeout(Duration::from_secs(3), s.task)
        .await
        .expect("serve did not return within its grace")
        .unwrap()
        .unwrap();
    assert!(
        started.elapsed() < Duration::from_secs(2),
        "{:?}",
        started.elapsed()
    );
    assert!(closed(&mut idle).await);
    assert!(closed(&mut trickle).await);
}

#[tokio::test]
async fn a_large_body_leaves_no_large_buffer_behind() {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let client = TcpStream::connect(listener.local_addr().unwrap())
        .await
        .unwrap();
    let (conn, _) = listener.accept().await.unwrap();
    let store: Arc<dyn Store> = Arc::new(SqliteStore::open_in_memory().await.unwrap());
    let keys = KeyRing::new(store.clone());
    let state = AppState::inference_only(
        store,
        keys,
        berth_gateway::Gateway::new(Default::default()).unwrap(),
    );
    let mut c = Connection {
        conn,
        buf: BytesMut::new(),
        out: Vec::new(),
        state,
        shutdown: CancellationToken::new(),
        limits: Limits::default(),
        timer: io_util::timer(),
        request_deadline: None,
    };
    c.buf.extend_from_slice(&vec![b'x'; 1024 * 1024]);
    c.buf.extend_from_slice(b"next");
    let request = c.consume(1024 * 1024);
    drop(request);
    assert_eq!(&c.buf[..], b"next");
    assert!(c.buf.capacity() <= 2 * READ_CHUNK, "{}", c.buf.capacity());
    drop(client);
}

#[tokio::test]
async fn a_null_stream_options_reaches_the_replica_as_one_key() {
    // A replica that records the body it got and answers a two-event stream.
    let replica = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let replica_addr = replica.local_addr().unwrap();
    let (body_tx, body_rx) = tokio::sync::oneshot::channel::<Vec<u8>>();
    tokio::spawn(async move {
        let (mut conn, _) = replica.accept().await.unwrap();
        let mut got = Vec::new();
        let mut b = [0u8; 4096];
        while !got.ends_with(b"}") {
            let n = conn.read(&mut b).await.unwrap();
            got.extend_from_slice(&b[..n]);
        }
        let events = "data: {\"choices\":[{\"index\":0,\"delta\":{\"content\":\"hi\"}}]}\n\ndata: [DONE]\n\n";
        let answer = format!(
            "HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\ncontent-length: {}\r\n\r\n{events}",
            events.len()
        );
        conn.write_all(answer.as_bytes()).await.unwrap();
        let _ = body_tx.send(got);
    });
    let s = server(replica_addr).await;
    let mut conn = TcpStream::connect(s.addr).await.unwrap();
    let body = r#"{"model":"m1","stream":true,"stream_options":null,"messages":[{"role":"user","content":"hi"}]}"#;
    conn.write_all(chat("", body).as_bytes()).await.unwrap();
    let reply = read_reply(&mut conn, &mut Vec::new()).await;
    assert_eq!(reply.status, 200, "{reply:?}");
    let sent = String::from_utf8(body_rx.await.unwrap()).unwrap();
    let sent_body = &sent[sent.find("\r\n\r\n").unwrap() + 4..];
    assert_eq!(
        sent_body.matches("\"stream_options\"").count(),
        1,
        "{sent_body}"
    );
    let v: Value = serde_json::from_str(sent_body).unwrap();
    assert_eq!(v["stream_options"]["include_usage"], true);
}

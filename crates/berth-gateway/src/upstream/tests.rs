//! The replica client against scripted replicas on real sockets: each test server answers every
//! request it reads with the next canned reply and counts connections and requests.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;

use super::*;

const SETTINGS: Settings = Settings {
    connect_timeout: Duration::from_secs(1),
    idle_timeout: Duration::from_secs(60),
    read_timeout: Duration::from_secs(60),
};

/// What a scripted replica does after reading one request.
#[derive(Clone)]
enum Reply {
    /// Write these bytes and keep the connection.
    Send(&'static [u8]),
    /// Write these bytes and close.
    SendClose(&'static [u8]),
    /// Close without answering.
    Close,
}

#[derive(Default)]
struct Seen {
    connections: AtomicUsize,
    requests: AtomicUsize,
}

/// A replica that answers its requests, in order, with `replies` (the last one repeats).
async fn replica(replies: Vec<Reply>) -> (SocketAddr, Arc<Seen>) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let seen = Arc::new(Seen::default());
    let counts = seen.clone();
    tokio::spawn(async move {
        loop {
            let Ok((mut conn, _)) = listener.accept().await else {
                return;
            };
            counts.connections.fetch_add(1, Ordering::SeqCst);
            let counts = counts.clone();
            let replies = replies.clone();
            tokio::spawn(async move {
                let mut buf = Vec::new();
                loop {
                    let Some(end) = read_request(&mut conn, &mut buf).await else {
                        return;
                    };
                    buf.drain(..end);
                    let i = counts.requests.fetch_add(1, Ordering::SeqCst);
                    match &replies[i.min(replies.len() - 1)] {
                        Reply::Send(b) => conn.write_all(b).await.unwrap(),
                        Reply::SendClose(b) => {
                            conn.write_all(b).await.unwrap();
                            return;
                        }
                        Reply::Close => return,
                    }
                }
            });
        }
    });
    (addr, seen)
}

/// Reads one whole request (head + Content-Length body); its length in `buf`.
async fn read_request(conn: &mut TcpStream, buf: &mut Vec<u8>) -> Option<usize> {
    loop {
        let mut headers = [httparse::EMPTY_HEADER; 16];
        let mut req = httparse::Request::new(&mut headers);
        if let Ok(httparse::Status::Complete(n)) = req.parse(buf) {
            let len: usize = req
                .headers
                .iter()
                .find(|h| h.name.eq_ignore_ascii_case("content-length"))
                .map(|h| std::str::from_utf8(h.value).unwrap().parse().unwrap())
                .unwrap_or(0);
            assert_eq!(req.method, Some("POST"));
            if buf.len() >= n + len {
                return Some(n + len);
            }
        }
        let mut chunk = [0u8; 4096];
        let n = conn.read(&mut chunk).await.ok()?;
        if n == 0 {
            return None;
        }
        buf.extend_from_slice(&chunk[..n]);
    }
}

async fn call(idle: &IdleConns, addr: SocketAddr) -> Result<Answer, SendError> {
    post(idle, addr, "/v1/chat/completions", br#"{"a":1}"#, SETTINGS).await
}

/// The same call, streamed: the body read through a [`BodyReader`] to its end.
async fn call_streaming(idle: &Arc<IdleConns>, addr: SocketAddr) -> Result<Answer, SendError> {
    let resp = post_streaming(idle, addr, "/v1/chat/completions", br#"{"a":1}"#, SETTINGS).await?;
    Ok(Answer {
        status: resp.status,
        body: resp.body.collect().await?,
    })
}

/// Both ways of calling, for the tests that must hold for each.
async fn call_both(addr: SocketAddr, streamed: bool) -> Result<Answer, SendError> {
    let idle = Arc::default();
    if streamed {
        call_streaming(&idle, addr).await
    } else {
        call(&idle, addr).await
    }
}

const OK: &[u8] =
    b"HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: 11\r\n\r\n{\"ok\":true}";

#[tokio::test]
async fn keep_alive_connections_are_reused() {
    let (addr, seen) = replica(vec![Reply::Send(OK)]).await;
    let idle = IdleConns::default();
    for _ in 0..5 {
        let a = call(&idle, addr).await.unwrap();
        assert_eq!(a.status, 200);
        assert_eq!(&a.body[..], br#"{"ok":true}"#);
    }
    assert_eq!(seen.requests.load(Ordering::SeqCst), 5);
    assert_eq!(seen.connections.load(Ordering::SeqCst), 1);
}

#[tokio::test]
async fn chunked_bodies_are_decoded_with_their_trailers_skipped() {
    let reply = b"HTTP/1.1 201 Created\r\ntransfer-encoding: chunked\r\n\r\n4\r\n{\"a\"\r\nA;ext=1\r\n:[1,2,3,4]\r\n1\r\n}\r\n0\r\nx-trailer: 1\r\n\r\n";
    let (addr, seen) = replica(vec![Reply::Send(reply)]).await;
    let idle = IdleConns::default();
    for _ in 0..2 {
        let a = call(&idle, addr).await.unwrap();
        assert_eq!(a.status, 201);
        assert_eq!(&a.body[..], br#"{"a":[1,2,3,4]}"#);
    }
    assert_eq!(seen.connections.load(Ordering::SeqCst), 1);
}

#[tokio::test]
async fn close_delimited_and_connection_close_answers_are_not_pooled() {
    let (addr, seen) = replica(vec![
        Reply::SendClose(b"HTTP/1.1 200 OK\r\n\r\nuntil the end"),
        Reply::SendClose(b"HTTP/1.1 200 OK\r\nconnection: close\r\ncontent-length: 2\r\n\r\nhi"),
        Reply::Send(OK),
    ])
    .await;
    let idle = IdleConns::default();
    assert_eq!(&call(&idle, addr).await.unwrap().body[..], b"until the end");
    assert_eq!(&call(&idle, addr).await.unwrap().body[..], b"hi");
    assert_eq!(call(&idle, addr).await.unwrap().status, 200);
    assert_eq!(seen.connections.load(Ordering::SeqCst), 3);
}

#[tokio::test]
async fn error_statuses_come_back_with_their_body() {
    let (addr, _) = replica(vec![Reply::Send(
        b"HTTP/1.1 400 Bad Request\r\ncontent-length: 5\r\n\r\nnope!",
    )])
    .await;
    let a = call(&IdleConns::default(), addr).await.unwrap();
    assert_eq!((a.status, &a.body[..]), (400, &b"nope!"[..]));
}

#[tokio::test]
async fn interim_answers_are_skipped() {
    let (addr, _) = replica(vec![Reply::Send(
        b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok",
    )])
    .await;
    let a = call(&IdleConns::default(), addr).await.unwrap();
    assert_eq!((a.status, &a.body[..]), (200, &b"ok"[..]));
}

#[tokio::test]
async fn a_refused_connection_is_a_connect_error() {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    drop(listener);
    let e = call(&IdleConns::default(), addr).await.unwrap_err();
    assert!(e.is_connect(), "{e}");
}

#[tokio::test]
async fn an_idle_connection_the_replica_closed_is_replaced_before_sending() {
    // The replica answers, then closes the connection while it sits in the pool.
    let (addr, seen) = replica(vec![Reply::SendClose(OK), Reply::Send(OK)]).await;
    let idle = IdleConns::default();
    // `OK` has no `connection: close`, so the client pools the connection.
    call(&idle, addr).await.unwrap();
    assert_eq!(idle.conns.lock().unwrap().len(), 1);
    // Let the reactor see the close.
    tokio::time::sleep(Duration::from_millis(50)).await;
    let a = call(&idle, addr).await.unwrap();
    assert_eq!(a.status, 200);
    assert_eq!(seen.connections.load(Ordering::SeqCst), 2);
    assert_eq!(seen.requests.load(Ordering::SeqCst), 2);
}

#[tokio::test]
async fn a_replica_that_drops_the_request_is_an_error_and_the_request_is_not_resent() {
    let (addr, seen) = replica(vec![Reply::Close]).await;
    let e = call(&IdleConns::default(), addr).await.unwrap_err();
    assert!(!e.is_connect(), "{e}");
    assert!(e.to_string().contains("without answering"), "{e}");
    assert_eq!(seen.requests.load(Ordering::SeqCst), 1);
}

#[tokio::test]
async fn answers_cut_short_are_errors() {
    for reply in [
        &b"HTTP/1.1 200 OK\r\ncontent-length: 10\r\n\r\nshort"[..],
        b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n10\r\nshort",
        b"HTTP/1.1 200 OK\r\ncontent-le",
    ] {
        for streamed in [false, true] {
            let (addr, _) = replica(vec![Reply::SendClose(reply)]).await;
            let e = call_both(addr, streamed).await.unwrap_err();
            assert!(matches!(e, SendError::Io { .. }), "{e}");
        }
    }
}

#[tokio::test]
async fn malformed_answers_are_protocol_errors() {
    for reply in [
        &b"SMTP ready\r\n\r\n"[..],
        b"HTTP/1.1 200 OK\r\ncontent-length: x\r\n\r\n",
        b"HTTP/1.1 200 OK\r\ncontent-length: 1\r\ncontent-length: 2\r\n\r\n",
        b"HTTP/1.1 200 OK\r\ntransfer-encoding: gzip\r\n\r\n",
        b"HTTP/1.1 200 OK\r\ncontent-length: 999999999999\r\n\r\n",
        b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\nzz\r\n",
        b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n2\r\nabXY0\r\n\r\n",
        // Strict framing: a signed or listed length, a coding besides chunked, both framings,
        // a status that is not one.
        b"HTTP/1.1 200 OK\r\ncontent-length: +5\r\n\r\nhello",
        b"HTTP/1.1 200 OK\r\ncontent-length: 5, 5\r\n\r\nhello",
        b"HTTP/1.1 200 OK\r\ncontent-length: 0x5\r\n\r\nhello",
        b"HTTP/1.1 200 OK\r\ntransfer-encoding: gzip, chunked\r\n\r\n0\r\n\r\n",
        b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\ntransfer-encoding: chunked\r\n\r\n0\r\n\r\n",
        b"HTTP/1.1 200 OK\r\ncontent-length: 5\r\ntransfer-encoding: chunked\r\n\r\n0\r\n\r\n",
        b"HTTP/1.1 099 Odd\r\ncontent-length: 0\r\n\r\n",
        b"HTTP/1.1 600 Odd\r\ncontent-length: 0\r\n\r\n",
        b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 100 Continue\r\n\r\n",
    ] {
        for streamed in [false, true] {
            let (addr, _) = replica(vec![Reply::SendClose(reply)]).await;
            let e = call_both(addr, streamed).await.unwrap_err();
            assert!(
                matches!(e, SendError::Protocol { .. }),
                "{} (streamed: {streamed}): {e}",
                String::from_utf8_lossy(reply)
            );
        }
    }
}

#[tokio::test]
async fn a_response_head_that_never_ends_is_refused() {
    static LONG: std::sync::OnceLock<Vec<u8>> = std::sync::OnceLock::new();
    let head = LONG.get_or_init(|| {
        let mut v = b"HTTP/1.1 200 OK\r\n".to_vec();
        v.extend(std::iter::repeat_n(b"x-pad: 0123456789\r\n", 2000).flatten());
        v
    });
    let (addr, _) = replica(vec![Reply::Send(head)]).await;
    let e = call(&IdleConns::default(), addr).await.unwrap_err();
    assert!(matches!(e, SendError::Protocol { .. }), "{e}");
}

#[tokio::test]
async fn streamed_bodies_decode_as_whole_ones_and_their_connections_are_reused() {
    for (reply, body) in [
        (OK, &br#"{"ok":true}"#[..]),
        (
            &b"HTTP/1.1 201 Created\r\ntransfer-encoding: chunked\r\n\r\n4\r\n{\"a\"\r\nA;ext=1\r\n:[1,2,3,4]\r\n1\r\n}\r\n0\r\nx-trailer: 1\r\n\r\n"[..],
            br#"{"a":[1,2,3,4]}"#,
        ),
        (
            b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 204 No Content\r\n\r\n",
            b"",
        ),
    ] {
        let (addr, seen) = replica(vec![Reply::Send(reply)]).await;
        let idle = Arc::new(IdleConns::default());
        for _ in 0..3 {
            let streamed = call_streaming(&idle, addr).await.unwrap();
            assert_eq!(&streamed.body[..], body);
            let whole = call(&idle, addr).await.unwrap();
            assert_eq!((streamed.status, &streamed.body), (whole.status, &whole.body));
        }
        assert_eq!(seen.requests.load(Ordering::SeqCst), 6);
        assert_eq!(seen.connections.load(Ordering::SeqCst), 1, "{reply:?}");
    }
    let (addr, seen) = replica(vec![Reply::SendClose(
        b"HTTP/1.1 200 OK\r\n\r\nuntil the end",
    )])
    .await;
    let idle = Arc::new(IdleConns::default());
    for _ in 0..2 {
        let a = call_streaming(&idle, addr).await.unwrap();
        assert_eq!(&a.body[..], b"until the end");
    }
    assert_eq!(
        seen.connections.load(Ordering::SeqCst),
        2,
        "close-delimited: not pooled"
    );
}

/// A replica that sends `first`, waits for `go`, then sends `rest` a few bytes at a time.
async fn paced_replica(
    first: &'static [u8],
    rest: &'static [u8],
) -> (
    SocketAddr,
    tokio::sync::oneshot::Sender<()>,
    tokio::sync::oneshot::Receiver<bool>,
) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let (go_tx, go_rx) = tokio::sync::oneshot::channel();
    let (closed_tx, closed_rx) = tokio::sync::oneshot::channel();
    tokio::spawn(async move {
        let (mut conn, _) = listener.accept().await.unwrap();
        let mut buf = Vec::new();
        read_request(&mut conn, &mut buf).await.unwrap();
        conn.write_all(first).await.unwrap();
        if go_rx.await.is_ok() {
            for piece in rest.chunks(3) {
                conn.write_all(piece).await.unwrap();
                tokio::time::sleep(Duration::from_millis(1)).await;
            }
        }
        // Reports whether the client closed the connection (rather than sending more).
        let mut b = [0u8; 16];
        let n = tokio::time::timeout(Duration::from_secs(5), conn.read(&mut b)).await;
        let _ = closed_tx.send(matches!(n, Ok(Ok(0)) | Ok(Err(_))));
    });
    (addr, go_tx, closed_rx)
}

#[tokio::test]
async fn streamed_bodies_come_piece_by_piece_as_they_arrive() {
    let (addr, go, _) = paced_replica(
        b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\nd\r\nfirst ",
        b"event\n\n\r\n6\r\nsecond\r\n0\r\n\r\n",
    )
    .await;
    let idle = Arc::new(IdleConns::default());
    let resp = post_streaming(&idle, addr, "/v1/chat/completions", b"{}", SETTINGS)
        .await
        .unwrap();
    assert_eq!(resp.status, 200);
    let mut body = resp.body;
    // The part of the first chunk that is in goes out before the replica sends anything more.
    let first = tokio::time::timeout(Duration::from_secs(5), body.next())
        .await
        .expect("the data that arrived was held back")
        .unwrap()
        .unwrap();
    assert_eq!(&first[..], b"first ");
    go.send(()).unwrap();
    let mut rest = Vec::new();
    while let Some(piece) = body.next().await {
        rest.extend_from_slice(&piece.unwrap());
    }
    assert_eq!(&rest[..], b"event\n\nsecond");
    assert_eq!(
        idle.conns.lock().unwrap().len(),
        1,
        "read to its end: pooled"
    );
}

#[tokio::test]
async fn a_streamed_body_dropped_midway_closes_its_connection() {
    let (addr, go, closed) =
        paced_replica(b"HTTP/1.1 200 OK\r\ncontent-length: 100\r\n\r\nsome", b"").await;
    // Nothing more will come: the replica just watches the connection.
    drop(go);
    let idle = Arc::new(IdleConns::default());
    let resp = post_streaming(&idle, addr, "/v1/chat/completions", b"{}", SETTINGS)
        .await
        .unwrap();
    let mut body = resp.body;
    assert_eq!(&body.next().await.unwrap().unwrap()[..], b"some");
    drop(body);
    assert!(
        closed.await.unwrap(),
        "the replica did not see the connection close"
    );
    assert!(idle.conns.lock().unwrap().is_empty());
}

#[tokio::test]
async fn requests_carry_their_path_host_and_length() {
    // A replica that answers each request and reports its head and body.
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
    tokio::spawn(async move {
        let (mut conn, _) = listener.accept().await.unwrap();
        let mut buf = Vec::new();
        while let Some(end) = read_request(&mut conn, &mut buf).await {
            tx.send(String::from_utf8(buf.drain(..end).collect()).unwrap())
                .unwrap();
            conn.write_all(OK).await.unwrap();
        }
    });
    let idle = IdleConns::default();
    let body = "x".repeat(1234);
    for (path, body) in [
        ("/v1/chat/completions", "{}"),
        ("/other", ""),
        ("/v1/chat/completions", &body),
    ] {
        post(&idle, addr, path, body.as_bytes(), SETTINGS)
            .await
            .unwrap();
        let request = rx.recv().await.unwrap();
        assert_eq!(
            request,
            format!("POST {path} HTTP/1.1\r\nhost: {addr}\r\ncontent-type: application/json\r\ncontent-length: {}\r\n\r\n{body}", body.len())
        );
    }
}

/// A replica that reads one request, sends `first` and then nothing, holding the connection
/// open.
async fn stalling_replica(first: &'static [u8]) -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        let (mut conn, _) = listener.accept().await.unwrap();
        let mut buf = Vec::new();
        read_request(&mut conn, &mut buf).await;
        conn.write_all(first).await.unwrap();
        tokio::time::sleep(Duration::from_secs(30)).await;
        drop(conn);
    });
    addr
}

#[tokio::test]
async fn a_replica_that_stops_sending_times_out() {
    let settings = Settings {
        read_timeout: Duration::from_millis(300),
        ..SETTINGS
    };
    let partial: &[&'static [u8]] = &[
        b"",
        b"HTTP/1.1 200 OK\r\ncontent-le",
        b"HTTP/1.1 200 OK\r\ncontent-length: 10\r\n\r\nhalf",
        b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n4\r\ndata\r\n",
        b"HTTP/1.1 200 OK\r\n\r\nuntil close",
    ];
    for first in partial {
        for streamed in [false, true] {
            let addr = stalling_replica(first).await;
            let started = Instant::now();
            let idle = Arc::new(IdleConns::default());
            let result = if streamed {
                match post_streaming(&idle, addr, "/v1/chat/completions", b"{}", settings).await {
                    Ok(resp) => resp.body.collect().await.map(|_| ()),
                    Err(e) => Err(e),
                }
            } else {
                post(&idle, addr, "/v1/chat/completions", b"{}", settings)
                    .await
                    .map(|_| ())
            };
            let e = result.unwrap_err();
            let what = String::from_utf8_lossy(first);
            assert!(
                matches!(&e, SendError::Io { source, .. } if source.kind() == io::ErrorKind::TimedOut),
                "{what:?} (streamed: {streamed}): {e}"
            );
            assert!(started.elapsed() < Duration::from_secs(3), "{what:?}");
        }
    }
}

#[test]
fn arbitrary_answers_never_panic_the_parser() {
    // A deterministic sweep of mutations of real answers, on top of the fuzz target
    // (fuzz/fuzz_targets/replica_response.rs), so the normal test suite covers the parser too.
    let seeds: &[&[u8]] = &[
        OK,
        b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n4\r\ndata\r\n0\r\nx: y\r\n\r\n",
        b"HTTP/1.1 200 OK\r\n\r\nuntil close",
        b"HTTP/1.0 204 No Content\r\n\r\n",
    ];
    let mut rng = fastrand::Rng::with_seed(12);
    for seed in seeds {
        check_response(seed);
        for _ in 0..20_000 {
            let mut bytes = seed.to_vec();
            for _ in 0..rng.usize(1..6) {
                match rng.u8(0..4) {
                    0 if !bytes.is_empty() => {
                        let at = rng.usize(..bytes.len());
                        bytes[at] = rng.u8(..);
                    }
                    1 => {
                        let at = rng.usize(..=bytes.len());
                        {
                            let alphabet = b"\r\n0123456789abcdefx:;-+ ";
                            bytes.insert(at, alphabet[rng.usize(..alphabet.len())]);
                        }
                    }
                    2 if !bytes.is_empty() => {
                        let at = rng.usize(..bytes.len());
                        bytes.remove(at);
                    }
                    _ => bytes.truncate(rng.usize(..=bytes.len())),
                }
            }
            check_response(&bytes);
        }
    }
}

//! The listener of `berth serve`: HTTP/1.1 connections, with a short lane for inference calls.
//!
//! Every connection starts here. While its requests are inference calls that need nothing
//! unusual (`POST` of a chat or generation body with a `Content-Length`, HTTP/1.1), this module
//! serves them itself: it parses the head with `httparse`, reads the body, authenticates, calls
//! the gateway and writes the answer in one system call (a stream as chunked transfer coding,
//! each event as it comes). That path skips what a general server does per request (a header
//! map, routing, middleware, boxed bodies), which on one core was most of the gateway's own
//! cost (docs/BENCHMARKS.md).
//!
//! The first request that is anything else (another route or method, chunked request body,
//! `Expect` other than `100-continue`, an upgrade, HTTP/1.0, a head this parser rejects or that
//! is too long) hands the connection to hyper and the axum router for good, with the bytes
//! already read replayed in front of the socket. So every request gets the same answer as
//! from the router: the short lane answers only what it answers exactly as the routes do
//! (`crate::routes::inference`: same authentication, same handlers' logic, same envelopes, the
//! same `x-request-id` rule), and the tests of the HTTP surface run through this listener.
//!
//! A client that goes away while its call is in flight drops the call, which cancels the
//! replica's request; bytes that arrive meanwhile (a pipelined request) are kept for later.

use std::io;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::Router;
use berth_gateway::{GatewayResponse, ResponseBody};
use bytes::{Bytes, BytesMut};
use futures::StreamExt;
use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::service::TowerToHyperService;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::auth;
use crate::extract::BODY_LIMIT;
use crate::request_id::{self, CURRENT_REQUEST_ID};
use crate::routes::inference::{self, compatible, native, CHAT_PATH, NATIVE_PATH};
use crate::routes::router;
use crate::state::AppState;

/// Longest request head the short lane reads; a longer one goes to hyper (which answers 431).
const MAX_HEAD: usize = 16 * 1024;
/// Headers the short lane parses; a request with more goes to hyper.
const MAX_HEADERS: usize = 48;
/// Read buffer of a connection.
const READ_CHUNK: usize = 8 * 1024;
/// Bytes of pipelined requests kept while a call is in flight; beyond it the client is no
/// longer watched until the answer is written.
const MAX_PIPELINED: usize = 64 * 1024;
/// Bytes of a stream gathered into one write when they are all ready at once.
const MAX_COALESCED: usize = 64 * 1024;

/// How long clients may take to send requests.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Timeouts {
    /// From the first byte of a request to the end of its head (hyper's default).
    pub head: Duration,
    /// Longest pause while a request body is arriving (nginx's `client_body_timeout`).
    pub body_stall: Duration,
}

impl Default for Timeouts {
    fn default() -> Self {
        Self {
            head: Duration::from_secs(30),
            body_stall: Duration::from_secs(60),
        }
    }
}

/// Serves `state`'s routes on `listener` until `shutdown` is cancelled, then stops accepting,
/// lets every connection finish the request it is on, and returns when all are closed.
///
/// A client that starts a request and does not finish it in time (a head within 30 s of its
/// first byte, a body that stalls for 60 s) is disconnected. An idle keep-alive connection of
/// the short lane may stay open; one the router has taken over is closed after 30 s without a
/// request (hyper's `header_read_timeout` also runs while it waits for the next request).
pub async fn serve(
    listener: TcpListener,
    state: AppState,
    shutdown: CancellationToken,
) -> io::Result<()> {
    serve_with(listener, state, shutdown, Timeouts::default()).await
}

pub(crate) async fn serve_with(
    listener: TcpListener,
    state: AppState,
    shutdown: CancellationToken,
    timeouts: Timeouts,
) -> io::Result<()> {
    let router = router(state.clone());
    let connections = TaskTracker::new();
    loop {
        let conn = tokio::select! {
            biased;
            _ = shutdown.cancelled() => break,
            accepted = listener.accept() => accepted,
        };
        let conn = match conn {
            Ok((conn, _)) => conn,
            Err(e) if is_connection_error(&e) => continue,
            Err(e) => {
                // Out of file descriptors and the like: wait instead of spinning.
                tracing::error!(error = %e, "accept failed");
                tokio::time::sleep(Duration::from_secs(1)).await;
                continue;
            }
        };
        // Streamed events are small writes that must leave at once.
        let _ = conn.set_nodelay(true);
        connections.spawn(
            Connection {
                conn,
                buf: BytesMut::with_capacity(READ_CHUNK),
                out: Vec::with_capacity(1024),
                state: state.clone(),
                shutdown: shutdown.clone(),
                timeouts,
                head_deadline: None,
            }
            .run(router.clone()),
        );
    }
    connections.close();
    connections.wait().await;
    Ok(())
}

fn is_connection_error(e: &io::Error) -> bool {
    matches!(
        e.kind(),
        io::ErrorKind::ConnectionRefused
            | io::ErrorKind::ConnectionAborted
            | io::ErrorKind::ConnectionReset
    )
}

/// Which short-lane route a request is for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Route {
    Chat,
    Native,
}

/// Where a header value lies in the request bytes.
type Span = Option<(usize, usize)>;

/// A request head the short lane serves.
#[derive(Debug)]
struct Head {
    route: Route,
    /// Length of the head, blank line included.
    len: usize,
    body_len: usize,
    keep_alive: bool,
    expect_continue: bool,
    authorization: Span,
    workspace: Span,
    request_id: Span,
    sse: Span,
}

/// What the bytes read so far hold.
#[derive(Debug)]
enum Parsed {
    /// Not a whole head yet.
    Partial,
    /// A request for the short lane.
    Short(Head),
    /// Anything else: hyper and the router take the connection.
    Other,
}

fn parse(buf: &[u8]) -> Parsed {
    let mut headers = [httparse::EMPTY_HEADER; MAX_HEADERS];
    let mut req = httparse::Request::new(&mut headers);
    let len = match req.parse(buf) {
        Ok(httparse::Status::Complete(len)) => len,
        Ok(httparse::Status::Partial) if buf.len() <= MAX_HEAD => return Parsed::Partial,
        _ => return Parsed::Other,
    };
    if req.method != Some("POST") || req.version != Some(1) {
        return Parsed::Other;
    }
    let path = req.path.unwrap_or_default();
    let route = match path.split_once('?').map_or(path, |(p, _)| p) {
        CHAT_PATH => Route::Chat,
        NATIVE_PATH => Route::Native,
        _ => return Parsed::Other,
    };
    let span = |v: &[u8]| {
        let at = v.as_ptr() as usize - buf.as_ptr() as usize;
        Some((at, at + v.len()))
    };
    let mut head = Head {
        route,
        len,
        body_len: 0,
        keep_alive: true,
        expect_continue: false,
        authorization: None,
        workspace: None,
        request_id: None,
        sse: None,
    };
    let mut length = None;
    for h in req.headers.iter() {
        let name = h.name.as_bytes();
        if name.eq_ignore_ascii_case(b"content-length") {
            let Some(n) = parse_length(h.value) else {
                return Parsed::Other;
            };
            if length.replace(n).is_some() {
                return Parsed::Other;
            }
        } else if name.eq_ignore_ascii_case(b"transfer-encoding")
            || name.eq_ignore_ascii_case(b"upgrade")
        {
            return Parsed::Other;
        } else if name.eq_ignore_ascii_case(b"expect") {
            if !h.value.trim_ascii().eq_ignore_ascii_case(b"100-continue") {
                return Parsed::Other;
            }
            head.expect_continue = true;
        } else if name.eq_ignore_ascii_case(b"connection") {
            for token in h.value.split(|&b| b == b',').map(<[u8]>::trim_ascii) {
                if token.eq_ignore_ascii_case(b"close") {
                    head.keep_alive = false;
                } else if token.eq_ignore_ascii_case(b"upgrade") {
                    return Parsed::Other;
                }
            }
        } else if name.eq_ignore_ascii_case(b"authorization") {
            head.authorization = head.authorization.or_else(|| span(h.value));
        } else if name.eq_ignore_ascii_case(auth::WORKSPACE_HEADER.as_bytes()) {
            head.workspace = head.workspace.or_else(|| span(h.value));
        } else if name.eq_ignore_ascii_case(request_id::HEADER.as_bytes()) {
            head.request_id = head.request_id.or_else(|| span(h.value));
        } else if name.eq_ignore_ascii_case(native::SSE_HEADER.as_bytes()) {
            head.sse = head.sse.or_else(|| span(h.value));
        }
    }
    head.body_len = length.unwrap_or(0);
    if head.body_len > BODY_LIMIT {
        // The router answers this with the documented error.
        return Parsed::Other;
    }
    Parsed::Short(head)
}

/// A `Content-Length` value: digits only.
fn parse_length(v: &[u8]) -> Option<usize> {
    let v = v.trim_ascii();
    if v.is_empty() || v.len() > 19 || !v.iter().all(u8::is_ascii_digit) {
        return None;
    }
    std::str::from_utf8(v).ok()?.parse().ok()
}

/// What a call answered.
enum Answer {
    Gateway(GatewayResponse),
    Rendered(Response),
}

/// One client connection.
struct Connection {
    conn: TcpStream,
    /// Bytes read and not yet consumed.
    buf: BytesMut,
    /// The answer being written (reused).
    out: Vec<u8>,
    state: AppState,
    shutdown: CancellationToken,
    timeouts: Timeouts,
    /// When the head of the request under way must be complete (set by its first byte).
    head_deadline: Option<tokio::time::Instant>,
}

impl Connection {
    async fn run(mut self, router: Router) {
        loop {
            let head = match parse(&self.buf) {
                Parsed::Short(head) => {
                    self.head_deadline = None;
                    head
                }
                Parsed::Other => return self.hand_over(router).await,
                Parsed::Partial => {
                    if !self.read_more().await {
                        return;
                    }
                    continue;
                }
            };
            match self.serve_one(head).await {
                Ok(true) if !self.shutdown.is_cancelled() => {}
                _ => return,
            }
        }
    }

    /// Reads more of the next request; false when the connection should close (the client
    /// closed it, it failed, or the server is stopping while no request is under way).
    async fn read_more(&mut self) -> bool {
        if self.buf.capacity() - self.buf.len() < 1024 {
            self.buf.reserve(READ_CHUNK);
        }
        let idle = self.buf.is_empty();
        // A request under way must finish its head in time; an idle connection has no timer.
        let head_timeout = self.timeouts.head;
        let deadline = (!idle).then(|| {
            *self
                .head_deadline
                .get_or_insert_with(|| tokio::time::Instant::now() + head_timeout)
        });
        let late = async {
            match deadline {
                Some(at) => tokio::time::sleep_until(at).await,
                None => std::future::pending().await,
            }
        };
        let read = tokio::select! {
            biased;
            _ = self.shutdown.cancelled(), if idle => return false,
            () = late => {
                tracing::debug!("request head not complete in time; closing the connection");
                return false;
            }
            n = self.conn.read_buf(&mut self.buf) => n,
        };
        let more = matches!(read, Ok(n) if n > 0);
        if more && idle {
            self.head_deadline = Some(tokio::time::Instant::now() + head_timeout);
        }
        more
    }

    /// Serves one short-lane request; true when the connection can carry another.
    async fn serve_one(&mut self, head: Head) -> io::Result<bool> {
        let total = head.len + head.body_len;
        if head.expect_continue && self.buf.len() < total {
            self.conn
                .write_all(b"HTTP/1.1 100 Continue\r\n\r\n")
                .await?;
        }
        while self.buf.len() < total {
            self.buf.reserve(total - self.buf.len());
            let read =
                tokio::time::timeout(self.timeouts.body_stall, self.conn.read_buf(&mut self.buf));
            match read.await {
                Ok(Ok(0)) => return Ok(false),
                Ok(Ok(_)) => {}
                Ok(Err(e)) => return Err(e),
                Err(_) => {
                    tracing::debug!("request body stalled; closing the connection");
                    return Ok(false);
                }
            }
        }
        let request = self.buf.split_to(total).freeze();
        let value = |span: Span| span.map(|(a, b)| &request[a..b]);
        let id = request_id::pick(value(head.request_id));
        let body = request.slice(head.len..);
        let answer = {
            let call = call(&self.state, &head, &request, &id, body);
            tokio::pin!(call);
            tokio::select! {
                answer = &mut call => answer,
                () = watch_client(&mut self.conn, &mut self.buf) => return Ok(false),
            }
        };
        match answer {
            Answer::Gateway(GatewayResponse {
                status,
                content_type,
                body,
            }) => {
                let status = StatusCode::from_u16(status).unwrap_or(StatusCode::BAD_GATEWAY);
                start_head(&mut self.out, status, &id, head.keep_alive);
                header(&mut self.out, "content-type", content_type.as_bytes());
                match body {
                    ResponseBody::Full(body) => self.write_whole(&body).await?,
                    ResponseBody::Stream(stream) => {
                        header(&mut self.out, "cache-control", b"no-cache");
                        if !self.write_stream(stream).await? {
                            return Ok(false);
                        }
                    }
                }
            }
            Answer::Rendered(resp) => {
                let (parts, body) = resp.into_parts();
                // Rendered errors are small JSON documents, complete at once.
                let body = axum::body::to_bytes(body, usize::MAX)
                    .await
                    .map_err(io::Error::other)?;
                start_head(&mut self.out, parts.status, &id, head.keep_alive);
                for (name, value) in &parts.headers {
                    header(&mut self.out, name.as_str(), value.as_bytes());
                }
                self.write_whole(&body).await?;
            }
        }
        Ok(head.keep_alive)
    }

    /// Ends the head with the length and writes head and body in one call.
    async fn write_whole(&mut self, body: &[u8]) -> io::Result<()> {
        header(
            &mut self.out,
            "content-length",
            itoa::Buffer::new().format(body.len()).as_bytes(),
        );
        self.out.extend_from_slice(b"\r\n");
        self.out.extend_from_slice(body);
        self.flush().await
    }

    /// Writes the head, then every piece of the stream as a chunk as soon as it comes: what
    /// the stream has ready at once (the head and the first events, or a whole replayed
    /// answer) goes out in one write, and nothing ever waits for more. False when the answer
    /// could not be completed (the client left, the stream failed): the connection is then
    /// closed, which tells the client the answer is cut short.
    async fn write_stream(&mut self, mut stream: berth_gateway::BodyStream) -> io::Result<bool> {
        header(&mut self.out, "transfer-encoding", b"chunked");
        self.out.extend_from_slice(b"\r\n");
        let mut waited = None;
        loop {
            let next = match waited.take() {
                Some(next) => Poll::Ready(next),
                None => std::future::poll_fn(|cx| Poll::Ready(stream.poll_next_unpin(cx))).await,
            };
            match next {
                Poll::Ready(Some(Ok(piece))) => {
                    if !piece.is_empty() {
                        let mut size = [0u8; 16];
                        self.out.extend_from_slice(hex(piece.len(), &mut size));
                        self.out.extend_from_slice(b"\r\n");
                        self.out.extend_from_slice(&piece);
                        self.out.extend_from_slice(b"\r\n");
                    }
                    if self.out.len() < MAX_COALESCED {
                        continue;
                    }
                }
                Poll::Ready(Some(Err(e))) => {
                    tracing::warn!(error = %e, "stream to the client broke off");
                    self.flush().await?;
                    return Ok(false);
                }
                Poll::Ready(None) => {
                    self.out.extend_from_slice(b"0\r\n\r\n");
                    self.flush().await?;
                    return Ok(true);
                }
                Poll::Pending => {}
            }
            self.flush().await?;
            waited = Some(tokio::select! {
                next = stream.next() => next,
                () = watch_client(&mut self.conn, &mut self.buf) => return Ok(false),
            });
        }
    }

    /// Writes what `out` holds.
    async fn flush(&mut self) -> io::Result<()> {
        if self.out.is_empty() {
            return Ok(());
        }
        let written = self.conn.write_all(&self.out).await;
        self.out.clear();
        written
    }

    /// Gives the connection, with what was read of it, to hyper and the router.
    async fn hand_over(self, router: Router) {
        let io = TokioIo::new(Replay {
            head: self.buf.freeze(),
            conn: self.conn,
        });
        let served = hyper::server::conn::http1::Builder::new()
            .timer(TokioTimer::new())
            .header_read_timeout(self.timeouts.head)
            .serve_connection(io, TowerToHyperService::new(router))
            .with_upgrades();
        tokio::pin!(served);
        let result = tokio::select! {
            r = served.as_mut() => r,
            () = self.shutdown.cancelled() => {
                served.as_mut().graceful_shutdown();
                served.await
            }
        };
        if let Err(e) = result {
            tracing::debug!(error = %e, "connection ended with an error");
        }
    }
}

/// Calls the handler's logic for a short-lane request.
async fn call(state: &AppState, head: &Head, request: &Bytes, id: &str, body: Bytes) -> Answer {
    let value = |span: Span| span.map(|(a, b)| &request[a..b]);
    let caller = auth::authenticate_raw(value(head.authorization), value(head.workspace), state);
    match head.route {
        Route::Chat => {
            let caller = match caller.await {
                Ok(c) => c,
                Err(e) => return Answer::Rendered(compatible::auth_error(e).into_response()),
            };
            match state
                .gateway
                .chat_completions(&caller.workspace_id, body)
                .await
            {
                Ok(r) => Answer::Gateway(r),
                Err(e) => Answer::Rendered(
                    compatible::OpenAiApiError(inference::api_error(e)).into_response(),
                ),
            }
        }
        Route::Native => {
            // The native envelope carries the request id.
            let render = |e: crate::error::ApiError| {
                Answer::Rendered(CURRENT_REQUEST_ID.sync_scope(id.to_owned(), || e.into_response()))
            };
            let caller = match caller.await {
                Ok(c) => c,
                Err(e) => return render(e),
            };
            let sse = native::sse_enabled(value(head.sse));
            match state
                .gateway
                .generation(&caller.workspace_id, id, sse, body)
                .await
            {
                Ok(r) => Answer::Gateway(r),
                Err(e) => render(inference::api_error(e)),
            }
        }
    }
}

/// Completes when the client has closed the connection (or it failed). Bytes it sends
/// meanwhile are kept in `buf` for the next request.
async fn watch_client(conn: &mut TcpStream, buf: &mut BytesMut) {
    loop {
        if buf.len() >= MAX_PIPELINED {
            return std::future::pending().await;
        }
        buf.reserve(1024);
        match conn.read_buf(buf).await {
            Ok(0) | Err(_) => return,
            Ok(_) => {}
        }
    }
}

/// Writes the status line and the headers every answer has.
fn start_head(out: &mut Vec<u8>, status: StatusCode, id: &str, keep_alive: bool) {
    out.extend_from_slice(b"HTTP/1.1 ");
    out.extend_from_slice(status.as_str().as_bytes());
    out.push(b' ');
    out.extend_from_slice(status.canonical_reason().unwrap_or("").as_bytes());
    out.extend_from_slice(b"\r\n");
    header(out, request_id::HEADER, id.as_bytes());
    DATE.with(|d| header(out, "date", &d.now()));
    if !keep_alive {
        header(out, "connection", b"close");
    }
}

fn header(out: &mut Vec<u8>, name: &str, value: &[u8]) {
    out.extend_from_slice(name.as_bytes());
    out.extend_from_slice(b": ");
    out.extend_from_slice(value);
    out.extend_from_slice(b"\r\n");
}

fn hex(mut n: usize, buf: &mut [u8; 16]) -> &[u8] {
    let mut at = buf.len();
    loop {
        at -= 1;
        buf[at] = b"0123456789abcdef"[n % 16];
        n /= 16;
        if n == 0 {
            return &buf[at..];
        }
    }
}

/// The `Date` header, formatted once a second per thread.
struct CachedDate {
    cell: std::cell::Cell<(u64, [u8; 29])>,
}

thread_local! {
    static DATE: CachedDate = const { CachedDate { cell: std::cell::Cell::new((0, [0; 29])) } };
}

impl CachedDate {
    fn now(&self) -> [u8; 29] {
        let now = SystemTime::now();
        let secs = now.duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs());
        let (at, text) = self.cell.get();
        if at == secs && secs != 0 {
            return text;
        }
        let mut text = [0u8; 29];
        let formatted = httpdate::fmt_http_date(now);
        if formatted.len() == text.len() {
            text.copy_from_slice(formatted.as_bytes());
        }
        self.cell.set((secs, text));
        text
    }
}

/// A socket with bytes already read from it put back in front.
struct Replay {
    head: Bytes,
    conn: TcpStream,
}

impl AsyncRead for Replay {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        if !self.head.is_empty() {
            let n = self.head.len().min(buf.remaining());
            buf.put_slice(&self.head.split_to(n));
            return Poll::Ready(Ok(()));
        }
        Pin::new(&mut self.conn).poll_read(cx, buf)
    }
}

impl AsyncWrite for Replay {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.conn).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.conn).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.conn.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.conn).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.conn).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests;

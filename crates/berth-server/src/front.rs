//! The listener of `berth serve`: HTTP/1.1 connections, with a short lane for inference calls.
//!
//! Every connection starts here. While its requests are inference calls that need nothing
//! unusual (`POST` of a chat or generation body with a `Content-Length`, HTTP/1.1), this module
//! serves them itself: it parses the head with `httparse`, authenticates, reads the body, calls
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
//!
//! Clients get bounded resources ([`Limits`], the `[server]` settings): a cap on open
//! connections (at the cap new ones wait in the accept queue, so berth keeps serving the ones it
//! has and takes more as they close), an idle timeout, one deadline for a request's head and
//! body, a write timeout, TCP keepalive. The key is checked before any of a body is read or
//! `100 Continue` sent. A connection is closed by sending FIN and discarding, bounded, what the
//! client still sends ([`io_util::linger`]), so a client that writes its whole body before
//! reading still reads an early answer. On shutdown, requests under way have
//! `limits.shutdown_grace` to finish; then every connection is closed.

use std::io;
use std::sync::Arc;
use std::task::Poll;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::Router;
use berth_gateway::{GatewayResponse, ResponseBody};
use bytes::{Bytes, BytesMut};
use futures::StreamExt;
use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::service::TowerToHyperService;
use tokio::io::AsyncReadExt;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::Semaphore;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::auth::{self, Caller};
use crate::request_id::{self, CURRENT_REQUEST_ID};
use crate::routes::inference::{self, compatible};
use crate::routes::router;
use crate::state::AppState;

mod head;
mod io_util;
mod limits;

use head::{parse, Head, Parsed, Route, Span};
use io_util::{linger, Replay, Timer};
pub use limits::{default_max_connections, raise_fd_limit, Limits};

#[doc(hidden)]
pub use head::check_parse;

/// Read buffer of a connection.
const READ_CHUNK: usize = 8 * 1024;
/// Bytes of pipelined requests kept while a call is in flight; beyond it the client is no
/// longer watched until the answer is written.
const MAX_PIPELINED: usize = 64 * 1024;
/// Bytes of a stream gathered into one write when they are all ready at once.
const MAX_COALESCED: usize = 64 * 1024;
/// A request larger than this leaves its connection with a fresh read buffer, so an idle
/// connection never keeps a large body's memory.
const MAX_KEPT_REQUEST: usize = 64 * 1024;
/// The answer buffer is given back when it grew beyond this.
const MAX_KEPT_ANSWER: usize = 256 * 1024;

/// Serves `state`'s routes on `listener` until `shutdown` is cancelled, with the default
/// [`Limits`]; see [`serve_with`].
pub async fn serve(
    listener: TcpListener,
    state: AppState,
    shutdown: CancellationToken,
) -> io::Result<()> {
    serve_with(listener, state, shutdown, Limits::default()).await
}

/// Serves `state`'s routes on `listener` until `shutdown` is cancelled, then stops accepting,
/// lets every connection finish the request it is on for up to `limits.shutdown_grace`, closes
/// what is left, and returns.
///
/// At most `limits.max_connections` connections are open; more wait in the accept queue. A
/// connection without a request under way is closed after `limits.idle`; a request must be
/// whole (head and body) within `limits.request` of its first byte; a write that the client
/// does not take within `limits.write` ends the connection.
pub async fn serve_with(
    listener: TcpListener,
    state: AppState,
    shutdown: CancellationToken,
    limits: Limits,
) -> io::Result<()> {
    let request_timeout = limits.request;
    let router = router(state.clone()).layer(axum::middleware::from_fn(move |req, next| {
        io_util::body_deadline(request_timeout, req, next)
    }));
    let connections = TaskTracker::new();
    // Cancelled once the grace after `shutdown` is over: what is still open is closed.
    let close_all = CancellationToken::new();
    let permits = Arc::new(Semaphore::new(limits.max_connections.max(1)));
    let mut at_cap = false;
    loop {
        let permit = match permits.clone().try_acquire_owned() {
            Ok(p) => p,
            Err(_) => {
                if !at_cap {
                    at_cap = true;
                    tracing::warn!(
                        max_connections = limits.max_connections,
                        "connection limit reached; new connections wait until others close"
                    );
                }
                tokio::select! {
                    biased;
                    _ = shutdown.cancelled() => break,
                    p = permits.clone().acquire_owned() => match p {
                        Ok(p) => p,
                        Err(_) => break,
                    },
                }
            }
        };
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
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
        };
        if at_cap && permits.available_permits() > 0 {
            at_cap = false;
            tracing::info!("below the connection limit again");
        }
        // Streamed events are small writes that must leave at once.
        let _ = conn.set_nodelay(true);
        let keepalive = socket2::TcpKeepalive::new()
            .with_time(limits.keepalive)
            .with_interval(Duration::from_secs(10))
            .with_retries(3);
        let _ = socket2::SockRef::from(&conn).set_tcp_keepalive(&keepalive);
        let connection = Connection {
            conn,
            buf: BytesMut::new(),
            out: Vec::new(),
            state: state.clone(),
            shutdown: shutdown.clone(),
            limits,
            timer: io_util::timer(),
            request_deadline: None,
        };
        let router = router.clone();
        let close_all = close_all.clone();
        connections.spawn(async move {
            let _permit = permit;
            tokio::select! {
                biased;
                () = close_all.cancelled() => {}
                () = connection.run(router) => {}
            }
        });
    }
    drop(listener);
    connections.close();
    if tokio::time::timeout(limits.shutdown_grace, connections.wait())
        .await
        .is_err()
    {
        tracing::info!(
            open = connections.len(),
            "closing connections still busy after the shutdown grace"
        );
        close_all.cancel();
        connections.wait().await;
    }
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
    limits: Limits,
    /// The connection's one timer: the idle, request, write and linger deadlines in turn.
    timer: Timer,
    /// When the request under way must be whole (set by its first byte).
    request_deadline: Option<Instant>,
}

impl Connection {
    async fn run(mut self, router: Router) {
        loop {
            let head = match parse(&self.buf) {
                Parsed::Short(head) => head,
                Parsed::Other => return self.hand_over(router).await,
                Parsed::Partial => {
                    if !self.read_more().await {
                        break;
                    }
                    continue;
                }
            };
            match self.serve_one(head).await {
                Ok(true) if !self.shutdown.is_cancelled() => {}
                _ => break,
            }
        }
        linger(self.conn, self.buf, &mut self.timer).await;
    }

    /// Reads more of the next request; false when the connection should close (the client
    /// closed it, it failed, it was idle or its request late, or the server is stopping while
    /// no request is under way).
    async fn read_more(&mut self) -> bool {
        if self.buf.capacity() - self.buf.len() < 1024 {
            self.buf.reserve(READ_CHUNK);
        }
        let idle = self.buf.is_empty();
        let deadline = match self.request_deadline {
            Some(at) => at,
            None if idle => Instant::now() + self.limits.idle,
            None => *self
                .request_deadline
                .insert(Instant::now() + self.limits.request),
        };
        self.timer.as_mut().reset(deadline);
        let read = tokio::select! {
            biased;
            _ = self.shutdown.cancelled(), if idle => return false,
            () = self.timer.as_mut() => {
                tracing::debug!(idle, "connection idle or request not complete in time; closing it");
                return false;
            }
            n = self.conn.read_buf(&mut self.buf) => n,
        };
        let more = matches!(read, Ok(n) if n > 0);
        if more && idle {
            self.request_deadline = Some(Instant::now() + self.limits.request);
        }
        more
    }

    /// Serves one short-lane request; true when the connection can carry another.
    ///
    /// The key is checked as soon as the head is in: a caller without a valid one is answered
    /// before any of its body is read or invited with `100 Continue`.
    async fn serve_one(&mut self, head: Head) -> io::Result<bool> {
        let total = head.len + head.body_len;
        let id = request_id::pick(span_of(&self.buf, head.request_id));
        let caller = auth::authenticate_raw(
            span_of(&self.buf, head.authorization),
            span_of(&self.buf, head.workspace),
            &self.state,
        )
        .await;
        let caller = match caller {
            Ok(caller) => caller,
            Err(e) => {
                let resp = render(head.route, &id, e);
                // A body already here is skipped and the connection goes on; one still to come
                // is not waited for.
                let whole = self.buf.len() >= total;
                if whole {
                    self.consume(total);
                }
                self.write_rendered(resp, &id, head.keep_alive && whole)
                    .await?;
                return Ok(head.keep_alive && whole);
            }
        };
        if head.expect_continue && self.buf.len() < total {
            io_util::write_all(
                &mut self.conn,
                b"HTTP/1.1 100 Continue\r\n\r\n",
                &mut self.timer,
                self.limits.write,
            )
            .await?;
        }
        if self.buf.len() < total {
            let deadline = *self
                .request_deadline
                .get_or_insert_with(|| Instant::now() + self.limits.request);
            self.timer.as_mut().reset(deadline);
        }
        while self.buf.len() < total {
            self.buf.reserve(total - self.buf.len());
            let read = tokio::select! {
                biased;
                () = self.timer.as_mut() => {
                    tracing::debug!("request body not complete in time; closing the connection");
                    return Ok(false);
                }
                n = self.conn.read_buf(&mut self.buf) => n?,
            };
            if read == 0 {
                return Ok(false);
            }
        }
        let request = self.consume(total);
        let body = request.slice(head.len..);
        let answer = {
            let call = call(&self.state, &head, &request, &id, caller, body);
            tokio::pin!(call);
            tokio::select! {
                answer = &mut call => answer,
                () = watch_client(&mut self.conn, &mut self.buf) => return Ok(false),
            }
        };
        drop(request);
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
            Answer::Rendered(resp) => self.write_rendered(resp, &id, head.keep_alive).await?,
        }
        Ok(head.keep_alive)
    }

    /// Takes the request of `len` bytes off the front of the buffer; the request's deadline
    /// is over. After a large request the rest moves to a small fresh buffer.
    fn consume(&mut self, len: usize) -> Bytes {
        self.request_deadline = None;
        let request = self.buf.split_to(len).freeze();
        if len > MAX_KEPT_REQUEST {
            let rest = std::mem::take(&mut self.buf);
            self.buf = BytesMut::with_capacity(READ_CHUNK.max(rest.len()));
            self.buf.extend_from_slice(&rest);
        }
        request
    }

    /// Writes an answer rendered by the routes' error types.
    async fn write_rendered(
        &mut self,
        resp: Response,
        id: &str,
        keep_alive: bool,
    ) -> io::Result<()> {
        let (parts, body) = resp.into_parts();
        // Rendered errors are small JSON documents, complete at once.
        let body = axum::body::to_bytes(body, usize::MAX)
            .await
            .map_err(io::Error::other)?;
        start_head(&mut self.out, parts.status, id, keep_alive);
        for (name, value) in &parts.headers {
            header(&mut self.out, name.as_str(), value.as_bytes());
        }
        self.write_whole(&body).await
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

    /// Writes what `out` holds, within the write timeout.
    async fn flush(&mut self) -> io::Result<()> {
        if self.out.is_empty() {
            return Ok(());
        }
        let written = io_util::write_all(
            &mut self.conn,
            &self.out,
            &mut self.timer,
            self.limits.write,
        )
        .await;
        self.out.clear();
        if self.out.capacity() > MAX_KEPT_ANSWER {
            self.out = Vec::new();
        }
        written
    }

    /// Gives the connection, with what was read of it, to hyper and the router; closes it
    /// when hyper is done with it.
    async fn hand_over(self, router: Router) {
        // The request handed over began with its first byte, read here.
        let begun = self
            .request_deadline
            .map_or_else(Instant::now, |d| d - self.limits.request);
        let start = io_util::RequestStart::new(begun);
        let io = TokioIo::new(Replay {
            head: self.buf.freeze(),
            conn: self.conn,
            timer: self.timer,
            write_timeout: self.limits.write,
            waiting: false,
            start: start.clone(),
        });
        let service = tower::ServiceExt::map_request(
            router,
            move |mut req: http::Request<hyper::body::Incoming>| {
                req.extensions_mut().insert(start.clone());
                req
            },
        );
        // hyper's header timer runs from the end of one answer to the end of the next head, so
        // it is the idle timeout too; a request must be whole within the request timeout of its
        // first byte (`io_util::body_deadline`).
        let mut served = hyper::server::conn::http1::Builder::new()
            .timer(TokioTimer::new())
            .header_read_timeout(self.limits.idle)
            .serve_connection(io, TowerToHyperService::new(service))
            .with_upgrades();
        let result = tokio::select! {
            r = &mut served => r,
            () = self.shutdown.cancelled() => {
                std::pin::Pin::new(&mut served).graceful_shutdown();
                (&mut served).await
            }
        };
        if let Err(e) = result {
            tracing::debug!(error = %e, "connection ended with an error");
        }
        if let Some(parts) = served.into_parts() {
            let Replay {
                conn, mut timer, ..
            } = parts.io.into_inner();
            linger(conn, BytesMut::new(), &mut timer).await;
        }
    }
}

/// The bytes of a header value found by the parser.
fn span_of(buf: &[u8], span: Span) -> Option<&[u8]> {
    span.map(|(a, b)| &buf[a..b])
}

/// An authentication failure in the envelope of the route.
fn render(route: Route, id: &str, e: crate::error::ApiError) -> Response {
    match route {
        Route::Chat => compatible::auth_error(e).into_response(),
        // The native envelope carries the request id.
        Route::Native => CURRENT_REQUEST_ID.sync_scope(id.to_owned(), || e.into_response()),
    }
}

/// Calls the handler's logic for a short-lane request.
async fn call(
    state: &AppState,
    head: &Head,
    request: &Bytes,
    id: &str,
    caller: Caller,
    body: Bytes,
) -> Answer {
    let answered = match head.route {
        Route::Chat => {
            return match state
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
            let sse = inference::native::sse_enabled(span_of(request, head.sse));
            state
                .gateway
                .generation(&caller.workspace_id, id, sse, body)
                .await
        }
    };
    match answered {
        Ok(r) => Answer::Gateway(r),
        Err(e) => Answer::Rendered(render(head.route, id, inference::api_error(e))),
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

#[cfg(test)]
mod tests;

//! The replica client: HTTP/1.1 over pooled keep-alive connections, written and read by the
//! calling task itself.
//!
//! A general client (hyper's pooled one) runs each connection as a task of its own and hands
//! the request, the response head and every body chunk to it over channels: several task
//! hand-offs a call, which on one core cost more than the proxying itself, and one more hop
//! between a streamed token and the client (docs/BENCHMARKS.md). Here the caller takes an idle
//! connection of the replica, writes the request in one call and parses the head with
//! `httparse` (hyper's own parser). A whole answer ([`post`]) is then read to its end; a
//! streamed one ([`post_streaming`]) is a [`BodyReader`] that decodes the body as whoever polls
//! it reads the socket, so each chunk reaches the client with no hand-off. Either way the
//! connection goes back to the pool once its answer has been read cleanly.
//!
//! Only what a replica may answer is supported: HTTP/1.x, a `Content-Length` of digits, chunked
//! (and nothing else) or close-delimited body, keep-alive unless `Connection: close`. Anything
//! else, a `Content-Length` with a `Transfer-Encoding` included, is a protocol error, never a
//! panic. Every wait on a replica is bounded by the read timeout (no bytes for that long fails
//! the call), and so is every buffer: the head, a whole answer, a streamed body.
//!
//! Each connection carries its own timer, pooled with it: a call arms it by resetting it, an
//! atomic store when the new deadline is later, so the fast path sets up no timer of its own.

use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::{Arc, Mutex, OnceLock};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use bytes::{Buf, Bytes, BytesMut};
use futures::{Future, Stream, StreamExt};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::time::Sleep;

/// Longest response head accepted.
const MAX_HEAD: usize = 16 * 1024;
/// Largest non-streamed answer accepted (a chat completion is a few KiB).
const MAX_BODY: usize = 64 * 1024 * 1024;
/// Idle connections kept per replica; more are closed when they come back.
const MAX_IDLE: usize = 512;
/// Headers read from a response head.
const MAX_HEADERS: usize = 64;
/// Interim (1xx) answers skipped before the real one; more is a protocol error.
const MAX_INTERIM: usize = 8;

/// A connection to a replica, with its timer.
#[derive(Debug)]
pub(crate) struct Conn {
    stream: TcpStream,
    timer: Pin<Box<Sleep>>,
    /// Whether the timer runs for the wait under way (the streamed body arms it once per wait).
    armed: bool,
}

impl Conn {
    fn new(stream: TcpStream) -> Self {
        Self {
            stream,
            timer: Box::pin(tokio::time::sleep(Duration::from_secs(86_400))),
            armed: false,
        }
    }

    /// Sets the timer to `timeout` from now.
    fn arm(&mut self, timeout: Duration) {
        self.timer
            .as_mut()
            .reset(tokio::time::Instant::now() + timeout);
    }
}

fn timed_out(addr: SocketAddr, what: &str) -> SendError {
    SendError::Io {
        addr,
        source: io::Error::new(io::ErrorKind::TimedOut, what.to_owned()),
    }
}

/// Why a call to a replica failed.
#[derive(Debug, thiserror::Error)]
pub(crate) enum SendError {
    /// Nothing reached the replica: the connection was refused or not accepted in time.
    #[error("cannot connect to {addr}: {source}")]
    Connect { addr: SocketAddr, source: io::Error },
    /// The request was sent (or may have been) and reading the answer failed.
    #[error("the call to {addr} failed: {source}")]
    Io { addr: SocketAddr, source: io::Error },
    /// The replica answered something that is not HTTP/1.x as this client reads it.
    #[error("{addr} answered malformed HTTP: {reason}")]
    Protocol { addr: SocketAddr, reason: String },
}

impl SendError {
    /// True when the request cannot have reached the replica, so another may be tried.
    pub fn is_connect(&self) -> bool {
        matches!(self, Self::Connect { .. })
    }
}

/// A whole answer: status and body.
#[derive(Debug)]
pub(crate) struct Answer {
    pub status: u16,
    pub body: Bytes,
}

/// Idle keep-alive connections to one replica (it lives in the replica's [`crate::Backend`], so
/// connections go away with the replica).
#[derive(Debug, Default)]
pub(crate) struct IdleConns {
    conns: Mutex<Vec<(Conn, Instant)>>,
    /// The request head up to the `Content-Length` value, for the path first called: the same
    /// for every call to a replica, so formatted (the address above all) once.
    head: OnceLock<(String, Box<[u8]>)>,
    /// The replica's secret, sent as a bearer token with every call; empty for none.
    secret: Box<str>,
}

impl IdleConns {
    /// The pool of a replica that takes `secret` as its bearer token (empty: none).
    pub(crate) fn with_secret(secret: &str) -> Self {
        Self {
            secret: secret.into(),
            ..Self::default()
        }
    }

    /// An idle connection that the replica has not closed, if any.
    fn take(&self, idle_timeout: Duration) -> Option<Conn> {
        let now = Instant::now();
        let mut conns = self.conns.lock().unwrap_or_else(|e| e.into_inner());
        while let Some((conn, since)) = conns.pop() {
            if now.duration_since(since) < idle_timeout && still_open(&conn.stream) {
                return Some(conn);
            }
        }
        None
    }

    /// Appends the request head for `path` on the replica at `addr`, up to the
    /// `Content-Length` value.
    fn write_head(&self, addr: SocketAddr, path: &str, out: &mut Vec<u8>) {
        let (cached_path, head) = self
            .head
            .get_or_init(|| (path.to_owned(), request_head(addr, path, &self.secret)));
        if cached_path == path {
            out.extend_from_slice(head);
        } else {
            out.extend_from_slice(&request_head(addr, path, &self.secret));
        }
    }

    fn put(&self, mut conn: Conn) {
        conn.armed = false;
        let mut conns = self.conns.lock().unwrap_or_else(|e| e.into_inner());
        if conns.len() < MAX_IDLE {
            conns.push((conn, Instant::now()));
        }
    }
}

/// An idle connection must have nothing to read: readable means the replica closed it (or sent
/// something unasked), and it is not reused. This reads the readiness the reactor last saw for
/// the socket, without a system call.
fn still_open(conn: &TcpStream) -> bool {
    let mut cx = Context::from_waker(std::task::Waker::noop());
    conn.poll_read_ready(&mut cx).is_pending()
}

/// Settings of [`post`].
#[derive(Debug, Clone, Copy)]
pub(crate) struct Settings {
    pub connect_timeout: Duration,
    pub idle_timeout: Duration,
    /// Longest wait for the replica: to take the request, or to send more of its answer.
    pub read_timeout: Duration,
}

/// `POST path` with a JSON body to the replica at `addr`, on one of its idle connections or a
/// new one; the whole answer is read before returning.
///
/// A request is never sent twice: a pooled connection is only used while the reactor has seen
/// nothing on it, and any failure after the request was written is final.
pub(crate) async fn post(
    idle: &IdleConns,
    addr: SocketAddr,
    path: &str,
    body: &[u8],
    settings: Settings,
) -> Result<Answer, SendError> {
    let (mut conn, buf, head) = send(idle, addr, path, body, settings).await?;
    let (answer, keep_alive) = read_body(&mut conn, buf, head, addr, settings.read_timeout).await?;
    if keep_alive {
        idle.put(conn);
    }
    Ok(answer)
}

/// Like [`post`], but returns once the response head is in; the body is read as the returned
/// reader is polled, and its connection goes back to `idle` when the body has been read to
/// its end.
pub(crate) async fn post_streaming(
    idle: &Arc<IdleConns>,
    addr: SocketAddr,
    path: &str,
    body: &[u8],
    settings: Settings,
) -> Result<Streaming, SendError> {
    let (mut conn, buf, head) = send(idle, addr, path, body, settings).await?;
    conn.armed = false;
    let state = BodyState::of(&head.framing);
    let mut body = BodyReader {
        conn: Some(conn),
        buf,
        state,
        keep_alive: head.keep_alive,
        idle: idle.clone(),
        addr,
        read: 0,
        read_timeout: settings.read_timeout,
    };
    if matches!(body.state, BodyState::Done) {
        body.finish();
    }
    Ok(Streaming {
        status: head.status,
        body,
    })
}

/// Takes or opens a connection to `addr`, writes the request on it and reads the response
/// head; what was read after the head is in the returned buffer.
async fn send(
    idle: &IdleConns,
    addr: SocketAddr,
    path: &str,
    body: &[u8],
    settings: Settings,
) -> Result<(Conn, BytesMut, Head), SendError> {
    let mut conn = match idle.take(settings.idle_timeout) {
        Some(conn) => conn,
        None => connect(addr, settings.connect_timeout).await?,
    };
    let mut request = Vec::with_capacity(160 + body.len());
    idle.write_head(addr, path, &mut request);
    request.extend_from_slice(itoa::Buffer::new().format(body.len()).as_bytes());
    request.extend_from_slice(b"\r\n\r\n");
    request.extend_from_slice(body);
    conn.arm(settings.read_timeout);
    tokio::select! {
        biased;
        written = conn.stream.write_all(&request) => {
            written.map_err(|source| SendError::Io { addr, source })?;
        }
        () = conn.timer.as_mut() => return Err(timed_out(addr, "the replica did not take the request in time")),
    }
    let mut buf = BytesMut::with_capacity(8 * 1024);
    let head = read_head(&mut conn, &mut buf, addr, settings.read_timeout).await?;
    Ok((conn, buf, head))
}

/// `POST path` to `addr` with a JSON body (and the replica's secret as a bearer token), up to
/// the `Content-Length` value.
fn request_head(addr: SocketAddr, path: &str, secret: &str) -> Box<[u8]> {
    let auth = if secret.is_empty() {
        String::new()
    } else {
        format!("authorization: Bearer {secret}\r\n")
    };
    format!("POST {path} HTTP/1.1\r\nhost: {addr}\r\n{auth}content-type: application/json\r\ncontent-length: ")
        .into_bytes()
        .into_boxed_slice()
}

async fn connect(addr: SocketAddr, timeout: Duration) -> Result<Conn, SendError> {
    let err = |source| SendError::Connect { addr, source };
    let conn = tokio::time::timeout(timeout, TcpStream::connect(addr))
        .await
        .map_err(|_| err(io::Error::new(io::ErrorKind::TimedOut, "connect timed out")))?
        .map_err(err)?;
    conn.set_nodelay(true).map_err(err)?;
    Ok(Conn::new(conn))
}

/// How the body of an answer ends.
#[derive(Debug, PartialEq, Eq)]
enum Framing {
    Length(usize),
    Chunked,
    UntilClose,
}

/// A parsed response head.
#[derive(Debug)]
struct Head {
    status: u16,
    framing: Framing,
    keep_alive: bool,
    len: usize,
}

/// Parses a response head at the start of `buf`; `None` while incomplete.
fn parse_head(buf: &[u8], addr: SocketAddr) -> Result<Option<Head>, SendError> {
    let protocol = |reason: String| SendError::Protocol { addr, reason };
    let mut headers = [httparse::EMPTY_HEADER; MAX_HEADERS];
    let mut resp = httparse::Response::new(&mut headers);
    let len = match resp.parse(buf) {
        Ok(httparse::Status::Complete(n)) => n,
        Ok(httparse::Status::Partial) => return Ok(None),
        Err(e) => return Err(protocol(format!("bad response head: {e}"))),
    };
    let status = resp.code.unwrap_or(0);
    if !(100..600).contains(&status) {
        return Err(protocol(format!("bad status {status}")));
    }
    let mut keep_alive = resp.version == Some(1);
    let mut length = None;
    let mut chunked = false;
    for h in resp.headers.iter() {
        if h.name.eq_ignore_ascii_case("content-length") {
            let v = parse_length(h.value).ok_or_else(|| protocol("bad content-length".into()))?;
            if length.is_some_and(|l| l != v) {
                return Err(protocol("conflicting content-length".into()));
            }
            length = Some(v);
        } else if h.name.eq_ignore_ascii_case("transfer-encoding") {
            // Only `chunked`, once: a replica has no reason to send anything else.
            if chunked || !h.value.trim_ascii().eq_ignore_ascii_case(b"chunked") {
                return Err(protocol("unsupported transfer-encoding".into()));
            }
            chunked = true;
        } else if h.name.eq_ignore_ascii_case("connection") {
            let close = h
                .value
                .split(|&b| b == b',')
                .any(|t| t.trim_ascii().eq_ignore_ascii_case(b"close"));
            let keep = h
                .value
                .split(|&b| b == b',')
                .any(|t| t.trim_ascii().eq_ignore_ascii_case(b"keep-alive"));
            if close {
                keep_alive = false;
            } else if keep {
                keep_alive = true;
            }
        }
    }
    if chunked && length.is_some() {
        return Err(protocol("both content-length and transfer-encoding".into()));
    }
    let framing = if (100..200).contains(&status) || status == 204 || status == 304 {
        Framing::Length(0)
    } else if chunked {
        Framing::Chunked
    } else if let Some(l) = length {
        if l > MAX_BODY {
            return Err(protocol(format!("answer of {l} bytes is over the limit")));
        }
        Framing::Length(l)
    } else {
        keep_alive = false;
        Framing::UntilClose
    };
    Ok(Some(Head {
        status,
        framing,
        keep_alive,
        len,
    }))
}

/// A `Content-Length` value: 1 to 19 digits, nothing else (no sign, no list).
fn parse_length(v: &[u8]) -> Option<usize> {
    let v = v.trim_ascii();
    if v.is_empty() || v.len() > 19 || !v.iter().all(u8::is_ascii_digit) {
        return None;
    }
    std::str::from_utf8(v).ok()?.parse().ok()
}

/// Reads more of the answer into `buf`, waiting at most `timeout`; `Ok(false)` at end of
/// stream.
async fn fill(
    conn: &mut Conn,
    buf: &mut BytesMut,
    addr: SocketAddr,
    timeout: Duration,
) -> Result<bool, SendError> {
    if buf.capacity() - buf.len() < 4096 {
        buf.reserve(16 * 1024);
    }
    conn.arm(timeout);
    let n = tokio::select! {
        biased;
        n = conn.stream.read_buf(buf) => n.map_err(|source| SendError::Io { addr, source })?,
        () = conn.timer.as_mut() => return Err(timed_out(addr, "the replica sent nothing in time")),
    };
    Ok(n > 0)
}

/// Reads more of a body that is not complete yet; the end of the stream is an error.
async fn more_body(
    conn: &mut Conn,
    buf: &mut BytesMut,
    addr: SocketAddr,
    timeout: Duration,
) -> Result<(), SendError> {
    if fill(conn, buf, addr, timeout).await? {
        Ok(())
    } else {
        Err(cut_short(
            addr,
            "the replica closed the connection mid-body",
        ))
    }
}

fn cut_short(addr: SocketAddr, what: &str) -> SendError {
    SendError::Io {
        addr,
        source: io::Error::new(io::ErrorKind::UnexpectedEof, what.to_owned()),
    }
}

/// Reads a response head (interim answers skipped) into `buf` and takes it off; what follows
/// it stays in `buf`.
async fn read_head(
    conn: &mut Conn,
    buf: &mut BytesMut,
    addr: SocketAddr,
    timeout: Duration,
) -> Result<Head, SendError> {
    let mut interim = 0;
    let head = loop {
        match parse_head(buf, addr)? {
            // An interim answer (100 Continue) is skipped; the real one follows.
            Some(h) if (100..200).contains(&h.status) => {
                interim += 1;
                if interim > MAX_INTERIM {
                    return Err(SendError::Protocol {
                        addr,
                        reason: "too many interim answers".into(),
                    });
                }
                buf.advance(h.len);
                continue;
            }
            Some(h) => break h,
            None if buf.len() > MAX_HEAD => {
                return Err(SendError::Protocol {
                    addr,
                    reason: "response head too long".into(),
                })
            }
            None => {}
        }
        if !fill(conn, buf, addr, timeout).await? {
            return Err(cut_short(
                addr,
                if buf.is_empty() {
                    "the replica closed the connection without answering"
                } else {
                    "the replica closed the connection in the middle of the response head"
                },
            ));
        }
    };
    buf.advance(head.len);
    Ok(head)
}

/// Reads the whole body that follows `head`; the flag says whether the connection can carry
/// another request.
async fn read_body(
    conn: &mut Conn,
    mut buf: BytesMut,
    head: Head,
    addr: SocketAddr,
    timeout: Duration,
) -> Result<(Answer, bool), SendError> {
    let (body, clean) = match head.framing {
        Framing::Length(len) => {
            while buf.len() < len {
                more_body(conn, &mut buf, addr, timeout).await?;
            }
            let body = buf.split_to(len).freeze();
            (body, buf.is_empty())
        }
        Framing::Chunked => read_chunked(conn, &mut buf, addr, timeout).await?,
        Framing::UntilClose => {
            while fill(conn, &mut buf, addr, timeout).await? {
                if buf.len() > MAX_BODY {
                    return Err(SendError::Protocol {
                        addr,
                        reason: "answer over the size limit".into(),
                    });
                }
            }
            (buf.split().freeze(), false)
        }
    };
    let answer = Answer {
        status: head.status,
        body,
    };
    // Bytes after the answer were not asked for: the connection is not reused.
    Ok((answer, head.keep_alive && clean))
}

/// Decodes a chunked body. The flag is false when bytes follow the body.
async fn read_chunked(
    conn: &mut Conn,
    buf: &mut BytesMut,
    addr: SocketAddr,
    timeout: Duration,
) -> Result<(Bytes, bool), SendError> {
    let protocol = |reason: &str| SendError::Protocol {
        addr,
        reason: reason.to_owned(),
    };
    let mut body = BytesMut::new();
    loop {
        let (start, size) = loop {
            match httparse::parse_chunk_size(buf) {
                Ok(httparse::Status::Complete((start, size))) => break (start, size),
                Ok(httparse::Status::Partial) => {
                    if buf.len() > MAX_HEAD {
                        return Err(protocol("chunk size line too long"));
                    }
                    more_body(conn, buf, addr, timeout).await?;
                }
                Err(_) => return Err(protocol("bad chunk size")),
            }
        };
        let size = usize::try_from(size)
            .ok()
            .filter(|s| body.len().saturating_add(*s) <= MAX_BODY)
            .ok_or_else(|| protocol("answer over the size limit"))?;
        buf.advance(start);
        if size == 0 {
            // Trailers (ignored), then the empty line.
            loop {
                if let Some(end) = memchr::memmem::find(buf, b"\r\n") {
                    let line_empty = end == 0;
                    buf.advance(end + 2);
                    if line_empty {
                        return Ok((body.freeze(), buf.is_empty()));
                    }
                    continue;
                }
                if buf.len() > MAX_HEAD {
                    return Err(protocol("trailers too long"));
                }
                more_body(conn, buf, addr, timeout).await?;
            }
        }
        while buf.len() < size + 2 {
            more_body(conn, buf, addr, timeout).await?;
        }
        body.extend_from_slice(&buf[..size]);
        if &buf[size..size + 2] != b"\r\n" {
            return Err(protocol("chunk not followed by CRLF"));
        }
        buf.advance(size + 2);
    }
}

/// A replica's answer whose body is still to be read.
#[derive(Debug)]
pub(crate) struct Streaming {
    pub status: u16,
    pub body: BodyReader,
}

/// Where a [`BodyReader`] is in the body.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum BodyState {
    /// Bytes of a `Content-Length` body still to come.
    Length(usize),
    Chunk(ChunkState),
    UntilClose,
    Done,
}

impl BodyState {
    /// Where a body with this framing starts.
    fn of(framing: &Framing) -> Self {
        match framing {
            Framing::Length(0) => Self::Done,
            Framing::Length(n) => Self::Length(*n),
            Framing::Chunked => Self::Chunk(ChunkState::Size),
            Framing::UntilClose => Self::UntilClose,
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum ChunkState {
    /// Expecting a chunk-size line.
    Size,
    /// Bytes of the current chunk still to come.
    Data(usize),
    /// Expecting the CRLF after a chunk's data.
    DataEnd,
    /// After the last chunk: trailer lines until an empty one.
    Trailers,
}

/// What the bytes in the buffer gave.
enum Step {
    Data(Bytes),
    NeedMore,
    Done,
}

/// The body of a streamed answer, as a stream of data as it arrives. The socket is read by
/// whoever polls it. Read to its end cleanly, the connection goes back to the replica's pool;
/// dropped before, it is closed (a half-read answer cannot carry another request), which tells
/// the replica to stop.
#[derive(Debug)]
pub(crate) struct BodyReader {
    conn: Option<Conn>,
    buf: BytesMut,
    state: BodyState,
    keep_alive: bool,
    idle: Arc<IdleConns>,
    addr: SocketAddr,
    /// Body bytes delivered so far.
    read: usize,
    read_timeout: Duration,
}

impl BodyReader {
    /// Reads the rest of the body (an error answer, a few hundred bytes).
    pub async fn collect(mut self) -> Result<Bytes, SendError> {
        let mut body = BytesMut::new();
        while let Some(piece) = self.next().await {
            body.extend_from_slice(&piece?);
        }
        Ok(body.freeze())
    }

    fn protocol(&self, reason: &str) -> SendError {
        SendError::Protocol {
            addr: self.addr,
            reason: reason.to_owned(),
        }
    }

    /// Takes what it can out of the buffer.
    fn decode(&mut self) -> Result<Step, SendError> {
        loop {
            match self.state {
                BodyState::Done => return Ok(Step::Done),
                BodyState::Length(left) | BodyState::Chunk(ChunkState::Data(left)) => {
                    if self.buf.is_empty() {
                        return Ok(Step::NeedMore);
                    }
                    let n = left.min(self.buf.len());
                    let left = left - n;
                    self.state = match self.state {
                        BodyState::Length(_) if left == 0 => BodyState::Done,
                        BodyState::Length(_) => BodyState::Length(left),
                        _ if left == 0 => BodyState::Chunk(ChunkState::DataEnd),
                        _ => BodyState::Chunk(ChunkState::Data(left)),
                    };
                    return Ok(Step::Data(self.buf.split_to(n).freeze()));
                }
                BodyState::UntilClose => {
                    if self.buf.is_empty() {
                        return Ok(Step::NeedMore);
                    }
                    if self.read.saturating_add(self.buf.len()) > MAX_BODY {
                        return Err(self.protocol("answer over the size limit"));
                    }
                    return Ok(Step::Data(self.buf.split().freeze()));
                }
                BodyState::Chunk(ChunkState::Size) => match httparse::parse_chunk_size(&self.buf) {
                    Ok(httparse::Status::Complete((start, size))) => {
                        self.buf.advance(start);
                        let size = usize::try_from(size)
                            .ok()
                            .filter(|s| self.read.saturating_add(*s) <= MAX_BODY)
                            .ok_or_else(|| self.protocol("answer over the size limit"))?;
                        self.state = BodyState::Chunk(if size == 0 {
                            ChunkState::Trailers
                        } else {
                            ChunkState::Data(size)
                        });
                    }
                    Ok(httparse::Status::Partial) if self.buf.len() > MAX_HEAD => {
                        return Err(self.protocol("chunk size line too long"))
                    }
                    Ok(httparse::Status::Partial) => return Ok(Step::NeedMore),
                    Err(_) => return Err(self.protocol("bad chunk size")),
                },
                BodyState::Chunk(ChunkState::DataEnd) => {
                    if self.buf.len() < 2 {
                        return Ok(Step::NeedMore);
                    }
                    if &self.buf[..2] != b"\r\n" {
                        return Err(self.protocol("chunk not followed by CRLF"));
                    }
                    self.buf.advance(2);
                    self.state = BodyState::Chunk(ChunkState::Size);
                }
                BodyState::Chunk(ChunkState::Trailers) => {
                    match memchr::memmem::find(&self.buf, b"\r\n") {
                        Some(0) => {
                            self.buf.advance(2);
                            self.state = BodyState::Done;
                        }
                        Some(end) => self.buf.advance(end + 2),
                        None if self.buf.len() > MAX_HEAD => {
                            return Err(self.protocol("trailers too long"))
                        }
                        None => return Ok(Step::NeedMore),
                    }
                }
            }
        }
    }

    /// The body has been read: the connection goes back to the pool if it can carry another
    /// request (nothing unasked-for after the answer).
    fn finish(&mut self) {
        self.state = BodyState::Done;
        if let Some(conn) = self.conn.take() {
            if self.keep_alive && self.buf.is_empty() {
                self.idle.put(conn);
            }
        }
    }

    fn fail(&mut self, e: SendError) -> Poll<Option<Result<Bytes, SendError>>> {
        self.state = BodyState::Done;
        self.conn = None;
        Poll::Ready(Some(Err(e)))
    }
}

impl Stream for BodyReader {
    type Item = Result<Bytes, SendError>;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        let this = &mut *self;
        loop {
            match this.decode() {
                Ok(Step::Data(data)) => {
                    this.read += data.len();
                    if this.state == BodyState::Done {
                        this.finish();
                    }
                    return Poll::Ready(Some(Ok(data)));
                }
                Ok(Step::Done) => {
                    this.finish();
                    return Poll::Ready(None);
                }
                Ok(Step::NeedMore) => {}
                Err(e) => return this.fail(e),
            }
            let Some(conn) = this.conn.as_mut() else {
                return Poll::Ready(None);
            };
            if this.buf.capacity() - this.buf.len() < 4096 {
                this.buf.reserve(16 * 1024);
            }
            match tokio_util::io::poll_read_buf(Pin::new(&mut conn.stream), cx, &mut this.buf) {
                Poll::Pending => {
                    // The replica has `read_timeout` from the first wait after each read.
                    if !conn.armed {
                        conn.armed = true;
                        conn.arm(this.read_timeout);
                    }
                    if conn.timer.as_mut().poll(cx).is_pending() {
                        return Poll::Pending;
                    }
                    let e = timed_out(this.addr, "the replica sent nothing in time");
                    return this.fail(e);
                }
                Poll::Ready(Ok(0)) if this.state == BodyState::UntilClose => {
                    this.state = BodyState::Done;
                    this.conn = None;
                    return Poll::Ready(None);
                }
                Poll::Ready(Ok(0)) => {
                    let e = cut_short(this.addr, "the replica closed the connection mid-body");
                    return this.fail(e);
                }
                Poll::Ready(Ok(_)) => conn.armed = false,
                Poll::Ready(Err(source)) => {
                    let e = SendError::Io {
                        addr: this.addr,
                        source,
                    };
                    return this.fail(e);
                }
            }
        }
    }
}

/// Parses `bytes` as a replica's answer, as this client does: the head, then as much of the
/// body as the bytes hold, decoded as a streamed body is. Checks that nothing is read outside
/// the bytes and that the body is never longer than what followed the head. For the fuzz
/// target and the arbitrary-input test; panics on a broken invariant.
pub fn check_response(bytes: &[u8]) {
    let addr = SocketAddr::from(([127, 0, 0, 1], 9));
    let Ok(Some(head)) = parse_head(bytes, addr) else {
        return;
    };
    assert!(head.len <= bytes.len());
    let mut reader = BodyReader {
        conn: None,
        buf: BytesMut::from(&bytes[head.len..]),
        state: BodyState::of(&head.framing),
        keep_alive: head.keep_alive,
        idle: Arc::default(),
        addr,
        read: 0,
        read_timeout: Duration::from_secs(1),
    };
    let rest = bytes.len() - head.len;
    while let Ok(Step::Data(data)) = reader.decode() {
        assert!(!data.is_empty() || reader.state == BodyState::Done);
        reader.read += data.len();
        assert!(reader.read <= rest && reader.read <= MAX_BODY);
    }
}

#[cfg(test)]
mod tests;

//! The replica client for answers that are not streamed: HTTP/1.1 over pooled keep-alive
//! connections, written and read by the calling task itself.
//!
//! hyper's pooled client runs each connection as a task of its own and hands the request, the
//! response head and every body chunk to it over channels: several task hand-offs a call, which
//! on one core cost more than the proxying itself (docs/BENCHMARKS.md). A non-streamed answer
//! needs none of that: take an idle connection of the replica, write the request in one call,
//! parse the head with `httparse` (hyper's own parser), read the body (`Content-Length` or
//! chunked), put the connection back. Streams keep hyper's client, where chunks must flow to
//! the caller as they arrive.
//!
//! Only what a replica may answer is supported: HTTP/1.x, a `Content-Length`, chunked or
//! close-delimited body, keep-alive unless `Connection: close`. Anything else is a protocol error,
//! never a panic.

use std::io::{self, Write as _};
use std::net::SocketAddr;
use std::sync::Mutex;
use std::task::Context;
use std::time::{Duration, Instant};

use bytes::{Buf, Bytes, BytesMut};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// Longest response head accepted.
const MAX_HEAD: usize = 16 * 1024;
/// Largest non-streamed answer accepted (a chat completion is a few KiB).
const MAX_BODY: usize = 64 * 1024 * 1024;
/// Idle connections kept per replica; more are closed when they come back.
const MAX_IDLE: usize = 512;
/// Headers read from a response head.
const MAX_HEADERS: usize = 64;

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
    conns: Mutex<Vec<(TcpStream, Instant)>>,
}

impl IdleConns {
    /// An idle connection that the replica has not closed, if any.
    fn take(&self, idle_timeout: Duration) -> Option<TcpStream> {
        let now = Instant::now();
        let mut conns = self.conns.lock().unwrap_or_else(|e| e.into_inner());
        while let Some((conn, since)) = conns.pop() {
            if now.duration_since(since) < idle_timeout && still_open(&conn) {
                return Some(conn);
            }
        }
        None
    }

    fn put(&self, conn: TcpStream) {
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
    let mut conn = match idle.take(settings.idle_timeout) {
        Some(conn) => conn,
        None => connect(addr, settings.connect_timeout).await?,
    };
    let mut request = Vec::with_capacity(160 + body.len());
    // Writing into a Vec cannot fail.
    let _ = write!(
        request,
        "POST {path} HTTP/1.1\r\nhost: {addr}\r\ncontent-type: application/json\r\ncontent-length: {}\r\n\r\n",
        body.len()
    );
    request.extend_from_slice(body);
    let io_err = |source| SendError::Io { addr, source };
    conn.write_all(&request).await.map_err(io_err)?;
    let (answer, keep_alive) = read_answer(&mut conn, addr).await?;
    if keep_alive {
        idle.put(conn);
    }
    Ok(answer)
}

async fn connect(addr: SocketAddr, timeout: Duration) -> Result<TcpStream, SendError> {
    let err = |source| SendError::Connect { addr, source };
    let conn = tokio::time::timeout(timeout, TcpStream::connect(addr))
        .await
        .map_err(|_| err(io::Error::new(io::ErrorKind::TimedOut, "connect timed out")))?
        .map_err(err)?;
    conn.set_nodelay(true).map_err(err)?;
    Ok(conn)
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
    let mut keep_alive = resp.version == Some(1);
    let mut length = None;
    let mut chunked = false;
    for h in resp.headers.iter() {
        if h.name.eq_ignore_ascii_case("content-length") {
            let v = std::str::from_utf8(h.value)
                .ok()
                .and_then(|s| s.trim().parse::<usize>().ok())
                .ok_or_else(|| protocol("bad content-length".into()))?;
            if length.is_some_and(|l| l != v) {
                return Err(protocol("conflicting content-length".into()));
            }
            length = Some(v);
        } else if h.name.eq_ignore_ascii_case("transfer-encoding") {
            chunked = h
                .value
                .split(|&b| b == b',')
                .next_back()
                .is_some_and(|last| last.trim_ascii().eq_ignore_ascii_case(b"chunked"));
            if !chunked {
                return Err(protocol("unsupported transfer-encoding".into()));
            }
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

/// Reads more of the answer into `buf`; `Ok(false)` at end of stream.
async fn fill(
    conn: &mut TcpStream,
    buf: &mut BytesMut,
    addr: SocketAddr,
) -> Result<bool, SendError> {
    if buf.capacity() - buf.len() < 4096 {
        buf.reserve(16 * 1024);
    }
    let n = conn
        .read_buf(buf)
        .await
        .map_err(|source| SendError::Io { addr, source })?;
    Ok(n > 0)
}

/// Reads more of a body that is not complete yet; the end of the stream is an error.
async fn more_body(
    conn: &mut TcpStream,
    buf: &mut BytesMut,
    addr: SocketAddr,
) -> Result<(), SendError> {
    if fill(conn, buf, addr).await? {
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

/// Reads one whole answer; the flag says whether the connection can carry another request.
async fn read_answer(conn: &mut TcpStream, addr: SocketAddr) -> Result<(Answer, bool), SendError> {
    let mut buf = BytesMut::with_capacity(8 * 1024);
    let head = loop {
        match parse_head(&buf, addr)? {
            // An interim answer (100 Continue) is skipped; the real one follows.
            Some(h) if (100..200).contains(&h.status) => {
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
        if !fill(conn, &mut buf, addr).await? {
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
    let (body, clean) = match head.framing {
        Framing::Length(len) => {
            while buf.len() < len {
                more_body(conn, &mut buf, addr).await?;
            }
            let body = buf.split_to(len).freeze();
            (body, buf.is_empty())
        }
        Framing::Chunked => read_chunked(conn, &mut buf, addr).await?,
        Framing::UntilClose => {
            while fill(conn, &mut buf, addr).await? {
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
    conn: &mut TcpStream,
    buf: &mut BytesMut,
    addr: SocketAddr,
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
                    more_body(conn, buf, addr).await?;
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
                more_body(conn, buf, addr).await?;
            }
        }
        while buf.len() < size + 2 {
            more_body(conn, buf, addr).await?;
        }
        body.extend_from_slice(&buf[..size]);
        if &buf[size..size + 2] != b"\r\n" {
            return Err(protocol("chunk not followed by CRLF"));
        }
        buf.advance(size + 2);
    }
}

#[cfg(test)]
mod tests;

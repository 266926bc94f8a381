//! Socket helpers of the listener: writes that give up on clients that do not read, the
//! lingering close, the router's socket (bytes already read put back, write timeout) and its
//! request-body deadline.

use std::future::Future;
use std::io;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::Duration;

use axum::body::Body;
use axum::extract::Request;
use axum::middleware::Next;
use axum::response::Response;
use bytes::{Bytes, BytesMut};
use http_body::{Body as HttpBody, Frame, SizeHint};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, ReadBuf};
use tokio::net::TcpStream;
use tokio::time::{Instant, Sleep};

/// Most bytes read and thrown away after the last answer, before the connection is closed.
pub(super) const LINGER_BYTES: usize = 4 * 1024 * 1024;
/// Longest time spent on that.
pub(super) const LINGER_TIME: Duration = Duration::from_secs(2);

/// A reusable timer, one per connection: resetting it to a later time is an atomic store, not a
/// new registration with the timer wheel.
pub(super) type Timer = Pin<Box<Sleep>>;

pub(super) fn timer() -> Timer {
    Box::pin(tokio::time::sleep_until(
        Instant::now() + Duration::from_secs(86_400),
    ))
}

fn timed_out(what: &str) -> io::Error {
    io::Error::new(io::ErrorKind::TimedOut, what.to_owned())
}

/// Writes all of `data`; fails when the client takes more than `timeout` to take it. A write
/// the socket takes at once (the usual case) sets no timer.
pub(super) async fn write_all(
    conn: &mut TcpStream,
    mut data: &[u8],
    timer: &mut Timer,
    timeout: Duration,
) -> io::Result<()> {
    while !data.is_empty() {
        match conn.try_write(data) {
            Ok(n) => data = &data[n..],
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
            Err(e) => return Err(e),
        }
    }
    if data.is_empty() {
        return Ok(());
    }
    timer.as_mut().reset(Instant::now() + timeout);
    tokio::select! {
        biased;
        written = conn.write_all(data) => written,
        () = timer.as_mut() => Err(timed_out("the client did not read the answer in time")),
    }
}

/// Closes a connection so that the client can read the last answer: sends FIN, then reads and
/// discards what the client is still sending (a body answered before it was read), up to
/// [`LINGER_BYTES`] for [`LINGER_TIME`], until the client closes its side. Closing with unread
/// bytes would send a reset, and the client's kernel would drop the answer unread.
pub(super) async fn linger(mut conn: TcpStream, mut buf: BytesMut, timer: &mut Timer) {
    if conn.shutdown().await.is_err() {
        return;
    }
    timer.as_mut().reset(Instant::now() + LINGER_TIME);
    let mut drained = 0;
    buf.clear();
    while drained < LINGER_BYTES {
        if buf.capacity() < 4096 {
            buf.reserve(8 * 1024);
        }
        tokio::select! {
            biased;
            () = timer.as_mut() => return,
            read = conn.read_buf(&mut buf) => match read {
                Ok(0) | Err(_) => return,
                Ok(n) => {
                    drained += n;
                    buf.clear();
                }
            },
        }
    }
}

/// When the request now arriving on a connection the router serves began (its first byte), for
/// its one deadline. [`Replay`] sets it with the first byte it reads while it is unset; the
/// short lane seeds it for the request it hands over; [`body_deadline`] reads it and unsets it
/// once the answer is ready, so the next byte read begins the next request.
#[derive(Debug, Clone, Default)]
pub(super) struct RequestStart(Arc<Mutex<Option<Instant>>>);

impl RequestStart {
    pub fn new(at: Instant) -> Self {
        Self(Arc::new(Mutex::new(Some(at))))
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Option<Instant>> {
        self.0.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn mark(&self) {
        self.lock().get_or_insert_with(Instant::now);
    }

    fn begun(&self) -> Option<Instant> {
        *self.lock()
    }

    fn clear(&self) {
        *self.lock() = None;
    }
}

/// The router's socket: bytes the short lane already read put back in front, and writes that
/// give up after the write timeout.
pub(super) struct Replay {
    pub head: Bytes,
    pub conn: TcpStream,
    pub timer: Timer,
    pub write_timeout: Duration,
    /// Whether the timer runs for a write that is waiting.
    pub waiting: bool,
    pub start: RequestStart,
}

impl Replay {
    /// What follows a write that returned `Pending`: `Pending` until the write timeout.
    fn write_pending<T>(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<T>> {
        if !self.waiting {
            self.waiting = true;
            let at = Instant::now() + self.write_timeout;
            self.timer.as_mut().reset(at);
        }
        match self.timer.as_mut().poll(cx) {
            Poll::Ready(()) => {
                Poll::Ready(Err(timed_out("the client did not read the answer in time")))
            }
            Poll::Pending => Poll::Pending,
        }
    }

    fn wrote<T>(&mut self, r: Poll<io::Result<T>>, cx: &mut Context<'_>) -> Poll<io::Result<T>> {
        match r {
            Poll::Pending => self.write_pending(cx),
            ready => {
                self.waiting = false;
                ready
            }
        }
    }
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
            if self.head.is_empty() {
                // An empty slice still holds the short lane's whole buffer.
                self.head = Bytes::new();
            }
            return Poll::Ready(Ok(()));
        }
        let before = buf.filled().len();
        let read = Pin::new(&mut self.conn).poll_read(cx, buf);
        if buf.filled().len() > before {
            self.start.mark();
        }
        read
    }
}

impl AsyncWrite for Replay {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let this = &mut *self;
        let r = Pin::new(&mut this.conn).poll_write(cx, buf);
        this.wrote(r, cx)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let this = &mut *self;
        let r = Pin::new(&mut this.conn).poll_write_vectored(cx, bufs);
        this.wrote(r, cx)
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

/// Middleware of the router: a request must be whole within `timeout` of its first byte (of
/// the head's arrival, for a router not behind this listener), so its body fails at that
/// deadline however it trickles.
pub(super) async fn body_deadline(timeout: Duration, req: Request, next: Next) -> Response {
    let start = req.extensions().get::<RequestStart>().cloned();
    let begun = start
        .as_ref()
        .and_then(RequestStart::begun)
        .unwrap_or_else(Instant::now);
    let answer = if req.body().is_end_stream() {
        next.run(req).await
    } else {
        let deadline = begun + timeout;
        let req = req.map(|inner| {
            Body::new(DeadlineBody {
                inner,
                sleep: Box::pin(tokio::time::sleep_until(deadline)),
            })
        });
        next.run(req).await
    };
    if let Some(start) = start {
        start.clear();
    }
    answer
}

/// A request body that fails once its deadline has passed.
struct DeadlineBody {
    inner: Body,
    sleep: Pin<Box<Sleep>>,
}

impl HttpBody for DeadlineBody {
    type Data = Bytes;
    type Error = axum::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, axum::Error>>> {
        if let Poll::Ready(frame) = Pin::new(&mut self.inner).poll_frame(cx) {
            return Poll::Ready(frame);
        }
        match self.sleep.as_mut().poll(cx) {
            Poll::Ready(()) => Poll::Ready(Some(Err(axum::Error::new(timed_out(
                "the request body did not arrive in time",
            ))))),
            Poll::Pending => Poll::Pending,
        }
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

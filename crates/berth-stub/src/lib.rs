//! berth's stub engine: an OpenAI-compatible upstream that answers instantly (or paced), for the
//! gateway's tests and benchmarks (`berth stub-engine`).
//!
//! It speaks just enough of the engine's API: `GET /health`, `POST /v1/chat/completions` (JSON,
//! or SSE with a role chunk, N content chunks, a finish chunk, a usage chunk when
//! `stream_options.include_usage` is set, then `data: [DONE]`) and `GET /metrics` with a request
//! counter. Every response body is built once at start-up and shared, so the stub costs a few
//! microseconds per request and is never the bottleneck of a benchmark.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use http_body_util::{BodyExt, Either, Full, StreamBody};
use hyper::body::{Frame, Incoming};
use hyper::{Method, Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use tokio::net::TcpListener;

/// Command-line arguments of `berth stub-engine`.
#[derive(Debug, Clone, clap::Args)]
pub struct StubArgs {
    /// Port to listen on.
    #[arg(long, default_value_t = 9001)]
    pub port: u16,
    /// Address to listen on.
    #[arg(long, default_value = "127.0.0.1")]
    pub host: String,
    /// Content chunks per streamed answer (and completion tokens reported in `usage`).
    #[arg(long, default_value_t = 16)]
    pub tokens: u32,
    /// Delay before each streamed content chunk, in milliseconds (0: the whole stream at once).
    #[arg(long, default_value_t = 0)]
    pub token_delay_ms: u64,
    /// `/health` answers 503 until this many milliseconds after start.
    #[arg(long, default_value_t = 0)]
    pub start_delay_ms: u64,
    /// `/health` always answers 503.
    #[arg(long, default_value_t = false)]
    pub fail_health: bool,
}

impl Default for StubArgs {
    fn default() -> Self {
        Self {
            port: 0,
            host: "127.0.0.1".into(),
            tokens: 16,
            token_delay_ms: 0,
            start_delay_ms: 0,
            fail_health: false,
        }
    }
}

/// Tokens the stub claims the prompt had.
pub const PROMPT_TOKENS: u32 = 10;
/// The text of every streamed content chunk.
pub const TOKEN_TEXT: &str = "tok ";

/// Binds `--host:--port` and serves until the process ends.
pub async fn run(args: StubArgs) -> anyhow::Result<()> {
    let listener = TcpListener::bind((args.host.as_str(), args.port)).await?;
    tracing::info!(addr = %listener.local_addr()?, "stub engine listening");
    serve(listener, args).await?;
    Ok(())
}

/// Serves on an already bound listener (tests bind `127.0.0.1:0`).
pub async fn serve(listener: TcpListener, args: StubArgs) -> std::io::Result<()> {
    let stub = Arc::new(Stub::new(&args));
    loop {
        let (stream, _) = listener.accept().await?;
        let _ = stream.set_nodelay(true);
        let stub = stub.clone();
        tokio::spawn(async move {
            let service = hyper::service::service_fn(move |req| {
                let stub = stub.clone();
                async move { Ok::<_, Infallible>(stub.handle(req).await) }
            });
            let _ = hyper::server::conn::http1::Builder::new()
                .serve_connection(TokioIo::new(stream), service)
                .await;
        });
    }
}

/// Binds `127.0.0.1:0`, serves in the background and returns the address (for tests).
pub async fn spawn(args: StubArgs) -> std::io::Result<SocketAddr> {
    let listener = TcpListener::bind(("127.0.0.1", 0)).await?;
    let addr = listener.local_addr()?;
    tokio::spawn(serve(listener, args));
    Ok(addr)
}

type Body = Either<
    Full<Bytes>,
    StreamBody<futures::stream::BoxStream<'static, Result<Frame<Bytes>, Infallible>>>,
>;

struct Stub {
    started: Instant,
    ready_after: Duration,
    fail_health: bool,
    token_delay: Duration,
    tokens: u32,
    requests: AtomicU64,
    json: Bytes,
    /// Role chunk.
    head: Bytes,
    /// One content chunk.
    token: Bytes,
    /// Finish chunk.
    finish: Bytes,
    /// Usage chunk.
    usage: Bytes,
    done: Bytes,
    /// The whole unpaced stream, without and with the usage chunk.
    whole: Bytes,
    whole_usage: Bytes,
}

impl Stub {
    fn new(args: &StubArgs) -> Self {
        let n = args.tokens;
        let usage = format!(
            r#"{{"prompt_tokens":{PROMPT_TOKENS},"completion_tokens":{n},"total_tokens":{}}}"#,
            PROMPT_TOKENS + n
        );
        let content: String = TOKEN_TEXT.repeat(n as usize);
        let json = format!(
            r#"{{"id":"chatcmpl-stub","object":"chat.completion","created":1700000000,"model":"stub","choices":[{{"index":0,"message":{{"role":"assistant","content":"{content}"}},"finish_reason":"stop","logprobs":null}}],"usage":{usage}}}"#
        );
        let chunk = |delta: &str, finish: &str| {
            format!(
                "data: {{\"id\":\"chatcmpl-stub\",\"object\":\"chat.completion.chunk\",\"created\":1700000000,\"model\":\"stub\",\"choices\":[{{\"index\":0,\"delta\":{delta},\"finish_reason\":{finish}}}]}}\n\n"
            )
        };
        let head = chunk(r#"{"role":"assistant","content":""}"#, "null");
        let token = chunk(&format!(r#"{{"content":"{TOKEN_TEXT}"}}"#), "null");
        let finish = chunk("{}", "\"stop\"");
        let usage = format!(
            "data: {{\"id\":\"chatcmpl-stub\",\"object\":\"chat.completion.chunk\",\"created\":1700000000,\"model\":\"stub\",\"choices\":[],\"usage\":{usage}}}\n\n"
        );
        let done = "data: [DONE]\n\n".to_string();
        let body = format!("{head}{}{finish}", token.repeat(n as usize));
        Self {
            started: Instant::now(),
            ready_after: Duration::from_millis(args.start_delay_ms),
            fail_health: args.fail_health,
            token_delay: Duration::from_millis(args.token_delay_ms),
            tokens: n,
            requests: AtomicU64::new(0),
            json: Bytes::from(json),
            whole: Bytes::from(format!("{body}{done}")),
            whole_usage: Bytes::from(format!("{body}{usage}{done}")),
            head: Bytes::from(head),
            token: Bytes::from(token),
            finish: Bytes::from(finish),
            usage: Bytes::from(usage),
            done: Bytes::from(done),
        }
    }

    async fn handle(self: Arc<Self>, req: Request<Incoming>) -> Response<Body> {
        match (req.method(), req.uri().path()) {
            (&Method::GET, "/health") => {
                if self.fail_health || self.started.elapsed() < self.ready_after {
                    respond(StatusCode::SERVICE_UNAVAILABLE, "application/json", Bytes::from_static(b"{\"status\":\"starting\"}"))
                } else {
                    respond(StatusCode::OK, "application/json", Bytes::from_static(b"{\"status\":\"ok\"}"))
                }
            }
            (&Method::GET, "/metrics") => {
                let n = self.requests.load(Ordering::Relaxed);
                let text = format!(
                    "# HELP berth_stub_requests_total Chat completion requests served.\n# TYPE berth_stub_requests_total counter\nberth_stub_requests_total {n}\n"
                );
                respond(StatusCode::OK, "text/plain; version=0.0.4", Bytes::from(text))
            }
            (&Method::POST, "/v1/chat/completions") => {
                self.requests.fetch_add(1, Ordering::Relaxed);
                let body = match req.into_body().collect().await {
                    Ok(b) => b.to_bytes(),
                    Err(_) => return respond(StatusCode::BAD_REQUEST, "application/json", Bytes::new()),
                };
                if !flag(&body, b"\"stream\"") {
                    return respond(StatusCode::OK, "application/json", self.json.clone());
                }
                let usage = flag(&body, b"\"include_usage\"");
                if self.token_delay.is_zero() {
                    let whole = if usage { &self.whole_usage } else { &self.whole };
                    return respond(StatusCode::OK, "text/event-stream", whole.clone());
                }
                self.paced(usage)
            }
            _ => respond(StatusCode::NOT_FOUND, "application/json", Bytes::from_static(b"{\"error\":{\"message\":\"not found\",\"type\":\"invalid_request_error\",\"param\":null,\"code\":\"not_found\"}}")),
        }
    }

    fn paced(self: Arc<Self>, usage: bool) -> Response<Body> {
        let delay = self.token_delay;
        let stream = paced_stream(self, usage, delay);
        Response::builder()
            .header("content-type", "text/event-stream")
            .header("cache-control", "no-cache")
            .body(Either::Right(StreamBody::new(stream)))
            .expect("static response parts")
    }
}

/// The paced stream: role chunk at once, then each content chunk after `delay`.
fn paced_stream(
    stub: Arc<Stub>,
    usage: bool,
    delay: Duration,
) -> futures::stream::BoxStream<'static, Result<Frame<Bytes>, Infallible>> {
    use futures::StreamExt;
    let n = stub.tokens;
    futures::stream::unfold(0u32, move |i| {
        let stub = stub.clone();
        async move {
            let next = if i == 0 {
                stub.head.clone()
            } else if i <= n {
                tokio::time::sleep(delay).await;
                stub.token.clone()
            } else if i == n + 1 {
                stub.finish.clone()
            } else if i == n + 2 && usage {
                stub.usage.clone()
            } else if i == n + 2 || (i == n + 3 && usage) {
                stub.done.clone()
            } else {
                return None;
            };
            Some((Ok(Frame::data(next)), i + 1))
        }
    })
    .boxed()
}

/// True if `key` is followed (after optional spaces and a colon) by `true`, anywhere in `body`.
/// The stub only needs `"stream": true` and `"include_usage": true`; a JSON parse would cost more
/// than the rest of the request.
fn flag(body: &[u8], key: &[u8]) -> bool {
    memchr::memmem::find_iter(body, key).any(|at| {
        let rest = body[at + key.len()..]
            .iter()
            .copied()
            .skip_while(|b| b.is_ascii_whitespace() || *b == b':');
        rest.take(4).eq(b"true".iter().copied())
    })
}

fn respond(status: StatusCode, content_type: &'static str, body: Bytes) -> Response<Body> {
    Response::builder()
        .status(status)
        .header("content-type", content_type)
        .body(Either::Left(Full::new(body)))
        .expect("static response parts")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn flags_are_found_with_or_without_spaces() {
        assert!(flag(br#"{"stream":true}"#, b"\"stream\""));
        assert!(flag(br#"{"a":1, "stream" : true}"#, b"\"stream\""));
        assert!(!flag(br#"{"stream":false}"#, b"\"stream\""));
        assert!(!flag(
            br#"{"stream_options":{"include_usage":true}}"#,
            b"\"stream\""
        ));
        assert!(flag(
            br#"{"stream_options":{"include_usage":true}}"#,
            b"\"include_usage\""
        ));
    }

    #[test]
    fn unpaced_stream_has_every_chunk() {
        let stub = Stub::new(&StubArgs {
            tokens: 7,
            ..StubArgs::default()
        });
        let text = std::str::from_utf8(&stub.whole_usage).unwrap();
        assert_eq!(text.matches(TOKEN_TEXT).count(), 7);
        assert!(text.ends_with("data: [DONE]\n\n"));
        assert!(text.contains("\"choices\":[],\"usage\""));
    }
}

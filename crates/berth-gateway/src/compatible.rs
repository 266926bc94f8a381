//! The OpenAI-compatible call: `POST /compatible-mode/v1/chat/completions`.
//!
//! The client's body goes to the replica as it came; the gateway reads only `model`, `stream`
//! and `stream_options`. Streams are forwarded event by event as they arrive. To count tokens,
//! the replica is always asked for the usage chunk (`stream_options.include_usage`); when the
//! client did not ask for it, that chunk is taken out of the client's stream.

use std::pin::Pin;
use std::sync::LazyLock;
use std::task::{Context, Poll};

use berth_api::openai::{ChatRequestPeek, Usage, UsagePeek};
use bytes::{Bytes, BytesMut};
use futures::Stream;
use memchr::memmem;

use crate::dispatch::{read_body, Accounting, Dispatched, Reply, Tokens};
use crate::error::GatewayError;
use crate::metrics::Api;
use crate::routing::InFlight;
use crate::sse::{self, Frames};
use crate::upstream::BodyReader;
use crate::{Gateway, GatewayResponse};

const JSON: &str = "application/json";
const EVENT_STREAM: &str = "text/event-stream";

impl Gateway {
    /// Calls a deployment with an OpenAI chat-completions body, for a caller in `workspace_id`.
    ///
    /// Upstream error statuses are passed through with their body (the replica speaks the
    /// OpenAI envelope); gateway errors come back as [`GatewayError`].
    pub async fn chat_completions(
        &self,
        workspace_id: &str,
        body: Bytes,
    ) -> Result<GatewayResponse, GatewayError> {
        let unrouted = |e: GatewayError| {
            self.inner
                .routes
                .metrics
                .unrouted(workspace_id, Api::Compatible, 400);
            e
        };
        let peek: ChatRequestPeek = serde_json::from_slice(&body).map_err(|e| {
            unrouted(GatewayError::InvalidParameter(format!(
                "Required body invalid, please check the request body format: {e}"
            )))
        })?;
        if peek.model.is_empty() {
            return Err(unrouted(GatewayError::InvalidParameter(
                "Required parameter(model) missing or invalid, please check the request parameters."
                    .into(),
            )));
        }
        let stream = peek.stream.unwrap_or(false);
        let client_wants_usage = peek
            .stream_options
            .and_then(|o| o.include_usage)
            .unwrap_or(false);
        let upstream_body = if stream && !client_wants_usage {
            // `"stream_options": null` reads as absent but is a key: splicing another in would
            // make the body a duplicate-key object.
            let has_key = peek.stream_options.is_some() || STREAM_OPTIONS_KEY.find(&body).is_some();
            with_usage(&body, has_key).map_err(unrouted)?
        } else {
            body.clone()
        };
        let Dispatched {
            reply,
            guard,
            mut usage,
        } = self
            .inner
            .dispatch(
                workspace_id,
                &peek.model,
                upstream_body,
                stream,
                Api::Compatible,
            )
            .await?;
        let resp = match reply {
            Reply::Whole(answer) => {
                drop(guard);
                usage.set_code(answer.status);
                if answer.status == 200 {
                    if let Some(tokens) = answer_usage(&answer.body) {
                        usage.record(tokens);
                    }
                }
                return Ok(GatewayResponse::full(answer.status, JSON, answer.body));
            }
            Reply::Streaming(resp) => resp,
        };
        let status = resp.status;
        if !(200..300).contains(&status) {
            usage.set_code(status);
            let bytes = read_body(resp.body).await.map_err(|e| usage.failed(e))?;
            return Ok(GatewayResponse::full(status, JSON, bytes));
        }
        let body = UsageTap {
            upstream: resp.body,
            frames: Frames::default(),
            strip_usage: !client_wants_usage,
            usage,
            _guard: guard,
            ended: false,
        };
        Ok(GatewayResponse::stream(EVENT_STREAM, Box::pin(body)))
    }
}

/// The body with `stream_options.include_usage` set to true.
fn with_usage(body: &Bytes, has_stream_options: bool) -> Result<Bytes, GatewayError> {
    if !has_stream_options {
        // Splice the field in after the opening brace: no re-serialisation of the messages.
        let open = body.iter().position(|&b| b == b'{').unwrap_or(0);
        let mut out = BytesMut::with_capacity(body.len() + 40);
        out.extend_from_slice(&body[..=open]);
        out.extend_from_slice(br#""stream_options":{"include_usage":true},"#);
        out.extend_from_slice(&body[open + 1..]);
        return Ok(out.freeze());
    }
    let mut v: serde_json::Value =
        serde_json::from_slice(body).map_err(|e| GatewayError::InvalidParameter(e.to_string()))?;
    v["stream_options"]["include_usage"] = serde_json::Value::Bool(true);
    Ok(serde_json::to_vec(&v)
        .map_err(|e| GatewayError::InvalidParameter(e.to_string()))?
        .into())
}

/// The `stream_options` key, wherever it is (a false hit only costs a re-serialisation).
static STREAM_OPTIONS_KEY: LazyLock<memmem::Finder<'static>> =
    LazyLock::new(|| memmem::Finder::new(b"\"stream_options\""));

/// Where a content delta starts in a chunk.
static CONTENT_KEY: LazyLock<memmem::Finder<'static>> =
    LazyLock::new(|| memmem::Finder::new(b"\"content\":\""));
/// The key of a usage object.
static USAGE_KEY: LazyLock<memmem::Finder<'static>> =
    LazyLock::new(|| memmem::Finder::new(b"\"usage\""));

/// The `usage` key, searched from the end.
static USAGE_KEY_REV: LazyLock<memmem::FinderRev<'static>> =
    LazyLock::new(|| memmem::FinderRev::new(b"\"usage\""));

/// `usage` of a whole completion. `usage` is the completion's last member, so it is found from
/// the end and only it is parsed, provided nothing but the closing brace follows it; any other
/// body is parsed whole.
fn answer_usage(body: &[u8]) -> Option<Tokens> {
    let tail = USAGE_KEY_REV.rfind(body).and_then(|at| {
        let rest = body[at + 7..].trim_ascii_start().strip_prefix(b":")?;
        let mut values = serde_json::Deserializer::from_slice(rest).into_iter::<Usage>();
        let usage = values.next()?.ok()?;
        (rest[values.byte_offset()..].trim_ascii() == b"}").then(|| Tokens::from(&usage))
    });
    tail.or_else(|| {
        serde_json::from_slice::<UsagePeek>(body)
            .ok()?
            .usage
            .map(|u| Tokens::from(&u))
    })
}

/// Chunks with non-empty `content` among `events` (a replica sends about one token a chunk).
fn content_chunks(events: &[u8]) -> u64 {
    let key = CONTENT_KEY.needle().len();
    CONTENT_KEY
        .find_iter(events)
        .filter(|&at| events.get(at + key) != Some(&b'"'))
        .count() as u64
}

/// Forwards an upstream SSE stream event by event, reading the usage chunk on the way.
struct UsageTap {
    upstream: BodyReader,
    frames: Frames,
    strip_usage: bool,
    usage: Accounting,
    _guard: InFlight,
    ended: bool,
}

impl UsageTap {
    fn inspect(&mut self, events: Bytes) -> Bytes {
        self.usage.saw_chunks(content_chunks(&events));
        let (events, usage) = take_usage(events, self.strip_usage);
        if let Some(tokens) = usage {
            // Running (continuous usage stats) or final: the last one seen is charged when the
            // stream ends.
            self.usage.observe(tokens);
        }
        if !events.is_empty() {
            self.usage.first_chunk();
        }
        events
    }
}

/// Reads the usage (the last one) of `events` (whole events) and, with `strip`, takes out the
/// usage-only chunk. Only the events that mention `"usage"` are parsed; the rest pass as they
/// are, uncopied when nothing is taken out.
fn take_usage(events: Bytes, strip: bool) -> (Bytes, Option<Tokens>) {
    let mut usage = None;
    let mut kept: Option<BytesMut> = None;
    // Start of the part not yet copied into `kept`.
    let mut copied = 0;
    let mut from = 0;
    while let Some(at) = USAGE_KEY.find(&events[from..]).map(|i| from + i) {
        let start = sse::last_boundary(&events[..at]);
        let end = sse::first_boundary(&events[at..]).map_or(events.len(), |e| at + e);
        from = end;
        let peek = sse::data(&events[start..end])
            .and_then(|d| serde_json::from_slice::<UsagePeek>(d).ok());
        if let Some(UsagePeek {
            usage: Some(u),
            choices,
        }) = peek
        {
            usage = Some(Tokens::from(&u));
            if strip && choices.is_none_or(|c| c.is_empty()) {
                kept.get_or_insert_with(|| BytesMut::with_capacity(events.len()))
                    .extend_from_slice(&events[copied..start]);
                copied = end;
            }
        }
    }
    let events = match kept {
        None => events,
        Some(mut kept) => {
            kept.extend_from_slice(&events[copied..]);
            kept.freeze()
        }
    };
    (events, usage)
}

impl Stream for UsageTap {
    type Item = Result<Bytes, GatewayError>;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        let this = &mut *self;
        loop {
            if this.ended {
                return Poll::Ready(None);
            }
            match Pin::new(&mut this.upstream).poll_next(cx) {
                Poll::Pending => return Poll::Pending,
                Poll::Ready(Some(Ok(chunk))) => {
                    let complete = this.frames.push(chunk);
                    if complete.is_empty() {
                        continue;
                    }
                    let out = this.inspect(complete);
                    if !out.is_empty() {
                        return Poll::Ready(Some(Ok(out)));
                    }
                }
                Poll::Ready(Some(Err(e))) => {
                    this.ended = true;
                    let e = this.usage.failed(GatewayError::Upstream(e.into()));
                    return Poll::Ready(Some(Err(e)));
                }
                Poll::Ready(None) => {
                    this.ended = true;
                    let rest = this.frames.rest();
                    let rest = if rest.is_empty() {
                        rest
                    } else {
                        this.inspect(rest)
                    };
                    this.usage.record_running();
                    if !rest.is_empty() {
                        return Poll::Ready(Some(Ok(rest)));
                    }
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn content_chunks_count_non_empty_deltas() {
        let events = br#"data: {"choices":[{"delta":{"role":"assistant","content":""}}]}

data: {"choices":[{"delta":{"content":"Par"}}]}

data: {"choices":[{"delta":{"content":"is"}}]}

data: [DONE]

"#;
        assert_eq!(content_chunks(events), 2);
        assert_eq!(content_chunks(b"data: [DONE]\n\n"), 0);
    }

    #[test]
    fn usage_is_read_and_the_usage_chunk_taken_out_on_request() {
        let content = "data: {\"choices\":[{\"delta\":{\"content\":\"usage\"}}]}\n\n";
        let with_usage =
            "data: {\"choices\":[{\"delta\":{}}],\"usage\":{\"total_tokens\":3}}\r\n\r\n";
        let usage_only = "data: {\"choices\":[],\"usage\":{\"total_tokens\":9}}\n\n";
        let done = "data: [DONE]\n\n";
        let all = Bytes::from(format!("{content}{usage_only}{done}"));

        let (out, usage) = take_usage(all.clone(), false);
        assert_eq!(
            (out.as_ptr(), usage.map(|t| t.total)),
            (all.as_ptr(), Some(9)),
            "kept, uncopied"
        );
        let (out, usage) = take_usage(all, true);
        assert_eq!(out, format!("{content}{done}"));
        assert_eq!(usage.map(|t| t.total), Some(9));

        // A chunk with choices keeps its place (continuous usage stats put usage on every
        // chunk); the last usage is the running total.
        let all = Bytes::from(format!("{with_usage}{content}{usage_only}"));
        let (out, usage) = take_usage(all, true);
        assert_eq!(out, format!("{with_usage}{content}"));
        assert_eq!(usage.map(|t| t.total), Some(9));
        let (_, usage) = take_usage(Bytes::from(format!("{content}{with_usage}{content}")), true);
        assert_eq!(usage.map(|t| t.total), Some(3));

        let plain = Bytes::from(format!("{content}{done}"));
        assert_eq!(take_usage(plain.clone(), true), (plain, None));
        // An unterminated last event is read too.
        let (out, usage) = take_usage(Bytes::from(usage_only.trim_end().to_owned()), true);
        assert_eq!((out.len(), usage.map(|t| t.total)), (0, Some(9)));
    }

    #[test]
    fn usage_of_whole_answers() {
        let usage = r#""usage":{"prompt_tokens":5,"completion_tokens":2,"total_tokens":7}"#;
        let at_end = format!(
            r#"{{"id":"c","choices":[{{"message":{{"content":"\"usage\":1"}}}}],{usage}}}"#
        );
        assert_eq!(
            answer_usage(at_end.as_bytes()),
            Some(Tokens {
                input: 5,
                output: 2,
                total: 7
            })
        );
        assert_eq!(
            answer_usage(format!("{at_end}\n").as_bytes()).map(|t| t.total),
            Some(7)
        );
        // Not last, or nested: the whole body is read, and the top-level usage wins.
        let first = format!(r#"{{{usage},"x":{{"usage":{{"total_tokens":99}}}}}}"#);
        assert_eq!(answer_usage(first.as_bytes()).map(|t| t.total), Some(7));
        let nested_last = format!(r#"{{"x":{{"usage":{{"total_tokens":99}}}},{usage}}}"#);
        assert_eq!(
            answer_usage(nested_last.as_bytes()).map(|t| t.total),
            Some(7)
        );
        let nested_only = r#"{"x":{"usage":{"total_tokens":99}}}"#;
        assert_eq!(answer_usage(nested_only.as_bytes()), None);
        assert_eq!(answer_usage(br#"{"usage":null}"#), None);
        assert_eq!(answer_usage(b"not json"), None);
    }

    #[test]
    fn usage_is_requested_without_touching_the_rest() {
        let body = Bytes::from_static(br#" {"model":"m","stream":true,"messages":[]}"#);
        let out = with_usage(&body, false).unwrap();
        assert_eq!(
            out,
            r#" {"stream_options":{"include_usage":true},"model":"m","stream":true,"messages":[]}"#
        );
        let body = Bytes::from_static(
            br#"{"model":"m","stream":true,"stream_options":{"include_usage":false}}"#,
        );
        let v: serde_json::Value =
            serde_json::from_slice(&with_usage(&body, true).unwrap()).unwrap();
        assert_eq!(v["stream_options"]["include_usage"], true);
        assert_eq!(v["model"], "m");
        // An explicit null is replaced, not doubled.
        let body = Bytes::from_static(br#"{"model":"m","stream":true,"stream_options":null}"#);
        let out = with_usage(&body, true).unwrap();
        let text = std::str::from_utf8(&out).unwrap();
        assert_eq!(text.matches("stream_options").count(), 1, "{text}");
        let v: serde_json::Value = serde_json::from_str(text).unwrap();
        assert_eq!(v["stream_options"]["include_usage"], true);
    }
}

//! The OpenAI-compatible call: `POST /compatible-mode/v1/chat/completions`.
//!
//! The client's body goes to the replica as it came; the gateway reads only `model`, `stream`
//! and `stream_options`. Streams are forwarded event by event as they arrive. To count tokens,
//! the replica is always asked for the usage chunk (`stream_options.include_usage`); when the
//! client did not ask for it, that chunk is taken out of the client's stream.

use std::pin::Pin;
use std::task::{Context, Poll};

use berth_api::openai::{ChatRequestPeek, UsagePeek};
use bytes::{Bytes, BytesMut};
use futures::Stream;
use memchr::memmem;

use crate::dispatch::{body_chunks, read_body, Accounting, Dispatched, Reply, UpstreamChunks};
use crate::error::GatewayError;
use crate::routing::InFlight;
use crate::sse::{self, Frames};
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
        let peek: ChatRequestPeek = serde_json::from_slice(&body).map_err(|e| {
            GatewayError::InvalidParameter(format!(
                "Required body invalid, please check the request body format: {e}"
            ))
        })?;
        if peek.model.is_empty() {
            return Err(GatewayError::InvalidParameter(
                "Required parameter(model) missing or invalid, please check the request parameters."
                    .into(),
            ));
        }
        let stream = peek.stream.unwrap_or(false);
        let client_wants_usage = peek
            .stream_options
            .and_then(|o| o.include_usage)
            .unwrap_or(false);
        let upstream_body = if stream && !client_wants_usage {
            with_usage(&body, peek.stream_options.is_some())?
        } else {
            body.clone()
        };
        let Dispatched {
            reply,
            guard,
            mut usage,
        } = self
            .inner
            .dispatch(workspace_id, &peek.model, upstream_body, stream)
            .await?;
        let resp = match reply {
            Reply::Whole(answer) => {
                drop(guard);
                if answer.status == 200 {
                    if let Ok(UsagePeek { usage: Some(u), .. }) =
                        serde_json::from_slice(&answer.body)
                    {
                        usage.record(u.total_tokens);
                    }
                }
                return Ok(GatewayResponse::full(answer.status, JSON, answer.body));
            }
            Reply::Streaming(resp) => resp,
        };
        let status = resp.status().as_u16();
        if !resp.status().is_success() {
            let bytes = read_body(resp).await?;
            return Ok(GatewayResponse::full(status, JSON, bytes));
        }
        let body = UsageTap {
            upstream: body_chunks(resp),
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

/// Chunks with non-empty `content` among `events` (a replica sends about one token a chunk).
fn content_chunks(events: &[u8]) -> u64 {
    const KEY: &[u8] = b"\"content\":\"";
    memmem::find_iter(events, KEY)
        .filter(|&at| events.get(at + KEY.len()) != Some(&b'"'))
        .count() as u64
}

/// Forwards an upstream SSE stream event by event, reading the usage chunk on the way.
struct UsageTap {
    upstream: UpstreamChunks,
    frames: Frames,
    strip_usage: bool,
    usage: Accounting,
    _guard: InFlight,
    ended: bool,
}

impl UsageTap {
    fn inspect(&mut self, events: Bytes) -> Bytes {
        self.usage.saw_chunks(content_chunks(&events));
        // Fast path: content chunks carry no usage object.
        if memmem::find(&events, b"\"usage\"").is_none() {
            return events;
        }
        let mut kept = BytesMut::new();
        let mut dropped = false;
        for ev in sse::events(&events) {
            let peek = sse::data(&ev)
                .filter(|d| memmem::find(d, b"\"usage\"").is_some())
                .and_then(|d| serde_json::from_slice::<UsagePeek>(d).ok());
            if let Some(UsagePeek {
                usage: Some(u),
                choices,
            }) = peek
            {
                self.usage.record(u.total_tokens);
                if self.strip_usage && choices.is_none_or(|c| c.is_empty()) {
                    dropped = true;
                    continue;
                }
            }
            kept.extend_from_slice(&ev);
        }
        if dropped {
            kept.freeze()
        } else {
            events
        }
    }
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
                    return Poll::Ready(Some(Err(GatewayError::Upstream(e.into()))));
                }
                Poll::Ready(None) => {
                    this.ended = true;
                    let rest = this.frames.rest();
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
    }
}

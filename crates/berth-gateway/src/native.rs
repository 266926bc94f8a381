//! The native DashScope call: `POST /api/v1/services/aigc/text-generation/generation`.
//!
//! The request is validated here (nothing invalid reaches a replica), translated into an OpenAI
//! chat request, and the answer translated back: `output{text, finish_reason}` or
//! `output{choices[...]}`, `usage{input_tokens, output_tokens, total_tokens}`, `request_id`.
//!
//! Streaming (`X-DashScope-SSE: enable`) writes one event per generated chunk, framed exactly as
//! DashScope does (`id:N`, `event:result`, `:HTTP_STATUS/200`, `data:{...}`, blank line), with
//! `finish_reason` `"null"` until the last event and cumulative `usage` on every event. The
//! replica is asked for usage on every chunk (`stream_options.continuous_usage_stats`, which
//! `berth engine` and vLLM speak), so `input_tokens` is exact from the first event and
//! `output_tokens` counts the tokens generated so far. A replica that ignores the option reports
//! usage only at the end: then `input_tokens` is 0 before the last event and `output_tokens`
//! counts content chunks; the last event is exact either way. berth does not estimate.
//! A failure after the stream started is an `event:error` with `:HTTP_STATUS/<code>`.

use std::fmt::Write as _;
use std::pin::Pin;
use std::task::{Context, Poll};

use berth_api::generation::{
    GenerationRequest, GenerationResponse, GenerationUsage, MessageChoice, Output, OutputMessage,
};
use berth_api::openai::{
    ChatCompletion, ChatCompletionChunk, ChatMessage, ChatRequest, ErrorPeek, StreamOptions, Usage,
};
use berth_core::ErrorCode;
use bytes::{BufMut, Bytes, BytesMut};
use futures::Stream;

use crate::dispatch::{read_body, Accounting, Dispatched, Reply, Tokens};
use crate::error::GatewayError;
use crate::metrics::Api;
use crate::routing::InFlight;
use crate::sse::{self, Frames};
use crate::upstream::BodyReader;
use crate::{Gateway, GatewayResponse};

const JSON: &str = "application/json";
const EVENT_STREAM: &str = "text/event-stream;charset=UTF-8";

/// `result_format`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Format {
    Text,
    Message,
}

impl Gateway {
    /// Calls a deployment with a native generation body. `stream` is the `X-DashScope-SSE:
    /// enable` header; `request_id` goes into every body and event.
    pub async fn generation(
        &self,
        workspace_id: &str,
        request_id: &str,
        stream: bool,
        body: Bytes,
    ) -> Result<GatewayResponse, GatewayError> {
        let unrouted = |e: GatewayError| {
            self.inner
                .routes
                .metrics
                .unrouted(workspace_id, Api::Native, e.code().http_status());
            e
        };
        let req: GenerationRequest = parse(&body).map_err(unrouted)?;
        let (format, incremental) = validate(&req).map_err(unrouted)?;
        let want_logprobs = req.parameters.logprobs == Some(true);
        let upstream = serde_json::to_vec(&to_chat(&req, stream))
            .map_err(|e| unrouted(GatewayError::InvalidParameter(e.to_string())))?;
        let Dispatched {
            reply,
            guard,
            mut usage,
        } = self
            .inner
            .dispatch(
                workspace_id,
                &req.model,
                upstream.into(),
                stream,
                Api::Native,
            )
            .await?;
        let bytes = match reply {
            Reply::Streaming(resp) => {
                if !(200..300).contains(&resp.status) {
                    let status = resp.status;
                    let body = read_body(resp.body).await.unwrap_or_default();
                    return Err(usage.failed(upstream_error(status, &body)));
                }
                let body = NativeStream {
                    upstream: resp.body,
                    frames: Frames::default(),
                    usage,
                    _guard: guard,
                    request_id: request_id.to_owned(),
                    format,
                    incremental,
                    next_id: 0,
                    text: String::new(),
                    tool_calls: Vec::new(),
                    logprobs: want_logprobs.then(Vec::new),
                    output_tokens: 0,
                    upstream_usage: None,
                    finish: None,
                    finished: false,
                    upstream_done: false,
                };
                return Ok(GatewayResponse::stream(EVENT_STREAM, Box::pin(body)));
            }
            Reply::Whole(answer) => {
                drop(guard);
                if !(200..300).contains(&answer.status) {
                    return Err(usage.failed(upstream_error(answer.status, &answer.body)));
                }
                answer.body
            }
        };
        let done: ChatCompletion = serde_json::from_slice(&bytes)
            .map_err(|e| usage.failed(GatewayError::UpstreamProtocol(e.to_string())))?;
        let u = done.usage.unwrap_or_default();
        usage.record(Tokens::from(&u));
        let choice = done.choices.first();
        let text = choice
            .and_then(|c| c.message.content.as_deref())
            .unwrap_or("");
        let finish = choice
            .and_then(|c| c.finish_reason.as_deref())
            .unwrap_or("stop");
        let mut calls = choice
            .and_then(|c| c.message.tool_calls.clone())
            .unwrap_or_default();
        with_indexes(&mut calls, 0);
        let logprobs = choice
            .and_then(|c| c.logprobs.as_ref())
            .filter(|_| want_logprobs);
        let out = GenerationResponse {
            output: output(format, text, finish, &calls, logprobs),
            usage: GenerationUsage::new(u.prompt_tokens, u.completion_tokens),
            request_id,
        };
        let json = serde_json::to_vec(&out)
            .map_err(|e| usage.failed(GatewayError::UpstreamProtocol(e.to_string())))?;
        Ok(GatewayResponse::full(200, JSON, json.into()))
    }
}

fn parse(body: &[u8]) -> Result<GenerationRequest, GatewayError> {
    let de = &mut serde_json::Deserializer::from_slice(body);
    serde_path_to_error::deserialize(de).map_err(|e| {
        let path = e.path().to_string();
        let inner = e.into_inner();
        GatewayError::InvalidParameter(if path.is_empty() || path == "." {
            format!("Required body invalid, please check the request body format: {inner}")
        } else {
            format!("Required parameter({path}) missing or invalid, please check the request parameters: {inner}")
        })
    })
}

/// Checks parameters against DashScope's ranges, with its messages.
fn validate(req: &GenerationRequest) -> Result<(Format, bool), GatewayError> {
    let bad = |m: &str| Err(GatewayError::InvalidParameter(m.to_owned()));
    if req.model.trim().is_empty() {
        return bad(
            "Required parameter(model) missing or invalid, please check the request parameters.",
        );
    }
    let has_messages = req.input.messages.as_ref().is_some_and(|m| !m.is_empty());
    let has_prompt = req.input.prompt.as_ref().is_some_and(|p| !p.is_empty());
    if !has_messages && !has_prompt {
        return bad("Either \"prompt\" or \"messages\" must exist and cannot both be none");
    }
    let p = &req.parameters;
    let format = match p.result_format.as_deref() {
        None | Some("text") => Format::Text,
        Some("message") => Format::Message,
        Some(_) => return bad("The result_format parameter must be \"text\" or \"message\"."),
    };
    if p.temperature.is_some_and(|t| !(0.0..2.0).contains(&t)) {
        return bad("Temperature should be in [0.0, 2.0)");
    }
    if p.top_p.is_some_and(|t| !(t > 0.0 && t <= 1.0)) {
        return bad("Range of top_p should be (0.0, 1.0]");
    }
    if p.top_k.is_some_and(|k| k < 0) {
        return bad("Range of top_k should be [0, 2147483647]");
    }
    if p.max_tokens.is_some_and(|m| m < 1) {
        return bad("Range of max_tokens should be [1, 2147483647]");
    }
    if p.repetition_penalty.is_some_and(|r| r <= 0.0 || r.is_nan()) {
        return bad("repetition_penalty should be greater than 0.0");
    }
    if p.presence_penalty
        .is_some_and(|r| !(-2.0..=2.0).contains(&r))
    {
        return bad("Range of presence_penalty should be [-2.0, 2.0]");
    }
    if let Some(stop) = &p.stop {
        if !(stop.is_string() || stop.is_array()) {
            return bad("Required parameter(parameters.stop) missing or invalid, please check the request parameters.");
        }
    }
    if p.max_completion_tokens.is_some_and(|m| m < 1) {
        return bad("Range of max_completion_tokens should be [1, 2147483647]");
    }
    if p.n.is_some_and(|n| n != 1) {
        return bad("The n parameter must be 1: berth generates one answer per request.");
    }
    if p.top_logprobs.is_some_and(|n| !(0..=5).contains(&n)) {
        return bad("Range of top_logprobs should be [0, 5]");
    }
    for (name, on) in [
        ("enable_search", p.enable_search),
        ("enable_code_interpreter", p.enable_code_interpreter),
        ("enable_thinking", p.enable_thinking),
    ] {
        if on == Some(true) {
            return Err(GatewayError::InvalidParameter(format!(
                "The {name} parameter is not supported by this deployment; leave it unset or false."
            )));
        }
    }
    if format == Format::Text {
        let has_tools = p
            .tools
            .as_ref()
            .is_some_and(|t| t.as_array().is_none_or(|a| !a.is_empty()));
        if has_tools {
            return bad("The tools parameter requires result_format \"message\".");
        }
        if p.logprobs == Some(true) {
            return bad("The logprobs parameter requires result_format \"message\".");
        }
    }
    Ok((format, p.incremental_output.unwrap_or(false)))
}

/// The OpenAI request for a native one. `prompt` becomes a single user message.
fn to_chat(req: &GenerationRequest, stream: bool) -> ChatRequest<'_> {
    let messages = match (&req.input.messages, &req.input.prompt) {
        (Some(m), _) if !m.is_empty() => m.clone(),
        (_, prompt) => vec![ChatMessage {
            role: "user".into(),
            content: serde_json::Value::String(prompt.clone().unwrap_or_default()),
            extra: Default::default(),
        }],
    };
    let p = &req.parameters;
    ChatRequest {
        model: &req.model,
        messages,
        stream,
        // Usage on every chunk, so each native event carries the prompt's size from the first.
        stream_options: stream.then_some(StreamOptions {
            include_usage: Some(true),
            continuous_usage_stats: Some(true),
        }),
        temperature: p.temperature,
        top_p: p.top_p,
        top_k: p.top_k,
        seed: p.seed,
        max_tokens: p.max_completion_tokens.or(p.max_tokens),
        stop: p.stop.clone(),
        repetition_penalty: p.repetition_penalty,
        presence_penalty: p.presence_penalty,
        tools: p.tools.clone(),
        tool_choice: p.tool_choice.clone(),
        parallel_tool_calls: p.parallel_tool_calls,
        response_format: p.response_format.clone(),
        logprobs: p.logprobs,
        top_logprobs: p.top_logprobs,
    }
}

fn output<'a>(
    format: Format,
    text: &'a str,
    finish_reason: &'a str,
    tool_calls: &'a [serde_json::Value],
    logprobs: Option<&'a serde_json::Value>,
) -> Output<'a> {
    match format {
        Format::Text => Output::Text {
            text,
            finish_reason,
        },
        Format::Message => Output::Message {
            choices: [MessageChoice {
                finish_reason,
                message: OutputMessage {
                    role: "assistant",
                    content: text,
                    tool_calls: (!tool_calls.is_empty()).then_some(tool_calls),
                },
                logprobs,
            }],
        },
    }
}

/// Folds OpenAI tool-call deltas into the calls so far: a delta with the `index` of a known
/// call continues it (its `arguments` are appended, `id` and `name` filled in), any other
/// starts a new call. `berth engine` sends each call whole; other servers send pieces.
fn merge_calls(calls: &mut Vec<serde_json::Value>, deltas: Vec<serde_json::Value>) {
    use serde_json::Value;
    for d in deltas {
        let index = d.get("index").cloned();
        let known = index
            .as_ref()
            .and_then(|i| calls.iter_mut().find(|c| c.get("index") == Some(i)));
        let Some(call) = known else {
            calls.push(d);
            continue;
        };
        for key in ["id", "type"] {
            if let Some(v) = d.get(key).filter(|v| !v.is_null()) {
                call[key] = v.clone();
            }
        }
        let Some(f) = d.get("function") else { continue };
        if !call.get("function").is_some_and(Value::is_object) {
            call["function"] = serde_json::json!({});
        }
        if let Some(name) = f
            .get("name")
            .and_then(Value::as_str)
            .filter(|n| !n.is_empty())
        {
            call["function"]["name"] = name.into();
        }
        if let Some(piece) = f.get("arguments").and_then(Value::as_str) {
            let mut args = call["function"]["arguments"]
                .as_str()
                .unwrap_or("")
                .to_owned();
            args.push_str(piece);
            call["function"]["arguments"] = args.into();
        }
    }
}

/// Native tool calls carry their position (`index`); OpenAI whole answers leave it out.
fn with_indexes(calls: &mut [serde_json::Value], first: usize) {
    for (i, c) in calls.iter_mut().enumerate() {
        if let Some(o) = c.as_object_mut() {
            o.entry("index").or_insert_with(|| (first + i).into());
        }
    }
}

/// A replica's error status as a native error, with its message when it sent one.
fn upstream_error(status: u16, body: &[u8]) -> GatewayError {
    let message = serde_json::from_slice::<ErrorPeek>(body)
        .ok()
        .and_then(|e| e.error.message)
        .unwrap_or_else(|| format!("The model service answered HTTP {status}."));
    GatewayError::UpstreamStatus { status, message }
}

/// Translates an upstream OpenAI stream into native events, one per content chunk.
struct NativeStream {
    upstream: BodyReader,
    frames: Frames,
    usage: Accounting,
    _guard: InFlight,
    request_id: String,
    format: Format,
    incremental: bool,
    next_id: u64,
    /// The full text so far (`incremental_output: false`) or the delta not yet sent (`true`).
    text: String,
    /// Tool calls: all so far (`incremental_output: false`) or those not yet sent (`true`).
    tool_calls: Vec<serde_json::Value>,
    /// Log-probability entries, kept like `text` (`None`: not asked for).
    logprobs: Option<Vec<serde_json::Value>>,
    output_tokens: u64,
    upstream_usage: Option<Usage>,
    /// Set by the chunk that carries `finish_reason`; the last event waits for the usage chunk
    /// that follows it, so it can carry exact usage.
    finish: Option<String>,
    finished: bool,
    upstream_done: bool,
}

impl NativeStream {
    fn on_event(&mut self, ev: &[u8], out: &mut BytesMut) {
        let Some(data) = sse::data(ev) else { return };
        if data == b"[DONE]" {
            self.finish_stream(out);
            return;
        }
        let Ok(chunk) = serde_json::from_slice::<ChatCompletionChunk>(data) else {
            tracing::debug!("skipping an upstream event that is not a chat completion chunk");
            return;
        };
        if let Some(u) = chunk.usage {
            self.upstream_usage = Some(u);
        }
        match chunk.choices.into_iter().next() {
            Some(choice) => {
                let delta = choice.delta.content.as_deref().unwrap_or("");
                if !delta.is_empty() {
                    self.output_tokens += 1;
                    self.usage.saw_chunks(1);
                    self.text.push_str(delta);
                }
                let mut news = !delta.is_empty();
                if let Some(calls) = choice.delta.tool_calls.filter(|c| !c.is_empty()) {
                    if self.incremental {
                        self.tool_calls.extend(calls);
                    } else {
                        merge_calls(&mut self.tool_calls, calls);
                    }
                    news = true;
                }
                if let (Some(all), Some(lp)) = (self.logprobs.as_mut(), choice.logprobs) {
                    if let Some(entries) = lp.get("content").and_then(|c| c.as_array()) {
                        all.extend(entries.iter().cloned());
                    }
                }
                if let Some(reason) = &choice.finish_reason {
                    self.finish = Some(reason.clone());
                    if self.upstream_usage.is_some() {
                        self.finish_stream(out);
                    }
                } else if news {
                    self.write_result(out, "null");
                }
            }
            None if self.finish.is_some() => self.finish_stream(out),
            None => {}
        }
    }

    /// The last event: the finish reason and exact usage.
    fn finish_stream(&mut self, out: &mut BytesMut) {
        if self.finished {
            return;
        }
        if self.finish.is_none() && self.upstream_usage.is_none() && self.output_tokens == 0 {
            self.write_error(
                out,
                ErrorCode::InternalError,
                "Failed to request model service.",
            );
            return;
        }
        let reason = self.finish.take().unwrap_or_else(|| "stop".into());
        if let Some(u) = self.upstream_usage {
            self.output_tokens = u.completion_tokens;
            self.usage.record(Tokens::from(&u));
        } else {
            self.usage.record(Tokens {
                input: 0,
                output: self.output_tokens,
                total: self.output_tokens,
            });
        }
        self.write_result(out, &reason);
        self.finished = true;
    }

    fn write_result(&mut self, out: &mut BytesMut, finish_reason: &str) {
        // A replica with continuous usage stats gives exact running counts; otherwise the
        // prompt's size comes with the last chunk and the output is counted in content chunks.
        let (input, output_tokens) = self.upstream_usage.map_or((0, self.output_tokens), |u| {
            (u.prompt_tokens, u.completion_tokens)
        });
        let logprobs = self
            .logprobs
            .as_ref()
            .map(|c| serde_json::json!({ "content": c }));
        let event = GenerationResponse {
            output: output(
                self.format,
                &self.text,
                finish_reason,
                &self.tool_calls,
                logprobs.as_ref(),
            ),
            usage: GenerationUsage::new(input, output_tokens),
            request_id: &self.request_id,
        };
        self.next_id += 1;
        let _ = write!(
            Writer(out),
            "id:{}\nevent:result\n:HTTP_STATUS/200\ndata:",
            self.next_id
        );
        let _ = serde_json::to_writer(out.writer(), &event);
        out.extend_from_slice(b"\n\n");
        if self.incremental {
            self.text.clear();
            self.tool_calls.clear();
            if let Some(l) = self.logprobs.as_mut() {
                l.clear();
            }
        }
    }

    fn write_error(&mut self, out: &mut BytesMut, code: ErrorCode, message: &str) {
        self.usage.set_code(code.http_status());
        self.next_id += 1;
        let _ = write!(
            Writer(out),
            "id:{}\nevent:error\n:HTTP_STATUS/{}\ndata:",
            self.next_id,
            code.http_status()
        );
        let body = serde_json::json!({
            "code": code.as_str(),
            "message": message,
            "request_id": self.request_id,
        });
        let _ = serde_json::to_writer(out.writer(), &body);
        out.extend_from_slice(b"\n\n");
        self.finished = true;
    }
}

/// `fmt::Write` into a `BytesMut`.
struct Writer<'a>(&'a mut BytesMut);

impl std::fmt::Write for Writer<'_> {
    fn write_str(&mut self, s: &str) -> std::fmt::Result {
        self.0.extend_from_slice(s.as_bytes());
        Ok(())
    }
}

impl Stream for NativeStream {
    type Item = Result<Bytes, GatewayError>;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        let this = &mut *self;
        loop {
            if this.upstream_done {
                return Poll::Ready(None);
            }
            let mut out = BytesMut::new();
            match Pin::new(&mut this.upstream).poll_next(cx) {
                Poll::Pending => return Poll::Pending,
                Poll::Ready(Some(Ok(chunk))) => {
                    let complete = this.frames.push(chunk);
                    if !this.finished {
                        for ev in sse::events(&complete) {
                            this.on_event(&ev, &mut out);
                        }
                    }
                }
                Poll::Ready(Some(Err(e))) => {
                    this.upstream_done = true;
                    if !this.finished {
                        tracing::warn!(error = %e, "replica broke off a stream");
                        this.write_error(
                            &mut out,
                            ErrorCode::InternalError,
                            "Failed to request model service.",
                        );
                    }
                }
                Poll::Ready(None) => {
                    this.upstream_done = true;
                    let rest = this.frames.rest();
                    if !this.finished && !rest.is_empty() {
                        this.on_event(&rest, &mut out);
                    }
                    this.finish_stream(&mut out);
                }
            }
            if !out.is_empty() {
                this.usage.first_chunk();
                return Poll::Ready(Some(Ok(out.freeze())));
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn req(json: &str) -> Result<(Format, bool), GatewayError> {
        validate(&parse(json.as_bytes())?)
    }

    #[test]
    fn validation_follows_dashscope_ranges() {
        let ok = r#"{"model":"m","input":{"prompt":"hi"}}"#;
        assert_eq!(req(ok).unwrap(), (Format::Text, false));
        let cases = [
            (
                r#"{"model":"m","input":{}}"#,
                "Either \"prompt\" or \"messages\" must exist and cannot both be none",
            ),
            (
                r#"{"model":"m","input":{"messages":[]}}"#,
                "Either \"prompt\" or \"messages\" must exist",
            ),
            (
                r#"{"model":"m","input":{"prompt":"x"},"parameters":{"temperature":2.0}}"#,
                "Temperature should be in [0.0, 2.0)",
            ),
            (
                r#"{"model":"m","input":{"prompt":"x"},"parameters":{"top_p":0}}"#,
                "Range of top_p should be (0.0, 1.0]",
            ),
            (
                r#"{"model":"m","input":{"prompt":"x"},"parameters":{"max_tokens":0}}"#,
                "Range of max_tokens",
            ),
            (
                r#"{"model":"m","input":{"prompt":"x"},"parameters":{"result_format":"xml"}}"#,
                "result_format",
            ),
            (
                r#"{"model":"m","input":{"prompt":"x"},"parameters":{"temperature":"hot"}}"#,
                "parameters.temperature",
            ),
            (r#"{"model":"m"}"#, "input"),
            (r#"not json"#, "Required body invalid"),
        ];
        for (body, want) in cases {
            let err = req(body).unwrap_err();
            assert!(matches!(err, GatewayError::InvalidParameter(_)), "{body}");
            assert!(err.message().contains(want), "{body}: {}", err.message());
        }
        let m = r#"{"model":"m","input":{"messages":[{"role":"user","content":"x"}]},"parameters":{"result_format":"message","incremental_output":true,"temperature":0,"top_p":1}}"#;
        assert_eq!(req(m).unwrap(), (Format::Message, true));
    }

    #[test]
    fn unsupported_and_message_only_parameters_are_refused() {
        let cases = [
            (r#"{"n":2}"#, "The n parameter"),
            (
                r#"{"top_logprobs":6,"result_format":"message"}"#,
                "top_logprobs",
            ),
            (r#"{"enable_search":true}"#, "enable_search"),
            (r#"{"enable_thinking":true}"#, "enable_thinking"),
            (
                r#"{"tools":[{"type":"function","function":{"name":"f"}}]}"#,
                "requires result_format",
            ),
            (r#"{"logprobs":true}"#, "requires result_format"),
            (r#"{"max_completion_tokens":0}"#, "max_completion_tokens"),
        ];
        for (params, want) in cases {
            let body = format!(r#"{{"model":"m","input":{{"prompt":"x"}},"parameters":{params}}}"#);
            let err = req(&body).unwrap_err();
            assert!(err.message().contains(want), "{params}: {}", err.message());
        }
        let ok = r#"{"model":"m","input":{"prompt":"x"},"parameters":{"result_format":"message","n":1,
            "tools":[{"type":"function","function":{"name":"f"}}],"logprobs":true,"top_logprobs":5,"enable_search":false}}"#;
        assert!(req(ok).is_ok());
    }

    #[test]
    fn tool_and_structure_fields_reach_the_replica_unchanged() {
        let body = br#"{"model":"m","input":{"messages":[{"role":"user","content":"hi"},
            {"role":"assistant","content":"","tool_calls":[{"id":"call_1","type":"function","function":{"name":"f","arguments":"{}"}}]},
            {"role":"tool","content":"42","tool_call_id":"call_1"}]},
            "parameters":{"result_format":"message","tools":[{"type":"function","function":{"name":"f","parameters":{"type":"object"}}}],
            "tool_choice":{"type":"function","function":{"name":"f"}},"parallel_tool_calls":false,
            "response_format":{"type":"json_object"},"logprobs":true,"top_logprobs":2,"max_completion_tokens":9}}"#;
        let r = parse(body).unwrap();
        let v = serde_json::to_value(to_chat(&r, false)).unwrap();
        let raw: serde_json::Value = serde_json::from_slice(body).unwrap();
        for key in [
            "tools",
            "tool_choice",
            "parallel_tool_calls",
            "response_format",
            "logprobs",
            "top_logprobs",
        ] {
            assert_eq!(v[key], raw["parameters"][key], "{key}");
        }
        assert_eq!(v["max_tokens"], 9);
        assert_eq!(v["messages"], raw["input"]["messages"]);
    }

    #[test]
    fn streamed_call_pieces_merge_by_index() {
        use serde_json::json;
        let mut calls = Vec::new();
        merge_calls(
            &mut calls,
            vec![
                json!({"index":0,"id":"c0","type":"function","function":{"name":"f","arguments":"{\"a\""}}),
            ],
        );
        merge_calls(
            &mut calls,
            vec![
                json!({"index":0,"function":{"arguments":": 1}"}}),
                json!({"index":1,"id":"c1","function":{"name":"g","arguments":"{}"}}),
            ],
        );
        assert_eq!(calls.len(), 2);
        assert_eq!(
            calls[0]["function"],
            json!({"name":"f","arguments":"{\"a\": 1}"})
        );
        assert_eq!(calls[0]["id"], "c0");
        assert_eq!(calls[1]["function"]["name"], "g");
        let mut whole = vec![json!({"id":"a"}), json!({"id":"b","index":7})];
        with_indexes(&mut whole, 0);
        assert_eq!(
            (whole[0]["index"].clone(), whole[1]["index"].clone()),
            (json!(0), json!(7))
        );
    }

    #[test]
    fn prompt_becomes_one_user_message_and_streams_ask_for_usage() {
        let r = parse(br#"{"model":"m","input":{"prompt":"hi"},"parameters":{"seed":7,"stop":["x"],"top_k":5}}"#).unwrap();
        let v = serde_json::to_value(to_chat(&r, true)).unwrap();
        assert_eq!(
            v,
            serde_json::json!({"model":"m","messages":[{"role":"user","content":"hi"}],"stream":true,
                "stream_options":{"include_usage":true,"continuous_usage_stats":true},"seed":7,"stop":["x"],"top_k":5})
        );
        let v = serde_json::to_value(to_chat(&r, false)).unwrap();
        assert!(v.get("stream").is_none() && v.get("stream_options").is_none());
    }
}

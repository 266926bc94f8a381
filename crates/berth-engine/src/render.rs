//! Turns generation events into OpenAI objects: whole responses and SSE chunk frames, for chat
//! (`chat.completion[.chunk]`) and text (`text_completion`) endpoints alike.

use bytes::Bytes;
use serde::Serialize;

use crate::api::{
    AssistantMessage, ChatChoice, ChatCompletion, ChatCompletionChunk, ChoiceLogprobs, ChunkChoice,
    Delta, ErrorBody, ErrorEnvelope, TextChoice, TextCompletion, TokenLogprob, ToolCall,
    ToolCallDelta, Usage,
};
use crate::worker::FinishReason;

/// Which OpenAI endpoint a response is for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Endpoint {
    /// `/v1/chat/completions`
    Chat,
    /// `/v1/completions`
    Text,
}

/// Identity of one response: shared by all its chunks.
#[derive(Debug, Clone)]
pub struct Renderer {
    pub endpoint: Endpoint,
    pub id: String,
    pub created: u64,
    pub model: String,
    pub include_usage: bool,
    /// `Some(prompt tokens)`: every chunk carries the usage so far
    /// (`stream_options.continuous_usage_stats`).
    pub continuous_usage: Option<u32>,
    /// The request asked for `logprobs`: choices carry `{"content": [...]}` instead of `null`.
    pub logprobs: bool,
}

/// The assistant's answer of a non-streamed chat response.
#[derive(Debug, Clone, Default)]
pub struct Answer {
    /// `None` when the answer is only tool calls.
    pub content: Option<String>,
    pub tool_calls: Vec<ToolCall>,
    pub logprobs: Vec<TokenLogprob>,
}

/// A fresh tool call id (`call_` and 24 hex digits).
pub fn call_id() -> String {
    let hex = uuid::Uuid::new_v4().simple().to_string();
    format!("call_{}", &hex[..24])
}

/// One SSE `data:` frame.
pub fn sse_frame(value: &impl Serialize) -> Bytes {
    let json = serde_json::to_string(value).unwrap_or_else(|_| "{}".into());
    Bytes::from(format!("data: {json}\n\n"))
}

/// The stream terminator.
pub const SSE_DONE: &[u8] = b"data: [DONE]\n\n";

impl Renderer {
    /// A renderer with a fresh id (`chatcmpl-...` or `cmpl-...`).
    pub fn new(endpoint: Endpoint, model: String, include_usage: bool) -> Self {
        let prefix = match endpoint {
            Endpoint::Chat => "chatcmpl",
            Endpoint::Text => "cmpl",
        };
        let created = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_secs())
            .unwrap_or(0);
        Self {
            endpoint,
            id: format!("{prefix}-{}", uuid::Uuid::new_v4().simple()),
            created,
            model,
            include_usage,
            continuous_usage: None,
            logprobs: false,
        }
    }

    fn logprobs_of(&self, content: Vec<TokenLogprob>) -> Option<ChoiceLogprobs> {
        self.logprobs.then_some(ChoiceLogprobs { content })
    }

    /// The complete (non-streamed) response.
    pub fn response(
        &self,
        answer: Answer,
        reason: FinishReason,
        usage: Usage,
    ) -> serde_json::Value {
        let logprobs = self.logprobs_of(answer.logprobs);
        let v = match self.endpoint {
            Endpoint::Chat => serde_json::to_value(ChatCompletion {
                id: self.id.clone(),
                object: "chat.completion",
                created: self.created,
                model: self.model.clone(),
                choices: vec![ChatChoice {
                    index: 0,
                    message: AssistantMessage {
                        role: "assistant",
                        content: answer.content,
                        tool_calls: answer.tool_calls,
                    },
                    logprobs,
                    finish_reason: reason.as_str(),
                }],
                usage,
            }),
            Endpoint::Text => serde_json::to_value(TextCompletion {
                id: self.id.clone(),
                object: "text_completion",
                created: self.created,
                model: self.model.clone(),
                choices: vec![TextChoice {
                    index: 0,
                    text: answer.content.unwrap_or_default(),
                    logprobs: None,
                    finish_reason: Some(reason.as_str()),
                }],
                usage: Some(usage),
            }),
        };
        v.unwrap_or_default()
    }

    /// The first frame of a chat stream (announces the assistant role); none for text.
    pub fn start(&self) -> Option<Bytes> {
        match self.endpoint {
            Endpoint::Chat => Some(self.chat_chunk(
                Delta {
                    role: Some("assistant"),
                    content: Some(String::new()),
                    tool_calls: None,
                },
                None,
                self.usage_so_far(0),
                None,
            )),
            Endpoint::Text => None,
        }
    }

    /// A frame carrying generated text; `generated` is the number of tokens so far, `logprobs`
    /// those of the tokens it carries.
    pub fn text(&self, text: String, generated: u32, logprobs: Vec<TokenLogprob>) -> Bytes {
        let usage = self.usage_so_far(generated);
        match self.endpoint {
            Endpoint::Chat => self.chat_chunk(
                Delta {
                    role: None,
                    content: Some(text),
                    tool_calls: None,
                },
                None,
                usage,
                self.logprobs_of(logprobs),
            ),
            Endpoint::Text => self.text_chunk(text, None, usage),
        }
    }

    /// A frame carrying one whole tool call, the `index`-th of the answer.
    pub fn tool_call(
        &self,
        index: u32,
        call: ToolCall,
        generated: u32,
        logprobs: Vec<TokenLogprob>,
    ) -> Bytes {
        self.chat_chunk(
            Delta {
                role: None,
                content: None,
                tool_calls: Some(vec![ToolCallDelta { index, call }]),
            },
            None,
            self.usage_so_far(generated),
            self.logprobs_of(logprobs),
        )
    }

    /// The usage to put on a chunk with continuous usage stats.
    fn usage_so_far(&self, generated: u32) -> Option<Usage> {
        self.continuous_usage
            .map(|prompt| Usage::new(prompt, generated))
    }

    /// The closing frames: finish reason, the usage chunk if asked for, and `[DONE]`.
    pub fn finish(&self, reason: FinishReason, usage: Usage) -> Bytes {
        let mut out = Vec::new();
        match self.endpoint {
            Endpoint::Chat => {
                let running = self.continuous_usage.map(|_| usage);
                out.extend_from_slice(&self.chat_chunk(
                    Delta::default(),
                    Some(reason),
                    running,
                    None,
                ));
                if self.include_usage {
                    out.extend_from_slice(&sse_frame(&ChatCompletionChunk {
                        id: self.id.clone(),
                        object: "chat.completion.chunk",
                        created: self.created,
                        model: self.model.clone(),
                        choices: vec![],
                        usage: Some(Some(usage)),
                    }));
                }
            }
            Endpoint::Text => {
                let running = self.continuous_usage.map(|_| usage);
                out.extend_from_slice(&self.text_chunk(String::new(), Some(reason), running));
                if self.include_usage {
                    out.extend_from_slice(&sse_frame(&TextCompletion {
                        id: self.id.clone(),
                        object: "text_completion",
                        created: self.created,
                        model: self.model.clone(),
                        choices: vec![],
                        usage: Some(usage),
                    }));
                }
            }
        }
        out.extend_from_slice(SSE_DONE);
        Bytes::from(out)
    }

    /// An error frame followed by `[DONE]` (the `openai` SDK raises on it).
    pub fn error(&self, message: &str) -> Bytes {
        let mut out = sse_frame(&ErrorEnvelope {
            error: ErrorBody {
                message: message.to_owned(),
                kind: "server_error",
                param: None,
                code: None,
            },
        })
        .to_vec();
        out.extend_from_slice(SSE_DONE);
        Bytes::from(out)
    }

    fn chat_chunk(
        &self,
        delta: Delta,
        reason: Option<FinishReason>,
        usage: Option<Usage>,
        logprobs: Option<ChoiceLogprobs>,
    ) -> Bytes {
        sse_frame(&ChatCompletionChunk {
            id: self.id.clone(),
            object: "chat.completion.chunk",
            created: self.created,
            model: self.model.clone(),
            choices: vec![ChunkChoice {
                index: 0,
                delta,
                logprobs,
                finish_reason: reason.map(FinishReason::as_str),
            }],
            usage: self.include_usage.then_some(usage),
        })
    }

    fn text_chunk(
        &self,
        text: String,
        reason: Option<FinishReason>,
        usage: Option<Usage>,
    ) -> Bytes {
        sse_frame(&TextCompletion {
            id: self.id.clone(),
            object: "text_completion",
            created: self.created,
            model: self.model.clone(),
            choices: vec![TextChoice {
                index: 0,
                text,
                logprobs: None,
                finish_reason: reason.map(FinishReason::as_str),
            }],
            usage,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::{json, Value};

    fn frames(b: &Bytes) -> Vec<Value> {
        let s = std::str::from_utf8(b).unwrap();
        assert!(s.ends_with("\n\n"), "frames end with a blank line: {s:?}");
        s.split("\n\n")
            .filter(|f| !f.is_empty())
            .map(|f| {
                let data = f.strip_prefix("data: ").expect("data: prefix");
                if data == "[DONE]" {
                    Value::String("[DONE]".into())
                } else {
                    serde_json::from_str(data).unwrap()
                }
            })
            .collect()
    }

    fn text(t: &str) -> Answer {
        Answer {
            content: Some(t.into()),
            ..Answer::default()
        }
    }

    fn chat(include_usage: bool) -> Renderer {
        let mut r = Renderer::new(Endpoint::Chat, "smol".into(), include_usage);
        r.id = "chatcmpl-1".into();
        r.created = 42;
        r
    }

    #[test]
    fn chat_stream_frames() {
        let r = chat(false);
        let start = frames(&r.start().unwrap());
        assert_eq!(
            start[0],
            json!({"id":"chatcmpl-1","object":"chat.completion.chunk","created":42,"model":"smol",
                   "choices":[{"index":0,"delta":{"role":"assistant","content":""},
                               "logprobs":null,"finish_reason":null}]})
        );
        let text = frames(&r.text("Par".into(), 1, vec![]));
        assert_eq!(text[0]["choices"][0]["delta"], json!({"content":"Par"}));
        assert!(text[0].get("usage").is_none());
        let end = frames(&r.finish(FinishReason::Stop, Usage::new(10, 3)));
        assert_eq!(end.len(), 2);
        assert_eq!(end[0]["choices"][0]["finish_reason"], "stop");
        assert_eq!(end[0]["choices"][0]["delta"], json!({}));
        assert_eq!(end[1], "[DONE]");
    }

    #[test]
    fn chat_stream_with_usage_chunk() {
        let r = chat(true);
        let text = frames(&r.text("x".into(), 1, vec![]));
        assert_eq!(text[0]["usage"], Value::Null);
        let end = frames(&r.finish(FinishReason::Length, Usage::new(10, 3)));
        assert_eq!(end.len(), 3);
        assert_eq!(end[0]["choices"][0]["finish_reason"], "length");
        assert_eq!(end[1]["choices"], json!([]));
        assert_eq!(
            end[1]["usage"],
            json!({"prompt_tokens":10,"completion_tokens":3,"total_tokens":13})
        );
        assert_eq!(end[2], "[DONE]");
    }

    #[test]
    fn continuous_usage_is_on_every_chunk() {
        let mut r = chat(true);
        r.continuous_usage = Some(10);
        let start = frames(&r.start().unwrap());
        assert_eq!(
            start[0]["usage"],
            json!({"prompt_tokens":10,"completion_tokens":0,"total_tokens":10})
        );
        let text = frames(&r.text("x".into(), 2, vec![]));
        assert_eq!(
            text[0]["usage"],
            json!({"prompt_tokens":10,"completion_tokens":2,"total_tokens":12})
        );
        let end = frames(&r.finish(FinishReason::Stop, Usage::new(10, 3)));
        assert_eq!(end.len(), 3);
        assert_eq!(end[0]["choices"][0]["finish_reason"], "stop");
        assert_eq!(end[0]["usage"]["completion_tokens"], 3);
        assert_eq!(end[1]["choices"], json!([]));
        assert_eq!(end[1]["usage"]["total_tokens"], 13);

        let mut r = Renderer::new(Endpoint::Text, "smol".into(), true);
        r.continuous_usage = Some(4);
        let t = frames(&r.text("abc".into(), 1, vec![]));
        assert_eq!(t[0]["usage"]["total_tokens"], 5);
    }

    #[test]
    fn text_stream_and_response() {
        let mut r = Renderer::new(Endpoint::Text, "smol".into(), false);
        r.id = "cmpl-1".into();
        assert!(r.start().is_none());
        let t = frames(&r.text("abc".into(), 1, vec![]));
        assert_eq!(t[0]["object"], "text_completion");
        assert_eq!(t[0]["choices"][0]["text"], "abc");
        let full = r.response(text("abc"), FinishReason::Stop, Usage::new(2, 1));
        assert_eq!(full["choices"][0]["finish_reason"], "stop");
        assert_eq!(full["usage"]["total_tokens"], 3);
    }

    #[test]
    fn chat_response_shape() {
        let r = chat(false);
        let full = r.response(text("Paris"), FinishReason::Length, Usage::new(5, 1));
        assert_eq!(full["object"], "chat.completion");
        assert_eq!(
            full["choices"][0]["message"],
            json!({"role":"assistant","content":"Paris"})
        );
        assert_eq!(full["choices"][0]["finish_reason"], "length");
    }

    #[test]
    fn tool_calls_and_logprobs() {
        let mut r = chat(false);
        r.logprobs = true;
        let call = ToolCall {
            id: "call_1".into(),
            kind: "function",
            function: crate::api::FunctionCall {
                name: "get_weather".into(),
                arguments: r#"{"city": "Paris"}"#.into(),
            },
        };
        let lp = TokenLogprob {
            token: "{".into(),
            logprob: -0.5,
            bytes: b"{".to_vec(),
            top_logprobs: vec![],
        };
        let full = r.response(
            Answer {
                content: None,
                tool_calls: vec![call.clone()],
                logprobs: vec![lp.clone()],
            },
            FinishReason::ToolCalls,
            Usage::new(5, 1),
        );
        assert_eq!(
            full["choices"][0]["message"],
            json!({"role": "assistant", "content": null, "tool_calls": [{"id": "call_1", "type": "function",
                   "function": {"name": "get_weather", "arguments": "{\"city\": \"Paris\"}"}}]})
        );
        assert_eq!(full["choices"][0]["finish_reason"], "tool_calls");
        assert_eq!(
            full["choices"][0]["logprobs"],
            json!({"content": [{"token": "{", "logprob": -0.5, "bytes": [123], "top_logprobs": []}]})
        );
        let f = frames(&r.tool_call(1, call, 3, vec![]));
        assert_eq!(
            f[0]["choices"][0]["delta"],
            json!({"tool_calls": [{"index": 1, "id": "call_1", "type": "function",
                   "function": {"name": "get_weather", "arguments": "{\"city\": \"Paris\"}"}}]})
        );
        assert_eq!(f[0]["choices"][0]["logprobs"], json!({"content": []}));
        // Without logprobs asked for, choices say null.
        let plain = frames(&chat(false).text("x".into(), 1, vec![]));
        assert_eq!(plain[0]["choices"][0]["logprobs"], Value::Null);
        assert!(call_id().starts_with("call_") && call_id().len() == 29);
    }

    #[test]
    fn error_frame_then_done() {
        let f = frames(&chat(false).error("boom"));
        assert_eq!(f[0]["error"]["message"], "boom");
        assert_eq!(f[1], "[DONE]");
    }

    #[test]
    fn ids_have_the_endpoint_prefix() {
        assert!(Renderer::new(Endpoint::Chat, "m".into(), false)
            .id
            .starts_with("chatcmpl-"));
        assert!(Renderer::new(Endpoint::Text, "m".into(), false)
            .id
            .starts_with("cmpl-"));
    }
}

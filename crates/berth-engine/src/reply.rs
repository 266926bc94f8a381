//! From generated text to the answer a client reads: content, the tool calls found in it,
//! log-probabilities and the finish reason, for whole answers ([`Collector`]) and streams
//! ([`StreamShaper`]).

use bytes::Bytes;
use llguidance::Matcher;

use crate::api::{FunctionCall, TokenLogprob, ToolCall, Usage};
use crate::render::{call_id, Answer, Renderer};
use crate::tools::{CallScanner, FoundCall, Piece, Tools};
use crate::worker::FinishReason;

/// What a chat request wants of its output besides text.
#[derive(Default)]
pub struct Output {
    /// Tools the answer may call (`None`: no tools, or `tool_choice` `none`).
    pub tools: Option<Tools>,
    /// `Some(n)`: log-probabilities with `n` alternatives.
    pub logprobs: Option<u8>,
    /// The compiled output grammar, if the output is constrained.
    pub grammar: Option<Matcher>,
}

impl std::fmt::Debug for Output {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Output")
            .field("tools", &self.tools)
            .field("logprobs", &self.logprobs)
            .field("constrained", &self.grammar.is_some())
            .finish()
    }
}

fn tool_call(c: FoundCall) -> ToolCall {
    ToolCall {
        id: call_id(),
        kind: "function",
        function: FunctionCall {
            name: c.name,
            arguments: c.arguments,
        },
    }
}

/// A generation that stopped by itself after making calls ends with `tool_calls`.
fn reason_with_calls(reason: FinishReason, calls: usize) -> FinishReason {
    if calls > 0 && reason == FinishReason::Stop {
        FinishReason::ToolCalls
    } else {
        reason
    }
}

/// Collects a whole answer.
#[derive(Debug, Default)]
pub struct Collector {
    text: String,
    logprobs: Vec<TokenLogprob>,
}

impl Collector {
    /// Adds generated text and its tokens' log-probabilities.
    pub fn push(&mut self, text: &str, logprobs: Vec<TokenLogprob>) {
        self.text.push_str(text);
        self.logprobs.extend(logprobs);
    }

    /// The answer: with `tools`, calls are taken out of the text (and `content` is `null` when
    /// nothing else is left).
    pub fn finish(self, tools: Option<&Tools>, reason: FinishReason) -> (Answer, FinishReason) {
        let Some(tools) = tools else {
            return (
                Answer {
                    content: Some(self.text),
                    tool_calls: Vec::new(),
                    logprobs: self.logprobs,
                },
                reason,
            );
        };
        let mut scanner = CallScanner::new(tools.clone());
        let mut pieces = scanner.push(&self.text);
        pieces.extend(scanner.finish());
        let mut content = String::new();
        let mut calls = Vec::new();
        for p in pieces {
            match p {
                Piece::Content(c) => content.push_str(&c),
                Piece::Call(c) => calls.push(tool_call(c)),
            }
        }
        let content = if calls.is_empty() {
            Some(content)
        } else {
            Some(content.trim().to_owned()).filter(|c| !c.is_empty())
        };
        let reason = reason_with_calls(reason, calls.len());
        (
            Answer {
                content,
                tool_calls: calls,
                logprobs: self.logprobs,
            },
            reason,
        )
    }
}

/// Turns a stream of generated text into SSE frames: content deltas, and with tools one
/// `tool_calls` delta per call as soon as the call is complete.
#[derive(Debug)]
pub struct StreamShaper {
    renderer: Renderer,
    scanner: Option<CallScanner>,
    /// Log-probabilities of tokens whose text the scanner still holds.
    pending: Vec<TokenLogprob>,
}

impl StreamShaper {
    /// A shaper that looks for calls of `tools`, if any.
    pub fn new(renderer: Renderer, tools: Option<Tools>) -> Self {
        Self {
            renderer,
            scanner: tools.map(CallScanner::new),
            pending: Vec::new(),
        }
    }

    /// The first frame, if the endpoint has one.
    pub fn start(&self) -> Option<Bytes> {
        self.renderer.start()
    }

    /// Frames for newly generated text (empty while everything is held back).
    pub fn text(&mut self, text: String, generated: u32, logprobs: Vec<TokenLogprob>) -> Bytes {
        let Some(scanner) = self.scanner.as_mut() else {
            return self.renderer.text(text, generated, logprobs);
        };
        self.pending.extend(logprobs);
        let pieces = scanner.push(&text);
        self.frames(pieces, generated)
    }

    fn frames(&mut self, pieces: Vec<Piece>, generated: u32) -> Bytes {
        let mut out = Vec::new();
        let before = self.scanner.as_ref().map_or(0, CallScanner::calls) - calls_in(&pieces);
        let mut index = before as u32;
        for p in pieces {
            let logprobs = std::mem::take(&mut self.pending);
            let frame = match p {
                Piece::Content(c) => self.renderer.text(c, generated, logprobs),
                Piece::Call(c) => {
                    index += 1;
                    self.renderer
                        .tool_call(index - 1, tool_call(c), generated, logprobs)
                }
            };
            out.extend_from_slice(&frame);
        }
        Bytes::from(out)
    }

    /// The closing frames; the finish reason is `tool_calls` when calls were made.
    pub fn finish(&mut self, reason: FinishReason, usage: Usage) -> Bytes {
        let mut out = Vec::new();
        let mut calls = 0;
        if let Some(scanner) = self.scanner.as_mut() {
            let pieces = scanner.finish();
            calls = scanner.calls();
            out.extend_from_slice(&self.frames(pieces, usage.completion_tokens));
        }
        if !self.pending.is_empty() {
            let logprobs = std::mem::take(&mut self.pending);
            out.extend_from_slice(&self.renderer.text(
                String::new(),
                usage.completion_tokens,
                logprobs,
            ));
        }
        let reason = reason_with_calls(reason, calls);
        out.extend_from_slice(&self.renderer.finish(reason, usage));
        Bytes::from(out)
    }

    /// An error frame and the end of the stream.
    pub fn error(&self, message: &str) -> Bytes {
        self.renderer.error(message)
    }
}

fn calls_in(pieces: &[Piece]) -> usize {
    pieces
        .iter()
        .filter(|p| matches!(p, Piece::Call(_)))
        .count()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::render::Endpoint;
    use serde_json::{json, Value};

    fn tools() -> Tools {
        let r: crate::api::ChatCompletionRequest =
            serde_json::from_value(json!({"messages": [], "tools": [
            {"type": "function", "function": {"name": "f", "parameters": {"type": "object"}}}]}))
            .unwrap();
        crate::tools::check(r.tools, r.tool_choice, r.parallel_tool_calls).unwrap()
    }

    const CALLS: &str = "<tool_call>\n{\"name\": \"f\", \"arguments\": {\"a\": 1}}\n</tool_call>\n<tool_call>\n{\"name\": \"f\", \"arguments\": {\"a\": 2}}\n</tool_call>";

    #[test]
    fn whole_answer_with_calls() {
        let mut c = Collector::default();
        c.push(CALLS, vec![]);
        let (a, reason) = c.finish(Some(&tools()), FinishReason::Stop);
        assert_eq!(reason, FinishReason::ToolCalls);
        assert_eq!(a.content, None);
        assert_eq!(a.tool_calls.len(), 2);
        assert_eq!(a.tool_calls[1].function.arguments, r#"{"a": 2}"#);
        assert_ne!(a.tool_calls[0].id, a.tool_calls[1].id);
        let mut c = Collector::default();
        c.push("hello", vec![]);
        let (a, reason) = c.finish(Some(&tools()), FinishReason::Stop);
        assert_eq!(
            (a.content.as_deref(), reason),
            (Some("hello"), FinishReason::Stop)
        );
        // Cut off by max_tokens: the reason stays `length`.
        let mut c = Collector::default();
        c.push(CALLS, vec![]);
        assert_eq!(
            c.finish(Some(&tools()), FinishReason::Length).1,
            FinishReason::Length
        );
    }

    fn frames(b: &[u8]) -> Vec<Value> {
        std::str::from_utf8(b)
            .unwrap()
            .split("\n\n")
            .filter_map(|f| f.strip_prefix("data: "))
            .filter(|d| *d != "[DONE]")
            .map(|d| serde_json::from_str(d).unwrap())
            .collect()
    }

    #[test]
    fn streamed_calls_are_indexed_deltas() {
        let mut s = StreamShaper::new(
            Renderer::new(Endpoint::Chat, "m".into(), false),
            Some(tools()),
        );
        let mut out = Vec::new();
        for ch in CALLS.chars() {
            out.extend_from_slice(&s.text(ch.to_string(), 1, vec![]));
        }
        out.extend_from_slice(&s.finish(FinishReason::Stop, Usage::new(3, 4)));
        let f = frames(&out);
        let calls: Vec<&Value> = f
            .iter()
            .filter_map(|c| c["choices"][0]["delta"].get("tool_calls"))
            .collect();
        assert_eq!(calls.len(), 2);
        assert_eq!(calls[0][0]["index"], 0);
        assert_eq!(calls[1][0]["index"], 1);
        assert_eq!(calls[1][0]["function"]["arguments"], r#"{"a": 2}"#);
        assert!(calls[0][0]["id"].as_str().unwrap().starts_with("call_"));
        assert_eq!(
            f.last().unwrap()["choices"][0]["finish_reason"],
            "tool_calls"
        );
        assert!(f
            .iter()
            .all(|c| c["choices"][0]["delta"].get("content").is_none()));
    }
}

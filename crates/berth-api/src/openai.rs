//! OpenAI Chat Completions wire types, as berth's gateway reads and writes them.
//!
//! The compatible-mode route passes client bodies through untouched, so only the few fields the
//! gateway must see are modelled for reading ([`ChatRequestPeek`], [`UsagePeek`]). The native
//! route builds a full [`ChatRequest`] and reads [`ChatCompletion`] / [`ChatCompletionChunk`].

use std::borrow::Cow;

use serde::{Deserialize, Serialize};

/// The fields of a client's chat request the gateway routes and accounts by; the rest of the
/// body is forwarded as it came.
#[derive(Debug, Deserialize)]
pub struct ChatRequestPeek<'a> {
    #[serde(borrow)]
    pub model: Cow<'a, str>,
    #[serde(default)]
    pub stream: Option<bool>,
    #[serde(default)]
    pub stream_options: Option<StreamOptions>,
}

/// `stream_options`.
#[derive(Debug, Clone, Copy, Default, Serialize, Deserialize)]
pub struct StreamOptions {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub include_usage: Option<bool>,
    /// With `include_usage`, usage so far on every chunk (vLLM's extension, which `berth engine`
    /// speaks); other servers ignore it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub continuous_usage_stats: Option<bool>,
}

/// A chat request built by the gateway (from a native request).
#[derive(Debug, Clone, Serialize)]
pub struct ChatRequest<'a> {
    pub model: &'a str,
    pub messages: Vec<ChatMessage>,
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    pub stream: bool,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub stream_options: Option<StreamOptions>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub temperature: Option<f64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub top_p: Option<f64>,
    /// Not in OpenAI's schema; llama.cpp-style servers accept it.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub top_k: Option<i64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub seed: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub max_tokens: Option<i64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub stop: Option<serde_json::Value>,
    /// Not in OpenAI's schema; llama.cpp-style servers accept it.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub repetition_penalty: Option<f64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub presence_penalty: Option<f64>,
    /// Function calling and structured output, passed as the client wrote them (the two APIs
    /// share their shapes); the replica checks them.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub tools: Option<serde_json::Value>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub tool_choice: Option<serde_json::Value>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub parallel_tool_calls: Option<bool>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub response_format: Option<serde_json::Value>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub logprobs: Option<bool>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub top_logprobs: Option<i64>,
}

/// One chat message. Fields other than `role` and `content` (tool calls, names) are kept as
/// they came.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ChatMessage {
    pub role: String,
    #[serde(default)]
    pub content: serde_json::Value,
    #[serde(flatten)]
    pub extra: serde_json::Map<String, serde_json::Value>,
}

/// Token usage as OpenAI reports it.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Usage {
    #[serde(default)]
    pub prompt_tokens: u64,
    #[serde(default)]
    pub completion_tokens: u64,
    #[serde(default)]
    pub total_tokens: u64,
}

/// Just the `usage` of a completion or chunk, and how many choices it has (a usage-only chunk
/// has none).
#[derive(Debug, Deserialize)]
pub struct UsagePeek {
    #[serde(default)]
    pub usage: Option<Usage>,
    #[serde(default)]
    pub choices: Option<Vec<serde::de::IgnoredAny>>,
}

/// A non-streamed completion (`object: chat.completion`).
#[derive(Debug, Clone, Deserialize)]
pub struct ChatCompletion {
    #[serde(default)]
    pub choices: Vec<CompletionChoice>,
    #[serde(default)]
    pub usage: Option<Usage>,
}

/// One choice of a [`ChatCompletion`].
#[derive(Debug, Clone, Deserialize)]
pub struct CompletionChoice {
    pub message: AssistantMessage,
    #[serde(default)]
    pub finish_reason: Option<String>,
    /// `{"content": [{token, logprob, bytes, top_logprobs}]}`, kept as it came.
    #[serde(default)]
    pub logprobs: Option<serde_json::Value>,
}

/// The assistant's message.
#[derive(Debug, Clone, Deserialize)]
pub struct AssistantMessage {
    #[serde(default)]
    pub role: Option<String>,
    #[serde(default)]
    pub content: Option<String>,
    /// `[{id, type, function{name, arguments}}]`, kept as it came.
    #[serde(default)]
    pub tool_calls: Option<Vec<serde_json::Value>>,
}

/// A streamed chunk (`object: chat.completion.chunk`).
#[derive(Debug, Clone, Deserialize)]
pub struct ChatCompletionChunk {
    #[serde(default)]
    pub choices: Vec<ChunkChoice>,
    #[serde(default)]
    pub usage: Option<Usage>,
}

/// One choice of a [`ChatCompletionChunk`].
#[derive(Debug, Clone, Deserialize)]
pub struct ChunkChoice {
    #[serde(default)]
    pub delta: Delta,
    #[serde(default)]
    pub finish_reason: Option<String>,
    /// The log-probabilities of this chunk's tokens (`{"content": [...]}`), as they came.
    #[serde(default)]
    pub logprobs: Option<serde_json::Value>,
}

/// The delta of a [`ChunkChoice`].
#[derive(Debug, Clone, Default, Deserialize)]
pub struct Delta {
    #[serde(default)]
    pub content: Option<String>,
    /// Tool-call deltas (`[{index, id, type, function{name, arguments}}]`), as they came.
    #[serde(default)]
    pub tool_calls: Option<Vec<serde_json::Value>>,
}

/// An upstream error body (`{"error": {"message": ...}}`), read leniently.
#[derive(Debug, Deserialize)]
pub struct ErrorPeek {
    pub error: ErrorPeekInner,
}

/// The inner object of [`ErrorPeek`].
#[derive(Debug, Deserialize)]
pub struct ErrorPeekInner {
    #[serde(default)]
    pub message: Option<String>,
}

/// `GET /compatible-mode/v1/models`.
#[derive(Debug, Clone, Serialize)]
pub struct ModelList {
    pub object: &'static str,
    pub data: Vec<Model>,
}

/// One entry of [`ModelList`].
#[derive(Debug, Clone, Serialize)]
pub struct Model {
    pub id: String,
    pub object: &'static str,
    pub created: i64,
    pub owned_by: String,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn peek_reads_only_what_routing_needs() {
        let body = br#"{"model":"m1","messages":[{"role":"user","content":"hi"}],"stream":true,"stream_options":{"include_usage":true},"x":[1,2]}"#;
        let p: ChatRequestPeek = serde_json::from_slice(body).unwrap();
        assert_eq!(p.model, "m1");
        assert_eq!(p.stream, Some(true));
        assert_eq!(p.stream_options.unwrap().include_usage, Some(true));
    }

    #[test]
    fn usage_only_chunk_has_no_choices() {
        let p: UsagePeek = serde_json::from_str(
            r#"{"choices":[],"usage":{"prompt_tokens":3,"completion_tokens":4,"total_tokens":7}}"#,
        )
        .unwrap();
        assert_eq!(p.choices.unwrap().len(), 0);
        assert_eq!(p.usage.unwrap().total_tokens, 7);
    }
}

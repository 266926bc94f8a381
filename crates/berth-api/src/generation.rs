//! The native text-generation API: `POST /api/v1/services/aigc/text-generation/generation`.
//!
//! Requests are read into [`GenerationRequest`]; responses and stream events are written from
//! borrowed views ([`GenerationResponse`]) so a streamed event costs one serialisation and no
//! copies of the text.

use serde::{Deserialize, Serialize};

use crate::openai::ChatMessage;

/// A native generation request.
#[derive(Debug, Clone, Deserialize)]
pub struct GenerationRequest {
    pub model: String,
    pub input: GenerationInput,
    #[serde(default)]
    pub parameters: Parameters,
}

/// `input`: `messages` or the legacy `prompt`.
#[derive(Debug, Clone, Default, Deserialize)]
pub struct GenerationInput {
    #[serde(default)]
    pub messages: Option<Vec<ChatMessage>>,
    #[serde(default)]
    pub prompt: Option<String>,
}

/// `parameters`. Unknown parameters are ignored.
#[derive(Debug, Clone, Default, Deserialize)]
pub struct Parameters {
    /// `text` (default) or `message`.
    #[serde(default)]
    pub result_format: Option<String>,
    #[serde(default)]
    pub incremental_output: Option<bool>,
    #[serde(default)]
    pub temperature: Option<f64>,
    #[serde(default)]
    pub top_p: Option<f64>,
    #[serde(default, deserialize_with = "crate::integer::integer")]
    pub top_k: Option<i64>,
    #[serde(default, deserialize_with = "crate::integer::integer")]
    pub seed: Option<u64>,
    #[serde(default, deserialize_with = "crate::integer::integer")]
    pub max_tokens: Option<i64>,
    /// A string, a list of strings, or token ids.
    #[serde(default)]
    pub stop: Option<serde_json::Value>,
    #[serde(default)]
    pub repetition_penalty: Option<f64>,
    #[serde(default)]
    pub presence_penalty: Option<f64>,
    /// Function calling (`result_format: message` only): the OpenAI shapes.
    #[serde(default)]
    pub tools: Option<serde_json::Value>,
    /// `auto`, `none`, `required` or `{"type":"function","function":{"name"}}`.
    #[serde(default)]
    pub tool_choice: Option<serde_json::Value>,
    #[serde(default)]
    pub parallel_tool_calls: Option<bool>,
    /// `{type: text|json_object|json_schema, json_schema{name, schema, strict}}`.
    #[serde(default)]
    pub response_format: Option<serde_json::Value>,
    /// Log-probabilities of the output tokens (`result_format: message` only).
    #[serde(default)]
    pub logprobs: Option<bool>,
    /// Alternatives per token, 0..=5.
    #[serde(default)]
    pub top_logprobs: Option<i64>,
    /// Answers per request: only 1 is supported.
    #[serde(default)]
    pub n: Option<i64>,
    /// Newer name of `max_tokens`.
    #[serde(default)]
    pub max_completion_tokens: Option<i64>,
    /// Model Studio features berth does not have; refused when switched on.
    #[serde(default)]
    pub enable_search: Option<bool>,
    #[serde(default)]
    pub enable_code_interpreter: Option<bool>,
    #[serde(default)]
    pub enable_thinking: Option<bool>,
    /// Streams tool-call arguments piece by piece (berth sends each call whole; accepted).
    #[serde(default)]
    pub tool_stream: Option<bool>,
}

/// A native response or stream event: `{output, usage, request_id}`.
#[derive(Debug, Serialize)]
pub struct GenerationResponse<'a> {
    pub output: Output<'a>,
    pub usage: GenerationUsage,
    pub request_id: &'a str,
}

/// `output`, in one of the two result formats.
#[derive(Debug, Serialize)]
#[serde(untagged)]
pub enum Output<'a> {
    /// `result_format: text`.
    Text {
        text: &'a str,
        finish_reason: &'a str,
    },
    /// `result_format: message`.
    Message { choices: [MessageChoice<'a>; 1] },
}

/// One choice of a `message`-format output.
#[derive(Debug, Serialize)]
pub struct MessageChoice<'a> {
    pub finish_reason: &'a str,
    pub message: OutputMessage<'a>,
    /// `{"content": [{token, logprob, bytes, top_logprobs}]}` when asked for.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub logprobs: Option<&'a serde_json::Value>,
}

/// The assistant message of a [`MessageChoice`].
#[derive(Debug, Serialize)]
pub struct OutputMessage<'a> {
    pub role: &'a str,
    pub content: &'a str,
    /// `[{index, id, type: "function", function{name, arguments}}]` when the model called tools.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub tool_calls: Option<&'a [serde_json::Value]>,
}

/// Native usage.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct GenerationUsage {
    pub input_tokens: u64,
    pub output_tokens: u64,
    pub total_tokens: u64,
}

impl GenerationUsage {
    pub fn new(input_tokens: u64, output_tokens: u64) -> Self {
        Self {
            input_tokens,
            output_tokens,
            total_tokens: input_tokens + output_tokens,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn text_and_message_formats_serialise_as_documented() {
        let r = GenerationResponse {
            output: Output::Text {
                text: "hi",
                finish_reason: "null",
            },
            usage: GenerationUsage::new(3, 1),
            request_id: "r1",
        };
        assert_eq!(
            serde_json::to_string(&r).unwrap(),
            r#"{"output":{"text":"hi","finish_reason":"null"},"usage":{"input_tokens":3,"output_tokens":1,"total_tokens":4},"request_id":"r1"}"#
        );
        let r = GenerationResponse {
            output: Output::Message {
                choices: [MessageChoice {
                    finish_reason: "stop",
                    message: OutputMessage {
                        role: "assistant",
                        content: "hi",
                        tool_calls: None,
                    },
                    logprobs: None,
                }],
            },
            usage: GenerationUsage::new(3, 1),
            request_id: "r1",
        };
        assert_eq!(
            serde_json::to_string(&r).unwrap(),
            r#"{"output":{"choices":[{"finish_reason":"stop","message":{"role":"assistant","content":"hi"}}]},"usage":{"input_tokens":3,"output_tokens":1,"total_tokens":4},"request_id":"r1"}"#
        );
    }

    #[test]
    fn prompt_or_messages_and_defaults() {
        let r: GenerationRequest =
            serde_json::from_str(r#"{"model":"m","input":{"prompt":"hi"}}"#).unwrap();
        assert_eq!(r.input.prompt.as_deref(), Some("hi"));
        assert!(r.parameters.result_format.is_none());
        let r: GenerationRequest = serde_json::from_str(
            r#"{"model":"m","input":{"messages":[{"role":"user","content":"hi","name":"x"}]},"parameters":{"result_format":"message","foo":1}}"#,
        )
        .unwrap();
        let m = &r.input.messages.unwrap()[0];
        assert_eq!(m.role, "user");
        assert_eq!(m.extra["name"], "x");
    }
}

//! Parse, don't validate: turns wire requests into checked generation parameters, or an
//! [`InvalidRequest`] naming the offending parameter.

use crate::api::{
    ChatCompletionRequest, CompletionRequest, ContentWire, PromptWire, SamplingWire, StopWire,
};
use crate::structured::{self, Structure};
use crate::tools::{self, ToolCallIn, Tools};

/// Most alternatives `top_logprobs` may ask for.
pub const MAX_TOP_LOGPROBS: i64 = 5;

/// Most stop sequences a request may carry (OpenAI's limit).
pub const MAX_STOPS: usize = 4;

/// A request the engine refuses, with the parameter at fault.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{message}")]
pub struct InvalidRequest {
    /// Human-readable reason.
    pub message: String,
    /// The request field at fault, if any.
    pub param: Option<String>,
    /// A machine-readable code, if a specific one applies.
    pub code: Option<&'static str>,
}

impl InvalidRequest {
    /// An error about `param`.
    pub fn new(param: &str, message: impl Into<String>) -> Self {
        Self {
            message: message.into(),
            param: Some(param.to_owned()),
            code: None,
        }
    }
}

/// Checked sampling parameters.
#[derive(Debug, Clone, PartialEq)]
pub struct Sampling {
    /// 0 means greedy.
    pub temperature: f32,
    pub top_p: f32,
    /// 0 disables top-k.
    pub top_k: i32,
    pub min_p: f32,
    /// `None`: a random seed.
    pub seed: Option<u32>,
    pub presence_penalty: f32,
    pub frequency_penalty: f32,
    /// 1.0 disables it.
    pub repetition_penalty: f32,
    /// Ban end-of-generation tokens (llama-server's `ignore_eos`).
    pub ignore_eos: bool,
}

impl Default for Sampling {
    fn default() -> Self {
        Self {
            temperature: 1.0,
            top_p: 1.0,
            top_k: 0,
            min_p: 0.0,
            seed: None,
            presence_penalty: 0.0,
            frequency_penalty: 0.0,
            repetition_penalty: 1.0,
            ignore_eos: false,
        }
    }
}

impl Sampling {
    /// True when no penalty sampler is needed.
    pub fn penalties_off(&self) -> bool {
        self.presence_penalty == 0.0
            && self.frequency_penalty == 0.0
            && self.repetition_penalty == 1.0
    }
}

/// Checked generation options shared by both completion endpoints.
#[derive(Debug, Clone, PartialEq)]
pub struct GenOptions {
    pub sampling: Sampling,
    /// `None`: until end of sequence or the context is full.
    pub max_tokens: Option<u32>,
    pub stop: Vec<String>,
    pub stream: bool,
    pub include_usage: bool,
    /// Usage so far on every chunk (`stream_options.continuous_usage_stats` with
    /// `include_usage`).
    pub continuous_usage: bool,
}

/// A chat message after checking: role, plain-text content, and the tool fields of assistant
/// and `tool` turns.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ChatMessage {
    pub role: String,
    pub content: String,
    /// Calls an assistant turn made.
    pub tool_calls: Vec<ToolCallIn>,
    /// The call a `tool` turn answers.
    pub tool_call_id: Option<String>,
}

impl ChatMessage {
    /// A message with only a role and text.
    pub fn text(role: &str, content: impl Into<String>) -> Self {
        Self {
            role: role.to_owned(),
            content: content.into(),
            tool_calls: Vec::new(),
            tool_call_id: None,
        }
    }
}

/// A checked chat completion request.
#[derive(Debug, Clone, PartialEq)]
pub struct ChatParams {
    pub messages: Vec<ChatMessage>,
    pub options: GenOptions,
    /// Tools offered to the model and how it may use them.
    pub tools: Tools,
    /// What the output must be (`response_format`), if anything.
    pub structure: Structure,
    /// `Some(n)`: report log-probabilities of each token with its `n` (0..=5) most likely
    /// alternatives.
    pub logprobs: Option<u8>,
}

/// A checked text completion request.
#[derive(Debug, Clone, PartialEq)]
pub struct CompletionParams {
    pub prompt: String,
    pub options: GenOptions,
}

const ROLES: &[&str] = &["system", "developer", "user", "assistant", "tool"];

/// Checks a chat completion request.
pub fn chat(req: ChatCompletionRequest) -> Result<ChatParams, InvalidRequest> {
    if req.messages.is_empty() {
        return Err(InvalidRequest::new(
            "messages",
            "'messages' must contain at least one message",
        ));
    }
    if req.functions.is_some() || req.function_call.is_some() {
        let param = if req.functions.is_some() {
            "functions"
        } else {
            "function_call"
        };
        return Err(InvalidRequest::new(
            param,
            format!("'{param}' (legacy function calling) is not supported; use 'tools' and 'tool_choice'"),
        ));
    }
    let tools = tools::check(req.tools, req.tool_choice, req.parallel_tool_calls)?;
    let structure = structured::check(req.response_format)?;
    let logprobs = logprobs(req.logprobs, req.top_logprobs)?;
    let mut messages = Vec::with_capacity(req.messages.len());
    for (i, m) in req.messages.into_iter().enumerate() {
        let param = format!("messages[{i}]");
        if !ROLES.contains(&m.role.as_str()) {
            return Err(InvalidRequest::new(
                &format!("{param}.role"),
                format!(
                    "unsupported role '{}'; expected one of {}",
                    m.role,
                    ROLES.join(", ")
                ),
            ));
        }
        let tool_calls = tools::calls_in(&param, &m.role, m.tool_calls)?;
        if m.role == "tool" && m.tool_call_id.as_deref().is_none_or(str::is_empty) {
            return Err(InvalidRequest::new(
                &format!("{param}.tool_call_id"),
                "a 'tool' message needs the 'tool_call_id' of the call it answers",
            ));
        }
        let content = match m.content {
            None if m.role == "assistant" => String::new(),
            None => {
                return Err(InvalidRequest::new(
                    &format!("{param}.content"),
                    "'content' is required",
                ))
            }
            Some(ContentWire::Text(t)) => t,
            Some(ContentWire::Parts(parts)) => {
                let mut text = String::new();
                for p in parts {
                    match (p.kind.as_str(), p.text) {
                        ("text", Some(t)) => text.push_str(&t),
                        _ => {
                            return Err(InvalidRequest::new(
                                &format!("{param}.content"),
                                format!(
                                    "unsupported content part type '{}': only text is supported",
                                    p.kind
                                ),
                            ))
                        }
                    }
                }
                text
            }
        };
        if content.contains('\0') {
            return Err(InvalidRequest::new(
                &format!("{param}.content"),
                "content must not contain NUL characters",
            ));
        }
        messages.push(ChatMessage {
            role: m.role,
            content,
            tool_calls,
            tool_call_id: m.tool_call_id,
        });
    }
    if messages
        .iter()
        .all(|m| m.content.trim().is_empty() && m.tool_calls.is_empty())
    {
        return Err(InvalidRequest::new(
            "messages",
            "'messages' must contain some non-empty content",
        ));
    }
    let max = req
        .sampling
        .max_completion_tokens
        .or(req.sampling.max_tokens);
    let options = options(req.sampling, max)?;
    Ok(ChatParams {
        messages,
        options,
        tools,
        structure,
        logprobs,
    })
}

/// `logprobs` and `top_logprobs` (0..=5, only with `logprobs: true`).
fn logprobs(on: Option<bool>, top: Option<i64>) -> Result<Option<u8>, InvalidRequest> {
    let top = match top {
        None => 0,
        Some(n) if (0..=MAX_TOP_LOGPROBS).contains(&n) => n as u8,
        Some(n) => {
            return Err(InvalidRequest::new(
                "top_logprobs",
                format!("'top_logprobs' must be between 0 and {MAX_TOP_LOGPROBS}, got {n}"),
            ))
        }
    };
    match on {
        Some(true) => Ok(Some(top)),
        _ if top > 0 => Err(InvalidRequest::new(
            "top_logprobs",
            "'top_logprobs' needs 'logprobs' set to true",
        )),
        _ => Ok(None),
    }
}

/// Checks a text completion request.
pub fn completion(req: CompletionRequest) -> Result<CompletionParams, InvalidRequest> {
    let prompt = match req.prompt {
        PromptWire::One(p) => p,
        PromptWire::Many(mut v) if v.len() == 1 => v.remove(0),
        PromptWire::Many(_) => {
            return Err(InvalidRequest::new(
                "prompt",
                "'prompt' must be a string or a list of exactly one string",
            ))
        }
    };
    if prompt.is_empty() {
        return Err(InvalidRequest::new("prompt", "'prompt' must not be empty"));
    }
    if req.logprobs.is_some_and(|n| n != 0) {
        return Err(InvalidRequest::new(
            "logprobs",
            "'logprobs' is not supported on /v1/completions; use /v1/chat/completions",
        ));
    }
    let max = req.sampling.max_tokens;
    let options = options(req.sampling, max)?;
    Ok(CompletionParams { prompt, options })
}

fn options(w: SamplingWire, max_tokens: Option<i64>) -> Result<GenOptions, InvalidRequest> {
    let mut s = Sampling::default();
    if let Some(t) = w.temperature {
        s.temperature = ranged("temperature", t, 0.0, 2.0)?;
    }
    if let Some(p) = w.top_p {
        if !(p > 0.0 && p <= 1.0) {
            return Err(InvalidRequest::new("top_p", "'top_p' must be in (0, 1]"));
        }
        s.top_p = p as f32;
    }
    if let Some(k) = w.top_k {
        s.top_k = i32::try_from(k)
            .ok()
            .filter(|k| *k >= 0)
            .ok_or_else(|| InvalidRequest::new("top_k", "'top_k' must be >= 0 (0 disables it)"))?;
    }
    if let Some(p) = w.min_p {
        s.min_p = ranged("min_p", p, 0.0, 1.0)?;
    }
    // Any integer is accepted as a seed; llama.cpp takes 32 bits.
    s.seed = w.seed.map(|v| v as u32);
    if let Some(p) = w.presence_penalty {
        s.presence_penalty = ranged("presence_penalty", p, -2.0, 2.0)?;
    }
    if let Some(p) = w.frequency_penalty {
        s.frequency_penalty = ranged("frequency_penalty", p, -2.0, 2.0)?;
    }
    if let Some((name, p)) = w
        .repetition_penalty
        .map(|p| ("repetition_penalty", p))
        .or(w.repeat_penalty.map(|p| ("repeat_penalty", p)))
    {
        if !(p > 0.0 && p <= 10.0) {
            return Err(InvalidRequest::new(
                name,
                format!("'{name}' must be in (0, 10]; 1.0 disables it"),
            ));
        }
        s.repetition_penalty = p as f32;
    }
    s.ignore_eos = w.ignore_eos.unwrap_or(false);
    if w.logit_bias.as_ref().is_some_and(|b| !b.is_empty()) {
        return Err(InvalidRequest::new(
            "logit_bias",
            "'logit_bias' is not supported by this engine",
        ));
    }
    if let Some(n) = w.n {
        if n != 1 {
            return Err(InvalidRequest::new("n", "only 'n' = 1 is supported"));
        }
    }
    let max_tokens = match max_tokens {
        None => None,
        Some(m) if m >= 1 => Some(u32::try_from(m).unwrap_or(u32::MAX)),
        Some(_) => {
            return Err(InvalidRequest::new(
                "max_tokens",
                "'max_tokens' must be at least 1",
            ))
        }
    };
    let stop = match w.stop {
        None => Vec::new(),
        Some(StopWire::One(s)) => vec![s],
        Some(StopWire::Many(v)) => v,
    };
    if stop.len() > MAX_STOPS {
        return Err(InvalidRequest::new(
            "stop",
            format!("at most {MAX_STOPS} stop sequences are allowed"),
        ));
    }
    if stop.iter().any(String::is_empty) {
        return Err(InvalidRequest::new(
            "stop",
            "stop sequences must not be empty",
        ));
    }
    let stream = w.stream.unwrap_or(false);
    let options = w.stream_options.unwrap_or_default();
    let include_usage = options.include_usage.unwrap_or(false);
    let continuous_usage = include_usage && options.continuous_usage_stats.unwrap_or(false);
    Ok(GenOptions {
        sampling: s,
        max_tokens,
        stop,
        stream,
        include_usage,
        continuous_usage,
    })
}

fn ranged(name: &str, v: f64, lo: f64, hi: f64) -> Result<f32, InvalidRequest> {
    if v.is_finite() && v >= lo && v <= hi {
        Ok(v as f32)
    } else {
        Err(InvalidRequest::new(
            name,
            format!("'{name}' must be between {lo} and {hi}, got {v}"),
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn chat_json(v: serde_json::Value) -> Result<ChatParams, InvalidRequest> {
        chat(serde_json::from_value(v).expect("wire shape"))
    }

    fn base(extra: serde_json::Value) -> serde_json::Value {
        let mut v = json!({"model": "m", "messages": [{"role": "user", "content": "hi"}]});
        for (k, x) in extra.as_object().unwrap() {
            v[k] = x.clone();
        }
        v
    }

    #[test]
    fn defaults() {
        let p = chat_json(base(json!({}))).unwrap();
        assert_eq!(p.options.sampling, Sampling::default());
        assert_eq!(p.options.max_tokens, None);
        assert!(p.options.stop.is_empty());
        assert!(!p.options.stream);
        assert_eq!(p.messages[0].content, "hi");
    }

    #[test]
    fn accepts_the_full_set() {
        let p = chat_json(base(json!({
            "temperature": 0, "top_p": 0.9, "top_k": 40, "seed": 7, "max_tokens": 16,
            "stop": "\n", "presence_penalty": 0.5, "frequency_penalty": -0.5,
            "repetition_penalty": 1.1, "stream": true, "stream_options": {"include_usage": true},
            "n": 1, "user": "ignored"
        })))
        .unwrap();
        let s = &p.options.sampling;
        assert_eq!(s.temperature, 0.0);
        assert_eq!(s.top_k, 40);
        assert_eq!(s.seed, Some(7));
        assert_eq!(p.options.max_tokens, Some(16));
        assert_eq!(p.options.stop, vec!["\n".to_string()]);
        assert!(p.options.stream && p.options.include_usage && !p.options.continuous_usage);
        assert!(!s.penalties_off());
    }

    #[test]
    fn continuous_usage_needs_include_usage() {
        let opts = |o: serde_json::Value| {
            chat_json(base(json!({"stream": true, "stream_options": o}))).unwrap()
        };
        let p = opts(json!({"include_usage": true, "continuous_usage_stats": true}));
        assert!(p.options.include_usage && p.options.continuous_usage);
        let p = opts(json!({"continuous_usage_stats": true}));
        assert!(!p.options.include_usage && !p.options.continuous_usage);
    }

    #[test]
    fn rejects_bad_values_naming_the_param() {
        let cases = [
            (json!({"temperature": -0.1}), "temperature"),
            (json!({"temperature": 2.5}), "temperature"),
            (json!({"top_p": 0}), "top_p"),
            (json!({"top_p": 1.5}), "top_p"),
            (json!({"top_k": -1}), "top_k"),
            (json!({"max_tokens": 0}), "max_tokens"),
            (json!({"max_tokens": -5}), "max_tokens"),
            (json!({"max_completion_tokens": 0}), "max_tokens"),
            (json!({"presence_penalty": 3}), "presence_penalty"),
            (json!({"frequency_penalty": -2.1}), "frequency_penalty"),
            (json!({"repetition_penalty": 0}), "repetition_penalty"),
            (json!({"n": 2}), "n"),
            (json!({"stop": ["a", "b", "c", "d", "e"]}), "stop"),
            (json!({"stop": ""}), "stop"),
        ];
        for (extra, param) in cases {
            let err = chat_json(base(extra.clone())).expect_err(&extra.to_string());
            assert_eq!(err.param.as_deref(), Some(param), "{extra}");
        }
    }

    #[test]
    fn logprobs_tools_and_unsupported_fields() {
        let p = chat_json(base(json!({"logprobs": true, "top_logprobs": 5}))).unwrap();
        assert_eq!(p.logprobs, Some(5));
        let p = chat_json(base(json!({"logprobs": true}))).unwrap();
        assert_eq!(p.logprobs, Some(0));
        assert_eq!(
            chat_json(base(json!({"logprobs": false})))
                .unwrap()
                .logprobs,
            None
        );
        let cases = [
            (json!({"logprobs": true, "top_logprobs": 6}), "top_logprobs"),
            (json!({"top_logprobs": 2}), "top_logprobs"),
            (json!({"functions": [{"name": "f"}]}), "functions"),
            (json!({"function_call": "auto"}), "function_call"),
            (json!({"logit_bias": {"50256": -100}}), "logit_bias"),
            (
                json!({"response_format": {"type": "yaml"}}),
                "response_format.type",
            ),
            (json!({"tool_choice": "required"}), "tool_choice"),
        ];
        for (extra, param) in cases {
            let err = chat_json(base(extra.clone())).expect_err(&extra.to_string());
            assert_eq!(err.param.as_deref(), Some(param), "{extra}");
        }
        assert!(chat_json(base(json!({"logit_bias": {}}))).is_ok());
        // A follow-up turn: the assistant's calls and the tool's answer.
        let p = chat_json(json!({"messages": [
            {"role": "user", "content": "weather?"},
            {"role": "assistant", "content": null, "tool_calls": [
                {"id": "call_1", "type": "function", "function": {"name": "w", "arguments": "{\"city\": \"Paris\"}"}}]},
            {"role": "tool", "tool_call_id": "call_1", "content": "sunny"}]}))
        .unwrap();
        assert_eq!(
            p.messages[1].tool_calls[0].arguments,
            r#"{"city": "Paris"}"#
        );
        assert_eq!(p.messages[2].tool_call_id.as_deref(), Some("call_1"));
        let err = chat_json(json!({"messages": [{"role": "user", "content": "x"},
            {"role": "tool", "content": "sunny"}]}))
        .unwrap_err();
        assert_eq!(err.param.as_deref(), Some("messages[1].tool_call_id"));
        let err = chat_json(
            json!({"messages": [{"role": "user", "content": "x", "tool_calls": [
            {"function": {"name": "w"}}]}]}),
        )
        .unwrap_err();
        assert_eq!(err.param.as_deref(), Some("messages[0].tool_calls"));
    }

    #[test]
    fn rejects_empty_or_odd_messages() {
        let err = chat_json(json!({"messages": []})).unwrap_err();
        assert_eq!(err.param.as_deref(), Some("messages"));
        let err = chat_json(json!({"messages": [{"role": "user", "content": "  "}]})).unwrap_err();
        assert_eq!(err.param.as_deref(), Some("messages"));
        let err = chat_json(json!({"messages": [{"role": "wizard", "content": "x"}]})).unwrap_err();
        assert_eq!(err.param.as_deref(), Some("messages[0].role"));
        let err = chat_json(json!({"messages": [{"role": "user"}]})).unwrap_err();
        assert_eq!(err.param.as_deref(), Some("messages[0].content"));
        let err = chat_json(json!({"messages": [{"role": "user", "content": [
            {"type": "image_url", "image_url": {"url": "x"}}]}]}))
        .unwrap_err();
        assert_eq!(err.param.as_deref(), Some("messages[0].content"));
    }

    #[test]
    fn content_parts_are_joined() {
        let p = chat_json(json!({"messages": [{"role": "user", "content": [
            {"type": "text", "text": "a"}, {"type": "text", "text": "b"}]}]}))
        .unwrap();
        assert_eq!(p.messages[0].content, "ab");
    }

    #[test]
    fn stop_list_and_completion_prompt_shapes() {
        let p = completion(
            serde_json::from_value(json!({"prompt": ["x"], "stop": ["a", "b"], "max_tokens": 3}))
                .unwrap(),
        )
        .unwrap();
        assert_eq!(p.prompt, "x");
        assert_eq!(p.options.stop, vec!["a".to_string(), "b".to_string()]);
        assert_eq!(p.options.max_tokens, Some(3));
        let err =
            completion(serde_json::from_value(json!({"prompt": ["x", "y"]})).unwrap()).unwrap_err();
        assert_eq!(err.param.as_deref(), Some("prompt"));
        let err = completion(serde_json::from_value(json!({"prompt": ""})).unwrap()).unwrap_err();
        assert_eq!(err.param.as_deref(), Some("prompt"));
    }

    #[test]
    fn wrong_types_fail_to_deserialize() {
        let r: Result<ChatCompletionRequest, _> =
            serde_json::from_value(base(json!({"temperature": "hot"})));
        assert!(r.is_err());
        let r: Result<ChatCompletionRequest, _> =
            serde_json::from_value(base(json!({"max_tokens": 1.5})));
        assert!(r.is_err());
        let r: Result<ChatCompletionRequest, _> = serde_json::from_value(json!({"messages": "hi"}));
        assert!(r.is_err());
    }
}

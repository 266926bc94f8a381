//! Function calling: checked `tools` / `tool_choice` / `parallel_tool_calls`, the text form of
//! tools and of earlier calls for a chat template that does not know them, and the scanner that
//! finds calls (`<tool_call>{"name": ..., "arguments": ...}</tool_call>`, Hermes style) in
//! generated text, whole or streamed.

use serde::Deserialize;
use serde_json::value::RawValue;
use serde_json::{json, Value};

use crate::api::{ToolCallWire, ToolChoiceWire, ToolWire};
use crate::params::{ChatMessage, InvalidRequest};
use crate::structured::{CALL_CLOSE, CALL_OPEN};

/// A function offered to the model.
#[derive(Debug, Clone, PartialEq)]
pub struct Function {
    pub name: String,
    pub description: Option<String>,
    /// JSON Schema of the arguments (`{"type":"object","properties":{}}` when not given).
    pub parameters: Value,
    /// Compile `parameters` strictly (see [`crate::structured`]).
    pub strict: bool,
}

/// `tool_choice`.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub enum Choice {
    /// Never call (the tools are not shown to the model).
    #[default]
    None,
    /// The model decides; calls are parsed from its text.
    Auto,
    /// The output is one or more calls (constrained).
    Required,
    /// The output is a call of this function (constrained).
    Named(String),
}

/// The checked tool fields of a request.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Tools {
    pub functions: Vec<Function>,
    pub choice: Choice,
    /// More than one call per answer (`parallel_tool_calls`, default true).
    pub parallel: bool,
}

impl Tools {
    /// True when the model is shown tools and its answer may hold calls.
    pub fn active(&self) -> bool {
        !self.functions.is_empty() && self.choice != Choice::None
    }

    /// The functions a forced call may use (`required`: all; named: that one).
    pub fn forced(&self) -> Option<Vec<&Function>> {
        match &self.choice {
            Choice::Required => Some(self.functions.iter().collect()),
            Choice::Named(n) => Some(self.functions.iter().filter(|f| &f.name == n).collect()),
            Choice::None | Choice::Auto => None,
        }
    }

    /// Whether `name` is one of the offered functions.
    pub fn knows(&self, name: &str) -> bool {
        self.functions.iter().any(|f| f.name == name)
    }
}

/// A call made by an earlier assistant turn.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ToolCallIn {
    pub id: Option<String>,
    pub name: String,
    /// The arguments object as JSON text.
    pub arguments: String,
}

fn valid_name(n: &str) -> bool {
    (1..=64).contains(&n.len())
        && n.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-')
}

/// Checks `tools`, `tool_choice` and `parallel_tool_calls`.
pub fn check(
    tools: Option<Vec<ToolWire>>,
    choice: Option<ToolChoiceWire>,
    parallel: Option<bool>,
) -> Result<Tools, InvalidRequest> {
    let mut functions: Vec<Function> = Vec::new();
    for (i, t) in tools.unwrap_or_default().into_iter().enumerate() {
        let param = format!("tools[{i}]");
        if t.kind != "function" {
            return Err(InvalidRequest::new(
                &format!("{param}.type"),
                format!(
                    "unsupported tool type '{}'; only 'function' is supported",
                    t.kind
                ),
            ));
        }
        let f = t.function.ok_or_else(|| {
            InvalidRequest::new(&format!("{param}.function"), "'function' is required")
        })?;
        if !valid_name(&f.name) {
            return Err(InvalidRequest::new(
                &format!("{param}.function.name"),
                "function names are 1 to 64 characters of a-z, A-Z, 0-9, '_' and '-'",
            ));
        }
        if functions.iter().any(|g| g.name == f.name) {
            return Err(InvalidRequest::new(
                &format!("{param}.function.name"),
                format!("function '{}' is defined twice", f.name),
            ));
        }
        let parameters = match f.parameters {
            None => json!({"type": "object", "properties": {}}),
            Some(p @ Value::Object(_)) => p,
            Some(_) => {
                return Err(InvalidRequest::new(
                    &format!("{param}.function.parameters"),
                    "'parameters' must be a JSON Schema object",
                ))
            }
        };
        functions.push(Function {
            name: f.name,
            description: f.description,
            parameters,
            strict: f.strict.unwrap_or(false),
        });
    }
    let choice = match choice {
        None if functions.is_empty() => Choice::None,
        None => Choice::Auto,
        Some(ToolChoiceWire::Mode(m)) => match m.as_str() {
            "none" => Choice::None,
            "auto" => Choice::Auto,
            "required" => Choice::Required,
            other => {
                return Err(InvalidRequest::new(
                    "tool_choice",
                    format!("unsupported 'tool_choice' '{other}'; expected none, auto, required or a function"),
                ))
            }
        },
        Some(ToolChoiceWire::Named(n)) => {
            if n.kind.as_deref().is_some_and(|k| k != "function") {
                return Err(InvalidRequest::new(
                    "tool_choice.type",
                    "'tool_choice.type' must be 'function'",
                ));
            }
            Choice::Named(n.function.name)
        }
    };
    match &choice {
        Choice::Required if functions.is_empty() => {
            return Err(InvalidRequest::new(
                "tool_choice",
                "'tool_choice' 'required' needs at least one tool in 'tools'",
            ))
        }
        Choice::Named(n) if !functions.iter().any(|f| &f.name == n) => {
            return Err(InvalidRequest::new(
                "tool_choice",
                format!("'tool_choice' names function '{n}', which is not in 'tools'"),
            ))
        }
        _ => {}
    }
    Ok(Tools {
        functions,
        choice,
        parallel: parallel.unwrap_or(true),
    })
}

/// Checks the `tool_calls` of one message of the conversation.
pub fn calls_in(
    param: &str,
    role: &str,
    calls: Option<Vec<ToolCallWire>>,
) -> Result<Vec<ToolCallIn>, InvalidRequest> {
    let Some(calls) = calls else {
        return Ok(Vec::new());
    };
    if role != "assistant" && !calls.is_empty() {
        return Err(InvalidRequest::new(
            &format!("{param}.tool_calls"),
            "only assistant messages carry 'tool_calls'",
        ));
    }
    calls
        .into_iter()
        .enumerate()
        .map(|(j, c)| {
            let at = format!("{param}.tool_calls[{j}]");
            if c.kind.as_deref().is_some_and(|k| k != "function") {
                return Err(InvalidRequest::new(
                    &format!("{at}.type"),
                    "tool call type must be 'function'",
                ));
            }
            let arguments = match c.function.arguments {
                None | Some(Value::Null) => "{}".to_owned(),
                Some(Value::String(s)) => s,
                Some(v @ Value::Object(_)) => v.to_string(),
                Some(_) => {
                    return Err(InvalidRequest::new(
                        &format!("{at}.function.arguments"),
                        "'arguments' must be a JSON object or a string holding one",
                    ))
                }
            };
            Ok(ToolCallIn {
                id: c.id,
                name: c.function.name,
                arguments,
            })
        })
        .collect()
}

/// The system prompt that shows tools to a model whose chat template does not know them
/// (the Hermes format, which many instruction-tuned models have seen).
pub fn system_prompt(tools: &Tools) -> String {
    let mut out = String::from(
        "You may call one or more functions to assist with the user query.\n\n\
         You are provided with function signatures within <tools></tools> XML tags:\n<tools>",
    );
    for f in &tools.functions {
        let mut function = json!({"name": f.name, "parameters": f.parameters});
        if let Some(d) = &f.description {
            function["description"] = Value::String(d.clone());
        }
        out.push('\n');
        out.push_str(&json!({"type": "function", "function": function}).to_string());
    }
    out.push_str(
        "\n</tools>\n\nFor each function call, return a json object with function name and \
         arguments within <tool_call></tool_call> XML tags:\n<tool_call>\n\
         {\"name\": <function-name>, \"arguments\": <args-json-object>}\n</tool_call>",
    );
    out
}

/// The conversation in plain (role, text) turns for a template without tool support: the tool
/// prompt joins the system message (or becomes one), earlier calls are written as
/// `<tool_call>` blocks and `tool` results as `<tool_response>` blocks in a user turn.
pub fn plain_turns(messages: &[ChatMessage], tools: &Tools) -> Vec<(String, String)> {
    let mut out: Vec<(String, String)> = Vec::with_capacity(messages.len() + 1);
    let prompt = tools.active().then(|| system_prompt(tools));
    let mut rest = messages;
    if let Some(prompt) = prompt {
        match messages.first() {
            Some(m) if m.role == "system" || m.role == "developer" => {
                out.push(("system".into(), format!("{}\n\n{prompt}", m.content)));
                rest = &messages[1..];
            }
            _ => out.push(("system".into(), prompt)),
        }
    }
    for m in rest {
        match m.role.as_str() {
            "assistant" if !m.tool_calls.is_empty() => {
                let mut text = m.content.clone();
                for c in &m.tool_calls {
                    if !text.is_empty() {
                        text.push('\n');
                    }
                    let args: Value = serde_json::from_str(&c.arguments)
                        .unwrap_or_else(|_| Value::String(c.arguments.clone()));
                    text.push_str(&format!(
                        "{CALL_OPEN}\n{}\n{CALL_CLOSE}",
                        json!({"name": c.name, "arguments": args})
                    ));
                }
                out.push(("assistant".into(), text));
            }
            "tool" => {
                let block = format!("<tool_response>\n{}\n</tool_response>", m.content);
                // Results of parallel calls go into one user turn.
                match out.last_mut() {
                    Some((role, text)) if role == "user" && text.ends_with("</tool_response>") => {
                        text.push('\n');
                        text.push_str(&block);
                    }
                    _ => out.push(("user".into(), block)),
                }
            }
            _ => out.push((m.role.clone(), m.content.clone())),
        }
    }
    out
}

/// A call found in generated text.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FoundCall {
    pub name: String,
    /// The arguments object as the model wrote it.
    pub arguments: String,
}

/// What the scanner releases.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Piece {
    Content(String),
    Call(FoundCall),
}

#[derive(Deserialize)]
struct CallJson<'a> {
    name: String,
    #[serde(borrow, alias = "parameters")]
    arguments: Option<&'a RawValue>,
}

/// Reads one call block's JSON; `None` if it is not a call of an offered function.
fn parse_call(inner: &str, tools: &Tools) -> Option<FoundCall> {
    let c: CallJson = serde_json::from_str(inner.trim()).ok()?;
    if !tools.knows(&c.name) {
        return None;
    }
    let arguments = match c.arguments.map(RawValue::get) {
        None | Some("null") => "{}".to_owned(),
        Some(raw) if raw.starts_with('"') => {
            // Arguments written as a JSON string holding the object.
            let s: String = serde_json::from_str(raw).ok()?;
            serde_json::from_str::<serde_json::Map<String, Value>>(&s).ok()?;
            s
        }
        Some(raw) if raw.starts_with('{') => raw.to_owned(),
        Some(_) => return None,
    };
    Some(FoundCall {
        name: c.name,
        arguments,
    })
}

/// Finds tool calls in generated text as it streams. Text that might be the start of a
/// `<tool_call>` tag is held back until it is known; a call is released when its closing tag
/// (or the end of generation) arrives. A block that is not a valid call of an offered function
/// stays content. Without `parallel`, everything after the first call is dropped.
#[derive(Debug)]
pub struct CallScanner {
    tools: Tools,
    /// Text not yet released (outside a call: a possible tag prefix; inside: the call so far).
    held: String,
    in_call: bool,
    calls: usize,
}

impl CallScanner {
    /// A scanner for calls of `tools`' functions.
    pub fn new(tools: Tools) -> Self {
        Self {
            tools,
            held: String::new(),
            in_call: false,
            calls: 0,
        }
    }

    /// Calls found so far.
    pub fn calls(&self) -> usize {
        self.calls
    }

    fn done(&self) -> bool {
        !self.tools.parallel && self.calls > 0
    }

    fn content(&self, out: &mut Vec<Piece>, text: &str) {
        // After a call, whitespace between or after calls is not content.
        if text.is_empty() || (self.calls > 0 && text.trim().is_empty()) {
            return;
        }
        match out.last_mut() {
            Some(Piece::Content(c)) => c.push_str(text),
            _ => out.push(Piece::Content(text.to_owned())),
        }
    }

    /// Feeds generated text; returns what can be released now.
    pub fn push(&mut self, text: &str) -> Vec<Piece> {
        let mut out = Vec::new();
        if self.done() {
            return out;
        }
        self.held.push_str(text);
        loop {
            if self.in_call {
                let Some(end) = self.held.find(CALL_CLOSE) else {
                    return out;
                };
                let inner: String = self.held[..end].to_owned();
                self.held.drain(..end + CALL_CLOSE.len());
                self.in_call = false;
                self.release_call(&mut out, &inner, true);
                if self.done() {
                    self.held.clear();
                    return out;
                }
            } else if let Some(at) = self.held.find(CALL_OPEN) {
                let before: String = self.held[..at].to_owned();
                self.content(&mut out, &before);
                self.held.drain(..at + CALL_OPEN.len());
                self.in_call = true;
            } else {
                let keep = partial_tag(&self.held);
                let split = self.held.len() - keep;
                let release: String = self.held[..split].to_owned();
                self.content(&mut out, &release);
                self.held.drain(..split);
                return out;
            }
        }
    }

    fn release_call(&mut self, out: &mut Vec<Piece>, inner: &str, closed: bool) {
        match parse_call(inner, &self.tools) {
            Some(call) => {
                self.calls += 1;
                out.push(Piece::Call(call));
            }
            None => {
                let close = if closed { CALL_CLOSE } else { "" };
                let raw = format!("{CALL_OPEN}{inner}{close}");
                self.content(out, &raw);
            }
        }
    }

    /// Releases what is left at the end of generation; an unclosed call that parses counts.
    pub fn finish(&mut self) -> Vec<Piece> {
        let mut out = Vec::new();
        if self.done() {
            return out;
        }
        let held = std::mem::take(&mut self.held);
        if self.in_call {
            self.in_call = false;
            self.release_call(&mut out, &held, false);
        } else {
            self.content(&mut out, &held);
        }
        out
    }
}

/// Length of the longest suffix of `s` that is a proper prefix of the opening tag.
fn partial_tag(s: &str) -> usize {
    let max = (CALL_OPEN.len() - 1).min(s.len());
    (1..=max)
        .rev()
        .find(|&n| s.is_char_boundary(s.len() - n) && CALL_OPEN.starts_with(&s[s.len() - n..]))
        .unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tools(extra: Value) -> Result<Tools, InvalidRequest> {
        let mut v = json!({"messages": [], "tools": [
            {"type": "function", "function": {"name": "get_weather", "description": "Weather of a city",
             "parameters": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]}}}]});
        for (k, x) in extra.as_object().unwrap() {
            v[k] = x.clone();
        }
        let r: crate::api::ChatCompletionRequest = serde_json::from_value(v).unwrap();
        check(r.tools, r.tool_choice, r.parallel_tool_calls)
    }

    #[test]
    fn choice_defaults_and_checks() {
        let t = tools(json!({})).unwrap();
        assert_eq!(t.choice, Choice::Auto);
        assert!(t.parallel && t.active() && t.forced().is_none());
        let t = tools(json!({"tool_choice": "none"})).unwrap();
        assert!(!t.active());
        let t = tools(json!({"tool_choice": {"type": "function", "function": {"name": "get_weather"}}, "parallel_tool_calls": false})).unwrap();
        assert_eq!(t.forced().unwrap().len(), 1);
        assert!(!t.parallel);
        let none = check(None, None, None).unwrap();
        assert_eq!(none.choice, Choice::None);
        let cases = [
            (json!({"tool_choice": "sometimes"}), "tool_choice"),
            (
                json!({"tool_choice": {"type": "function", "function": {"name": "nope"}}}),
                "tool_choice",
            ),
            (json!({"tools": [{"type": "retrieval"}]}), "tools[0].type"),
            (
                json!({"tools": [{"type": "function", "function": {"name": "a b"}}]}),
                "tools[0].function.name",
            ),
            (
                json!({"tools": [{"type": "function", "function": {"name": "f", "parameters": []}}]}),
                "tools[0].function.parameters",
            ),
            (
                json!({"tools": [{"type": "function", "function": {"name": "f"}}, {"type": "function", "function": {"name": "f"}}]}),
                "tools[1].function.name",
            ),
            (
                json!({"tools": [], "tool_choice": "required"}),
                "tool_choice",
            ),
        ];
        for (extra, param) in cases {
            let e = tools(extra.clone()).expect_err(&extra.to_string());
            assert_eq!(e.param.as_deref(), Some(param), "{extra}");
        }
    }

    fn scan_all(t: &Tools, parts: &[&str]) -> Vec<Piece> {
        let mut s = CallScanner::new(t.clone());
        let mut out: Vec<Piece> = parts.iter().flat_map(|p| s.push(p)).collect();
        out.extend(s.finish());
        // Join adjacent content pieces, as a client would.
        let mut joined: Vec<Piece> = Vec::new();
        for p in out {
            match (joined.last_mut(), p) {
                (Some(Piece::Content(a)), Piece::Content(b)) => a.push_str(&b),
                (_, p) => joined.push(p),
            }
        }
        joined
    }

    fn call(args: &str) -> Piece {
        Piece::Call(FoundCall {
            name: "get_weather".into(),
            arguments: args.into(),
        })
    }

    #[test]
    fn scanner_finds_calls_split_anywhere() {
        let t = tools(json!({})).unwrap();
        let text = "Let me check.\n<tool_call>\n{\"name\": \"get_weather\", \"arguments\": {\"city\": \"Paris\"}}\n</tool_call>";
        let want = vec![
            Piece::Content("Let me check.\n".into()),
            call(r#"{"city": "Paris"}"#),
        ];
        assert_eq!(scan_all(&t, &[text]), want);
        // Every split point.
        for i in 1..text.len() {
            let (a, b) = text.split_at(i);
            assert_eq!(scan_all(&t, &[a, b]), want, "split at {i}");
        }
        let chars: Vec<String> = text.chars().map(String::from).collect();
        let parts: Vec<&str> = chars.iter().map(String::as_str).collect();
        assert_eq!(scan_all(&t, &parts), want);
    }

    #[test]
    fn scanner_keeps_plain_text_and_bad_blocks_as_content() {
        let t = tools(json!({})).unwrap();
        assert_eq!(
            scan_all(&t, &["a <tool", "s> b"]),
            vec![Piece::Content("a <tools> b".into())]
        );
        let bad = "<tool_call>{\"name\": \"unknown\", \"arguments\": {}}</tool_call>";
        assert_eq!(scan_all(&t, &[bad]), vec![Piece::Content(bad.into())]);
        let not_json = "<tool_call>oops</tool_call>";
        assert_eq!(
            scan_all(&t, &[not_json]),
            vec![Piece::Content(not_json.into())]
        );
    }

    #[test]
    fn scanner_parallel_and_unclosed_and_string_arguments() {
        let t = tools(json!({})).unwrap();
        let one = "<tool_call>\n{\"name\": \"get_weather\", \"arguments\": {\"city\": \"A\"}}\n</tool_call>";
        let two = "<tool_call>\n{\"name\": \"get_weather\", \"parameters\": \"{\\\"city\\\": \\\"B\\\"}\"}\n</tool_call>";
        let both = format!("{one}\n{two}\n");
        assert_eq!(
            scan_all(&t, &[&both]),
            vec![call(r#"{"city": "A"}"#), call(r#"{"city": "B"}"#)]
        );
        let single = tools(json!({"parallel_tool_calls": false})).unwrap();
        assert_eq!(scan_all(&single, &[&both]), vec![call(r#"{"city": "A"}"#)]);
        let unclosed = "<tool_call>\n{\"name\": \"get_weather\", \"arguments\": {\"city\": \"C\"}}";
        assert_eq!(scan_all(&t, &[unclosed]), vec![call(r#"{"city": "C"}"#)]);
    }

    #[test]
    fn plain_turns_show_tools_calls_and_results() {
        let t = tools(json!({})).unwrap();
        let msgs = vec![
            ChatMessage::text("system", "Be brief."),
            ChatMessage::text("user", "Weather in Paris?"),
            ChatMessage {
                role: "assistant".into(),
                content: String::new(),
                tool_calls: vec![ToolCallIn {
                    id: Some("call_1".into()),
                    name: "get_weather".into(),
                    arguments: r#"{"city":"Paris"}"#.into(),
                }],
                tool_call_id: None,
            },
            ChatMessage {
                role: "tool".into(),
                content: "18 C, sunny".into(),
                tool_calls: vec![],
                tool_call_id: Some("call_1".into()),
            },
        ];
        let turns = plain_turns(&msgs, &t);
        assert_eq!(turns.len(), 4);
        assert_eq!(turns[0].0, "system");
        assert!(turns[0].1.starts_with("Be brief.\n\nYou may call"));
        assert!(turns[0].1.contains(r#""name":"get_weather""#));
        assert!(turns[0].1.contains("Weather of a city"));
        assert_eq!(
            turns[2],
            (
                "assistant".into(),
                "<tool_call>\n{\"name\":\"get_weather\",\"arguments\":{\"city\":\"Paris\"}}\n</tool_call>".into()
            )
        );
        assert_eq!(
            turns[3],
            (
                "user".into(),
                "<tool_response>\n18 C, sunny\n</tool_response>".into()
            )
        );
        // tool_choice none: the tools are not shown.
        let none = tools(json!({"tool_choice": "none"})).unwrap();
        assert_eq!(plain_turns(&msgs[..2], &none)[0].1, "Be brief.");
    }
}

//! Constrained decoding: what the output of a request must be (`response_format`, a forced tool
//! call), as an llguidance grammar, compiled against the model's vocabulary into a
//! [`Matcher`] that masks every token which would leave the grammar.
//!
//! JSON is generated compact with a space after `,` and `:` (no free whitespace: a small model
//! offered free whitespace can loop on newlines until `max_tokens`). `strict: true` compiles the
//! schema strictly: a keyword llguidance cannot enforce is a 400. `strict` false or absent
//! compiles it leniently: such keywords are ignored and the rest is enforced.

use llguidance::api::TopLevelGrammar;
use llguidance::{Matcher, ParserFactory};
use serde_json::{json, Value};

use crate::api::ResponseFormatWire;
use crate::params::InvalidRequest;
use crate::tools::{Choice, Function, Tools};

/// The opening tag of a tool call in generated text (Hermes style, which berth's fallback tool
/// prompt asks for and the forced-call grammar produces).
pub const CALL_OPEN: &str = "<tool_call>";
/// The closing tag of a tool call.
pub const CALL_CLOSE: &str = "</tool_call>";

/// What a request's output must be (`response_format`).
#[derive(Debug, Clone, Default, PartialEq)]
pub enum Structure {
    /// Free text.
    #[default]
    Text,
    /// Any JSON object.
    JsonObject,
    /// JSON valid against `schema`.
    JsonSchema { schema: Value, strict: bool },
}

/// Checks `response_format`.
pub fn check(format: Option<ResponseFormatWire>) -> Result<Structure, InvalidRequest> {
    let Some(f) = format else {
        return Ok(Structure::Text);
    };
    match f.kind.as_str() {
        "text" => Ok(Structure::Text),
        "json_object" => Ok(Structure::JsonObject),
        "json_schema" => {
            let js = f.json_schema.ok_or_else(|| {
                InvalidRequest::new(
                    "response_format.json_schema",
                    "'response_format.json_schema' is required when 'type' is 'json_schema'",
                )
            })?;
            let schema = match js.schema {
                Some(s @ (Value::Object(_) | Value::Bool(_))) => s,
                Some(_) => {
                    return Err(InvalidRequest::new(
                        "response_format.json_schema.schema",
                        "'response_format.json_schema.schema' must be a JSON Schema object",
                    ))
                }
                // OpenAI's SDKs always send one; without it any JSON value is acceptable.
                None => json!({}),
            };
            Ok(Structure::JsonSchema {
                schema,
                strict: js.strict.unwrap_or(false),
            })
        }
        other => Err(InvalidRequest::new(
            "response_format.type",
            format!(
                "unsupported 'response_format.type' '{other}'; expected text, json_object or json_schema"
            ),
        )),
    }
}

/// How JSON is written: compact with spaces, strict or lenient.
fn with_options(mut schema: Value, strict: bool) -> Value {
    if let Value::Bool(b) = schema {
        schema = if b { json!({}) } else { json!({"not": {}}) };
    }
    if let Value::Object(o) = &mut schema {
        o.insert(
            "x-guidance".into(),
            json!({
                "whitespace_flexible": false,
                "item_separator": ", ",
                "key_separator": ": ",
                "lenient": !strict,
            }),
        );
    }
    schema
}

fn structure_schema(s: &Structure) -> Option<Value> {
    match s {
        Structure::Text => None,
        Structure::JsonObject => Some(with_options(json!({"type": "object"}), false)),
        Structure::JsonSchema { schema, strict } => Some(with_options(schema.clone(), *strict)),
    }
}

/// The schema of one call's JSON: `{"name": <the name>, "arguments": <its parameters>}`.
fn call_schema(f: &Function) -> Value {
    json!({
        "type": "object",
        "properties": {
            "name": {"const": f.name},
            "arguments": f.parameters,
        },
        "required": ["name", "arguments"],
        "additionalProperties": false,
    })
}

/// Lark rules for tool calls among `functions`: `calls` is one call, or several separated by a
/// newline when `parallel`.
fn calls_rules(functions: &[&Function], parallel: bool) -> String {
    let strict = functions.iter().all(|f| f.strict);
    let schema = if functions.len() == 1 {
        call_schema(functions[0])
    } else {
        json!({"anyOf": functions.iter().map(|f| call_schema(f)).collect::<Vec<_>>()})
    };
    let schema = with_options(schema, strict);
    let calls = if parallel {
        "calls: tc (\"\\n\" tc)*"
    } else {
        "calls: tc"
    };
    format!("{calls}\ntc: \"{CALL_OPEN}\\n\" call \"\\n{CALL_CLOSE}\"\ncall: %json {schema}\n")
}

/// The grammar a request's output must follow, if any.
///
/// - `tool_choice` `required`: one call (several, newline-separated, with
///   `parallel_tool_calls`) of the offered functions; a named function: one call of it. Each is
///   `{"name", "arguments"}` with `arguments` valid against the function's `parameters`.
/// - `tool_choice` `auto` with a JSON `response_format`: calls, or the JSON answer.
/// - a JSON `response_format` alone: that JSON.
/// - otherwise none (`auto` calls are found in the free text afterwards).
pub fn grammar(structure: &Structure, tools: &Tools) -> Option<TopLevelGrammar> {
    if let Some(forced) = tools.forced() {
        // A named function is one call of it; `required` may make several.
        let parallel = tools.parallel && tools.choice == Choice::Required;
        let rules = calls_rules(&forced, parallel);
        return Some(TopLevelGrammar::from_lark(format!("start: calls\n{rules}")));
    }
    let answer = structure_schema(structure);
    if tools.active() {
        let answer = answer?;
        let all: Vec<&Function> = tools.functions.iter().collect();
        let rules = calls_rules(&all, tools.parallel);
        return Some(TopLevelGrammar::from_lark(format!(
            "start: calls | answer\n{rules}answer: %json {answer}\n"
        )));
    }
    answer.map(TopLevelGrammar::from_json_schema)
}

/// Compiles `grammar` for the model's vocabulary. A grammar that does not compile is the
/// client's schema at fault: a 400 naming the parameter and llguidance's reason.
pub fn compile(
    factory: &ParserFactory,
    grammar: TopLevelGrammar,
    structure: &Structure,
    tools: &Tools,
) -> Result<Matcher, InvalidRequest> {
    match factory.create_parser(grammar) {
        Ok(parser) => Ok(Matcher::new(Ok(parser))),
        Err(e) => Err(blame(factory, structure, tools, &e.to_string())),
    }
}

/// Finds which schema of the request did not compile, by compiling each on its own.
fn blame(
    factory: &ParserFactory,
    structure: &Structure,
    tools: &Tools,
    why: &str,
) -> InvalidRequest {
    let fails = |schema: Value| {
        factory
            .create_parser(TopLevelGrammar::from_json_schema(schema))
            .err()
            .map(|e| e.to_string())
    };
    let forced = tools.forced();
    if forced.is_some() || tools.active() {
        for (i, f) in tools.functions.iter().enumerate() {
            if forced
                .as_ref()
                .is_some_and(|v| !v.iter().any(|g| g.name == f.name))
            {
                continue;
            }
            if let Some(e) = fails(with_options(f.parameters.clone(), f.strict)) {
                let param = format!("tools[{i}].function.parameters");
                return InvalidRequest::new(
                    &param,
                    format!("'{param}' is not a JSON Schema berth can enforce: {e}"),
                );
            }
        }
    }
    if forced.is_none() {
        if let Some(e) = structure_schema(structure).and_then(fails) {
            let param = "response_format.json_schema.schema";
            return InvalidRequest::new(
                param,
                format!("'{param}' is not a JSON Schema berth can enforce: {e}"),
            );
        }
    }
    InvalidRequest::new(
        "response_format",
        format!("the output constraint cannot be compiled: {why}"),
    )
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use super::*;
    use crate::tools::check as check_tools;
    use toktrie::{ApproximateTokEnv, TokRxInfo, TokTrie};

    /// A vocabulary of the 256 bytes plus an end-of-sequence token (256).
    fn factory() -> ParserFactory {
        let mut words: Vec<Vec<u8>> = (0..=255u8).map(|b| vec![b]).collect();
        words.push(b"\xff<eos>".to_vec());
        let info = TokRxInfo::new(257, 256);
        let trie = TokTrie::from(&info, &words);
        let env: toktrie::TokEnv = Arc::new(ApproximateTokEnv::new(trie));
        let mut f = ParserFactory::new_simple(&env).unwrap();
        f.quiet();
        f
    }

    /// Whether the grammar accepts `text` as a complete output.
    fn accepts(m: &Matcher, text: &str) -> bool {
        let mut m = m.deep_clone();
        for b in text.bytes() {
            if m.consume_token(b as u32).is_err() {
                return false;
            }
        }
        m.is_accepting().unwrap_or(false)
    }

    fn tools(v: Value) -> Tools {
        let req: crate::api::ChatCompletionRequest = serde_json::from_value(v).unwrap();
        check_tools(req.tools, req.tool_choice, req.parallel_tool_calls).unwrap()
    }

    fn structure(v: Value) -> Structure {
        check(Some(serde_json::from_value(v).unwrap())).unwrap()
    }

    fn build(s: &Structure, t: &Tools) -> Result<Matcher, InvalidRequest> {
        compile(&factory(), grammar(s, t).expect("a grammar"), s, t)
    }

    const WEATHER: &str = r#"{"messages":[],"tools":[{"type":"function","function":{"name":"get_weather",
        "parameters":{"type":"object","properties":{"city":{"type":"string"},"days":{"type":"integer"}},
        "required":["city"]}}},{"type":"function","function":{"name":"get_time","parameters":{"type":"object",
        "properties":{"zone":{"type":"string","enum":["UTC","CET"]}},"required":["zone"]}}}]"#;

    fn weather(extra: &str) -> Tools {
        tools(serde_json::from_str(&format!("{WEATHER}{extra}}}")).unwrap())
    }

    #[test]
    fn json_object_accepts_objects_only() {
        let s = structure(json!({"type": "json_object"}));
        let m = build(&s, &Tools::default()).unwrap();
        assert!(accepts(&m, r#"{"a": 1, "b": [true, null]}"#));
        assert!(accepts(&m, "{}"));
        assert!(!accepts(&m, "[1]"));
        assert!(!accepts(&m, r#"{"a": 1"#));
        assert!(!accepts(&m, "Sure! {}"));
    }

    #[test]
    fn json_schema_is_enforced() {
        let s = structure(
            json!({"type": "json_schema", "json_schema": {"name": "p", "strict": true,
            "schema": {"type": "object", "properties": {"name": {"type": "string"}, "age": {"type": "integer"}},
                       "required": ["name", "age"], "additionalProperties": false}}}),
        );
        let m = build(&s, &Tools::default()).unwrap();
        assert!(accepts(&m, r#"{"name": "Ann", "age": 31}"#));
        assert!(!accepts(&m, r#"{"name": "Ann"}"#));
        assert!(!accepts(&m, r#"{"name": "Ann", "age": "31"}"#));
        assert!(!accepts(&m, r#"{"name": "Ann", "age": 31, "x": 1}"#));
        // Compact with spaces: no free whitespace.
        assert!(!accepts(&m, "{\n\"name\": \"Ann\", \"age\": 31}"));
    }

    #[test]
    fn an_invalid_schema_is_a_400_naming_it() {
        let s = structure(
            json!({"type": "json_schema", "json_schema": {"name": "p", "strict": true,
            "schema": {"type": "objekt"}}}),
        );
        let e = build(&s, &Tools::default()).err().expect("a 400");
        assert_eq!(
            e.param.as_deref(),
            Some("response_format.json_schema.schema")
        );
        assert!(e.message.contains("objekt"), "{}", e.message);
    }

    #[test]
    fn strict_refuses_what_lenient_ignores() {
        let schema = json!({"type": "object", "properties": {"a": {"type": "string"}},
            "unevaluatedItems": {"type": "string"}, "x-unknown-keyword-test": true});
        let strict = structure(
            json!({"type": "json_schema", "json_schema": {"name": "p", "strict": true, "schema": schema}}),
        );
        let lenient = structure(
            json!({"type": "json_schema", "json_schema": {"name": "p", "schema": schema}}),
        );
        let ok = build(&lenient, &Tools::default());
        assert!(ok.is_ok(), "{:?}", ok.err());
        let err = build(&strict, &Tools::default());
        assert!(
            err.is_err(),
            "strict must refuse a keyword it cannot enforce"
        );
    }

    #[test]
    fn a_named_call_is_that_function_with_valid_arguments() {
        let t = weather(r#","tool_choice":{"type":"function","function":{"name":"get_weather"}}"#);
        assert_eq!(t.choice, Choice::Named("get_weather".into()));
        let m = build(&Structure::Text, &t).unwrap();
        let call = |args: &str| {
            format!(
                "<tool_call>\n{{\"name\": \"get_weather\", \"arguments\": {args}}}\n</tool_call>"
            )
        };
        assert!(accepts(&m, &call(r#"{"city": "Paris"}"#)));
        assert!(accepts(&m, &call(r#"{"city": "Paris", "days": 3}"#)));
        assert!(!accepts(&m, &call(r#"{"days": 3}"#)));
        assert!(!accepts(&m, "<tool_call>\n{\"name\": \"get_time\", \"arguments\": {\"zone\": \"UTC\"}}\n</tool_call>"));
        assert!(!accepts(&m, "The weather is fine."));
        let two = format!("{}\n{}", call(r#"{"city": "A"}"#), call(r#"{"city": "B"}"#));
        assert!(!accepts(&m, &two), "a named function is called once");
    }

    #[test]
    fn required_allows_any_tool_and_parallel_allows_several() {
        let t = weather(r#","tool_choice":"required""#);
        let m = build(&Structure::Text, &t).unwrap();
        let time = "<tool_call>\n{\"name\": \"get_time\", \"arguments\": {\"zone\": \"CET\"}}\n</tool_call>";
        let weather_call = "<tool_call>\n{\"name\": \"get_weather\", \"arguments\": {\"city\": \"Rome\"}}\n</tool_call>";
        assert!(accepts(&m, time));
        assert!(accepts(&m, &format!("{time}\n{weather_call}")));
        assert!(!accepts(&m, "<tool_call>\n{\"name\": \"get_time\", \"arguments\": {\"zone\": \"PST\"}}\n</tool_call>"));
        let single = weather(r#","tool_choice":"required","parallel_tool_calls":false"#);
        let m = build(&Structure::Text, &single).unwrap();
        assert!(accepts(&m, time));
        assert!(!accepts(&m, &format!("{time}\n{weather_call}")));
    }

    #[test]
    fn auto_with_json_format_is_calls_or_the_json() {
        let t = weather(r#","tool_choice":"auto""#);
        assert!(grammar(&Structure::Text, &t).is_none());
        let s = structure(json!({"type": "json_object"}));
        let m = build(&s, &t).unwrap();
        assert!(accepts(&m, r#"{"answer": 42}"#));
        assert!(accepts(&m, "<tool_call>\n{\"name\": \"get_time\", \"arguments\": {\"zone\": \"UTC\"}}\n</tool_call>"));
        assert!(!accepts(&m, "hello"));
    }

    #[test]
    fn a_bad_parameters_schema_is_blamed_on_its_tool() {
        let t = tools(json!({"messages": [], "tool_choice": "required", "tools": [
            {"type": "function", "function": {"name": "ok", "parameters": {"type": "object"}}},
            {"type": "function", "function": {"name": "bad", "strict": true, "parameters": {"type": "objekt"}}}]}));
        let e = build(&Structure::Text, &t).err().expect("a 400");
        assert_eq!(
            e.param.as_deref(),
            Some("tools[1].function.parameters"),
            "{}",
            e.message
        );
    }

    #[test]
    fn response_format_shapes() {
        assert_eq!(check(None).unwrap(), Structure::Text);
        assert_eq!(structure(json!({"type": "text"})), Structure::Text);
        let e = check(Some(
            serde_json::from_value(json!({"type": "xml"})).unwrap(),
        ))
        .unwrap_err();
        assert_eq!(e.param.as_deref(), Some("response_format.type"));
        let e = check(Some(
            serde_json::from_value(json!({"type": "json_schema"})).unwrap(),
        ))
        .unwrap_err();
        assert_eq!(e.param.as_deref(), Some("response_format.json_schema"));
        let e = check(Some(
            serde_json::from_value(
                json!({"type": "json_schema", "json_schema": {"name": "x", "schema": 3}}),
            )
            .unwrap(),
        ))
        .unwrap_err();
        assert_eq!(
            e.param.as_deref(),
            Some("response_format.json_schema.schema")
        );
    }
}

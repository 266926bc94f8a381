//! Chat templates that know tools: a GGUF's own Jinja `tokenizer.chat_template`, rendered with
//! minijinja (Jinja2 semantics, Python string methods through `minijinja-contrib`'s pycompat)
//! for requests that carry tools or tool turns. llama.cpp's built-in templates, used for every
//! other request, cannot render tools; a model whose template does not mention `tools` gets
//! berth's fallback tool prompt instead ([`crate::tools::plain_turns`]).

use minijinja::syntax::SyntaxConfig;
use minijinja::value::Serde;
use minijinja::{context, Environment, Error, ErrorKind};
use serde_json::{json, Value};

use crate::params::ChatMessage;
use crate::tools::Tools;

/// A compiled tool-aware chat template.
pub struct ToolTemplate {
    env: Environment<'static>,
    bos: String,
    eos: String,
}

impl std::fmt::Debug for ToolTemplate {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ToolTemplate").finish_non_exhaustive()
    }
}

impl ToolTemplate {
    /// Compiles `source` if it renders tools (it refers to `tools`); `None` for a template
    /// without tool support or one minijinja cannot compile.
    pub fn new(source: &str, bos: String, eos: String) -> Option<Self> {
        if !source.contains("tools") {
            return None;
        }
        let mut env = Environment::new();
        // As Hugging Face's transformers renders chat templates.
        if let Ok(syntax) = SyntaxConfig::builder()
            .trim_blocks(true)
            .lstrip_blocks(true)
            .build()
        {
            env.set_syntax(syntax);
        }
        minijinja_contrib::add_to_environment(&mut env);
        env.set_unknown_method_callback(minijinja_contrib::pycompat::unknown_method_callback);
        env.add_function("raise_exception", |msg: String| -> Result<String, Error> {
            Err(Error::new(ErrorKind::InvalidOperation, msg))
        });
        match env.add_template_owned("chat", source.to_owned()) {
            Ok(()) => Some(Self { env, bos, eos }),
            Err(e) => {
                tracing::warn!(error = %e, "the model's chat template does not compile; tools use berth's fallback prompt");
                None
            }
        }
    }

    /// Renders the conversation and the active tools, ending with the assistant's turn.
    pub fn render(&self, messages: &[ChatMessage], tools: &Tools) -> Result<String, Error> {
        let messages: Vec<Value> = messages.iter().map(message).collect();
        let tools: Option<Vec<Value>> = tools.active().then(|| {
            tools
                .functions
                .iter()
                .map(|f| {
                    let mut function = json!({"name": f.name, "parameters": f.parameters});
                    if let Some(d) = &f.description {
                        function["description"] = Value::String(d.clone());
                    }
                    json!({"type": "function", "function": function})
                })
                .collect()
        });
        self.env.get_template("chat")?.render(context! {
            messages => Serde(messages),
            tools => Serde(tools),
            add_generation_prompt => true,
            bos_token => self.bos.clone(),
            eos_token => self.eos.clone(),
        })
    }
}

/// A message as templates expect it: earlier calls with their arguments as an object.
fn message(m: &ChatMessage) -> Value {
    let mut v = json!({"role": m.role, "content": m.content});
    if !m.tool_calls.is_empty() {
        v["tool_calls"] = m
            .tool_calls
            .iter()
            .map(|c| {
                let args: Value = serde_json::from_str(&c.arguments)
                    .unwrap_or_else(|_| Value::String(c.arguments.clone()));
                json!({"id": c.id, "type": "function",
                       "function": {"name": c.name, "arguments": args}})
            })
            .collect();
    }
    if let Some(id) = &m.tool_call_id {
        v["tool_call_id"] = Value::String(id.clone());
    }
    v
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::tools::ToolCallIn;

    /// The tool part of a Hermes/Qwen-style ChatML template.
    const HERMES: &str = r##"{%- if tools %}
{{- '<|im_start|>system\n' }}
{%- if messages[0]['role'] == 'system' %}{{- messages[0]['content'] + '\n\n' }}{%- endif %}
{{- "# Tools\n\n<tools>" }}
{%- for tool in tools %}{{- "\n" }}{{- tool | tojson }}{%- endfor %}
{{- "\n</tools><|im_end|>\n" }}
{%- elif messages[0]['role'] == 'system' %}
{{- '<|im_start|>system\n' + messages[0]['content'] + '<|im_end|>\n' }}
{%- endif %}
{%- for message in messages %}
{%- if message.role == "user" or (message.role == "system" and not loop.first) or (message.role == "assistant" and not message.tool_calls) %}
{{- '<|im_start|>' + message.role + '\n' + message.content + '<|im_end|>' + '\n' }}
{%- elif message.role == "assistant" %}
{{- '<|im_start|>' + message.role }}
{%- for tool_call in message.tool_calls %}
{%- if tool_call.function is defined %}{%- set tool_call = tool_call.function %}{%- endif %}
{{- '\n<tool_call>\n{"name": "' }}{{- tool_call.name }}{{- '", "arguments": ' }}{{- tool_call.arguments | tojson }}{{- '}\n</tool_call>' }}
{%- endfor %}
{{- '<|im_end|>\n' }}
{%- elif message.role == "tool" %}
{{- '<|im_start|>user\n<tool_response>\n' }}{{- message.content }}{{- '\n</tool_response><|im_end|>\n' }}
{%- endif %}
{%- endfor %}
{%- if add_generation_prompt %}{{- '<|im_start|>assistant\n' }}{%- endif %}
"##;

    fn tools() -> Tools {
        let r: crate::api::ChatCompletionRequest = serde_json::from_value(json!({"messages": [], "tools": [
            {"type": "function", "function": {"name": "get_weather", "parameters": {"type": "object"}}}]}))
        .unwrap();
        crate::tools::check(r.tools, r.tool_choice, r.parallel_tool_calls).unwrap()
    }

    #[test]
    fn a_tool_template_renders_tools_calls_and_results() {
        let t = ToolTemplate::new(HERMES, "<s>".into(), "</s>".into()).expect("tool-aware");
        let msgs = vec![
            ChatMessage::text("system", "Be brief."),
            ChatMessage::text("user", "Weather?"),
            ChatMessage {
                role: "assistant".into(),
                content: String::new(),
                tool_calls: vec![ToolCallIn {
                    id: Some("call_1".into()),
                    name: "get_weather".into(),
                    arguments: r#"{"city": "Paris"}"#.into(),
                }],
                tool_call_id: None,
            },
            ChatMessage {
                role: "tool".into(),
                content: "sunny".into(),
                tool_calls: vec![],
                tool_call_id: Some("call_1".into()),
            },
        ];
        let out = t.render(&msgs, &tools()).unwrap();
        assert!(
            out.starts_with("<|im_start|>system\nBe brief.\n\n# Tools\n\n<tools>\n{"),
            "{out}"
        );
        assert!(
            out.contains(r#""name": "get_weather", "parameters""#),
            "{out}"
        );
        assert!(out.contains("<tool_call>\n{\"name\": \"get_weather\", \"arguments\": {\"city\": \"Paris\"}}\n</tool_call>"), "{out}");
        assert!(
            out.contains("<|im_start|>user\n<tool_response>\nsunny\n</tool_response><|im_end|>"),
            "{out}"
        );
        assert!(out.ends_with("<|im_start|>assistant\n"), "{out}");
    }

    #[test]
    fn templates_without_tools_or_broken_ones_are_not_used() {
        assert!(ToolTemplate::new(
            "{% for m in messages %}{{ m.content }}{% endfor %}",
            String::new(),
            String::new()
        )
        .is_none());
        assert!(
            ToolTemplate::new("{% if tools %}{% for %}", String::new(), String::new()).is_none()
        );
        let raising = ToolTemplate::new(
            "{% if tools %}{{ raise_exception('no tools here') }}{% endif %}",
            String::new(),
            String::new(),
        )
        .unwrap();
        let e = raising
            .render(&[ChatMessage::text("user", "x")], &tools())
            .unwrap_err();
        assert!(e.to_string().contains("no tools here"));
    }
}

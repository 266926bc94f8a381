// The chat playground of a deployment: streams answers through the OpenAI-compatible API and
// shows the same call as curl, the dashscope SDK and the openai SDK.

import { events, deployments as api } from "/console/api.js";
import { h, fill, badge, errorBox } from "/console/ui.js";

const CHAT = "/compatible-mode/v1/chat/completions";

/** Python literal of a JSON-like value. */
function py(v, indent = "") {
  if (v === null) return "None";
  if (v === true) return "True";
  if (v === false) return "False";
  if (Array.isArray(v)) {
    if (!v.length) return "[]";
    const inner = indent + "    ";
    return `[\n${v.map((x) => inner + py(x, inner)).join(",\n")},\n${indent}]`;
  }
  if (typeof v === "object") return `{${Object.entries(v).map(([k, x]) => `${JSON.stringify(k)}: ${py(x, indent)}`).join(", ")}}`;
  return JSON.stringify(v);
}

const shellQuote = (s) => `'${s.replace(/'/g, `'\\''`)}'`;

/** The three snippets for one call. Never the real key: `$DASHSCOPE_API_KEY`. */
export function snippets(origin, model, messages, params) {
  const body = { model, messages, ...params, stream: true, stream_options: { include_usage: true } };
  const curl = [
    `curl -N ${origin}${CHAT} \\`,
    `  -H "Authorization: Bearer $DASHSCOPE_API_KEY" \\`,
    `  -H "Content-Type: application/json" \\`,
    `  -d ${shellQuote(JSON.stringify(body, null, 2))}`,
  ].join("\n");
  const extra = Object.entries(params).map(([k, v]) => `    ${k}=${py(v)},\n`).join("");
  const dashscope = [
    "import os",
    "import dashscope",
    "from dashscope import Generation",
    "",
    `dashscope.base_http_api_url = ${py(`${origin}/api/v1`)}`,
    "",
    "responses = Generation.call(",
    `    model=${py(model)},`,
    '    api_key=os.environ["DASHSCOPE_API_KEY"],',
    `    messages=${py(messages, "    ")},`,
    '    result_format="message",',
    `${extra}    stream=True,`,
    "    incremental_output=True,",
    ")",
    "for r in responses:",
    '    print(r.output.choices[0].message.content, end="", flush=True)',
  ].join("\n");
  const openai = [
    "import os",
    "from openai import OpenAI",
    "",
    "client = OpenAI(",
    `    base_url=${py(`${origin}/compatible-mode/v1`)},`,
    '    api_key=os.environ["DASHSCOPE_API_KEY"],',
    ")",
    "stream = client.chat.completions.create(",
    `    model=${py(model)},`,
    `    messages=${py(messages, "    ")},`,
    `${extra}    stream=True,`,
    '    stream_options={"include_usage": True},',
    ")",
    "for chunk in stream:",
    "    if chunk.choices and chunk.choices[0].delta.content:",
    '        print(chunk.choices[0].delta.content, end="", flush=True)',
  ].join("\n");
  return { curl, "Python (dashscope)": dashscope, "Python (openai)": openai };
}

async function copyText(text) {
  try {
    await navigator.clipboard.writeText(text);
    return true;
  } catch {
    // Not a secure context (plain http to another host): copy through a selection.
    const ta = h("textarea", { class: "sr-only", readonly: true });
    ta.value = text;
    document.body.append(ta);
    ta.select();
    const ok = document.execCommand("copy");
    ta.remove();
    return ok;
  }
}

export function playgroundView(main, name, { onAuthError }) {
  const history = []; // {role, content}
  let ctl = null;
  const err = errorBox();
  const list = h("div", { class: "messages", id: "messages", "aria-live": "polite" });
  const empty = h("div", { class: "state empty" }, h("p", { class: "strong" }, "Say something"),
    h("p", { class: "muted" }, "Answers stream from ", h("code", {}, name), " through the OpenAI-compatible API."));
  list.append(empty);
  const input = h("textarea", { id: "prompt", rows: 3, placeholder: "Ask anything… (Enter to send, Shift+Enter for a new line)", "aria-label": "Message" });
  const send = h("button", { type: "submit", class: "btn btn-primary" }, "Send");
  const stop = h("button", { type: "button", class: "btn", hidden: true, onclick: () => ctl && ctl.abort() }, "Stop");
  const clear = h("button", { type: "button", class: "btn btn-quiet", onclick: () => {
    history.length = 0;
    lastSent = null;
    fill(list, empty);
    updateSnippet();
  } }, "Clear");
  const system = h("textarea", { id: "system", rows: 2, placeholder: "optional" });
  const temperature = h("input", { id: "temperature", type: "number", min: 0, max: 2, step: 0.1, value: 0.7, inputmode: "decimal" });
  const maxTokens = h("input", { id: "max-tokens", type: "number", min: 1, max: 4096, step: 1, value: 256, inputmode: "numeric" });
  const status = h("span", { class: "muted small", id: "dep-state" });

  const tabs = {};
  const code = h("code", { id: "snippet-code" });
  const pre = h("pre", { class: "snippet", tabindex: 0, role: "tabpanel", id: "snippet-panel" }, code);
  let current = "curl";
  let texts = {};
  const copy = h("button", { type: "button", class: "btn btn-sm", onclick: async () => {
    copy.textContent = (await copyText(texts[current])) ? "Copied" : "Copy failed";
    setTimeout(() => { copy.textContent = "Copy"; }, 1500);
  } }, "Copy");
  const tabList = h("div", { class: "tabs", role: "tablist", "aria-label": "Snippet language" });
  for (const t of ["curl", "Python (dashscope)", "Python (openai)"]) {
    tabs[t] = h("button", { type: "button", role: "tab", class: "tab", "aria-controls": "snippet-panel", onclick: () => select(t),
      onkeydown: (e) => {
        const keys = Object.keys(tabs);
        const i = keys.indexOf(t);
        if (e.key === "ArrowRight" || e.key === "ArrowLeft") {
          const next = keys[(i + (e.key === "ArrowRight" ? 1 : keys.length - 1)) % keys.length];
          select(next);
          tabs[next].focus();
        }
      } }, t);
    tabList.append(tabs[t]);
  }
  function select(t) {
    current = t;
    for (const [k, b] of Object.entries(tabs)) {
      b.setAttribute("aria-selected", String(k === t));
      b.tabIndex = k === t ? 0 : -1;
    }
    code.textContent = texts[t];
  }

  function params() {
    const p = {};
    const t = Number(temperature.value);
    if (temperature.value !== "" && Number.isFinite(t)) p.temperature = t;
    const m = Number(maxTokens.value);
    if (maxTokens.value !== "" && Number.isFinite(m)) p.max_tokens = m;
    return p;
  }
  function messagesFor(next) {
    const msgs = [];
    if (system.value.trim()) msgs.push({ role: "system", content: system.value.trim() });
    msgs.push(...history);
    if (next) msgs.push({ role: "user", content: next });
    return msgs;
  }
  // The snippet is the call the Send button would make now; with nothing typed, the last call
  // made (or an example before the first).
  let lastSent = null;
  function updateSnippet() {
    const typed = input.value.trim();
    const msgs = typed ? messagesFor(typed) : lastSent || messagesFor("What is the capital of France?");
    texts = snippets(location.origin, name, msgs, params());
    select(current);
  }
  for (const el of [input, system, temperature, maxTokens]) el.addEventListener("input", updateSnippet);

  const form = h("form", { class: "composer", novalidate: true }, input,
    h("div", { class: "composer-actions" }, clear, h("span", { class: "spacer" }), stop, send));
  input.addEventListener("keydown", (e) => {
    if (e.key === "Enter" && !e.shiftKey && !e.isComposing) {
      e.preventDefault();
      form.requestSubmit();
    }
  });
  form.addEventListener("submit", (e) => {
    e.preventDefault();
    const text = input.value.trim();
    if (!text || ctl) return;
    ask(text);
  });

  function bubble(role, text) {
    return h("div", { class: `msg msg-${role}` }, h("div", { class: "msg-role" }, role === "user" ? "You" : name),
      h("div", { class: "msg-text" }, text));
  }

  async function ask(text) {
    err.clear();
    empty.remove();
    const messages = messagesFor(text);
    lastSent = messages;
    history.push({ role: "user", content: text });
    input.value = "";
    list.append(bubble("user", text));
    const out = bubble("assistant", "");
    const body = out.querySelector(".msg-text");
    const meta = h("div", { class: "msg-meta muted small", dataset: { field: "usage" } }, "Waiting for the first token…");
    out.append(meta);
    out.classList.add("streaming");
    list.append(out);
    list.scrollTop = list.scrollHeight;
    ctl = new AbortController();
    send.disabled = true;
    stop.hidden = false;
    const t0 = performance.now();
    let ttft = null;
    let usage = null;
    let chunks = 0;
    let answer = "";
    let failed = null;
    try {
      await events(CHAT, (c) => {
        if (!c) return;
        if (c.error) {
          failed = c.error;
          return;
        }
        const delta = c.choices && c.choices[0] && c.choices[0].delta;
        if (delta && delta.content) {
          if (ttft === null) {
            ttft = performance.now() - t0;
            meta.textContent = `TTFT ${Math.round(ttft)} ms…`;
          }
          chunks += 1;
          answer += delta.content;
          body.textContent = answer;
          out.dataset.chunks = String(chunks);
          list.scrollTop = list.scrollHeight;
        }
        if (c.usage) usage = c.usage;
      }, { method: "POST", body: { model: name, messages, ...params(), stream: true, stream_options: { include_usage: true } }, signal: ctl.signal });
    } catch (e) {
      if (e.name !== "AbortError") failed = e;
      if (e.status === 401) return onAuthError();
    }
    const total = performance.now() - t0;
    out.classList.remove("streaming");
    if (failed) {
      err.show(failed);
      if (!answer) out.remove();
    }
    if (answer) history.push({ role: "assistant", content: answer });
    else history.pop();
    const parts = [];
    if (usage) parts.push(`${usage.prompt_tokens} prompt + ${usage.completion_tokens} completion tokens`);
    if (ttft !== null) parts.push(`TTFT ${Math.round(ttft)} ms`);
    parts.push(`total ${Math.round(total)} ms`);
    if (usage && usage.completion_tokens && ttft !== null && total > ttft) {
      parts.push(`${((usage.completion_tokens * 1000) / total).toFixed(1)} tok/s`);
    }
    if (ctl.signal.aborted) parts.push("stopped");
    fill(meta, parts.join(" · "));
    meta.append(h("span", { dataset: { done: "" } }));
    ctl = null;
    send.disabled = false;
    stop.hidden = true;
    updateSnippet();
    input.focus();
  }

  fill(main,
    h("nav", { class: "crumbs", "aria-label": "Breadcrumb" }, h("a", { href: "#/" }, "Deployments"), h("span", { "aria-hidden": "true" }, " / "),
      h("a", { href: `#/d/${encodeURIComponent(name)}` }, name), h("span", { "aria-hidden": "true" }, " / "), "Playground"),
    h("div", { class: "page-head" },
      h("div", {}, h("h1", {}, "Playground: ", h("span", { class: "mono" }, name)), status)),
    h("div", { class: "playground" },
      h("section", { class: "panel chat", "aria-label": "Conversation" }, list, err.el, form),
      h("aside", { class: "side" },
        h("section", { class: "panel", "aria-labelledby": "settings-title" },
          h("div", { class: "panel-head" }, h("h2", { id: "settings-title" }, "Settings")),
          h("div", { class: "panel-body settings" },
            h("div", { class: "field" }, h("label", { for: "system" }, "System prompt"), system),
            h("div", { class: "field-row" },
              h("div", { class: "field" }, h("label", { for: "temperature" }, "Temperature"), temperature),
              h("div", { class: "field" }, h("label", { for: "max-tokens" }, "Max tokens"), maxTokens)))),
        h("section", { class: "panel", "aria-labelledby": "snippet-title" },
          h("div", { class: "panel-head" }, h("h2", { id: "snippet-title" }, "The same call"), h("span", { class: "spacer" }), copy),
          h("div", { class: "panel-body" }, tabList, pre,
            h("p", { class: "hint" }, "Set ", h("code", {}, "DASHSCOPE_API_KEY"), " to your key first."))))));
  updateSnippet();
  api.get(name).then((d) => {
    fill(status, badge(d.status), ` ${d.ready_capacity} / ${d.capacity} ready`);
  }).catch((e) => {
    if (e.status === 401) return onAuthError();
    fill(status, h("span", { class: "danger-text" }, e.message));
  });
  input.focus();
  return () => ctl && ctl.abort();
}

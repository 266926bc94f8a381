// The berth API, called with the key of this browser session.

const KEY = "berth.key";

export const key = {
  get: () => sessionStorage.getItem(KEY),
  set: (k) => sessionStorage.setItem(KEY, k),
  clear: () => sessionStorage.removeItem(KEY),
};

/** An error answer of the API: its own message, code and request id. */
export class ApiError extends Error {
  constructor(status, message, code, requestId) {
    super(message);
    this.status = status;
    this.code = code;
    this.requestId = requestId;
  }
}

function headers(extra = {}, k = key.get()) {
  return { Authorization: `Bearer ${k}`, ...extra };
}

/** Throws the API's error for a failed response (both envelopes: native and OpenAI). */
async function failure(res) {
  let body = null;
  try {
    body = await res.json();
  } catch {
    /* not JSON */
  }
  const err = body && (body.error || body);
  const message = (err && err.message) || `${res.status} ${res.statusText || "error"}`;
  const code = err && (err.code || err.type);
  return new ApiError(res.status, message, code, body && (body.request_id || body.id));
}

async function send(method, path, body, signal, k) {
  let res;
  try {
    res = await fetch(path, {
      method,
      headers: headers(body === undefined ? {} : { "Content-Type": "application/json" }, k),
      body: body === undefined ? undefined : JSON.stringify(body),
      signal,
    });
  } catch (e) {
    if (e.name === "AbortError") throw e;
    throw new ApiError(0, "berth cannot be reached. Is `berth serve` running?", "Network");
  }
  if (!res.ok) throw await failure(res);
  return res;
}

/** A JSON call; answers the envelope's `output`. */
export async function api(method, path, body, { signal, key: k } = {}) {
  const res = await send(method, path, body, signal, k);
  const json = await res.json();
  return json.output ?? json;
}

export const deployments = {
  list: (signal) => api("GET", "/api/v1/deployments?page_no=1&page_size=200", undefined, { signal }),
  models: () => api("GET", "/api/v1/deployments/models?page_no=1&page_size=200"),
  get: (name, signal) => api("GET", `/api/v1/deployments/${enc(name)}`, undefined, { signal }),
  replicas: (name, signal) => api("GET", `/api/v1/deployments/${enc(name)}/replicas`, undefined, { signal }),
  stats: (name, signal) => api("GET", `/api/v1/deployments/${enc(name)}/stats`, undefined, { signal }),
  create: (body) => api("POST", "/api/v1/deployments", body),
  scale: (name, capacity) => api("PUT", `/api/v1/deployments/${enc(name)}/scale`, { capacity }),
  update: (name, body) => api("PUT", `/api/v1/deployments/${enc(name)}/update`, body),
  remove: (name) => api("DELETE", `/api/v1/deployments/${enc(name)}`),
};

export const enc = encodeURIComponent;

/** Reads a streamed body, calling `onText` with each decoded piece. */
async function readBody(res, onText) {
  const reader = res.body.getReader();
  const decoder = new TextDecoder();
  for (;;) {
    const { value, done } = await reader.read();
    if (done) break;
    onText(decoder.decode(value, { stream: true }));
  }
}

/**
 * Server-sent events from `path` (GET, or POST with `body`): calls `onEvent` with each
 * `data:` parsed as JSON. Resolves when the stream ends. (EventSource cannot send a key.)
 */
export async function events(path, onEvent, { signal, method = "GET", body } = {}) {
  const res = await send(method, path, body, signal);
  let buf = "";
  await readBody(res, (text) => {
    buf += text.replace(/\r\n?/g, "\n");
    let at;
    while ((at = buf.indexOf("\n\n")) >= 0) {
      const block = buf.slice(0, at);
      buf = buf.slice(at + 2);
      const data = block
        .split("\n")
        .filter((l) => l.startsWith("data:"))
        .map((l) => l.slice(5).replace(/^ /, ""))
        .join("\n");
      if (!data) continue;
      if (data === "[DONE]") {
        onEvent(null);
        continue;
      }
      try {
        onEvent(JSON.parse(data));
      } catch {
        /* a line that is not JSON: skip */
      }
    }
  });
}

/** A streamed text body (followed logs), line by line. */
export async function lines(path, onLine, { signal } = {}) {
  const res = await send("GET", path, undefined, signal);
  let buf = "";
  await readBody(res, (text) => {
    buf += text;
    const parts = buf.split("\n");
    buf = parts.pop();
    for (const l of parts) onLine(l);
  });
}

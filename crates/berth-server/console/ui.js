// Small DOM helpers shared by the views.

/** Builds an element: h("a", {href: "#"}, "text", child...). Text is never parsed as HTML. */
export function h(tag, attrs = {}, ...children) {
  const el = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs || {})) {
    if (v === undefined || v === null || v === false) continue;
    if (k.startsWith("on") && typeof v === "function") el.addEventListener(k.slice(2), v);
    else if (k === "class") el.className = v;
    else if (k === "dataset") Object.assign(el.dataset, v);
    // Through the CSSOM: the page's policy refuses style attributes.
    else if (k === "style") Object.assign(el.style, v);
    else if (v === true) el.setAttribute(k, "");
    else el.setAttribute(k, String(v));
  }
  append(el, children);
  return el;
}

function append(el, children) {
  for (const c of children.flat(Infinity)) {
    if (c === undefined || c === null || c === false) continue;
    el.append(c instanceof Node ? c : document.createTextNode(String(c)));
  }
}

/** Replaces an element's children. */
export function fill(el, ...children) {
  el.replaceChildren();
  append(el, children);
  return el;
}

/** The status badge of a deployment or a replica. */
export function badge(status) {
  const s = String(status || "").toLowerCase();
  return h("span", { class: `badge badge-${s}`, dataset: { status: status } }, status);
}

/** Parses the API's `YYYY-MM-DDTHH:MM:SS.fff` (UTC, no zone). */
export function parseTime(s) {
  if (!s) return null;
  const t = Date.parse(/[zZ]|[+-]\d\d:?\d\d$/.test(s) ? s : `${s}Z`);
  return Number.isNaN(t) ? null : new Date(t);
}

/** "12s", "5m", "3h", "2d". */
export function age(date, now = Date.now()) {
  if (!date) return "–";
  const s = Math.max(0, Math.round((now - date.getTime()) / 1000));
  if (s < 60) return `${s}s`;
  if (s < 3600) return `${Math.floor(s / 60)}m`;
  if (s < 86400) return `${Math.floor(s / 3600)}h`;
  return `${Math.floor(s / 86400)}d`;
}

export function fmtNum(n) {
  return n === undefined || n === null ? "–" : Number(n).toLocaleString("en-US");
}

/** A message shown where the user acted; empty hides it. */
export function errorBox() {
  const el = h("p", { class: "form-error", role: "alert", hidden: true });
  return {
    el,
    show(err) {
      const msg = err && err.message ? err.message : String(err);
      fill(el, h("strong", {}, err && err.code ? `${err.code}: ` : "Error: "), msg);
      el.hidden = false;
    },
    clear() {
      el.hidden = true;
      el.replaceChildren();
    },
  };
}

/** A short notice in the corner. */
export function toast(text) {
  const box = document.getElementById("toast");
  const item = h("div", { class: "toast" }, text);
  box.append(item);
  setTimeout(() => item.remove(), 4000);
}

/** A labelled form field. */
export function field(label, input, hint) {
  const id = input.id || `f-${Math.random().toString(36).slice(2, 9)}`;
  input.id = id;
  const hintEl = hint ? h("small", { class: "hint", id: `${id}-hint` }, hint) : null;
  if (hintEl) input.setAttribute("aria-describedby", hintEl.id);
  return h("div", { class: "field" }, h("label", { for: id }, label), input, hintEl);
}

/**
 * A modal dialog with a form. `build(form, err)` fills it; `submit(form)` runs on submit and
 * closes the dialog when it resolves; a rejection shows the API's message in the dialog.
 */
export function formDialog({ title, build, submit, submitLabel = "Save", danger = false }) {
  const err = errorBox();
  const submitBtn = h("button", { type: "submit", class: danger ? "btn btn-danger" : "btn btn-primary" }, submitLabel);
  const cancel = h("button", { type: "button", class: "btn", onclick: () => dlg.close() }, "Cancel");
  const body = h("div", { class: "dialog-body" });
  const form = h("form", { method: "dialog", class: "dialog-form", novalidate: true },
    h("h2", { class: "dialog-title" }, title), body, err.el,
    h("div", { class: "dialog-actions" }, cancel, submitBtn));
  const dlg = h("dialog", { class: "dialog", "aria-label": title }, form);
  build(body);
  form.addEventListener("submit", async (e) => {
    e.preventDefault();
    err.clear();
    submitBtn.disabled = true;
    submitBtn.classList.add("busy");
    try {
      await submit(form);
      dlg.close();
    } catch (e2) {
      err.show(e2);
    } finally {
      submitBtn.disabled = false;
      submitBtn.classList.remove("busy");
    }
  });
  dlg.addEventListener("close", () => dlg.remove());
  document.body.append(dlg);
  dlg.showModal();
  const first = body.querySelector("input, select, textarea") || submitBtn;
  first.focus();
  return dlg;
}

/** A number input's value: null when empty, else an integer. */
export function intOrNull(input) {
  const v = input.value.trim();
  if (v === "") return null;
  const n = Number(v);
  return Number.isFinite(n) ? n : v;
}

/**
 * Runs `render`, which replaces what is inside `container`, and gives the focus back to the
 * same control (same row, same action) if it had it: live updates never steal a keyboard user's
 * place.
 */
export function keepFocus(container, render) {
  const active = document.activeElement;
  if (!active || !container.contains(active)) return render();
  const row = active.closest("[data-name]");
  const key = active.dataset.action || active.getAttribute("href") || active.textContent;
  render();
  const scope = row ? container.querySelector(`[data-name="${CSS.escape(row.dataset.name)}"]`) : container;
  if (!scope) return;
  for (const el of scope.querySelectorAll("a, button")) {
    if ((el.dataset.action || el.getAttribute("href") || el.textContent) === key) {
      el.focus({ preventScroll: true });
      return;
    }
  }
}

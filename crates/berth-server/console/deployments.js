// The deployments of the workspace: a live table, and the dialogs that create, scale, update
// and delete (also used by a deployment's page).

import { deployments as api, events, ApiError } from "/console/api.js";
import { h, fill, badge, parseTime, age, fmtNum, formDialog, field, intOrNull, toast, keepFocus } from "/console/ui.js";

/** Follows the workspace's event stream; reconnects after a break. Returns a stop function. */
export function follow(path, { onEvent, onState, onAuthError }) {
  const ctl = new AbortController();
  let delay = 500;
  (async () => {
    while (!ctl.signal.aborted) {
      onState("connecting");
      try {
        let first = true;
        await events(path, (e) => {
          if (first) {
            first = false;
            delay = 500;
            onState("live");
          }
          if (e) onEvent(e);
        }, { signal: ctl.signal });
        if (ctl.signal.aborted) return;
        // Ended: berth restarted, or the deployment was deleted (then the next try is a 404).
        onState("ended");
      } catch (e) {
        if (ctl.signal.aborted) return;
        if (e instanceof ApiError && e.status === 401) return onAuthError();
        if (e instanceof ApiError && e.status === 404) return onState("gone", e);
        onState("offline", e);
      }
      await new Promise((r) => setTimeout(r, delay));
      delay = Math.min(delay * 2, 10000);
    }
  })();
  return () => ctl.abort();
}

export function liveIndicator() {
  const el = h("span", { class: "live", dataset: { state: "connecting" }, role: "status" }, "Connecting…");
  return {
    el,
    set(state) {
      el.dataset.state = state;
      el.textContent = { live: "Live", connecting: "Connecting…", offline: "Reconnecting…", ended: "Stream ended", gone: "Gone" }[state] || state;
    },
  };
}

function limitText(d) {
  const r = d.rpm_limit ? `${fmtNum(d.rpm_limit)} rpm` : "no rpm limit";
  const t = d.tpm_limit ? `${fmtNum(d.tpm_limit)} tpm` : "no tpm limit";
  return `${r} · ${t}`;
}

export function capacityCell(d) {
  const pct = d.capacity ? Math.round((100 * d.ready_capacity) / d.capacity) : 0;
  return h("span", { class: "capacity", title: `${d.ready_capacity} of ${d.capacity} capacity units ready` },
    h("span", { class: "capacity-text", dataset: { field: "ready" } }, `${d.ready_capacity} / ${d.capacity}`),
    h("span", { class: "meter", "aria-hidden": "true" }, h("span", { style: { width: `${pct}%` } })));
}

/** Whether `a` is at least as recent as `b` (absent counts as oldest). */
function newer(a, b) {
  return !b || (a.gmt_modified || "") >= (b.gmt_modified || "");
}

export function deploymentsView(main, { onAuthError }) {
  const rows = new Map();
  const touched = new Map(); // what events said while the list was loading: name -> changed | deleted
  let loaded = false;
  let loadError = null;
  const live = liveIndicator();
  const tbody = h("tbody");
  const body = h("div", { class: "panel-body" });
  const count = h("span", { class: "count muted" });
  fill(main,
    h("div", { class: "page-head" },
      h("div", {}, h("h1", {}, "Deployments"), h("p", { class: "muted" }, "Models deployed in your workspace. Changes appear as they happen.")),
      h("div", { class: "page-actions" }, live.el,
        h("button", { type: "button", class: "btn btn-primary", id: "new-deployment", onclick: () => createDialog() }, "New deployment"))),
    h("section", { class: "panel", "aria-labelledby": "dep-title" },
      h("div", { class: "panel-head" }, h("h2", { id: "dep-title" }, "All deployments"), count),
      body));

  const table = h("table", { class: "table", id: "deployments" },
    h("thead", {}, h("tr", {},
      h("th", { scope: "col" }, "Name"), h("th", { scope: "col" }, "Status"),
      h("th", { scope: "col" }, "Ready / capacity"), h("th", { scope: "col", class: "hide-sm" }, "Rate limits"),
      h("th", { scope: "col", class: "hide-sm" }, "Age"), h("th", { scope: "col" }, h("span", { class: "sr-only" }, "Actions")))),
    tbody);

  function row(d) {
    const tr = h("tr", { dataset: { name: d.deployed_model } },
      h("td", { "data-label": "Name" },
        h("a", { class: "strong", href: `#/d/${encodeURIComponent(d.deployed_model)}` }, d.deployed_model),
        h("div", { class: "muted small" }, d.name && d.name !== d.deployed_model ? `${d.name} · ` : "", d.model_name)),
      h("td", { "data-label": "Status", dataset: { field: "status" } }, badge(d.status),
        d.fail_reason ? h("div", { class: "small danger-text" }, d.fail_reason) : null,
        d.status_message ? h("div", { class: "small muted" }, d.status_message) : null),
      h("td", { "data-label": "Ready" }, capacityCell(d)),
      h("td", { "data-label": "Limits", class: "hide-sm small" }, limitText(d)),
      h("td", { "data-label": "Age", class: "hide-sm", dataset: { created: d.gmt_create } }, age(parseTime(d.gmt_create))),
      h("td", { class: "row-actions" }, actions(d)));
    return tr;
  }

  function render() {
    if (!loaded) {
      fill(body, loadError
        ? h("div", { class: "state state-error", role: "alert" }, h("p", {}, "Could not load deployments: ", loadError.message),
            h("button", { type: "button", class: "btn", onclick: load }, "Try again"))
        : h("p", { class: "state" }, h("span", { class: "spinner", "aria-hidden": "true" }), "Loading deployments…"));
      return;
    }
    const list = [...rows.values()].sort((a, b) => (b.gmt_create || "").localeCompare(a.gmt_create || ""));
    count.textContent = list.length ? `${list.length}` : "";
    if (!list.length) {
      fill(body, h("div", { class: "state empty" },
        h("p", { class: "strong" }, "No deployments yet"),
        h("p", { class: "muted" }, "Pick a model from the catalog and give it capacity; it is ready once a replica has generated."),
        h("button", { type: "button", class: "btn btn-primary", onclick: () => createDialog() }, "New deployment")));
      return;
    }
    keepFocus(tbody, () => fill(tbody, list.map(row)));
    if (body.firstChild !== table) fill(body, h("div", { class: "table-wrap" }, table));
  }

  const ctl = new AbortController();
  /** The whole list; a reload after a reconnection keeps the table on screen meanwhile. */
  async function load() {
    loadError = null;
    if (!loaded) render();
    touched.clear();
    try {
      const page = await api.list(ctl.signal);
      // The list and the stream race: what an event said while the list was on its way wins
      // unless the list's copy is newer (gmt_modified moves with every visible change).
      const fresh = new Map(page.deployments.map((d) => [d.deployed_model, d]));
      for (const [name, how] of touched) {
        if (how === "deleted") fresh.delete(name);
        else if (rows.has(name) && newer(rows.get(name), fresh.get(name))) fresh.set(name, rows.get(name));
      }
      rows.clear();
      for (const [name, d] of fresh) rows.set(name, d);
      loaded = true;
    } catch (e) {
      if (e.name === "AbortError") return;
      if (e.status === 401) return onAuthError();
      loadError = e;
    }
    render();
  }

  const stop = follow("/api/v1/events", {
    onAuthError,
    onState: (s) => {
      live.set(s);
      if (s === "live" && loaded) load(); // catch up on what happened while disconnected
    },
    onEvent: (e) => {
      if (e.type === "deployment") {
        const d = e.deployment;
        if (newer(d, rows.get(d.deployed_model))) rows.set(d.deployed_model, d);
        touched.set(d.deployed_model, "changed");
      } else if (e.type === "deleted") {
        rows.delete(e.deployed_model);
        touched.set(e.deployed_model, "deleted");
      } else if (e.type === "lagged") return load();
      else return;
      if (loaded) render();
    },
  });
  load();
  const tick = setInterval(() => {
    for (const td of tbody.querySelectorAll("td[data-created]")) td.textContent = age(parseTime(td.dataset.created));
  }, 15000);
  return () => {
    stop();
    ctl.abort();
    clearInterval(tick);
  };
}

/** The buttons of a deployment's row and page. */
export function actions(d, { afterDelete } = {}) {
  const deleting = d.status === "DELETING";
  return h("div", { class: "btn-group" },
    h("a", { class: "btn btn-sm", href: `#/d/${encodeURIComponent(d.deployed_model)}/chat`, "aria-label": `Chat with ${d.deployed_model}` }, "Chat"),
    h("button", { type: "button", class: "btn btn-sm", disabled: deleting, "aria-label": `Scale ${d.deployed_model}`, dataset: { action: "scale" }, onclick: () => scaleDialog(d) }, "Scale"),
    h("button", { type: "button", class: "btn btn-sm", disabled: deleting, "aria-label": `Rate limits of ${d.deployed_model}`, dataset: { action: "limits" }, onclick: () => limitsDialog(d) }, "Limits"),
    h("button", { type: "button", class: "btn btn-sm btn-danger-quiet", disabled: deleting, "aria-label": `Delete ${d.deployed_model}`, dataset: { action: "delete" }, onclick: () => deleteDialog(d, afterDelete) }, "Delete"));
}

function limitInputs(d = {}) {
  const rpm = h("input", { name: "rpm_limit", type: "number", min: 1, step: 1, inputmode: "numeric", placeholder: "none", value: d.rpm_limit ?? "" });
  const tpm = h("input", { name: "tpm_limit", type: "number", min: 1, step: 1, inputmode: "numeric", placeholder: "none", value: d.tpm_limit ?? "" });
  return { rpm, tpm };
}

export async function createDialog() {
  const model = h("select", { id: "create-model", name: "model_name", required: true, "aria-describedby": "model-about" }, h("option", { value: "" }, "Loading the catalog…"));
  const capacity = h("input", { name: "capacity", type: "number", min: 1, step: 1, value: 1, inputmode: "numeric", required: true });
  const suffix = h("input", { name: "suffix", type: "text", maxlength: 8, autocomplete: "off", spellcheck: "false", placeholder: "optional" });
  const name = h("input", { name: "name", type: "text", maxlength: 128, autocomplete: "off", placeholder: "optional" });
  const { rpm, tpm } = limitInputs();
  const preview = h("p", { class: "hint", id: "create-preview" });
  const about = h("small", { class: "hint", id: "model-about", "aria-live": "polite" });
  let catalog = [];
  const updatePreview = () => {
    const m = catalog.find((x) => x.model_name === model.value);
    if (m) {
      capacity.step = m.base_capacity;
      capacity.min = m.base_capacity;
      fill(about, `${m.display_name || m.model_name} · base capacity ${m.base_capacity} · context ${fmtNum(m.context_length)} tokens · `,
        m.available ? h("span", { class: "ok-text" }, "available") : h("span", { class: "danger-text" }, "weights missing on this node"));
    }
    const s = suffix.value.trim();
    preview.textContent = model.value ? `Will be called ${model.value}${s ? `-${s}` : ""}.` : "";
  };
  formDialog({
    title: "New deployment",
    submitLabel: "Create",
    build: (body) => {
      body.append(
        h("div", { class: "field" }, h("label", { for: "create-model" }, "Model"), model, about),
        h("div", { class: "field-row" },
          field("Capacity", capacity, "Capacity units: a multiple of the base capacity."),
          field("Suffix", suffix, "Up to 8 letters or digits, appended to the model name.")),
        field("Display name", name),
        h("div", { class: "field-row" }, field("RPM limit", rpm, "Requests a minute."), field("TPM limit", tpm, "Tokens a minute.")),
        preview);
      model.addEventListener("change", updatePreview);
      suffix.addEventListener("input", updatePreview);
    },
    submit: async () => {
      const body = { model_name: model.value, capacity: intOrNull(capacity) };
      if (suffix.value.trim()) body.suffix = suffix.value.trim();
      if (name.value.trim()) body.name = name.value.trim();
      if (intOrNull(rpm) !== null) body.rpm_limit = intOrNull(rpm);
      if (intOrNull(tpm) !== null) body.tpm_limit = intOrNull(tpm);
      if (!body.model_name) throw new ApiError(400, "Pick a model to deploy.", "InvalidParameter");
      const d = await api.create(body);
      toast(`Created ${d.deployed_model}: ${d.status}`);
    },
  });
  try {
    catalog = (await api.models()).models;
    fill(model, catalog.map((m) => h("option", { value: m.model_name },
      `${m.model_name}${m.available ? "" : " (weights missing)"}`)));
    const first = catalog.find((m) => m.available) || catalog[0];
    if (first) model.value = first.model_name;
    if (!catalog.length) fill(model, h("option", { value: "" }, "The catalog is empty"));
    updatePreview();
  } catch (e) {
    fill(model, h("option", { value: "" }, `Cannot load the catalog: ${e.message}`));
  }
}

export function scaleDialog(d) {
  const capacity = h("input", { name: "capacity", type: "number", min: d.base_capacity || 1, step: d.base_capacity || 1, value: d.capacity, inputmode: "numeric", required: true });
  formDialog({
    title: `Scale ${d.deployed_model}`,
    submitLabel: "Scale",
    build: (body) => body.append(field("Capacity", capacity,
      `Now ${d.capacity} (${d.ready_capacity} ready). A multiple of the base capacity, ${d.base_capacity}.`)),
    submit: async () => {
      const out = await api.scale(d.deployed_model, intOrNull(capacity));
      toast(`Scaling ${out.deployed_model} to ${out.capacity}`);
    },
  });
}

export function limitsDialog(d) {
  const { rpm, tpm } = limitInputs(d);
  formDialog({
    title: `Rate limits of ${d.deployed_model}`,
    build: (body) => body.append(
      h("p", { class: "hint" }, "Empty means no limit."),
      h("div", { class: "field-row" }, field("RPM limit", rpm, "Requests a minute."), field("TPM limit", tpm, "Tokens a minute."))),
    submit: async () => {
      await api.update(d.deployed_model, { rpm_limit: intOrNull(rpm), tpm_limit: intOrNull(tpm) });
      toast(`Updated the limits of ${d.deployed_model}`);
    },
  });
}

export function deleteDialog(d, afterDelete) {
  formDialog({
    title: `Delete ${d.deployed_model}?`,
    submitLabel: "Delete",
    danger: true,
    build: (body) => body.append(h("p", {}, "Its replicas stop and calls to ", h("code", {}, d.deployed_model),
      " fail from then on. This cannot be undone.")),
    submit: async () => {
      await api.remove(d.deployed_model);
      toast(`Deleting ${d.deployed_model}`);
      if (afterDelete) afterDelete();
    },
  });
}

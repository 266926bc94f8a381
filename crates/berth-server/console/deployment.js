// One deployment: its state, replicas, charts, recent events and replica logs, all live.

import { deployments as api, lines, enc, ApiError } from "/console/api.js";
import { h, fill, badge, parseTime, age, fmtNum, keepFocus } from "/console/ui.js";
import { follow, liveIndicator, actions, capacityCell } from "/console/deployments.js";
import { statsCharts } from "/console/chart.js";

const MAX_EVENTS = 50;
const MAX_LOG_LINES = 1000;

export function deploymentView(main, name, { onAuthError }) {
  const ctl = new AbortController();
  const stops = [() => ctl.abort()];
  const live = liveIndicator();
  let dep = null;
  let gone = false;

  const head = h("div", { class: "page-head" });
  const facts = h("dl", { class: "facts" });
  const replicaBody = h("div", { class: "panel-body" }, h("p", { class: "state" }, "Loading replicas…"));
  const eventList = h("ol", { id: "events", class: "events", "aria-live": "polite" });
  const eventBody = h("div", { class: "panel-body" }, h("p", { class: "state empty-events" }, "Waiting for events…"), eventList);
  const logText = h("pre", { id: "logs-text", class: "logs", tabindex: 0, "aria-label": "Replica logs" });
  const logFollow = h("input", { type: "checkbox", id: "logs-follow", checked: true });
  const logState = h("span", { class: "muted small" }, "Connecting…");
  const charts = h("div", { class: "charts", id: "charts" });

  fill(main,
    h("nav", { class: "crumbs", "aria-label": "Breadcrumb" }, h("a", { href: "#/" }, "Deployments"), h("span", { "aria-hidden": "true" }, " / "), name),
    head,
    h("section", { class: "panel", "aria-labelledby": "facts-title" },
      h("div", { class: "panel-head" }, h("h2", { id: "facts-title" }, "Overview")), h("div", { class: "panel-body" }, facts)),
    h("section", { class: "panel", "aria-labelledby": "charts-title" },
      h("div", { class: "panel-head" }, h("h2", { id: "charts-title" }, "Traffic"), h("span", { class: "muted small", id: "charts-note" })),
      h("div", { class: "panel-body" }, charts)),
    h("div", { class: "grid-2" },
      h("section", { class: "panel", "aria-labelledby": "replicas-title" },
        h("div", { class: "panel-head" }, h("h2", { id: "replicas-title" }, "Replicas")), replicaBody),
      h("section", { class: "panel", "aria-labelledby": "events-title" },
        h("div", { class: "panel-head" }, h("h2", { id: "events-title" }, "Recent events")), eventBody)),
    h("section", { class: "panel", "aria-labelledby": "logs-title" },
      h("div", { class: "panel-head" }, h("h2", { id: "logs-title" }, "Replica logs"),
        h("span", { class: "spacer" }), logState,
        h("label", { class: "check", for: "logs-follow" }, logFollow, "Follow")),
      h("div", { class: "panel-body" }, logText)));

  function renderHead() {
    if (gone) {
      fill(head, h("div", {}, h("h1", {}, name), h("p", { class: "muted" }, "This deployment does not exist (any more).")),
        h("div", { class: "page-actions" }, h("a", { class: "btn", href: "#/" }, "Back to deployments")));
      return;
    }
    if (!dep) {
      fill(head, h("div", {}, h("h1", {}, name), h("p", { class: "state" }, h("span", { class: "spinner", "aria-hidden": "true" }), "Loading…")));
      return;
    }
    keepFocus(head, () => fill(head,
      h("div", {}, h("h1", {}, dep.deployed_model),
        h("p", { class: "muted" }, dep.name && dep.name !== dep.deployed_model ? `${dep.name} · ` : "", dep.model_name)),
      h("div", { class: "page-actions" }, live.el, actions(dep, { afterDelete: () => { location.hash = "#/"; } }))));
    fill(facts,
      fact("Status", h("span", { id: "dep-status" }, badge(dep.status)),
        dep.fail_reason ? h("div", { class: "small danger-text" }, dep.fail_reason) : null,
        dep.status_message ? h("div", { class: "small muted" }, dep.status_message) : null),
      fact("Ready / capacity", h("span", { id: "dep-ready" }, capacityCell(dep))),
      fact("Base capacity", dep.base_capacity),
      fact("RPM limit", dep.rpm_limit ? fmtNum(dep.rpm_limit) : "none"),
      fact("TPM limit", dep.tpm_limit ? fmtNum(dep.tpm_limit) : "none"),
      fact("Created", h("time", { datetime: `${dep.gmt_create}Z`, title: `${dep.gmt_create} UTC` }, `${age(parseTime(dep.gmt_create))} ago`)));
  }

  function fact(label, ...value) {
    return h("div", { class: "fact" }, h("dt", {}, label), h("dd", {}, value));
  }

  // Replicas: on every replica event, and every few seconds.
  let replicaTimer = null;
  let replicaLoads = 0;
  async function loadReplicas() {
    clearTimeout(replicaTimer);
    const mine = ++replicaLoads;
    try {
      const out = await api.replicas(name, ctl.signal);
      if (mine !== replicaLoads) return; // a newer load answers, and polls on
      renderReplicas(out.replicas);
    } catch (e) {
      if (e.name === "AbortError" || mine !== replicaLoads) return;
      if (e.status === 401) return onAuthError();
      if (e.status === 404) return;
      fill(replicaBody, h("p", { class: "state state-error", role: "alert" }, `Cannot list replicas: ${e.message}`));
    }
    if (!gone) replicaTimer = setTimeout(loadReplicas, 5000);
  }
  stops.push(() => clearTimeout(replicaTimer));

  function renderReplicas(list) {
    if (!list.length) {
      fill(replicaBody, h("p", { class: "state" }, dep && dep.status === "DELETING" ? "Stopping…" : "No replicas running."));
      return;
    }
    fill(replicaBody, h("div", { class: "table-wrap" }, h("table", { class: "table table-compact", id: "replicas" },
      h("thead", {}, h("tr", {}, h("th", { scope: "col" }, "Replica"), h("th", { scope: "col" }, "State"), h("th", { scope: "col" }, "Started"))),
      h("tbody", {}, list.map((r) => h("tr", { dataset: { state: r.state, replica: r.replica_id } },
        h("td", {}, h("code", {}, r.replica_id)),
        h("td", {}, badge(r.state), r.reason ? h("div", { class: "small muted" }, r.reason) : null),
        h("td", { title: `${r.started_at} UTC` }, `${age(parseTime(r.started_at))} ago`)))))));
  }

  function addEvent(e) {
    const at = new Date();
    let text;
    if (e.type === "deployment") {
      const d = e.deployment;
      text = [badge(d.status), ` ${d.ready_capacity} / ${d.capacity} ready`, d.status_message ? ` · ${d.status_message}` : "", d.fail_reason ? ` · ${d.fail_reason}` : ""];
    } else if (e.type === "replica") {
      text = ["Replica ", h("code", {}, e.replica_id), ` ${e.state}`, e.reason ? `: ${e.reason}` : ""];
    } else if (e.type === "deleted") {
      text = ["Deleted"];
    } else return;
    eventBody.querySelector(".empty-events")?.remove();
    eventList.prepend(h("li", { dataset: { type: e.type } },
      h("time", { datetime: at.toISOString(), class: "muted small" }, at.toLocaleTimeString([], { hour12: false })), h("span", {}, text)));
    while (eventList.children.length > MAX_EVENTS) eventList.lastChild.remove();
  }

  renderHead();
  stops.push(follow(`/api/v1/deployments/${enc(name)}/stream`, {
    onAuthError,
    onState: (s) => {
      live.set(s);
      if (s === "gone") {
        gone = true;
        renderHead();
      }
    },
    onEvent: (e) => {
      addEvent(e);
      if (e.type === "deployment") {
        dep = e.deployment;
        renderHead();
        if (!replicaLoads) loadReplicas();
      } else if (e.type === "replica") {
        loadReplicas();
      } else if (e.type === "deleted") {
        gone = true;
        renderHead();
        renderReplicas([]);
      }
    },
  }));

  // Logs: the last lines of each replica, then followed.
  (async () => {
    for (let delay = 1000; !ctl.signal.aborted && !gone; delay = Math.min(delay * 2, 10000)) {
      try {
        logState.textContent = "Following";
        let n = 0;
        logText.textContent = "";
        await lines(`/api/v1/deployments/${enc(name)}/logs?lines=200&follow=true`, (l) => {
          n += 1;
          logText.append(l + "\n");
          while (logText.childNodes.length > MAX_LOG_LINES) logText.firstChild.remove();
          if (logFollow.checked) logText.scrollTop = logText.scrollHeight;
        }, { signal: ctl.signal });
        if (!n) logText.textContent = "";
        logState.textContent = "Ended";
      } catch (e) {
        if (ctl.signal.aborted) return;
        if (e instanceof ApiError && e.status === 401) return onAuthError();
        logState.textContent = e instanceof ApiError && e.status === 404 ? "No logs" : `Reconnecting: ${e.message}`;
        if (e instanceof ApiError && e.status === 404) return;
      }
      await new Promise((r) => setTimeout(r, delay));
    }
  })();

  stops.push(statsCharts(charts, name, { signal: ctl.signal, onAuthError }));
  const tick = setInterval(renderHead, 30000);
  stops.push(() => clearInterval(tick));
  return () => stops.forEach((s) => s());
}

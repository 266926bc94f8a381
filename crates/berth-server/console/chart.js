// Live charts of a deployment's traffic, from GET /api/v1/deployments/{name}/stats: hand-drawn
// SVG, no library.

import { deployments as api } from "/console/api.js";
import { h, fill } from "/console/ui.js";

const SVG = "http://www.w3.org/2000/svg";
const W = 300;
const H = 96;
const PAD = { top: 8, right: 6, bottom: 4, left: 6 };

function s(tag, attrs = {}, ...children) {
  const el = document.createElementNS(SVG, tag);
  for (const [k, v] of Object.entries(attrs)) el.setAttribute(k, String(v));
  el.append(...children);
  return el;
}

/** A nice upper bound for the y axis. */
function ceilNice(v) {
  if (!(v > 0)) return 1;
  const p = 10 ** Math.floor(Math.log10(v));
  for (const m of [1, 2, 2.5, 5, 10]) if (m * p >= v) return m * p;
  return 10 * p;
}

const fmt = (v, digits = 1) =>
  v === null || v === undefined || Number.isNaN(v) ? "–"
    : Math.abs(v) >= 1000 ? Math.round(v).toLocaleString("en-US")
    : Number.isInteger(v) ? String(v) : v.toFixed(digits);

/**
 * One chart: `series` is [{name, values (numbers or null), cls}], drawn over the same x range.
 */
export function chart({ title, unit, series, seconds }) {
  const all = series.flatMap((x) => x.values).filter((v) => v !== null && v !== undefined);
  const max = ceilNice(Math.max(0, ...all));
  const n = Math.max(...series.map((x) => x.values.length), 2);
  const x = (i) => PAD.left + (i * (W - PAD.left - PAD.right)) / (n - 1);
  const y = (v) => PAD.top + (H - PAD.top - PAD.bottom) * (1 - v / max);
  const svg = s("svg", { viewBox: `0 0 ${W} ${H}`, preserveAspectRatio: "none", class: "chart-svg", "aria-hidden": "true" });
  for (const f of [0, 0.5, 1]) {
    svg.append(s("line", { x1: PAD.left, x2: W - PAD.right, y1: y(max * f), y2: y(max * f), class: "grid" }));
  }
  for (const ser of series) {
    // Gaps (null: no request in the interval) break the line.
    let run = [];
    const runs = [];
    ser.values.forEach((v, i) => {
      if (v === null || v === undefined) {
        if (run.length) runs.push(run);
        run = [];
      } else run.push([x(i), y(v)]);
    });
    if (run.length) runs.push(run);
    for (const r of runs) {
      const pts = r.map(([a, b]) => `${a.toFixed(1)},${b.toFixed(1)}`).join(" ");
      if (r.length > 1) {
        svg.append(s("polygon", { points: `${r[0][0].toFixed(1)},${y(0)} ${pts} ${r[r.length - 1][0].toFixed(1)},${y(0)}`, class: `area ${ser.cls}` }));
        svg.append(s("polyline", { points: pts, class: `line ${ser.cls}`, "vector-effect": "non-scaling-stroke" }));
      } else {
        svg.append(s("circle", { cx: r[0][0], cy: r[0][1], r: 2, class: `dot ${ser.cls}` }));
      }
    }
  }
  const last = (ser) => {
    for (let i = ser.values.length - 1; i >= 0; i--) if (ser.values[i] !== null && ser.values[i] !== undefined) return ser.values[i];
    return null;
  };
  const summary = series.map((ser) => `${ser.name}: ${fmt(last(ser))} ${unit}`).join(", ");
  return h("figure", { class: "chart", role: "img", "aria-label": `${title}. Latest ${summary}. Peak ${fmt(max)} ${unit}.` },
    h("figcaption", {},
      h("span", { class: "chart-title" }, title),
      h("span", { class: "chart-value" }, series.map((ser) =>
        h("span", { class: `chart-num ${ser.cls}`, title: ser.name }, fmt(last(ser)), h("small", {}, ` ${unit}`))))),
    h("div", { class: "chart-plot" }, svg, h("span", { class: "chart-max" }, fmt(max))),
    h("div", { class: "chart-axis muted" }, h("span", {}, `−${Math.round(seconds / 60)}m`),
      series.length > 1 ? h("span", { class: "legend" }, series.map((ser) => h("span", { class: `key ${ser.cls}` }, ser.name))) : null,
      h("span", {}, "now")));
}

/** The four charts of a deployment, refreshed every interval. Returns a stop function. */
export function statsCharts(el, name, { signal, onAuthError }) {
  let timer = null;
  fill(el, h("p", { class: "state" }, h("span", { class: "spinner", "aria-hidden": "true" }), "Loading traffic…"));
  async function load() {
    let every = 5000;
    try {
      const out = await api.stats(name, signal);
      const secs = out.interval_secs || 10;
      every = Math.min(secs * 1000, 10000);
      const p = out.points || [];
      const span = p.length * secs;
      const note = document.getElementById("charts-note");
      if (note && span) note.textContent = `Last ${Math.round(span / 60)} minutes, ${secs} s steps`;
      const sum = (f) => p.reduce((a, x) => a + (x[f] || 0), 0);
      el.dataset.requests = String(sum("requests"));
      el.dataset.outputTokens = String(sum("output_tokens"));
      el.dataset.ttft = String(p.some((x) => x.ttft_ms !== null && x.ttft_ms !== undefined));
      fill(el,
        chart({ title: "Requests per second", unit: "req/s", seconds: span, series: [{ name: "requests", cls: "s1", values: p.map((x) => x.requests / secs) }] }),
        chart({ title: "Time to first token", unit: "ms", seconds: span, series: [{ name: "mean TTFT", cls: "s2", values: p.map((x) => x.ttft_ms ?? null) }] }),
        chart({ title: "Tokens per minute", unit: "tok/min", seconds: span, series: [
          { name: "input", cls: "s3", values: p.map((x) => (x.input_tokens * 60) / secs) },
          { name: "output", cls: "s1", values: p.map((x) => (x.output_tokens * 60) / secs) }] }),
        chart({ title: `Errors (per ${secs} s)`, unit: "", seconds: span, series: [
          { name: "errors", cls: "s4", values: p.map((x) => x.errors) },
          { name: "throttled", cls: "s5", values: p.map((x) => x.throttled) }] }));
    } catch (e) {
      if (e.name === "AbortError") return;
      if (e.status === 401) return onAuthError();
      fill(el, h("p", { class: "state state-error", role: "alert" }, `Traffic is unavailable: ${e.message}`));
      every = 15000;
    }
    if (!signal.aborted) timer = setTimeout(load, every);
  }
  load();
  return () => clearTimeout(timer);
}

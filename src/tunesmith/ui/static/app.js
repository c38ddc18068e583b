// tunesmith UI helpers shared by every page: api() calls, server-sent events, charts, small DOM helpers.
// No framework: each page's script uses these and the DOM. Loaded after vendor/uplot (window.uPlot).
"use strict";

const TS = (() => {
  const csrf = document.querySelector('meta[name="csrf-token"]')?.content || "";

  class ApiError extends Error {
    constructor(message, status, body) { super(message); this.status = status; this.body = body; }
  }

  // Show one line (a TunesmithError's message) at the top of the page; null hides it.
  function flash(message, kind = "error") {
    const el = document.getElementById("flash");
    if (!el) return;
    el.hidden = !message;
    el.className = `flash ${kind}`;
    el.textContent = message || "";
  }

  // fetch() with the CSRF header on every call, JSON in and out. `body`: an object (sent as JSON),
  // a Blob or File (sent raw), or undefined. On an error answer it shows the message in the page
  // and throws ApiError (its .body holds the JSON, e.g. .error.problems for config errors).
  async function api(method, url, body, { quiet = false } = {}) {
    const headers = { "X-CSRF-Token": csrf, "Accept": "application/json" };
    let payload;
    if (body instanceof Blob) { payload = body; headers["Content-Type"] = "application/octet-stream"; }
    else if (body !== undefined) { payload = JSON.stringify(body); headers["Content-Type"] = "application/json"; }
    let response;
    try {
      response = await fetch(url, { method, headers, body: payload, credentials: "same-origin" });
    } catch (e) {
      const message = "the UI server does not answer (is `tunesmith ui` still running?)";
      if (!quiet) flash(message);
      throw new ApiError(message, 0, null);
    }
    const text = await response.text();
    let data = null;
    try { data = text ? JSON.parse(text) : null; } catch (e) { data = null; }
    if (!response.ok) {
      const message = data?.error?.message || `${response.status} ${response.statusText}`;
      if (!quiet) flash(message);
      throw new ApiError(message, response.status, data);
    }
    if (!quiet) flash(null);
    return data;
  }

  // Server-sent events: onEvent(parsed JSON) per message; the browser reconnects on its own.
  // Returns the EventSource (call .close() when the page no longer needs it).
  function stream(url, onEvent, { onError } = {}) {
    const source = new EventSource(url, { withCredentials: true });
    source.onmessage = (e) => { try { onEvent(JSON.parse(e.data)); } catch (err) { console.error(err); } };
    source.addEventListener("end", () => source.close());
    if (onError) source.onerror = onError;
    return source;
  }

  // Poll a job until it ends: onUpdate(job) each time; resolves with the finished job.
  async function waitJob(id, onUpdate, { every = 700, log = false } = {}) {
    for (;;) {
      const job = await api("GET", `/api/jobs/${encodeURIComponent(id)}${log ? "?log=1" : ""}`, undefined, { quiet: true });
      if (onUpdate) onUpdate(job);
      if (job.status !== "running") return job;
      await new Promise((r) => setTimeout(r, every));
    }
  }

  const COLOURS = ["#1f77b4", "#d62728", "#2ca02c", "#ff7f0e", "#9467bd", "#8c564b", "#e377c2", "#17becf"];

  // A line chart over a shared x axis (steps). series: [{label, scale?}]; `set(xs, ys[])` replaces
  // the data (null = no point there; lines span the gaps). Returns {set, plot}.
  function lineChart(el, { title = "", xLabel = "step", series = [], height = 260 } = {}) {
    const scales = { x: { time: false } };
    const axes = [{ label: xLabel }, { label: series[0]?.scale || "", scale: series[0]?.scale || "y" }];
    const second = series.find((s) => s.scale && s.scale !== (series[0].scale || "y"));
    if (second) axes.push({ side: 1, label: second.scale, scale: second.scale, grid: { show: false } });
    const opts = {
      title, width: Math.max(320, el.clientWidth || 640), height, scales, axes,
      series: [{ label: xLabel }, ...series.map((s, i) => ({
        label: s.label, scale: s.scale || "y", stroke: s.colour || COLOURS[i % COLOURS.length], width: 2,
        spanGaps: true, points: { show: s.points ?? true, size: 5 },
      }))],
    };
    const data = [[], ...series.map(() => [])];
    const plot = new uPlot(opts, data, el);
    new ResizeObserver(() => plot.setSize({ width: Math.max(320, el.clientWidth), height })).observe(el);
    return { plot, set(xs, ys) { plot.setData([xs, ...ys]); } };
  }

  // Metric rows (metrics.jsonl lines) -> aligned arrays for lineChart: keys are [split, field] pairs.
  function alignRows(rows, keys) {
    const steps = [...new Set(rows.filter((r) => r.step !== undefined).map((r) => r.step))].sort((a, b) => a - b);
    const index = new Map(steps.map((s, i) => [s, i]));
    const ys = keys.map(() => steps.map(() => null));
    for (const r of rows) {
      keys.forEach(([split, field], k) => {
        if (r.split === split && typeof r[field] === "number") ys[k][index.get(r.step)] = r[field];
      });
    }
    return { xs: steps, ys };
  }

  // A histogram as a bar-like step chart: edges (n+1) and counts (n).
  function histogram(el, edges, counts, { title = "", xLabel = "", height = 220 } = {}) {
    const xs = edges.slice(0, -1);
    const opts = {
      title, width: Math.max(320, el.clientWidth || 640), height, scales: { x: { time: false } },
      axes: [{ label: xLabel }, { label: "rows" }],
      series: [{ label: xLabel }, { label: "rows", stroke: COLOURS[0], fill: "rgba(31,119,180,0.3)",
        paths: uPlot.paths.bars({ size: [0.9, 100], align: 1 }), points: { show: false } }],
    };
    return new uPlot(opts, [xs, counts], el);
  }

  // el("tr", {class: "x"}, child, "text", ...) -> element; text is always set as text (never HTML).
  function el(tag, attrs = {}, ...children) {
    const node = document.createElement(tag);
    for (const [k, v] of Object.entries(attrs || {})) {
      if (v === null || v === undefined || v === false) continue;
      if (k.startsWith("on")) node.addEventListener(k.slice(2), v);
      else if (k === "class") node.className = v;
      else node.setAttribute(k, v === true ? "" : v);
    }
    for (const c of children.flat()) {
      if (c === null || c === undefined) continue;
      node.append(c instanceof Node ? c : document.createTextNode(String(c)));
    }
    return node;
  }

  function fmt(x, digits = 4) {
    if (x === null || x === undefined) return "–";
    return typeof x === "number" ? (Number.isInteger(x) ? String(x) : x.toFixed(digits)) : String(x);
  }

  return { api, flash, stream, waitJob, lineChart, alignRows, histogram, el, fmt, ApiError, csrf };
})();

// The Runs pages: one run's curves, live over server-sent events, and several runs overlaid.
"use strict";

const TSRuns = (() => {
  const LOSS_KEYS = [["train", "loss"], ["validation", "loss"]];
  const SPEED_KEYS = [["train", "tokens_per_s"]];
  // A preference run (dpo, simpo) also logs how often the chosen answer wins and by how much.
  const PREF_KEYS = [["train", "reward_accuracy"], ["validation", "reward_accuracy"], ["validation", "reward_margin"]];
  const PREF_SERIES = [{ label: "train reward accuracy", scale: "accuracy" },
    { label: "validation reward accuracy", scale: "accuracy" }, { label: "validation margin", scale: "margin" }];

  // Curves of one run that follow metrics.jsonl as it grows (a run started anywhere, the terminal too).
  // Returns {rows, close}; `onRow(row)` is called for each new line (the Train page uses it).
  function live(name, { lossEl = "loss-chart", speedEl = "speed-chart", prefEl = "pref-chart", pointsEl = "points", onRow,
    onStatus } = {}) {
    const rows = [];
    const loss = TS.lineChart(document.getElementById(lossEl), { title: "loss", series: [
      { label: "train loss" }, { label: "validation loss" }] });
    const speed = TS.lineChart(document.getElementById(speedEl), { title: "tokens/s", series: [{ label: "tokens/s" }] });
    let pending = false, pref = null;
    const preference = () => {  // made on the first preference row, its panel shown first so it has a width
      const el = document.getElementById(prefEl);
      if (!pref && el) {
        el.closest(".panel").hidden = false;
        pref = TS.lineChart(el, { title: "reward accuracy and margin", series: PREF_SERIES });
      }
      return pref;
    };
    const redraw = () => {
      pending = false;
      const l = TS.alignRows(rows, LOSS_KEYS), s = TS.alignRows(rows, SPEED_KEYS);
      loss.set(l.xs, l.ys);
      speed.set(s.xs, s.ys);
      if (rows.some((r) => typeof r.reward_accuracy === "number") && preference()) {
        const p = TS.alignRows(rows, PREF_KEYS);
        pref.set(p.xs, p.ys);
      }
      const points = document.getElementById(pointsEl);
      if (points) {
        const n = rows.filter((r) => r.split === "train" && typeof r.loss === "number").length;
        points.textContent = `${n} training points, last step ${l.xs.length ? l.xs[l.xs.length - 1] : "–"}`;
        points.dataset.count = String(n);
      }
    };
    const source = TS.stream(`/api/runs/${encodeURIComponent(name)}/metrics/stream`, (row) => {
      rows.push(row);
      if (onRow) onRow(row);
      if (!pending) { pending = true; requestAnimationFrame(redraw); }
    });
    source.addEventListener("open", () => { rows.length = 0; });  // a reconnection sends every line again
    source.addEventListener("reset", () => {  // the file was replaced (a resume): its lines come again
      rows.length = 0;
      if (!pending) { pending = true; requestAnimationFrame(redraw); }
    });
    source.addEventListener("status", (e) => {
      const status = JSON.parse(e.data).status;
      const badge = document.getElementById("run-status");
      if (badge) { badge.textContent = status; badge.className = `status ${status}`; }
      if (onStatus) onStatus(status);
    });
    return { rows, close: () => source.close() };
  }

  // Train and validation loss of several runs, one series per run on each chart.
  async function overlay(names) {
    if (!names.length) return;
    const data = await Promise.all(names.map((n) => TS.api("GET", `/api/runs/${encodeURIComponent(n)}/metrics`)));
    for (const [el, split, title] of [["train-overlay", "train", "train loss"], ["val-overlay", "validation", "validation loss"]]) {
      const all = data.flatMap((d, i) => d.rows.filter((r) => r.split === split).map((r) => ({ ...r, split: names[i] })));
      const { xs, ys } = TS.alignRows(all, names.map((n) => [n, "loss"]));
      const chart = TS.lineChart(document.getElementById(el), { title, series: names.map((n) => ({ label: n })) });
      chart.set(xs, ys);
    }
  }

  // the run and overlay pages start here: the page's CSP runs scripts from /static/ only, never inline ones
  const followed = document.querySelector("#loss-chart[data-live]");
  if (followed) live(followed.dataset.run);
  const chosen = document.getElementById("overlay-runs");
  if (chosen) overlay(JSON.parse(chosen.textContent));

  return { live, overlay };
})();

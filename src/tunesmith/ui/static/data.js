// The Data page: check a workspace file as `tunesmith data check` does, show the report, prepare splits.
"use strict";

(() => {
  const $ = (id) => document.getElementById(id);
  const { api, el, fmt, waitJob } = TS;
  let report = null;

  function readOptions() {
    return { path: $("file").value, format: $("format").value || null, map: $("map").value || null,
             system: $("system").value || null };
  }

  async function upload() {
    const file = $("upload").files[0];
    if (!file) return;
    $("check-status").textContent = `uploading ${file.name} ...`;
    const saved = await api("POST", `/api/data/upload?name=${encodeURIComponent(file.name)}`, file);
    const option = el("option", { value: saved.path }, saved.path);
    $("file").append(option);
    $("file").value = saved.path;
    $("check-status").textContent = `uploaded as ${saved.path} (${saved.bytes} bytes)`;
  }

  async function check() {
    if (!$("file").value) { TS.flash("choose a file first (or upload one)"); return; }
    $("check").disabled = true;
    $("results").hidden = true;
    try {
      const body = { ...readOptions(), model: $("model").value || null, max_length: Number($("max-length").value) };
      const { job } = await api("POST", "/api/data/check", body);
      const started = Date.now();
      const done = await waitJob(job, () => {
        $("check-status").textContent = `checking ${body.path} ... ${Math.round((Date.now() - started) / 1000)} s`;
      });
      if (done.status !== "done") {
        $("check-status").textContent = `check ${done.status}`;
        TS.flash(done.error || `the check ${done.status}`);
        return;
      }
      $("check-status").textContent = `checked ${body.path} in ${Math.round((done.ended - done.started) * 10) / 10} s`;
      show(done.result, body.path);
    } finally {
      $("check").disabled = false;
    }
  }

  function show(r, path) {
    report = r;
    const s = r.summary, v = s.verdict;
    $("results").hidden = false;
    $("verdict").textContent = `${v.message} (${v.reasons.join("; ")})`;
    $("verdict").className = `verdict ${v.level}`;
    $("verdict").dataset.level = v.level;
    $("summary").textContent = `${path}: format ${s.format || "unknown"}, ${s.rows_read} rows read, ` +
      `${s.rows_with_errors} with errors, ${s.usable_rows} usable; ${s.errors} error(s), ${s.warnings} warning(s)`;
    $("notes").replaceChildren(...(s.notes || []).map((n) => el("li", {}, n)));
    const rules = Object.keys(s.by_rule || {});
    $("rule-filter").replaceChildren(el("option", { value: "" }, "all rules"),
      ...rules.map((rule) => el("option", { value: rule }, `${rule} (${s.by_rule[rule].count})`)));
    renderFindings();
    renderTokens(s.tokens);
    renderPreview(r.preview || []);
    renderPairs(r.pairs || []);
    if (!$("out").value) $("out").value = `data/${path.split("/").pop().split(".")[0]}`;
  }

  function renderFindings() {
    const rule = $("rule-filter").value, severity = $("severity-filter").value;
    const rows = report.issues.filter((f) => (!rule || f.rule === rule) && (!severity || f.severity === severity));
    const shown = rows.slice(0, 1000);
    $("findings").tBodies[0].replaceChildren(...shown.map((f) => el("tr", { class: f.severity },
      el("td", {}, f.line || "file"), el("td", {}, f.field || "–"), el("td", { class: "mono" }, f.rule),
      el("td", { class: "sev" }, f.severity), el("td", {}, f.message))));
    const total = report.issues_total;
    $("findings-count").textContent = `${rows.length} shown of ${total}` +
      (shown.length < rows.length ? ` (first ${shown.length} listed)` : "") +
      (total > report.issues.length ? `; the first ${report.issues.length} were sent to this page` : "");
  }

  function renderTokens(t) {
    const box = $("histogram");
    box.replaceChildren();
    if (!t || !t.histogram) {
      $("tokens-line").textContent = "no token statistics (no tokenizer: give a model)";
      return;
    }
    TS.histogram(box, t.histogram.edges, t.histogram.counts, { xLabel: "tokens per row" });
    $("tokens-line").textContent = `min ${t.min}, median ${t.median}, p95 ${t.p95}, max ${t.max}; ` +
      `${t.trainable_tokens} trainable tokens; ${t.rows_truncated} row(s) over max_length ${t.max_length}`;
  }

  function renderPreview(previews) {
    $("preview").replaceChildren(...previews.map((p) => el("div", {},
      el("p", { class: "small muted" }, `line ${p.line}${p.side ? ` (${p.side})` : ""}: ${p.tokens} tokens, ${p.trained} trained` +
        (p.truncated ? `, ${p.truncated} cut` : "")),
      el("div", { class: "preview mono" }, ...p.runs.map(([text, trained]) =>
        el("span", { class: trained ? "trained" : "context" }, text))))));
    if (!previews.length) $("preview").append(el("p", { class: "muted small" }, "no usable example to preview"));
  }

  function renderPairs(pairs) {
    if (!pairs.length) { $("pairs").replaceChildren(el("p", { class: "muted small" }, "none found")); return; }
    $("pairs").replaceChildren(...pairs.map((p) => el("div", { class: "panel pair" },
      el("p", { class: "small" }, el("span", { class: "mono" }, p.rule), " ", p.message),
      el("div", { class: "side-by-side" },
        el("div", {}, el("p", { class: "small muted" }, `line ${p.match}`), el("pre", {}, p.match_text)),
        el("div", {}, el("p", { class: "small muted" }, `line ${p.line}`), el("pre", {}, p.text))))));
  }

  async function prepare() {
    $("prepare").disabled = true;
    try {
      const body = { ...readOptions(), out: $("out").value, split: $("split").value, seed: Number($("seed").value),
                     near_duplicates: $("near").value };
      const { job } = await api("POST", "/api/data/prepare", body);
      $("prepare-result").textContent = "preparing ...";
      const done = await waitJob(job);
      if (done.status !== "done") { $("prepare-result").textContent = ""; TS.flash(done.error || `prepare ${done.status}`); return; }
      const c = done.result.card, sp = c.splits;
      $("prepare-result").textContent = `${c.rows_read} rows read: ${c.kept} kept (train ${sp.train}, validation ` +
        `${sp.validation}, test ${sp.test}), ${c.rejected} rejected; wrote ${done.meta.out}/: ${done.result.files.join(", ")}`;
    } finally {
      $("prepare").disabled = false;
    }
  }

  $("upload").addEventListener("change", () => upload().catch(() => {}));
  $("check").addEventListener("click", () => check().catch(() => {}));
  $("rule-filter").addEventListener("change", renderFindings);
  $("severity-filter").addEventListener("change", renderFindings);
  $("prepare").addEventListener("click", () => prepare().catch(() => {}));
})();

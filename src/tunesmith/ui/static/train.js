// The Train page: the config form -> validate, plan, start a run in a job, follow it live, stop, resume.
"use strict";

(() => {
  const $ = (id) => document.getElementById(id);
  const { api, el } = TS;
  let current = null; // {job, run, live}
  $("train-form").addEventListener("submit", (e) => e.preventDefault()); // Enter in a field does not reload

  function values() {
    const out = {};
    for (const input of $("train-form").querySelectorAll("[name]")) {
      if (input.value !== input.dataset.default) out[input.name] = input.value;
    }
    return out;
  }

  function duration(seconds) {
    if (seconds < 90) return `${Math.max(1, Math.round(seconds))} s`;
    if (seconds < 5400) return `${Math.round(seconds / 60)} min`;
    return `${(seconds / 3600).toFixed(1)} h`;
  }

  function showProblems(error) {
    const problems = error?.body?.error?.problems || (error ? [error.message] : []);
    $("problems").replaceChildren(...problems.map((p) => el("li", {}, p)));
  }

  async function guarded(fn) {
    showProblems(null);
    try { await fn(); } catch (e) { if (e instanceof TS.ApiError) showProblems(e); else throw e; }
  }

  async function plan() {
    $("plan-lines").replaceChildren(el("p", { class: "muted" }, "loading the model and rendering the data ..."));
    $("plan-box").hidden = false;
    const { job } = await api("POST", "/api/train/plan", { values: values() });
    const done = await TS.waitJob(job);
    if (done.status !== "done") {
      $("plan-lines").replaceChildren();
      $("plan-box").hidden = true;
      showProblems({ message: done.error, body: { error: { problems: done.problems } } });
      TS.flash(done.error);
      return;
    }
    const p = done.result;
    $("plan-lines").replaceChildren(...p.lines.map((line) => el("p", { class: "mono small" }, line)),
      el("p", {}, `${p.steps} steps, about ${duration(p.seconds)}, peak memory ~${(p.peak_bytes / 1e9).toFixed(1)} GB`));
  }

  async function start() {
    const { job, run } = await api("POST", "/api/train/start", { values: values(), name: $("run-name").value || null });
    follow(job, run);
  }

  async function resume() {
    const steps = $("resume-steps").value ? Number($("resume-steps").value) : null;
    const { job, run } = await api("POST", "/api/train/resume", { run: $("resume-run").value, max_steps: steps });
    follow(job, run);
  }

  async function stop() {
    if (!current) return;
    $("stop").disabled = true;
    await api("POST", `/api/jobs/${encodeURIComponent(current.job)}/stop`);
    $("train-status").textContent = "stopping: saving a checkpoint ...";
  }

  // Follow a training job: its output, and the run's curves from its first metrics line.
  async function follow(job, run) {
    if (current?.live) current.live.close();
    current = { job, run, live: null };
    $("live").hidden = false;
    $("run-link").textContent = run;
    $("run-link").href = `/runs/${encodeURIComponent(run)}`;
    $("start").disabled = true;
    $("stop").disabled = false;
    for (const id of ["loss-chart", "speed-chart"]) $(id).replaceChildren();
    current.live = TSRuns.live(run);  // the stream waits for the run's first metrics line
    const done = await TS.waitJob(job, (j) => {
      $("log").textContent = j.log || "";
      $("log").scrollTop = $("log").scrollHeight;
      $("train-status").textContent = j.status === "running" ? "training ..." : j.status;
    }, { every: 1000, log: true });
    $("start").disabled = false;
    $("stop").disabled = true;
    const live = current.live;
    setTimeout(() => live.close(), 3000);  // the last lines arrive within a poll; then the stream is not needed
    if (done.status === "failed") { TS.flash(done.error); showProblems({ message: done.error }); }
    $("train-status").textContent = done.status === "done"
      ? `done: ${done.result.steps} steps, best validation loss ${TS.fmt(done.result.best_val_loss)}`
      : done.status === "stopped" ? `stopped; resume it from the Train page or with \`tunesmith train --resume ${run}\``
      : done.error;
  }

  $("start").addEventListener("click", () => guarded(start));
  $("stop").addEventListener("click", () => guarded(stop));
  $("plan").addEventListener("click", () => guarded(plan));
  if ($("resume")) $("resume").addEventListener("click", () => guarded(resume));
  const running = JSON.parse($("running-job").textContent);  // a run this UI started: follow it again after a reload
  if (running) follow(running.job, running.run);
})();

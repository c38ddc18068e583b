// The Compare page: start a comparison job, show its progress lines, then reload on the finished report;
// the radio buttons switch which answer the differences are highlighted against.
"use strict";
(() => {
  const form = document.getElementById("compare-form");
  const examples = document.getElementById("compare-examples");
  for (const radio of document.querySelectorAll('input[name="diff-against"]')) {
    radio.addEventListener("change", () => { examples.className = `against-${radio.value}`; });
  }
  document.getElementById("compare-run")?.addEventListener("change", (e) => {
    location.href = `/compare?run=${encodeURIComponent(e.target.value)}`;
  });
  if (!form) return;
  const number = (name) => { const v = form.elements[name].value.trim(); return v === "" ? null : Number(v); };

  form.addEventListener("submit", async (e) => {
    e.preventDefault();
    const run = form.elements.run.value;
    const body = {
      run, data: form.elements.data.value || null, probe: form.elements.probe.value,
      strategies: [...form.querySelectorAll('input[name="strategy"]:checked')].map((x) => x.value),
      limit: number("limit"), max_new_tokens: number("max_new_tokens"),
    };
    const button = document.getElementById("compare-start");
    button.disabled = true;
    try {
      const { job } = await TS.api("POST", "/api/compare/start", body);
      const panel = document.getElementById("compare-job");
      const status = document.getElementById("compare-status");
      const log = document.getElementById("compare-log");
      panel.hidden = false;
      document.getElementById("compare-title").textContent = `comparing on ${run}`;
      const done = await TS.waitJob(job, (j) => {
        status.textContent = j.status; status.className = `status ${j.status}`;
        log.textContent = j.log || "starting…"; log.scrollTop = log.scrollHeight;
      }, { log: true });
      if (done.status === "done") location.href = `/compare?run=${encodeURIComponent(run)}#compare-report`;
      else TS.flash(done.error || `the comparison ${done.status}`);
    } catch (err) {
      /* api() has shown the one-line message */
    } finally {
      button.disabled = false;
    }
  });
})();

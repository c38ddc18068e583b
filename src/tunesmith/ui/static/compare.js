// The Compare page: start a comparison job, follow its progress lines, then reload on the finished report;
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
  const ids = { panel: "compare-job", status: "compare-status", title: "compare-title", log: "compare-log",
                button: "compare-start" };
  const number = (name) => { const v = form.elements[name].value.trim(); return v === "" ? null : Number(v); };
  const follow = (jobId, run) => JobPanel.follow(jobId, `comparing on ${run}`, ids,
    () => { location.href = `/compare?run=${encodeURIComponent(run)}#compare-report`; });

  form.addEventListener("submit", async (e) => {
    e.preventDefault();
    const run = form.elements.run.value;
    const body = {
      run, data: form.elements.data.value || null, probe: form.elements.probe.value,
      strategies: [...form.querySelectorAll('input[name="strategy"]:checked')].map((x) => x.value),
      limit: number("limit"), max_new_tokens: number("max_new_tokens"),
    };
    let job;
    try { ({ job } = await TS.api("POST", "/api/compare/start", body)); } catch (err) { return; /* shown */ }
    await follow(job, run);
  });
  JobPanel.running("compare", form.elements.run.value).then((j) => j && follow(j.id, form.elements.run.value));
})();

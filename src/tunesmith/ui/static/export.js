// The Export page: start an export job, follow its progress lines, then reload on the verified files.
"use strict";
(() => {
  const form = document.getElementById("export-form");
  if (!form) return;
  document.getElementById("export-run").addEventListener("change", (e) => {
    location.href = `/export?run=${encodeURIComponent(e.target.value)}`;
  });
  const ids = { panel: "export-job", status: "export-status", title: "export-title", log: "export-log",
                button: "export-start" };
  const follow = (jobId, run, title) => JobPanel.follow(jobId, title, ids,
    () => { location.href = `/export?run=${encodeURIComponent(run)}`; });

  form.addEventListener("submit", async (e) => {
    e.preventDefault();
    const run = form.elements.run.value;
    const body = {
      run, formats: [...form.querySelectorAll('input[name="format"]:checked')].map((x) => x.value),
      quant: form.elements.quant.value, dtype: form.elements.dtype.value || null,
      overwrite: document.getElementById("export-overwrite").checked,
    };
    let job;
    try { ({ job } = await TS.api("POST", "/api/export/start", body)); } catch (err) { return; /* shown */ }
    await follow(job, run, `exporting ${run} as ${body.formats.join(", ")}`);
  });
  const run = form.elements.run.value;
  JobPanel.running("export", run).then((j) => j && follow(j.id, run, j.title));
})();

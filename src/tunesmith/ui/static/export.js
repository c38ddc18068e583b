// The Export page: start an export job, show its progress lines, then reload on the verified files.
"use strict";
(() => {
  const form = document.getElementById("export-form");
  if (!form) return;
  document.getElementById("export-run").addEventListener("change", (e) => {
    location.href = `/export?run=${encodeURIComponent(e.target.value)}`;
  });
  form.addEventListener("submit", async (e) => {
    e.preventDefault();
    const run = form.elements.run.value;
    const body = {
      run, formats: [...form.querySelectorAll('input[name="format"]:checked')].map((x) => x.value),
      quant: form.elements.quant.value, dtype: form.elements.dtype.value || null,
      overwrite: document.getElementById("export-overwrite").checked,
    };
    const button = document.getElementById("export-start");
    button.disabled = true;
    try {
      const { job } = await TS.api("POST", "/api/export/start", body);
      const status = document.getElementById("export-status");
      const log = document.getElementById("export-log");
      document.getElementById("export-job").hidden = false;
      document.getElementById("export-title").textContent = `exporting ${run} as ${body.formats.join(", ")}`;
      const done = await TS.waitJob(job, (j) => {
        status.textContent = j.status; status.className = `status ${j.status}`;
        log.textContent = j.log || "starting…"; log.scrollTop = log.scrollHeight;
      }, { log: true });
      if (done.status === "done") location.href = `/export?run=${encodeURIComponent(run)}`;
      else TS.flash(done.error || `the export ${done.status}`);
    } catch (err) {
      /* api() has shown the one-line message */
    } finally {
      button.disabled = false;
    }
  });
})();

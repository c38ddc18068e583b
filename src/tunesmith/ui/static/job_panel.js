// The Compare and Export pages' job panel: follow a job's log until it ends, then reload on its result.
// A job of this page's kind for the chosen run that is still running when the page opens is followed
// again, so a reload loses nothing.
"use strict";
const JobPanel = (() => {
  // ids: {panel, status, title, log, button}; the button (the page's start) is disabled while the job
  // runs; done(job) runs when the job ends well, else its one line is shown.
  async function follow(jobId, title, ids, done) {
    const $ = (k) => document.getElementById(ids[k]);
    $("panel").hidden = false;
    $("title").textContent = title;
    $("button").disabled = true;
    let job;
    try {
      job = await TS.waitJob(jobId, (j) => {
        $("status").textContent = j.status; $("status").className = `status ${j.status}`;
        $("log").textContent = j.log || "starting…"; $("log").scrollTop = $("log").scrollHeight;
      }, { log: true });
    } finally {
      $("button").disabled = false;
    }
    if (job.status === "done") done(job);
    else TS.flash(job.error || `the job ${job.status}`);
    return job;
  }

  // The running job of `kind` for `run`, if this UI has one.
  async function running(kind, run) {
    const { jobs } = await TS.api("GET", `/api/jobs?kind=${encodeURIComponent(kind)}`, undefined, { quiet: true });
    return jobs.find((j) => j.status === "running" && j.meta?.run === run) || null;
  }

  return { follow, running };
})();

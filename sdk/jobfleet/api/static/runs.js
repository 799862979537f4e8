// An orchestration's links to other runs (orchestration.html): the pipeline it is a
// stage of, its stages in order with their status; the run it re-runs and its re-runs;
// and "Re-run failed". Read from GET /v1/orchestrations/{id} (its `links`), again
// every few seconds until the run and its pipeline have ended. Built on the helpers
// dashboard.js shares as window.jobfleet; plain JS, no build step.
(() => {
  "use strict";

  if (document.body.dataset.page !== "orchestration") return;
  const { api, el, byTestId, showError, statusBadge } = window.jobfleet;

  const ENDED = new Set(["Completed", "Errored", "Cancelled"]);
  const REFRESH_MS = 2000;

  const parts = location.pathname.split("/").filter(Boolean);
  const id = decodeURIComponent(parts[parts.length - 1] || "");
  const base = `/orchestrations/${encodeURIComponent(id)}`;
  const page = (other) => `/orchestrations/${encodeURIComponent(other)}`;

  const rerunButton = byTestId("rerun-button");

  function stageItem(s) {
    const badge = el("span", { "data-testid": "pipeline-stage-status" });
    statusBadge(badge, s.status);
    const current = s.id === id;
    return el("li", {
      "data-testid": "pipeline-stage", "data-stage": s.stage, "data-orchestration-id": s.id,
      class: current ? "current" : null, "aria-current": current ? "page" : null,
    },
    el("a", { href: page(s.id), "data-testid": "pipeline-stage-link", title: s.id },
      `${s.stage}. ${s.job_name}`), " ", badge);
  }

  function renderPipeline(links) {
    const section = byTestId("pipeline");
    section.hidden = !links.pipeline;
    if (!links.pipeline) return;
    const items = links.stages.map(stageItem);
    const stopped = links.stages.find((s) => s.next_note);
    if (!stopped) {
      for (let n = links.stages.length + 1; n <= links.stages_total; n += 1) {
        items.push(el("li", { class: "future", "data-testid": "pipeline-stage-future" },
          `${n}. not started yet`));
      }
    }
    byTestId("pipeline-stages").replaceChildren(...items);
    const note = byTestId("pipeline-note");
    note.hidden = !stopped;
    note.textContent = stopped
      ? `The pipeline stopped after stage ${stopped.stage}: ${stopped.next_note}` : "";
  }

  function renderRuns(links) {
    const of = byTestId("rerun-of");
    of.hidden = !links.rerun_of;
    if (links.rerun_of) {
      of.querySelector("dd").replaceChildren(el("a", {
        href: page(links.rerun_of), "data-testid": "rerun-of-link", title: links.rerun_of,
      }, el("code", { text: links.rerun_of.slice(0, 8) })));
    }
    const reruns = byTestId("reruns");
    reruns.hidden = links.reruns.length === 0;
    reruns.querySelector("dd").replaceChildren(el("span", { class: "run-links" },
      ...links.reruns.map((other) => el("a", {
        href: page(other), "data-testid": "rerun-link", title: other,
      }, el("code", { text: other.slice(0, 8) })))));
  }

  function pipelineEnded(links) {
    if (!links.pipeline) return true;
    const last = links.stages[links.stages.length - 1];
    return Boolean(last) && ENDED.has(last.status) &&
      (links.stages.length >= links.stages_total || links.stages.some((s) => s.next_note));
  }

  async function refresh() {
    let o;
    try {
      o = await api(base);
    } catch (err) {
      if (err.status !== 404 && err.status !== 401) setTimeout(refresh, REFRESH_MS);
      return; // dashboard.js says what is wrong with the orchestration itself
    }
    renderPipeline(o.links);
    renderRuns(o.links);
    rerunButton.hidden = !(ENDED.has(o.status) && o.failed > 0);
    if (!(ENDED.has(o.status) && pipelineEnded(o.links))) setTimeout(refresh, REFRESH_MS);
  }

  rerunButton.addEventListener("click", async () => {
    rerunButton.disabled = true;
    try {
      const again = await api(`${base}/rerun`, { method: "POST", body: { which: ["failed"] } });
      location.assign(again.links.dashboard);
    } catch (err) {
      showError(`Could not re-run: ${err.message}`);
      rerunButton.disabled = false;
    }
  });

  refresh();
})();

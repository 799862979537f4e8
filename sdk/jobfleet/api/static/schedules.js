// The schedules page (schedules.html): each schedule with its cron, next fire and last
// runs, refreshed every few seconds, with Pause/Resume and "Run now". Built on the
// helpers dashboard.js shares as window.jobfleet; plain JS, no build step.
(() => {
  "use strict";

  if (document.body.dataset.page !== "schedules") return;
  const { api, el, byTestId, showError, timeElement, statusBadge } = window.jobfleet;

  const REFRESH_MS = 3000;
  const FIRES_SHOWN = 5;
  const TRIGGERS = { manual: "run now", catch_up: "catch-up" };

  const table = byTestId("schedules");
  const body = table.querySelector("tbody");
  const empty = byTestId("empty");
  const notice = byTestId("notice");
  const rows = new Map(); // schedule name -> <tr>
  let busy = false;

  function say(...children) {
    notice.replaceChildren(...children);
    notice.hidden = children.length === 0;
  }

  function row(s) {
    const pause = el("button", { type: "button", "data-testid": "pause-button" });
    const runNow = el("button", { type: "button", "data-testid": "run-now-button" }, "Run now");
    pause.addEventListener("click", () => togglePaused(s.name, pause));
    runNow.addEventListener("click", () => trigger(s.name, runNow));
    return el("tr", { "data-testid": "schedule-row", "data-schedule-name": s.name,
      id: `schedule-${s.name}` },
    el("td", {},
      el("strong", { "data-testid": "schedule-name", text: s.name }),
      el("span", { class: "job", "data-testid": "schedule-job" }),
      el("span", { class: "description", "data-testid": "schedule-description" })),
    el("td", {},
      el("code", { "data-testid": "schedule-cron" }),
      el("span", { class: "zone", "data-testid": "schedule-timezone" })),
    el("td", { class: "when", "data-testid": "schedule-next" }),
    el("td", { "data-testid": "schedule-state" }),
    el("td", {}, el("ul", { class: "fires", "data-testid": "schedule-fires" })),
    el("td", { class: "actions" }, pause, runNow));
  }

  function fireItem(f) {
    const item = el("li", { "data-testid": "fire", "data-state": f.state },
      timeElement(f.scheduled_at), " ");
    if (TRIGGERS[f.trigger]) item.append(el("span", { class: "state", text: `(${TRIGGERS[f.trigger]}) ` }));
    if (f.orchestration_id) {
      const badge = el("span", { "data-testid": "fire-status" });
      statusBadge(badge, f.run_status || "unknown");
      item.append(el("a", { href: f.links.dashboard, "data-testid": "fire-link",
        title: f.orchestration_id }, badge));
    } else {
      item.append(el("span", { class: "state", "data-testid": "fire-state", text: f.state }));
      if (f.reason) item.append(" ", el("span", { class: "reason", text: f.reason }));
    }
    return item;
  }

  function fill(tr, s) {
    byTestId("schedule-job", tr).textContent = `runs ${s.job_name}`;
    byTestId("schedule-description", tr).textContent = s.description;
    byTestId("schedule-cron", tr).textContent = s.cron;
    byTestId("schedule-timezone", tr).textContent = s.timezone;
    const next = byTestId("schedule-next", tr);
    if (s.paused || !s.next_fire_time) next.replaceChildren(el("span", { class: "empty", text: "—" }));
    else next.replaceChildren(timeElement(Date.parse(s.next_fire_time) / 1000));
    byTestId("schedule-state", tr).replaceChildren(el("span", {
      class: s.paused ? "state-paused" : "state-active", text: s.paused ? "Paused" : "Active",
    }));
    const fires = byTestId("schedule-fires", tr);
    if (s.recent_fires.length === 0) fires.replaceChildren(el("li", { class: "empty", text: "No runs yet" }));
    else fires.replaceChildren(...s.recent_fires.map(fireItem));
    const pause = byTestId("pause-button", tr);
    pause.textContent = s.paused ? "Resume" : "Pause";
    pause.dataset.paused = String(s.paused);
  }

  // Rows are kept by name and updated in place, so a refresh keeps a button's focus.
  function render(schedules) {
    const names = schedules.map((s) => s.name);
    for (const s of schedules) {
      let tr = rows.get(s.name);
      if (!tr) {
        tr = row(s);
        rows.set(s.name, tr);
      }
      fill(tr, s);
    }
    for (const [name, tr] of rows) {
      if (!names.includes(name)) {
        tr.remove();
        rows.delete(name);
      }
    }
    names.forEach((name, position) => {
      const tr = rows.get(name);
      if (body.children[position] !== tr) body.insertBefore(tr, body.children[position] || null);
    });
    empty.hidden = names.length > 0;
    table.hidden = names.length === 0;
    table.setAttribute("aria-busy", "false");
  }

  async function refresh() {
    if (busy) return;
    busy = true;
    try {
      const listed = await api(`/schedules?fires=${FIRES_SHOWN}`);
      render(listed.schedules);
      showError("");
    } catch (err) {
      showError(`Could not load the schedules: ${err.message}`);
    } finally {
      busy = false;
    }
  }

  async function togglePaused(name, button) {
    const action = button.dataset.paused === "true" ? "resume" : "pause";
    button.disabled = true;
    try {
      await api(`/schedules/${encodeURIComponent(name)}/${action}`, { method: "POST" });
      say(`${name} ${action === "pause" ? "paused" : "resumed"}.`);
      showError("");
    } catch (err) {
      showError(`Could not ${action} ${name}: ${err.message}`);
    } finally {
      button.disabled = false;
      await refresh();
    }
  }

  async function trigger(name, button) {
    button.disabled = true;
    try {
      const answer = await api(`/schedules/${encodeURIComponent(name)}/trigger`, { method: "POST" });
      if (answer.orchestration_id) {
        say(`${name}: started `, el("a", { href: answer.fire.links.dashboard,
          "data-testid": "notice-link", text: `run ${answer.orchestration_id.slice(0, 8)}` }), ".");
      } else {
        say(`${name}: nothing started (${answer.state}: ${answer.fire.reason}).`);
      }
      showError("");
    } catch (err) {
      showError(`Could not run ${name}: ${err.message}`);
    } finally {
      button.disabled = false;
      await refresh();
    }
  }

  async function loop() {
    if (!document.hidden) await refresh();
    setTimeout(loop, REFRESH_MS);
  }
  loop();
})();

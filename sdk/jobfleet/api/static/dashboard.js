// The jobfleet dashboard: the list of orchestrations (index.html) and one
// orchestration followed live (orchestration.html); schedules.js builds on the helpers
// it shares as window.jobfleet. Plain JS, no build step.
// Requests are same-origin, so the session cookie set by the sign-in page goes along
// with every fetch and EventSource without any token handling here.
(() => {
  "use strict";

  const API = "/v1";
  const ENDED = new Set(["Completed", "Errored", "Cancelled"]);
  const LIST_PAGE_SIZE = 25;
  const LIST_REFRESH_MS = 2000;
  const MAX_FAILURE_ROWS = 500;
  const RECONNECT_MS = 3000;

  class ApiError extends Error {
    constructor(status, code, message) {
      super(message);
      this.status = status;
      this.code = code;
    }
  }

  /** Calls the API; a non-2xx answer throws an ApiError with the API's own message. */
  async function api(path, { method = "GET", body } = {}) {
    const headers = { Accept: "application/json" };
    if (body !== undefined) headers["Content-Type"] = "application/json";
    let response;
    try {
      response = await fetch(API + path, {
        method, headers, credentials: "same-origin",
        body: body === undefined ? undefined : JSON.stringify(body),
      });
    } catch (err) {
      throw new ApiError(0, "network", `the server did not answer (${err.message})`);
    }
    if (response.status === 401) {
      // The session ended (signed out elsewhere, or the token changed): the page
      // itself now answers with the sign-in form.
      location.reload();
      throw new ApiError(401, "unauthenticated", "signed out; reloading to sign in");
    }
    if (response.status === 204) return null;
    let payload = null;
    try {
      payload = await response.json();
    } catch {
      payload = null;
    }
    if (!response.ok) {
      const error = payload && payload.error;
      throw new ApiError(
        response.status,
        (error && error.code) || "http_error",
        (error && error.message) || `${method} ${path}: HTTP ${response.status}`,
      );
    }
    return payload;
  }

  // -- small DOM helpers ----------------------------------------------------------

  function el(tag, attributes = {}, ...children) {
    const node = document.createElement(tag);
    for (const [name, value] of Object.entries(attributes)) {
      if (value === undefined || value === null || value === false) continue;
      if (name === "class") node.className = value;
      else if (name === "text") node.textContent = value;
      else node.setAttribute(name, value === true ? "" : String(value));
    }
    for (const child of children) {
      if (child !== null && child !== undefined) node.append(child);
    }
    return node;
  }

  const byTestId = (id, scope = document) => scope.querySelector(`[data-testid="${id}"]`);

  function showError(message) {
    const box = byTestId("error");
    box.textContent = message;
    box.hidden = !message;
  }

  function timeElement(seconds) {
    if (seconds === null || seconds === undefined) return document.createTextNode("—");
    const when = new Date(seconds * 1000);
    return el("time", { datetime: when.toISOString(), title: when.toISOString() },
      when.toLocaleString());
  }

  function tagList(tags) {
    const entries = Object.entries(tags || {});
    if (entries.length === 0) return el("span", { class: "empty", text: "—" });
    const list = el("span", { class: "tags" });
    for (const [key, value] of entries) {
      list.append(el("span", { class: "tag", "data-testid": "tag", text: `${key}=${value}` }));
    }
    return list;
  }

  function statusBadge(badge, status) {
    badge.textContent = status;
    badge.className = `status status-${status}`;
  }

  // The bar has one segment per ending; what is still pending or running is the track.
  function progressBar(extraClass = "") {
    return el("div", {
      class: `progress ${extraClass}`.trim(), role: "progressbar", "data-testid": "progress-bar",
      "aria-label": "Finished instances", "aria-valuemin": 0,
    },
    el("span", { class: "segment succeeded" }),
    el("span", { class: "segment failed" }),
    el("span", { class: "segment cancelled" }));
  }

  function updateProgress(bar, o) {
    const finished = o.succeeded + o.failed + o.cancelled;
    const share = (n) => (o.total > 0 ? `${(100 * n) / o.total}%` : "0%");
    bar.querySelector(".succeeded").style.width = share(o.succeeded);
    bar.querySelector(".failed").style.width = share(o.failed);
    bar.querySelector(".cancelled").style.width = share(o.cancelled);
    bar.setAttribute("aria-valuemax", String(o.total));
    bar.setAttribute("aria-valuenow", String(finished));
    bar.setAttribute("aria-valuetext",
      `${finished} of ${o.total} finished: ${o.succeeded} succeeded, ` +
      `${o.failed} failed, ${o.cancelled} cancelled`);
  }

  function signOutButtons() {
    for (const button of document.querySelectorAll("[data-action=sign-out]")) {
      button.addEventListener("click", async () => {
        try {
          await api("/session", { method: "DELETE" });
        } finally {
          location.reload();
        }
      });
    }
  }

  // -- the list of orchestrations -------------------------------------------------

  function listPage() {
    const query = new URLSearchParams(location.search);
    const filters = new URLSearchParams();
    for (const name of ["job_name", "status", "tag"]) {
      const value = (query.get(name) || "").trim();
      if (value) filters.set(name, value);
      const field = document.querySelector(`.filters [name=${name}]`);
      if (field) field.value = value;
    }
    const requested = Number.parseInt(query.get("limit") || "", 10);
    const pageSize = requested >= 1 && requested <= 500 ? requested : LIST_PAGE_SIZE;

    const table = byTestId("orchestrations");
    const body = table.querySelector("tbody");
    const more = byTestId("load-more");
    const empty = byTestId("empty");
    const rows = new Map(); // orchestration id -> <tr>
    let shown = []; // orchestration ids, newest first
    let nextToken = null;
    let generation = 0; // bumped by "Load more", so an older refresh does not undo it
    let busy = false;

    function row(o) {
      const id = o.orchestration_id;
      return el("tr", { "data-testid": "orchestration-row", "data-orchestration-id": id },
        el("td", {},
          el("a", { href: o.links.dashboard, "data-testid": "orchestration-link" }, o.job_name),
          el("code", { class: "id", text: id.slice(0, 8), title: id })),
        el("td", {}, el("span", { "data-testid": "status" })),
        el("td", {}, progressBar()),
        el("td", { class: "row-counts" },
          el("span", { class: "succeeded", title: "succeeded" },
            el("span", { "data-testid": "count-succeeded" }), " ok"), " · ",
          el("span", { class: "failed", title: "failed" },
            el("span", { "data-testid": "count-failed" }), " failed"), " · ",
          el("span", { class: "cancelled", title: "cancelled" },
            el("span", { "data-testid": "count-cancelled" }), " cancelled"), " of ",
          el("span", { "data-testid": "count-total" })),
        el("td", { class: "when", "data-testid": "created-at" }),
        el("td", { "data-testid": "tags" }));
    }

    function fill(tr, o) {
      statusBadge(byTestId("status", tr), o.status);
      updateProgress(byTestId("progress-bar", tr), o);
      for (const key of ["succeeded", "failed", "cancelled", "total"]) {
        byTestId(`count-${key}`, tr).textContent = String(o[key]);
      }
      byTestId("created-at", tr).replaceChildren(timeElement(o.created_at));
      byTestId("tags", tr).replaceChildren(tagList(o.tags));
    }

    // Rows are kept by id and updated in place, so a refresh does not flicker or
    // steal the focus of a link.
    function render(orchestrations, append) {
      const ids = append ? [...shown] : [];
      for (const o of orchestrations) {
        let tr = rows.get(o.orchestration_id);
        if (!tr) {
          tr = row(o);
          rows.set(o.orchestration_id, tr);
        }
        fill(tr, o);
        if (!ids.includes(o.orchestration_id)) ids.push(o.orchestration_id);
      }
      for (const id of shown) {
        if (!ids.includes(id)) {
          rows.get(id).remove();
          rows.delete(id);
        }
      }
      ids.forEach((id, position) => {
        const tr = rows.get(id);
        if (body.children[position] !== tr) body.insertBefore(tr, body.children[position] || null);
      });
      shown = ids;
      empty.hidden = shown.length > 0;
      table.hidden = shown.length === 0;
      more.hidden = nextToken === null;
      table.setAttribute("aria-busy", "false");
    }

    async function fetchPage(limit, token) {
      const params = new URLSearchParams(filters);
      params.set("limit", String(Math.min(limit, 500)));
      if (token) params.set("page_token", token);
      return api(`/orchestrations?${params}`);
    }

    async function refresh() {
      if (busy || document.hidden) return;
      busy = true;
      const started = generation;
      try {
        // The same window as is shown, so the rows "Load more" added stay.
        const page = await fetchPage(Math.max(pageSize, shown.length));
        if (started === generation) {
          nextToken = page.next_page_token;
          render(page.orchestrations, false);
          showError("");
        }
      } catch (err) {
        showError(err.message);
      } finally {
        busy = false;
      }
    }

    async function loadMore() {
      if (nextToken === null) return;
      more.disabled = true;
      generation += 1;
      try {
        const page = await fetchPage(pageSize, nextToken);
        nextToken = page.next_page_token;
        render(page.orchestrations, true);
        showError("");
      } catch (err) {
        showError(err.message);
      } finally {
        more.disabled = false;
      }
    }

    more.addEventListener("click", loadMore);

    async function loop() {
      await refresh();
      setTimeout(loop, LIST_REFRESH_MS);
    }
    loop();
  }

  // -- one orchestration ----------------------------------------------------------

  function orchestrationPage() {
    const parts = location.pathname.split("/").filter(Boolean);
    const id = decodeURIComponent(parts[parts.length - 1] || "");
    const base = `/orchestrations/${encodeURIComponent(id)}`;

    const article = byTestId("orchestration");
    const cancelButton = byTestId("cancel-button");
    const liveState = byTestId("live-state");
    const bar = byTestId("progress-bar");
    let current = null;
    let source = null;

    function apply(o) {
      current = { ...current, ...o };
      const c = current;
      document.title = `${c.job_name} ${c.status} · jobfleet`;
      byTestId("job-name").textContent = c.job_name;
      statusBadge(byTestId("status"), c.status);
      byTestId("orchestration-id").textContent = c.orchestration_id;
      byTestId("created-at").replaceChildren(timeElement(c.created_at));
      byTestId("finished-at").replaceChildren(timeElement(c.finished_at));
      byTestId("tags").replaceChildren(tagList(c.tags));
      for (const key of ["total", "pending", "succeeded", "failed", "cancelled"]) {
        byTestId(`count-${key}`).textContent = String(c[key] ?? 0);
      }
      byTestId("count-in-progress").textContent = String(c.in_progress ?? 0);
      updateProgress(bar, c);
      cancelButton.disabled = ENDED.has(c.status);
    }

    // -- failures, from /results; reloaded at most one at a time, coalescing requests
    let failuresLoading = false;
    let failuresAgain = false;

    async function loadFailures() {
      if (failuresLoading) {
        failuresAgain = true;
        return;
      }
      failuresLoading = true;
      try {
        do {
          failuresAgain = false;
          const results = await api(`${base}/results`);
          renderFailures(results.failures);
        } while (failuresAgain);
      } catch (err) {
        showError(`Could not load the failures: ${err.message}`);
      } finally {
        failuresLoading = false;
      }
    }

    function renderFailures(failures) {
      const table = byTestId("failures");
      const note = byTestId("failures-truncated");
      byTestId("no-failures").hidden = failures.length > 0;
      table.hidden = failures.length === 0;
      note.hidden = failures.length <= MAX_FAILURE_ROWS;
      note.textContent =
        `Showing the first ${MAX_FAILURE_ROWS} of ${failures.length} failures; ` +
        `${API}${base}/results has them all.`;
      table.querySelector("tbody").replaceChildren(
        ...failures.slice(0, MAX_FAILURE_ROWS).map(failureRow));
    }

    function failureRow(f) {
      const error = f.error || { type: "", message: "", traceback: "" };
      const cell = el("td", { "data-testid": "failure-error" },
        el("span", { class: "error-type", "data-testid": "failure-error-type", text: error.type }),
        ": ",
        el("span", { "data-testid": "failure-error-message", text: error.message }));
      if (error.traceback) {
        cell.append(el("details", {},
          el("summary", { text: "Traceback" }), el("pre", { text: error.traceback })));
      }
      cell.append(logsDetails(f.job_id));
      return el("tr", { "data-testid": "failure-row", "data-index": f.index },
        el("td", { class: "num", "data-testid": "failure-index", text: String(f.index) }),
        el("td", {},
          el("pre", { "data-testid": "failure-params", text: JSON.stringify(f.params) })),
        cell,
        el("td", { class: "num", "data-testid": "failure-attempts", text: String(f.attempts) }),
        el("td", { "data-testid": "failure-status", text: f.status }));
    }

    // -- an instance's log lines, from /logs?job_id=, loaded when first opened
    const MAX_LOG_LINES = 1000;

    function logsDetails(jobId) {
      const lines = el("pre", { "data-testid": "failure-logs-lines", text: "Loading…" });
      const link = el("a", {
        href: `${API}${base}/logs?job_id=${encodeURIComponent(jobId)}`,
        "data-testid": "failure-logs-link", text: "as JSON",
      });
      const details = el("details", { "data-testid": "failure-logs" },
        el("summary", { text: "Logs" }), lines, link);
      let loaded = false;
      details.addEventListener("toggle", async () => {
        if (!details.open || loaded) return;
        loaded = true;
        try {
          const params = new URLSearchParams({ job_id: jobId, limit: String(MAX_LOG_LINES) });
          const page = await api(`${base}/logs?${params}`);
          const text = page.lines.map((line) => line.text).join("\n");
          lines.textContent = (page.truncated ? `(the last ${MAX_LOG_LINES} lines)\n` : "") +
            (text || "No log lines for this instance.");
        } catch (err) {
          loaded = false; // opening it again retries
          lines.textContent = `Could not load the logs: ${err.message}`;
        }
      });
      return details;
    }

    // -- live: server-sent events until `completed` ---------------------------------
    function ended(how) {
      if (source) {
        source.close(); // else the browser would reconnect to a finished stream
        source = null;
      }
      liveState.textContent = how;
    }

    function follow() {
      liveState.textContent = "Connecting…";
      source = new EventSource(API + base + "/events");
      const mine = source;
      mine.addEventListener("open", () => {
        liveState.textContent = "Live";
      });
      mine.addEventListener("snapshot", (e) => apply(JSON.parse(e.data)));
      mine.addEventListener("progress", (e) => apply(JSON.parse(e.data)));
      mine.addEventListener("transition", (e) => {
        const job = JSON.parse(e.data);
        if (job.status === "Errored" || job.status === "Cancelled") loadFailures();
      });
      mine.addEventListener("completed", (e) => {
        apply(JSON.parse(e.data));
        ended("Finished");
        loadFailures();
      });
      mine.addEventListener("feed_error", () => {
        // The server's feed failed and it ends the stream; the browser reconnects and
        // resumes after the last event it saw.
        liveState.textContent = "Reconnecting…";
      });
      mine.addEventListener("error", () => {
        if (mine.readyState === EventSource.CLOSED && source === mine) {
          // The server refused the stream (not just a dropped connection): start over
          // from the orchestration's status in a moment.
          source = null;
          liveState.textContent = "Disconnected; retrying…";
          setTimeout(start, RECONNECT_MS);
        } else if (mine.readyState === EventSource.CONNECTING) {
          liveState.textContent = "Reconnecting…";
        }
      });
    }

    async function start() {
      let o;
      try {
        o = await api(base);
      } catch (err) {
        if (err.status === 404) {
          document.title = "Orchestration not found · jobfleet";
          article.hidden = true;
          showError(`Orchestration not found: ${err.message}`);
        } else {
          showError(`Could not load orchestration ${id}: ${err.message}`);
          if (err.status !== 401) setTimeout(start, RECONNECT_MS);
        }
        return;
      }
      showError("");
      apply(o);
      article.hidden = false;
      loadFailures();
      if (ENDED.has(o.status)) ended("Finished");
      else follow();
    }

    cancelButton.addEventListener("click", async () => {
      if (!window.confirm(`Cancel the unfinished instances of ${current.job_name}?`)) return;
      cancelButton.disabled = true;
      try {
        apply(await api(`${base}/cancel`, { method: "POST" }));
        showError("");
      } catch (err) {
        showError(`Could not cancel: ${err.message}`);
        try {
          apply(await api(base));
        } catch {
          // the error above already says what is wrong
        }
        cancelButton.disabled = ENDED.has(current.status);
      }
    });

    start();
  }

  function main() {
    signOutButtons();
    const page = document.body.dataset.page;
    if (page === "index") listPage();
    else if (page === "orchestration") orchestrationPage();
  }

  // What the other pages' scripts (schedules.js) share with these two.
  window.jobfleet = Object.freeze({
    api, el, byTestId, showError, timeElement, statusBadge, tagList,
  });

  main();
})();

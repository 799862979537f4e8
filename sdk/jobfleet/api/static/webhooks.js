// The orchestration page's "Webhooks" section (orchestration.html): each delivery of
// the completion event with its attempts, from GET /v1/orchestrations/{id}/webhooks,
// refreshed while any is pending. Built on window.jobfleet (dashboard.js).
(() => {
  "use strict";

  if (document.body.dataset.page !== "orchestration") return;
  const { api, el, byTestId, timeElement } = window.jobfleet;

  const REFRESH_MS = 5000;
  const parts = location.pathname.split("/").filter(Boolean);
  const id = decodeURIComponent(parts[parts.length - 1] || "");
  const section = byTestId("webhooks");
  const list = byTestId("webhook-deliveries");
  const note = byTestId("webhooks-note");

  function duration(seconds) {
    return seconds < 1 ? `${Math.round(seconds * 1000)} ms` : `${seconds.toFixed(1)} s`;
  }

  function attemptItem(a) {
    const ok = a.status !== null && a.status >= 200 && a.status < 300;
    return el("li", { "data-testid": "webhook-attempt" }, timeElement(a.at), " ",
      el("span", { class: ok ? "outcome ok" : "outcome failed",
        "data-testid": "webhook-attempt-outcome", text: ok ? `HTTP ${a.status}` : a.error }),
      " ", el("span", { class: "duration", text: `in ${duration(a.duration)}` }));
  }

  function deliveryItem(d) {
    const item = el("li", { "data-testid": "webhook-delivery", "data-state": d.state },
      el("code", { "data-testid": "webhook-url", text: d.url }), " ",
      el("span", { class: `status webhook-${d.state}`, "data-testid": "webhook-state",
        text: d.state }));
    if (d.next_attempt_at !== null) {
      item.append(el("span", { class: "next", "data-testid": "webhook-next-attempt" },
        " · next attempt ", timeElement(d.next_attempt_at)));
    }
    item.append(el("ol", { class: "attempts" }, ...d.attempts.map(attemptItem)));
    return item;
  }

  async function refresh() {
    let body;
    try {
      body = await api(`/orchestrations/${encodeURIComponent(id)}/webhooks`);
    } catch (err) {
      note.textContent = `Webhooks could not be read: ${err.message}`;
      note.hidden = false;
      setTimeout(refresh, REFRESH_MS);
      return;
    }
    section.hidden = body.webhooks.length === 0;
    note.hidden = true;
    list.replaceChildren(...body.webhooks.map(deliveryItem));
    if (body.webhooks.length === 0 || body.webhooks.some((d) => d.state === "pending")) {
      setTimeout(refresh, REFRESH_MS);
    }
  }

  refresh();
})();

// Gearbox dashboard: the one script the CSP allows.
//
// 1. Every element with `data-fragment` is refreshed every `data-refresh-ms` (on <body>) from
//    its server-rendered, server-escaped HTML fragment, without a full reload.
// 2. The lineage view (#lineage) fetches the JSON trace endpoints and builds its table with
//    textContent only: nothing from an event ever goes through innerHTML here.
"use strict";

const REFRESH_MS_DEFAULT = 2000;

async function refresh(el) {
  // Keep open <details> open across a swap, so reading an event is not interrupted.
  const open = new Set([...el.querySelectorAll("details[open]")].map((d) => d.dataset.eventId));
  const res = await fetch(el.dataset.fragment, { headers: { accept: "text/html" }, cache: "no-store" });
  if (!res.ok) return;
  const html = await res.text();
  const tpl = document.createElement("template");
  tpl.innerHTML = html; // a fragment the server escaped; the CSP forbids inline script anyway
  for (const d of tpl.content.querySelectorAll("details")) {
    if (open.has(d.dataset.eventId)) d.open = true;
  }
  el.replaceChildren(tpl.content);
  el.dataset.refreshedAt = String(Date.now());
}

function startRefresh() {
  const every = Number(document.body.dataset.refreshMs) || REFRESH_MS_DEFAULT;
  const live = [...document.querySelectorAll("[data-fragment]")];
  if (live.length === 0) return;
  let busy = false;
  setInterval(async () => {
    if (busy || document.hidden) return;
    busy = true;
    try {
      await Promise.all(live.map(refresh));
    } catch (_) {
      // The server may be restarting; the next tick tries again.
    } finally {
      busy = false;
    }
  }, every);
}

function el(tag, text, cls) {
  const e = document.createElement(tag);
  if (text !== undefined && text !== null) e.textContent = String(text);
  if (cls) e.className = cls;
  return e;
}

const HOP_COLUMNS = [
  ["at", (h) => h.at],
  ["hop", (h) => h.hop],
  ["event", (h) => h.event_id],
  ["where", (h) => [h.topic, h.partition, h.offset].filter((v) => v !== undefined && v !== null).join(" / ")],
  ["by", (h) => h.pipeline || h.subscription || h.source],
  ["attempt", (h) => h.attempt],
  ["result", (h) => h.result],
  ["latency ms", (h) => h.latency_ms],
  ["detail", (h) => h.detail],
];

function hopTable(hops) {
  const table = el("table", null, "hops");
  const head = table.createTHead().insertRow();
  for (const [name] of HOP_COLUMNS) head.appendChild(el("th", name));
  const body = table.createTBody();
  for (const h of hops) {
    const row = body.insertRow();
    row.className = "hop hop-" + String(h.hop).replace(/[^a-z_]/g, "");
    for (const [, get] of HOP_COLUMNS) row.appendChild(el("td", get(h) ?? ""));
  }
  return table;
}

function traceSection(id, causation, hops) {
  const s = el("section", null, "trace-event");
  s.dataset.eventId = id;
  const h = el("h2");
  h.appendChild(el("code", id, "event-id"));
  if (causation) h.appendChild(el("span", " caused by " + causation, "muted"));
  s.appendChild(h);
  s.appendChild(hops.length ? hopTable(hops) : el("p", "No hops recorded.", "muted"));
  return s;
}

async function lineage() {
  const box = document.getElementById("lineage");
  if (!box || !box.dataset.query) return;
  const q = box.dataset.query;
  const byCorrelation = box.dataset.by === "correlation";
  const url = byCorrelation
    ? "/v1/traces?correlation_id=" + encodeURIComponent(q)
    : "/v1/events/" + encodeURIComponent(q) + "/trace";
  box.replaceChildren(el("p", "Tracing " + q + " ...", "muted"));
  let res;
  try {
    res = await fetch(url, { headers: { accept: "application/json" } });
  } catch (e) {
    box.replaceChildren(el("p", "The server did not answer: " + e, "failure"));
    return;
  }
  const body = await res.json().catch(() => ({}));
  if (!res.ok) {
    box.replaceChildren(el("p", (body.code || res.status) + ": " + (body.message || "lookup failed"), "failure"));
    box.dataset.state = "error";
    return;
  }
  const parts = [];
  if (byCorrelation) {
    const events = body.events || [];
    parts.push(el("p", events.length + " events with correlation id " + q, "summary"));
    for (const e of events) parts.push(traceSection(e.id, e.causation_id, e.hops || []));
  } else {
    parts.push(traceSection(body.id, null, body.hops || []));
  }
  box.replaceChildren(...parts);
  box.dataset.state = "done";
}

document.addEventListener("DOMContentLoaded", () => {
  startRefresh();
  lineage();
});

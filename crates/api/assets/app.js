// Gearbox dashboard: the one script the CSP allows. Every element with `data-fragment` is
// refreshed every `data-refresh-ms` (on <body>) from its server-rendered HTML fragment, without a
// full reload. The server escapes everything in a fragment; this script adds no data of its own.
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

document.addEventListener("DOMContentLoaded", startRefresh);

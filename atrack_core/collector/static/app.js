// The collector's inspector page. Plain DOM code, no framework and no build step.
//
// Live refresh is polling: every second the page asks api/stats for a "version" that
// changes on every write, and refetches users and events only when it changed. Polling
// survives collector restarts without reconnection logic and never holds a connection
// open that would delay the collector's shutdown.
//
// Everything shown was sent by some client, so it only ever reaches the page through
// textContent (never innerHTML); the server's Content-Security-Policy backs this up.
"use strict";

const POLL_MS = 1000;
const HIDDEN_POLL_MS = 5000;
const EVENTS_PER_USER = 25;
const CONTEXT_ORDER = ["url", "referer", "ipAddress", "userAgent", "locale", "timezone"];

const state = {
  tab: "users",
  paused: false,
  version: null,
  filtersChanged: true,
  seenEvents: new Set(),
  openDetails: new Set(),
  firstLoad: true,
};

const $ = (id) => document.getElementById(id);

// h("div", {class: "x"}, child, "text") builds an element; strings become text nodes.
function h(tag, attrs, ...children) {
  const el = document.createElement(tag);
  for (const [name, value] of Object.entries(attrs || {})) {
    if (value === null || value === undefined || value === false) continue;
    if (name === "class") el.className = value;
    else if (name === "dataset") Object.assign(el.dataset, value);
    else el.setAttribute(name, value === true ? "" : String(value));
  }
  for (const child of children.flat()) {
    if (child === null || child === undefined || child === false) continue;
    el.append(child instanceof Node ? child : document.createTextNode(String(child)));
  }
  return el;
}

// Attribute values are shown as JSON, so "12" and 12 look different, as they are.
function jsonText(value) {
  return JSON.stringify(value);
}

function shortTime(iso) {
  // "2026-01-02T03:04:05.678Z" -> "03:04:05.678"
  return typeof iso === "string" && iso.length >= 23 ? iso.slice(11, 23) : String(iso);
}

function ago(iso) {
  const seconds = Math.max(0, (Date.now() - Date.parse(iso)) / 1000);
  if (!Number.isFinite(seconds)) return "";
  if (seconds < 5) return "just now";
  if (seconds < 60) return `${Math.floor(seconds)} s ago`;
  if (seconds < 3600) return `${Math.floor(seconds / 60)} min ago`;
  if (seconds < 86400) return `${Math.floor(seconds / 3600)} h ago`;
  return `${Math.floor(seconds / 86400)} d ago`;
}

function query(path, params) {
  const search = new URLSearchParams();
  for (const [name, value] of Object.entries(params)) if (value) search.set(name, value);
  const qs = search.toString();
  return qs ? `${path}?${qs}` : path;
}

async function getJSON(url) {
  const response = await fetch(url, { cache: "no-store", headers: { accept: "application/json" } });
  if (!response.ok) throw new Error(`${url}: HTTP ${response.status}`);
  return response.json();
}

function filters() {
  return {
    key: $("filter-key").value,
    event: $("filter-event").value,
    uuid: $("filter-uuid").value.trim().toLowerCase(),
  };
}

// -- rendering ---------------------------------------------------------------------

function kvTable(object, className) {
  const entries = Object.entries(object || {});
  if (!entries.length) return h("p", { class: "none" }, "none");
  return h(
    "table",
    { class: `kv ${className || ""}` },
    h("tbody", null, entries.map(([k, v]) => h("tr", null, h("th", null, k), h("td", null, h("code", null, jsonText(v)))))),
  );
}

function contextChips(context) {
  const keys = Object.keys(context || {});
  if (!keys.length) return h("p", { class: "none" }, "no context");
  keys.sort((a, b) => {
    const ia = CONTEXT_ORDER.indexOf(a);
    const ib = CONTEXT_ORDER.indexOf(b);
    return (ia < 0 ? 99 : ia) - (ib < 0 ? 99 : ib) || a.localeCompare(b);
  });
  return h(
    "ul",
    { class: "chips" },
    keys.map((k) => h("li", { title: `${k}: ${jsonText(context[k])}` }, h("span", { class: "chip-key" }, k), " ", typeof context[k] === "string" ? context[k] : jsonText(context[k]))),
  );
}

function details(id, summary, body) {
  const el = h("details", { dataset: { detailsId: id } }, h("summary", null, summary), body);
  if (state.openDetails.has(id)) el.open = true;
  el.addEventListener("toggle", () => {
    if (el.open) state.openDetails.add(id);
    else state.openDetails.delete(id);
  });
  return el;
}

function eventRow(event) {
  const fresh = !state.firstLoad && !state.seenEvents.has(event.id);
  state.seenEvents.add(event.id);
  const attrs = Object.keys(event.attributes).length ? jsonText(event.attributes) : "";
  return h(
    "li",
    { class: fresh ? "event fresh" : "event", dataset: { event: event.event, eventId: event.id } },
    h("div", { class: "event-line" },
      h("span", { class: "event-name" }, event.event),
      h("code", { class: "event-attrs" }, attrs),
      h("time", { datetime: event.timestamp, title: `sent ${event.timestamp}, received ${event.received_at}` }, shortTime(event.timestamp)),
    ),
    details(`event-${event.id}`, "context", contextChips(event.context)),
  );
}

function userCard(user, events, total) {
  const shown = events.slice(0, EVENTS_PER_USER);
  return h(
    "article",
    { class: "user", dataset: { uuid: user.uuid, keyId: user.key_id } },
    h("header", null,
      h("h2", { class: "uuid" }, user.uuid),
      h("span", { class: "badge key", title: `key id ${user.key_id}` }, user.key),
      user.is_new_user ? h("span", { class: "badge new" }, "new user") : null,
      h("span", { class: "seen", title: `first seen ${user.first_seen}, last seen ${user.last_seen}` }, `last seen ${ago(user.last_seen)}`),
    ),
    h("div", { class: "user-body" },
      h("div", { class: "user-meta" },
        h("h3", null, "attributes"),
        kvTable(user.attributes, "attributes"),
        Object.keys(user.profile || {}).length ? [h("h3", null, "profile"), kvTable(user.profile, "profile")] : null,
        h("h3", null, "last context"),
        contextChips(user.context),
      ),
      h("div", { class: "user-events" },
        h("h3", null, `events · ${total}`),
        shown.length ? h("ol", { class: "events" }, shown.map(eventRow)) : h("p", { class: "none" }, "no events"),
        total > shown.length ? h("p", { class: "more" }, `${total - shown.length} older not shown`) : null,
      ),
    ),
  );
}

function renderUsers(users, events, stats) {
  const f = filters();
  const byUser = new Map();
  for (const event of events) {
    const id = `${event.key_id}\u0000${event.uuid}`;
    if (!byUser.has(id)) byUser.set(id, []);
    byUser.get(id).push(event);
  }
  const cards = [];
  for (const user of users) {
    if (f.uuid && !user.uuid.toLowerCase().includes(f.uuid)) continue;
    const own = byUser.get(`${user.key_id}\u0000${user.uuid}`) || [];
    // With an event filter, a user without such an event is not what was asked for.
    if (f.event && !own.length) continue;
    cards.push(userCard(user, own, f.event ? own.length : user.event_count));
  }
  $("users").replaceChildren(...cards);
  $("empty").hidden = stats.calls > 0;
  $("no-match").hidden = stats.calls === 0 || cards.length > 0;
  state.firstLoad = false;
}

function renderCalls(calls) {
  const rows = calls.slice().reverse().map((call) =>
    h("tr", { class: call.status === 200 ? (call.duplicate ? "dup" : "") : "bad", dataset: { path: call.path } },
      h("td", null, call.id),
      h("td", { class: "nowrap", title: call.received_at }, shortTime(call.received_at)),
      h("td", { class: "nowrap" }, h("code", null, `POST ${call.path}`)),
      h("td", { class: "nowrap" }, h("span", { class: `status s${Math.floor(call.status / 100)}xx` }, call.status), call.duplicate ? [" ", h("span", { class: "badge" }, "retry")] : null),
      h("td", { class: "nowrap mono" }, call.key || "—"),
      h("td", { class: "mono" }, call.uuid || ""),
      h("td", { class: "mono small" }, call.request_id || ""),
      h("td", null,
        call.error ? h("div", { class: "error" }, call.error) : null,
        h("code", { class: "body" }, call.body === null ? "(body not kept: too large)" : call.body)),
    ));
  $("calls").replaceChildren(...rows);
}

function renderStats(stats) {
  $("stat-users").textContent = stats.users;
  $("stat-events").textContent = stats.events;
  $("stat-calls").textContent = stats.calls;
  $("stat-rejected").textContent = stats.rejected_calls;
  $("stat-duplicates").textContent = stats.duplicate_calls;
  $("stat-rejected").parentElement.classList.toggle("alert", stats.rejected_calls > 0);
  syncOptions($("filter-key"), stats.keys.map((k) => [k.key_id, `${k.key}  (${k.key_id})`]));
  syncOptions($("filter-event"), stats.event_names.map((name) => [name, name]));
}

// Refill a <select> only when its options change, so an open dropdown is not reset.
function syncOptions(select, options) {
  const wanted = [["", select.options[0].textContent], ...options];
  const current = Array.from(select.options, (o) => [o.value, o.textContent]);
  if (JSON.stringify(wanted) === JSON.stringify(current)) return;
  const value = select.value;
  select.replaceChildren(...wanted.map(([v, label]) => h("option", { value: v }, label)));
  // Keep a chosen filter even while no data matches it (e.g. just after a reset).
  if (value && !options.some(([v]) => v === value)) select.append(h("option", { value }, value));
  select.value = value;
}

function setLive(ok, text) {
  $("live").dataset.state = state.paused ? "paused" : ok ? "live" : "down";
  $("live-text").textContent = state.paused ? "paused" : text;
}

// -- polling -----------------------------------------------------------------------

async function refresh() {
  // Take the flag now: a filter change while this runs sets it again, and poll() then
  // runs another refresh with the new filters.
  const filtersChanged = state.filtersChanged;
  state.filtersChanged = false;
  try {
    const stats = await getJSON("api/stats");
    renderStats(stats);
    if (stats.version === state.version && !filtersChanged) return;
    const f = filters();
    if (state.tab === "users") {
      const [users, events] = await Promise.all([
        getJSON(query("api/users", { key: f.key, limit: "500" })),
        getJSON(query("api/events", { key: f.key, event: f.event, limit: "1000" })),
      ]);
      renderUsers(users.users, events.events, stats);
    } else {
      const calls = await getJSON(query("api/calls", { key: f.key, limit: "200" }));
      renderCalls(calls.calls);
    }
    state.version = stats.version;
  } catch (error) {
    state.filtersChanged = state.filtersChanged || filtersChanged;
    throw error;
  }
}

// One refresh at a time: overlapping ones could finish out of order and show data for
// filters that are no longer selected.
let timer = null;
let running = false;
let rerun = false;
async function poll() {
  clearTimeout(timer);
  if (running) {
    rerun = true;
    return;
  }
  running = true;
  if (!state.paused) {
    try {
      await refresh();
      setLive(true, "live");
    } catch (error) {
      setLive(false, "collector unreachable, retrying");
    }
  }
  running = false;
  if (rerun) {
    rerun = false;
    poll();
    return;
  }
  timer = setTimeout(poll, document.hidden ? HIDDEN_POLL_MS : POLL_MS);
}

function refilter() {
  state.filtersChanged = true;
  poll();
}

function selectTab(tab) {
  state.tab = tab;
  $("tab-users").setAttribute("aria-selected", String(tab === "users"));
  $("tab-calls").setAttribute("aria-selected", String(tab === "calls"));
  $("users-view").hidden = tab !== "users";
  $("calls-view").hidden = tab !== "calls";
  refilter();
}

document.addEventListener("DOMContentLoaded", () => {
  $("self-url").textContent = new URL(".", window.location.href).href.replace(/\/$/, "");
  $("filter-key").addEventListener("change", refilter);
  $("filter-event").addEventListener("change", refilter);
  $("filter-uuid").addEventListener("input", refilter);
  $("tab-users").addEventListener("click", () => selectTab("users"));
  $("tab-calls").addEventListener("click", () => selectTab("calls"));
  $("pause").addEventListener("click", () => {
    state.paused = !state.paused;
    $("pause").textContent = state.paused ? "Resume" : "Pause";
    $("pause").setAttribute("aria-pressed", String(state.paused));
    setLive(true, "live");
    if (!state.paused) refilter();
  });
  document.addEventListener("visibilitychange", () => { if (!document.hidden) poll(); });
  poll();
});

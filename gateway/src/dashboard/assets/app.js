// sessiongate's dashboard: polls the admin API (sessions every second, the figures every two,
// runtimes and config every five; each poll waits for the previous one, and none runs while the
// tab is hidden) and renders with the DOM only — no library, nothing fetched from elsewhere.
// Data goes into the page as text, never as HTML.
"use strict";

const $ = (id) => document.getElementById(id);
const el = (tag, props = {}, ...children) => {
  const e = document.createElement(tag);
  for (const [k, v] of Object.entries(props)) {
    if (k === "class") e.className = v;
    else if (k.startsWith("on")) e.addEventListener(k.slice(2), v);
    else if (v !== undefined && v !== null) e.setAttribute(k, v);
  }
  for (const c of children) e.append(c instanceof Node ? c : String(c ?? ""));
  return e;
};

// ---- the admin API ---------------------------------------------------------------------------

let token = sessionStorage.getItem("sessiongate-admin-token");

async function api(path, options = {}) {
  const headers = token ? { Authorization: `Bearer ${token}` } : {};
  const r = await fetch(path, { ...options, headers, cache: "no-store", signal: AbortSignal.timeout(10000) });
  if (r.status === 401) {
    $("token-form").hidden = false;
    throw new Error("the admin token is needed");
  }
  const body = await r.json().catch(() => ({}));
  if (!r.ok) throw new Error(body.message || `${r.status}`);
  return body;
}

$("token-form").addEventListener("submit", (e) => {
  e.preventDefault();
  token = $("token").value;
  sessionStorage.setItem("sessiongate-admin-token", token);
  $("token-form").hidden = true;
  refreshAll();
});

// Actions and errors are announced; the once-a-second "updated" is not.
function status(text) {
  $("status").textContent = text;
}
function updated() {
  $("updated").textContent = `updated ${new Date().toLocaleTimeString()}`;
}

// ---- formatting ------------------------------------------------------------------------------

const duration = (secs) => {
  if (secs == null) return "";
  if (secs < 60) return `${secs}s`;
  if (secs < 3600) return `${Math.floor(secs / 60)}m ${secs % 60}s`;
  return `${Math.floor(secs / 3600)}h ${Math.floor((secs % 3600) / 60)}m`;
};
const bytes = (n) => {
  if (n == null) return "";
  const units = ["B", "KiB", "MiB", "GiB"];
  let i = 0;
  while (n >= 1024 && i < units.length - 1) { n /= 1024; i++; }
  return `${i ? n.toFixed(1) : n} ${units[i]}`;
};
const clock = (ms) => new Date(ms).toLocaleTimeString();
const short = (id) => (id.length > 12 ? `${id.slice(0, 8)}…${id.slice(-4)}` : id);

// ---- sessions --------------------------------------------------------------------------------

const COLUMNS = [
  ["id", "Session"], ["runtime", "Runtime"], ["principal", "Principal"], ["backend", "Backend"],
  ["state", "State"], ["age_secs", "Age", "num"], ["idle_secs", "Idle", "num"],
  ["inflight", "In flight", "num"], ["bytes_in", "Bytes in", "num"], ["bytes_out", "Bytes out", "num"],
];
let sessions = [];
let sortKey = "age_secs";
let sortDir = 1;
let detailId = null;

function header() {
  const row = document.querySelector("#sessions thead tr");
  for (const [key, label, cls] of COLUMNS) {
    const th = el("th", { scope: "col", class: cls, "data-key": key });
    th.append(el("button", {
      type: "button",
      onclick: () => { sortDir = key === sortKey ? -sortDir : 1; sortKey = key; sorted(); renderSessions(); },
    }, label));
    row.append(th);
  }
  row.append(el("th", { scope: "col" }, "Actions"));
  sorted();
}

// The sort is said on the headers themselves (the focused one stays where it is).
function sorted() {
  for (const th of document.querySelectorAll("#sessions thead th[data-key]")) {
    if (th.dataset.key === sortKey) th.setAttribute("aria-sort", sortDir > 0 ? "ascending" : "descending");
    else th.removeAttribute("aria-sort");
  }
}

function renderSessions() {
  const filter = $("filter").value.trim().toLowerCase();
  const shown = sessions
    .filter((s) => !filter || [s.id, s.runtime, s.principal, s.state, s.backend, s.provider, s.replica]
      .some((v) => String(v ?? "").toLowerCase().includes(filter)))
    .sort((a, b) => {
      const x = a[sortKey] ?? "", y = b[sortKey] ?? "";
      return (x < y ? -1 : x > y ? 1 : 0) * sortDir;
    });
  const tbody = document.querySelector("#sessions tbody");
  // Rows are rebuilt each second: a focused control gets its focus back in the new row.
  const focused = tbody.contains(document.activeElement) ? document.activeElement.getAttribute("aria-label") : null;
  tbody.replaceChildren(...shown.map(sessionRow));
  if (focused) [...tbody.querySelectorAll("button")].find((b) => b.getAttribute("aria-label") === focused)?.focus();
  $("session-count").textContent = filter ? `(${shown.length} of ${sessions.length})` : `(${sessions.length})`;
  $("no-sessions").hidden = shown.length > 0;
}

function sessionRow(s) {
  const copy = el("button", {
    type: "button", class: "link", title: s.id, "aria-label": `Copy session id ${s.id}`,
    onclick: () => copyText(s.id),
  }, "copy");
  const open = el("button", {
    type: "button", class: "link", title: s.id, "aria-label": `Show session ${s.id}`,
    onclick: () => showDetail(s.id),
  }, el("code", {}, short(s.id)));
  const stop = el("button", {
    type: "button", class: "stop", "aria-label": `Stop session ${s.id}`,
    onclick: () => stopSession(s.id),
  }, "Stop");
  // `process 4242`, `microvm 4243`, `host h1` (a replica's row names the host): the provider
  // is said once.
  const backend = s.provider && !(s.backend || "").startsWith(s.provider)
    ? [s.provider, s.backend].filter(Boolean).join(" · ")
    : s.backend || s.provider || "";
  const placed = s.replica ? `${backend} · placed by ${s.replica}` : backend;
  return el("tr", { "data-session-id": s.id, "data-state": s.state },
    el("td", {}, open, " ", copy),
    el("td", {}, `${s.runtime} v${s.version}`),
    el("td", {}, s.principal),
    el("td", {}, placed),
    el("td", {}, el("span", { class: `state state-${s.state}` }, s.state)),
    el("td", { class: "num" }, duration(s.age_secs)),
    el("td", { class: "num" }, s.state === "suspended" ? "" : duration(s.idle_secs)),
    el("td", { class: "num" }, s.inflight ?? 0),
    el("td", { class: "num" }, bytes(s.bytes_in)),
    el("td", { class: "num" }, bytes(s.bytes_out)),
    el("td", {}, stop));
}

async function copyText(text) {
  try {
    await navigator.clipboard.writeText(text);
    status("session id copied");
  } catch {
    window.prompt("Copy the session id:", text);
  }
}

async function stopSession(id) {
  if (!window.confirm(`Stop session ${id}? Its backend ends (a suspended session's snapshot goes).`)) return;
  try {
    await api(`/sessions/${encodeURIComponent(id)}`, { method: "DELETE" });
    status(`session ${short(id)} stopped`);
    if (detailId === id) closeDetail();
  } catch (e) {
    status(`stop failed: ${e.message}`);
  }
  refreshSessions();
}

let listed = 0; // answers older than the newest one shown are dropped
async function refreshSessions() {
  const asked = ++listed;
  try {
    const body = await api("/sessions");
    if (asked !== listed) return;
    sessions = body.sessions || [];
    if (body.replica) $("where").textContent = `replica ${body.replica} · every session of the cluster`;
    renderSessions();
    updated();
  } catch (e) {
    status(`cannot read sessions: ${e.message}`);
  }
}

$("filter").addEventListener("input", renderSessions);

// ---- one session -----------------------------------------------------------------------------

function showDetail(id) {
  detailId = id;
  $("detail").hidden = false;
  $("detail-id").textContent = id;
  for (const t of ["#detail-requests tbody", "#detail-checks tbody"]) document.querySelector(t).replaceChildren();
  refreshDetail();
  $("detail-close").focus();
}

function closeDetail() {
  detailId = null;
  $("detail").hidden = true;
}

$("detail-close").addEventListener("click", closeDetail);

async function refreshDetail() {
  const id = detailId;
  if (!id) return;
  let d;
  try {
    d = await api(`/sessions/${encodeURIComponent(id)}`);
  } catch (e) {
    if (id !== detailId) return;
    // Gone (stopped, ended): said once, and no longer asked for.
    $("detail-facts").replaceChildren(el("dt", {}, "Status"), el("dd", {}, `${e.message} — the session has ended`));
    detailId = null;
    return;
  }
  if (id !== detailId) return;
  const s = d.session;
  const facts = [
    ["Runtime", `${s.runtime} v${s.version}`], ["Principal", s.principal], ["State", s.state],
    ["Provider", s.provider], ["Backend", s.backend], ["Placed by replica", s.replica],
    ["HTTP", s.http], ["MCP", s.mcp], ["A2A", s.a2a],
    ["Started", s.started_at ? new Date(s.started_at * 1000).toLocaleString() : ""],
    ["In flight", s.inflight], ["Bytes in / out", `${bytes(s.bytes_in)} / ${bytes(s.bytes_out)}`],
  ].filter(([, v]) => v !== undefined && v !== null && v !== "");
  $("detail-facts").replaceChildren(...facts.flatMap(([k, v]) => [el("dt", {}, k), el("dd", {}, v)]));
  document.querySelector("#detail-requests tbody").replaceChildren(...d.requests.map((r) =>
    el("tr", {}, el("td", {}, clock(r.at_ms)), el("td", {}, r.route), el("td", {}, r.status || "—"),
      el("td", { class: "num" }, `${r.ms.toFixed(1)} ms`))));
  document.querySelector("#detail-checks tbody").replaceChildren(...d.health_checks.map((c) =>
    el("tr", {}, el("td", {}, clock(c.at_ms)), el("td", {}, c.outcome))));
}

// ---- graphs ----------------------------------------------------------------------------------

const COLORS = { "2xx": "#1f7a4d", "3xx": "#6b7c93", "4xx": "#a35c00", "5xx": "#b3261e", p50: "#2456a6", p99: "#8e44ad", sessions: "#2456a6", placements: "#1f7a4d", placement_ms: "#a35c00" };

function chart(id, title, unit, lines) {
  let fig = $(id);
  if (!fig) {
    fig = el("figure", { id },
      el("figcaption", {}, el("span", {}, title), el("output", { "aria-label": `${title} now` })),
      document.createElementNS("http://www.w3.org/2000/svg", "svg"),
      el("div", { class: "legend" }));
    fig.querySelector("svg").setAttribute("class", "chart");
    fig.querySelector("svg").setAttribute("role", "img");
    fig.querySelector("svg").setAttribute("viewBox", "0 0 300 90");
    fig.querySelector("svg").setAttribute("preserveAspectRatio", "none");
    $("graphs").append(fig);
  }
  const values = lines.flatMap(([, v]) => v.filter((x) => x != null));
  const max = Math.max(1e-9, ...values);
  const svg = fig.querySelector("svg");
  svg.replaceChildren(...lines.map(([name, v]) => {
    const n = Math.max(1, v.length - 1);
    const points = v.map((y, i) => (y == null ? null : `${(i * 300 / n).toFixed(1)},${(88 - (y / max) * 84).toFixed(1)}`))
      .filter(Boolean).join(" ");
    const line = document.createElementNS("http://www.w3.org/2000/svg", "polyline");
    line.setAttribute("points", points);
    line.setAttribute("stroke", COLORS[name] || "#333");
    return line;
  }));
  const latest = lines.map(([name, v]) => {
    const last = [...v].reverse().find((x) => x != null);
    return `${name} ${last == null ? "–" : +last.toFixed(2)}${unit}`;
  }).join(" · ");
  const total = values.reduce((a, b) => a + b, 0);
  fig.dataset.total = String(total);
  fig.dataset.max = String(values.length ? max : 0);
  fig.querySelector("output").textContent = latest;
  svg.setAttribute("aria-label", `${title}: ${latest}; peak ${values.length ? +max.toFixed(2) : 0}${unit} over the last five minutes`);
  fig.querySelector(".legend").replaceChildren(...lines.map(([name]) => {
    const s = el("span", {}, name);
    s.style.color = COLORS[name] || "#333";
    return s;
  }), " ");
}

async function refreshSeries() {
  let s;
  try {
    s = await api("/dashboard/api/series?seconds=300");
  } catch {
    return;
  }
  chart("chart-requests", "Requests/s", "", Object.entries(s.requests));
  chart("chart-latency", "Latency", " ms", [["p50", s.latency_ms.p50], ["p99", s.latency_ms.p99]]);
  chart("chart-sessions", "Sessions", "", [["sessions", s.sessions]]);
  chart("chart-placements", "Placements/s", "", [["placements", s.placements]]);
  chart("chart-placement-ms", "Placement time", " ms", [["placement_ms", s.placement_ms]]);
  $("rejections").textContent = s.rejections.length
    ? `Rejections in the last five minutes: ${s.rejections.map((r) => `${r.reason} ${r.count}`).join(", ")}`
    : "No rejections in the last five minutes.";
}

// ---- runtimes and config ---------------------------------------------------------------------

async function refreshOverview() {
  let o;
  try {
    o = await api("/dashboard/api/overview");
  } catch {
    return;
  }
  if (o.replica && !$("where").textContent) $("where").textContent = `replica ${o.replica}`;
  const rows = o.runtimes.flatMap((r) => r.versions.map((v, i) => el("tr", {},
    el("td", {}, i === 0 ? `${r.name}${r.default ? " (default)" : ""}` : ""),
    el("td", {}, `v${v.number}`),
    el("td", {}, v.provider ?? ""),
    el("td", {}, v.warm_target ? `${v.warm_ready}/${v.warm_target}` : "—"),
    el("td", {}, i === 0 ? r.endpoints.map((e) => `${e.name}: ${e.split.map((s) => `v${s.version} ${+s.percent.toFixed(1)}%`).join(", ")}`).join("; ") || "—" : ""),
    el("td", {}, i === 0 ? r.on_idle : ""))));
  document.querySelector("#runtimes tbody").replaceChildren(...rows);
  const c = o.config;
  $("config-meta").textContent = `${c.path ? `File ${c.path}` : "The embedded default (no config file)"}, loaded ${new Date(c.loaded_at_ms).toLocaleString()}.`;
  $("config-text").textContent = c.text ?? "(embedded default)";
  const err = c.last_reload_error;
  const said = err ? `The last reload (${new Date(err.at_ms).toLocaleString()}) was refused; the config below stays in force:\n${err.message}` : "";
  if ($("reload-error").textContent !== said) $("reload-error").textContent = said; // an alert is said once
  $("reload-error").hidden = !err;
}

// ---- polling ---------------------------------------------------------------------------------

function refreshAll() {
  refreshSessions();
  refreshSeries();
  refreshOverview();
}

// Each poll starts again `every` ms after the previous one finished, while the tab is shown.
function poll(refresh, every) {
  const next = () => setTimeout(async () => {
    if (!document.hidden) await refresh();
    next();
  }, every);
  next();
}

header();
refreshAll();
poll(async () => { await refreshSessions(); await refreshDetail(); }, 1000);
poll(refreshSeries, 2000);
poll(refreshOverview, 5000);

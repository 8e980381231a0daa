// orchd dashboard: reads /health/* once, then follows /events. Plain JS, no build step.
"use strict";

const state = {
  endpoints: [],      // rows of GET /health/endpoints
  stats: {},          // endpoint -> figures from the last "stats" event
  refused: {},        // endpoint -> {auth, limited}: per second over the last interval
  reasons: {},        // "endpoint url" -> reason of the last breaker transition
  errors: [],         // last errors over all endpoints, newest first
  changed: new Set(), // endpoints to flash on the next render
};

const $ = (id) => document.getElementById(id);

function esc(text) {
  return String(text ?? "").replace(/[&<>"']/g, (c) => (
    { "&": "&amp;", "<": "&lt;", ">": "&gt;", '"': "&quot;", "'": "&#39;" }[c]));
}

function clock(ts) {
  if (!ts) return "–";
  return new Date(ts * 1000).toLocaleTimeString([], { hour12: false });
}

function ms(value) {
  if (value === null || value === undefined) return "–";
  return value < 10 ? `${value.toFixed(1)} ms` : `${Math.round(value)} ms`;
}

const BREAKER = {
  closed: ["closed", "ok"], open: ["open", "bad"], forced_open: ["open (forced)", "bad"],
  half_open: ["half-open", "warn"], partially_open: ["partly open", "warn"],
};
const HEALTH = { healthy: "ok", unhealthy: "bad", unknown: "idle" };

function endpointStatus(row) {
  if (row.admin_state === "disabled") return ["disabled", "idle"];
  if (row.admin_state === "draining") return ["draining", "warn"];
  if (row.status === "unhealthy") return ["unhealthy", "bad"];
  if (row.status === "unknown") return ["not checked", "idle"];
  return ["healthy", "ok"];
}

function breakerReason(row) {
  if (row.circuit_breaker === "closed") return "";
  for (const t of row.targets) {
    const cb = t.circuit_breaker;
    if (cb.state === "closed") continue;
    const why = state.reasons[`${row.endpoint_id} ${t.url}`] || cb.last_failure || "";
    if (why) return row.targets.length > 1 ? `${t.url}: ${why}` : why;
  }
  return "";
}

function targetLine(row, t) {
  const cb = BREAKER[t.circuit_breaker.state] || [t.circuit_breaker.state, "idle"];
  const admin = t.admin_state !== "active" ? ` · ${esc(t.admin_state)}` : "";
  const flight = t.in_flight ? ` · ${t.in_flight} in flight` : "";
  const rt = t.response_time != null ? ` · probe ${ms(t.response_time * 1000)}` : "";
  return `<li title="${esc(t.error_message || "")}">
    <span class="dot ${HEALTH[t.health] || "idle"}" title="${esc(t.health)}"></span>
    <span class="url">${esc(t.url)}</span>
    <span class="pill ${cb[1]}">${esc(cb[0])}</span>
    <span class="meta">${esc(t.health)}${admin}${flight}${rt}</span></li>`;
}

// Requests the gateway refused itself: failed authentication (401/403) and rate-limited
// (429), per second over the last stats interval; the running totals in the tooltip.
function refusedCell(name, s) {
  const r = state.refused[name];
  if (s.auth_failures === undefined) return `<td class="num refused">–</td>`;
  const auth = r ? r.auth : 0;
  const limited = r ? r.limited : 0;
  const cls = auth || limited ? "warn" : "";
  const title = `${s.auth_failures} auth failures, ${s.rate_limited} rate-limited since start`;
  return `<td class="num refused ${cls}" title="${esc(title)}"
      data-auth="${esc(auth)}" data-limited="${esc(limited)}">
    <span class="auth-rate">${auth.toFixed(1)}</span> /
    <span class="limited-rate">${limited.toFixed(1)}</span></td>`;
}

function renderRows() {
  const body = $("rows");
  if (!state.endpoints.length) {
    body.innerHTML = `<tr class="empty"><td colspan="9">No endpoints registered.</td></tr>`;
    return;
  }
  body.innerHTML = state.endpoints.map((row) => {
    const [statusText, statusCls] = endpointStatus(row);
    const [cbText, cbCls] = BREAKER[row.circuit_breaker] || [row.circuit_breaker, "idle"];
    const s = state.stats[row.endpoint_id] || {};
    const rate = s.error_rate ?? null;
    const rateCls = rate === null ? "" : rate >= 0.05 ? "bad" : rate > 0 ? "warn" : "";
    const reason = breakerReason(row);
    const flash = state.changed.has(row.endpoint_id) ? " flash" : "";
    return `<tr data-endpoint="${esc(row.endpoint_id)}" data-breaker="${esc(row.circuit_breaker)}"
                data-status="${esc(row.status)}" class="${flash}">
      <td class="name">${esc(row.endpoint_id)}
        <small>${row.targets.length} target${row.targets.length === 1 ? "" : "s"}${
          row.panic_mode ? " · panic mode" : ""}</small></td>
      <td><span class="pill ${statusCls}">${esc(statusText)}</span></td>
      <td class="breaker"><span class="pill ${cbCls}">${esc(cbText)}</span>${
        reason ? `<span class="reason">${esc(reason)}</span>` : ""}</td>
      <td class="num">${s.window_requests ? s.requests_per_second.toFixed(1) : "–"}</td>
      <td class="num">${ms(s.p50_ms)}</td>
      <td class="num">${ms(s.p99_ms)}</td>
      <td class="num err-rate ${rateCls}">${rate === null ? "–" : `${(rate * 100).toFixed(1)} %`}</td>
      ${refusedCell(row.endpoint_id, s)}
      <td><ul class="targets">${row.targets.map((t) => targetLine(row, t)).join("")}</ul></td>
    </tr>`;
  }).join("");
  state.changed.clear();
}

function renderTiles(status) {
  const rows = state.endpoints;
  const healthy = rows.filter((r) => r.status !== "unhealthy").length;
  const open = rows.filter((r) => r.circuit_breaker === "open").length;
  $("count-endpoints").textContent = rows.length;
  $("count-healthy").textContent = `${healthy}/${rows.length}`;
  $("count-healthy").className = `value ${healthy === rows.length ? "ok" : "bad"}`;
  $("count-open").textContent = open;
  $("count-open").className = `value ${open ? "bad" : "ok"}`;
  const total = Object.values(state.stats).reduce((a, s) => a + (s.requests_per_second || 0), 0);
  $("total-rps").textContent = total.toFixed(1);
  if (status) {
    const sys = status.system_status;
    $("system-status").textContent = sys;
    $("system-status").className = `value ${sys === "healthy" ? "ok" : sys === "degraded" ? "warn" : "bad"}`;
  }
}

function renderBanner(reload) {
  const el = $("reload-banner");
  if (!reload) return;
  el.hidden = false;
  if (reload.ok) {
    const diff = reload.diff;
    const parts = diff ? ["added", "changed", "removed"].map(
      (k) => `${(diff[k] || []).length} ${k}`).join(", ") : "";
    el.className = "banner ok";
    el.innerHTML = `<strong>Configuration loaded</strong>
      <span class="detail">${esc(clock(reload.at))} · ${esc(reload.trigger || "start")}${
        parts ? ` · ${esc(parts)}` : ""}</span>`;
  } else {
    el.className = "banner bad";
    el.innerHTML = `<strong>Reload failed at ${esc(clock(reload.at))}</strong>
      <span class="detail">${esc(reload.error || "")} — the previous configuration is still running</span>`;
  }
}

function renderErrors() {
  const list = $("errors");
  if (!state.errors.length) return;
  list.innerHTML = state.errors.slice(0, 30).map((e) => `<li>
    <span class="when">${esc(clock(e.time))}</span>
    <span class="pill bad">${esc(e.kind)}</span>
    <span class="what"><b>${esc(e.endpoint)}</b> ${esc(e.method)} ${esc(e.path)} → ${esc(e.status)}${
      e.target ? ` <span class="muted">via ${esc(e.target)}</span>` : ""}</span></li>`).join("");
}

function describe(type, d) {
  switch (type) {
    case "breaker": return [`${d.endpoint_id}: breaker ${d.old_state} → ${d.state}`, d.reason,
      d.state === "closed" ? "ok" : d.state === "half_open" ? "warn" : "bad"];
    case "health": return [`${d.endpoint_id}: ${d.url} ${d.old_status} → ${d.status}`, d.reason,
      d.status === "healthy" ? "ok" : "bad"];
    case "registry": return [`${d.endpoint_id}: ${d.action}${d.status ? ` (${d.status})` : ""}`,
      d.url || d.source || "", "idle"];
    case "reload": return [d.ok ? "configuration reloaded" : "reload failed",
      d.ok ? d.trigger : d.error, d.ok ? "ok" : "bad"];
    default: return [type, "", "idle"];
  }
}

function addEvent(type, data) {
  const list = $("events");
  if (list.firstElementChild && list.firstElementChild.classList.contains("muted")) list.innerHTML = "";
  const [what, why, cls] = describe(type, data);
  const li = document.createElement("li");
  li.innerHTML = `<span class="when">${esc(clock(data.time))}</span>
    <span class="dot ${cls}"></span><span class="what">${esc(what)}${
      why ? ` <span class="muted">— ${esc(why)}</span>` : ""}</span>`;
  list.prepend(li);
  while (list.children.length > 50) list.lastElementChild.remove();
}

async function getJSON(path) {
  const r = await fetch(path, { headers: { Accept: "application/json" }, cache: "no-store" });
  if (!r.ok) throw new Error(`${path}: HTTP ${r.status}`);
  return r.json();
}

let pending = null;
function refresh(delay = 120) {
  if (pending) return;
  pending = setTimeout(async () => {
    pending = null;
    try {
      const [eps, status] = await Promise.all([getJSON("/health/endpoints"), getJSON("/health/status")]);
      state.endpoints = eps.endpoints.sort((a, b) => a.endpoint_id.localeCompare(b.endpoint_id));
      renderRows();
      renderTiles(status);
      renderBanner(status.last_reload);
    } catch (err) {
      $("live-text").textContent = `refresh failed: ${err.message}`;
    }
  }, delay);
}

function onStats(data) {
  const before = state.stats;
  const interval = data.interval || 2;
  state.stats = data.endpoints || {};
  state.refused = {};
  for (const [name, s] of Object.entries(state.stats)) {
    const prev = before[name];
    if (s.auth_failures === undefined || !prev || prev.auth_failures === undefined) continue;
    state.refused[name] = {
      auth: Math.max(0, s.auth_failures - prev.auth_failures) / interval,
      limited: Math.max(0, s.rate_limited - prev.rate_limited) / interval,
    };
  }
  const seen = new Set(state.errors.map((e) => `${e.request_id} ${e.time}`));
  for (const [name, s] of Object.entries(state.stats)) {
    for (const e of s.last_errors || []) {
      if (!seen.has(`${e.request_id} ${e.time}`)) state.errors.push({ ...e, endpoint: name });
    }
  }
  state.errors.sort((a, b) => b.time - a.time);
  state.errors = state.errors.slice(0, 50);
  renderRows();
  renderTiles(null);
  renderErrors();
}

function connect() {
  const live = $("live");
  const es = new EventSource("/events");
  es.onopen = () => { live.dataset.state = "live"; $("live-text").textContent = "live"; refresh(0); };
  es.onerror = () => { live.dataset.state = "down"; $("live-text").textContent = "reconnecting…"; };
  for (const type of ["breaker", "health", "registry", "reload"]) {
    es.addEventListener(type, (msg) => {
      const data = JSON.parse(msg.data);
      if (type === "breaker") state.reasons[`${data.endpoint_id} ${data.url}`] = data.reason;
      if (data.endpoint_id) state.changed.add(data.endpoint_id);
      addEvent(type, data);
      refresh();
    });
  }
  es.addEventListener("stats", (msg) => onStats(JSON.parse(msg.data)));
  es.addEventListener("subscriber_dropped", () => { es.close(); setTimeout(connect, 1000); });
}

getJSON("/").then((info) => { $("version").textContent = `${info.service} ${info.version}`; })
  .catch(() => {});
refresh(0);
// ?live=0: the current state, re-read every 5 s, without the event stream. An open stream
// is a request that never ends: a headless browser's screenshot (--virtual-time-budget) or a
// print waits for the page's requests, and would wait for ever.
if (new URLSearchParams(location.search).get("live") === "0") {
  $("live").dataset.state = "down";
  $("live-text").textContent = "snapshot (live=0): re-read every 5 s";
  setInterval(() => refresh(0), 5000);
} else {
  connect();
}

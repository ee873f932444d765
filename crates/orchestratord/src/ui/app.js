// llama-orch status page: follows GET /v1/status/stream (SSE over fetch, so that the bearer
// token can travel in the Authorization header; EventSource cannot send headers) and renders
// each `status` snapshot. No framework, no dependencies.
"use strict";

const TOKEN_KEY = "llorch.token";
const $ = (id) => document.getElementById(id);
let token = sessionStorage.getItem(TOKEN_KEY) || "";
let abort = null;
let retryTimer = null;
const canceling = new Set();
// The charted history (StatusSample, oldest first): the first event of a stream carries it
// all, each later one the samples taken since.
const HISTORY_KEEP = 300;
const CHART_SPAN_MS = 10 * 60 * 1000;
let history = [];
let freshStream = true;
const PALETTE = ["#2f6fde", "#1f9d55", "#c98a00", "#8e44ad", "#d64545", "#16a2b8", "#6b7385", "#e8590c"];
const SVG_NS = "http://www.w3.org/2000/svg";

function esc(s) {
  return String(s == null ? "" : s).replace(/[&<>"']/g, (c) =>
    ({ "&": "&amp;", "<": "&lt;", ">": "&gt;", '"': "&quot;", "'": "&#39;" })[c]);
}

function authHeaders() {
  return token ? { Authorization: "Bearer " + token } : {};
}

function setLive(text, on) {
  const el = $("live");
  el.textContent = text;
  el.className = "live" + (on ? " on" : "");
}

function showTokenForm(message) {
  $("main").hidden = true;
  $("token-form").hidden = false;
  if (message) $("token-msg").textContent = message;
  $("token-input").focus();
  setLive("needs token", false);
}

function gib(b) {
  return (b / 1073741824).toFixed(1);
}

function ago(nowMs, t) {
  if (!t) return "-";
  const s = Math.max(0, (nowMs - t) / 1000);
  return s < 60 ? s.toFixed(0) + " s ago" : (s / 60).toFixed(0) + " min ago";
}

function badge(state, cls) {
  return '<span class="badge s-' + esc(state) + (cls ? " " + cls : "") + '">' + esc(state) + "</span>";
}

function bar(pct, label) {
  const p = Math.max(0, Math.min(100, pct));
  return '<span class="bar"><span style="width:' + p.toFixed(1) + '%"></span></span><span class="bar-label">' + esc(label) + "</span>";
}

function fmtBytes(b) {
  if (b >= 1073741824) return gib(b) + " GiB";
  return Math.round(b / 1048576) + " MiB";
}

function fmtDuration(ms) {
  const s = ms / 1000;
  if (s < 1) return "<1 s";
  if (s < 90) return Math.round(s) + " s";
  if (s < 5400) return Math.round(s / 60) + " min";
  return (s / 3600).toFixed(1) + " h";
}

function fmtRate(v) {
  return v >= 100 ? Math.round(v).toString() : v.toFixed(1);
}

// Colour of a pool: by its place in the configuration, the same in every chart and bar.
function poolColors(pools) {
  const c = {};
  pools.forEach((p, i) => { c[p.id] = PALETTE[i % PALETTE.length]; });
  return c;
}

function svgEl(name, attrs, text) {
  const el = document.createElementNS(SVG_NS, name);
  for (const k in attrs) el.setAttribute(k, attrs[k]);
  if (text != null) el.textContent = text;
  return el;
}

// A round y-axis top at or above `v` (1, 1.2, 1.5, 2, … 8 or 10 times a power of ten).
function niceMax(v) {
  if (!(v > 0)) return 1;
  const p = Math.pow(10, Math.floor(Math.log10(v)));
  for (const m of [1, 1.2, 1.5, 2, 2.5, 3, 4, 5, 6, 8, 10]) if (m * p >= v) return m * p;
  return 10 * p;
}

function tickLabel(v) {
  if (v >= 10 || Number.isInteger(v)) return Math.round(v).toString();
  return v.toFixed(1);
}

// A small line chart: `series` [{name, color, dash, fill, points: [[time_ms, value]]}] over
// [t0, t1]. Sets data-points (points drawn), data-series and data-max (the largest value) on
// the <svg>, for tests.
function lineChart(svg, series, t0, t1, opts) {
  const W = Math.max(240, Math.round(svg.getBoundingClientRect().width || 560));
  const H = 150;
  const m = { l: 38, r: 10, t: 10, b: 20 };
  svg.setAttribute("viewBox", "0 0 " + W + " " + H);
  svg.setAttribute("height", H);
  svg.replaceChildren();
  const iw = W - m.l - m.r;
  const ih = H - m.t - m.b;
  let max = 0;
  let drawn = 0;
  for (const s of series) for (const p of s.points) if (p[1] > max) max = p[1];
  // Counts: an even top, so that the middle line is a whole number too.
  const top = opts.integer ? Math.max(2, 2 * Math.ceil(niceMax(max) / 2)) : niceMax(max);
  const span = Math.max(1, t1 - t0);
  const x = (t) => m.l + ((t - t0) / span) * iw;
  const y = (v) => m.t + ih - (v / top) * ih;
  for (const f of [0, 0.5, 1]) {
    const v = top * f;
    svg.appendChild(svgEl("line", { x1: m.l, x2: W - m.r, y1: y(v), y2: y(v), class: "grid" }));
    svg.appendChild(svgEl("text", { x: m.l - 6, y: y(v) + 4, class: "tick", "text-anchor": "end" }, tickLabel(v)));
  }
  svg.appendChild(svgEl("text", { x: m.l, y: H - 4, class: "tick" }, fmtDuration(t1 - t0) + " ago"));
  svg.appendChild(svgEl("text", { x: W - m.r, y: H - 4, class: "tick", "text-anchor": "end" }, "now"));
  for (const s of series) {
    const pts = s.points.filter((p) => p[0] >= t0 && p[0] <= t1);
    if (pts.length === 0) continue;
    drawn += pts.length;
    const line = pts.map((p) => x(p[0]).toFixed(1) + "," + y(p[1]).toFixed(1)).join(" ");
    if (s.fill && pts.length > 1) {
      const area = x(pts[0][0]).toFixed(1) + "," + y(0) + " " + line + " " + x(pts[pts.length - 1][0]).toFixed(1) + "," + y(0);
      svg.appendChild(svgEl("polygon", { points: area, fill: s.color, class: "area" }));
    }
    const attrs = { points: line, stroke: s.color, class: "line", "data-series": s.name };
    if (s.dash) attrs["stroke-dasharray"] = "4 3";
    svg.appendChild(svgEl("polyline", attrs));
    const last = pts[pts.length - 1];
    svg.appendChild(svgEl("circle", { cx: x(last[0]).toFixed(1), cy: y(last[1]).toFixed(1), r: 2.5, fill: s.color }));
  }
  if (drawn === 0) {
    svg.appendChild(svgEl("text", { x: m.l + iw / 2, y: m.t + ih / 2, class: "empty", "text-anchor": "middle" }, "collecting samples…"));
  }
  svg.dataset.points = drawn;
  svg.dataset.series = series.length;
  svg.dataset.max = max;
}

function legend(el, items) {
  el.innerHTML = items.map((i) =>
    '<span class="key"><span class="swatch' + (i.dash ? " dash" : "") + '" style="background:' + esc(i.color) + '"></span>' +
    esc(i.name) + ' <b>' + esc(i.value) + "</b></span>").join("");
}

function renderCharts(s, colors) {
  const h = history;
  const t1 = h.length ? Math.max(h[h.length - 1].time_ms, s.time_ms - 2000) : s.time_ms;
  const t0 = h.length ? Math.max(t1 - CHART_SPAN_MS, Math.min(h[0].time_ms, t1 - 30000)) : t1 - 30000;
  const span = "· last " + fmtDuration(t1 - t0);
  $("tok-span").textContent = span;
  $("queue-span").textContent = span;
  const last = h.length ? h[h.length - 1] : null;
  const tokSeries = s.pools.map((p) => ({
    name: p.id, color: colors[p.id], fill: s.pools.length === 1,
    points: h.map((x) => {
      const ps = x.pools.find((q) => q.pool_id === p.id);
      return [x.time_ms, ps ? ps.tokens_per_s : 0];
    }),
  }));
  lineChart($("chart-tokens"), tokSeries, t0, t1, {});
  legend($("legend-tokens"), tokSeries.map((x) => ({
    name: x.name, color: x.color, value: fmtRate(x.points.length ? x.points[x.points.length - 1][1] : 0) + " tok/s",
  })));
  $("tok-rate").textContent = fmtRate(last ? last.tokens_per_s : 0);
  const qSeries = [
    { name: "interactive waiting", color: "#2f6fde", fill: true, points: h.map((x) => [x.time_ms, x.queue.interactive]) },
    { name: "batch waiting", color: "#c98a00", fill: true, points: h.map((x) => [x.time_ms, x.queue.batch]) },
    { name: "running", color: "#1f9d55", dash: true, points: h.map((x) => [x.time_ms, x.queue.running]) },
  ];
  lineChart($("chart-queue"), qSeries, t0, t1, { integer: true });
  $("chart-tokens").dataset.historyMs = h.length ? h[h.length - 1].time_ms - h[0].time_ms : 0;
  legend($("legend-queue"), [
    { name: "interactive waiting", color: "#2f6fde", value: s.queue.interactive },
    { name: "batch waiting", color: "#c98a00", value: s.queue.batch },
    { name: "running", color: "#1f9d55", dash: true, value: s.queue.running },
  ]);
}

// VRAM of one card as a stacked bar: one segment per pool replica (measured or reserved),
// then what else is in use.
function vramBar(g, colors) {
  const total = g.vram_total_bytes || 0;
  const uses = g.pools || [];
  const byPools = uses.reduce((a, u) => a + u.vram_bytes, 0);
  const measured = uses.filter((u) => u.source === "measured").reduce((a, u) => a + u.vram_bytes, 0);
  const other = Math.max(0, g.vram_used_bytes - measured);
  const used = Math.max(g.vram_used_bytes, byPools + other);
  const pct = (b) => (total ? Math.min(100, (100 * b) / total) : 0).toFixed(2) + "%";
  let segs = uses.map((u) =>
    '<span class="seg' + (u.source === "reserved" ? " reserved" : "") + '" data-pool="' + esc(u.pool_id) +
    '" style="width:' + pct(u.vram_bytes) + ";background:" + esc(colors[u.pool_id] || "#8a93a6") +
    '" title="' + esc(u.replica_id) + ": " + esc(fmtBytes(u.vram_bytes)) + " (" + esc(u.source) + ')"></span>').join("");
  if (other > 0) segs += '<span class="seg other" style="width:' + pct(other) + '" title="other processes: ' + esc(fmtBytes(other)) + '"></span>';
  const keys = uses.map((u) =>
    '<span class="key"><span class="swatch" style="background:' + esc(colors[u.pool_id] || "#8a93a6") + '"></span>' +
    esc(u.pool_id) + " " + esc(fmtBytes(u.vram_bytes)) + (u.source === "reserved" ? ' <span class="muted">reserved</span>' : "") + "</span>");
  if (other > 0) keys.push('<span class="key"><span class="swatch other"></span>other ' + esc(fmtBytes(other)) + "</span>");
  if (!keys.length) keys.push('<span class="muted">free</span>');
  return '<div class="vram"><span class="stack">' + segs + '</span><span class="bar-label">' +
    esc(gib(used) + " / " + gib(total) + " GiB") + '</span></div><div class="legend small">' + keys.join("") + "</div>";
}

function renderWaiting(s) {
  const w = s.waiting || [];
  const maxStart = w.reduce((a, t) => Math.max(a, t.predicted_start_ms || 0), 0);
  $("waiting").querySelector("tbody").innerHTML = w.map((t) => {
    const p = t.predicted_start_ms;
    const when = p == null ? '<span class="muted">unknown</span>'
      : (p < 1000 ? "next" : "in ~" + fmtDuration(p)) +
        ' <span class="muted">(' + esc(new Date(s.time_ms + p).toLocaleTimeString([], { hour: "2-digit", minute: "2-digit", second: "2-digit" })) + ")</span>";
    const width = p == null || maxStart === 0 ? 0 : Math.max(2, (100 * p) / maxStart);
    return '<tr data-waiting-id="' + esc(t.task_id) + '"><td class="id" title="' + esc(t.task_id) + '">' + esc(t.task_id) +
      "</td><td>" + esc(t.pool_id) + "</td><td>" + esc(t.priority) + "</td><td>" +
      (t.queue_position == null ? "-" : esc(t.queue_position)) + '</td><td class="eta"><span class="eta-bar"><span style="width:' +
      width.toFixed(1) + '%"></span></span> ' + when + "</td><td>" + esc(fmtDuration(Math.max(0, s.time_ms - t.submitted_ms))) + "</td></tr>";
  }).join("");
  $("waiting").hidden = w.length === 0;
  $("no-waiting").hidden = w.length !== 0;
}

function absorbHistory(s) {
  const h = s.history || [];
  if (freshStream) {
    history = h.slice();
    freshStream = false;
  } else {
    const newest = history.length ? history[history.length - 1].time_ms : -1;
    for (const x of h) if (x.time_ms > newest) history.push(x);
  }
  if (history.length > HISTORY_KEEP) history = history.slice(history.length - HISTORY_KEEP);
}

function render(s) {
  absorbHistory(s);
  const colors = poolColors(s.pools);
  $("meta").textContent = "orchestratord " + s.daemon_version + " · " + s.gpu_mode + (s.shutting_down ? " · shutting down" : "");
  $("q-interactive").textContent = s.queue.interactive;
  $("q-batch").textContent = s.queue.batch;
  $("q-running").textContent = s.queue.running;

  $("gpus").querySelector("tbody").innerHTML = s.gpus.map((g) => {
    const util = g.utilization_pct == null ? null : g.utilization_pct;
    return '<tr data-gpu="' + esc(g.index) + '"><td>gpu' + esc(g.index) + "</td><td>" + esc(g.name) + "</td><td>" +
      (util == null ? '<span class="muted">n/a</span>' : bar(util, util + "%")) + "</td><td>" +
      vramBar(g, colors) + "</td></tr>";
  }).join("");
  $("gpus").hidden = s.gpus.length === 0;
  $("no-gpus").hidden = s.gpus.length !== 0;
  $("no-gpus").textContent = "No GPUs in use (" + s.gpu_mode + ").";

  $("pools").querySelector("tbody").innerHTML = s.pools.map((p) => {
    // on_demand pools show their load state: unloaded is normal for them, not "unready".
    const state = p.draining ? "draining" : p.ready ? "ready" : p.load_state || "unready";
    const reps = p.replicas.map((r) =>
      '<span class="replica" title="' + esc(r.endpoint || "") + (r.last_error ? " — " + esc(r.last_error) : "") + '">' +
      esc(r.id) + " " + badge(r.state) + ' <span class="muted">' + esc(r.device) + "</span></span>").join("");
    return '<tr data-pool-id="' + esc(p.id) + '"><td class="id"><span class="swatch" style="background:' + esc(colors[p.id]) + '"></span>' + esc(p.id) + "</td><td>" + esc(p.engine) +
      ' <span class="muted">' + esc(p.engine_version) + "</span></td><td>" + badge(state) +
      (p.last_error ? ' <span class="err" title="' + esc(p.last_error) + '">!</span>' : "") + "</td><td>" +
      esc(p.queue.interactive) + " / " + esc(p.queue.batch) + ' <span class="muted">(' + esc(p.queue_capacity) + ")</span></td><td>" +
      esc(p.queue.running) + "</td><td>" + esc(p.slots_ready) + "</td><td>" + reps + "</td></tr>";
  }).join("");

  $("tasks").querySelector("tbody").innerHTML = s.tasks.map((t) => {
    const live = t.state === "queued" || t.state === "running";
    const busy = canceling.has(t.task_id);
    const err = t.error && t.state !== "canceled" ? ' <span class="muted" title="' + esc(t.error.message) + '">' + esc(t.error.code) + "</span>" : "";
    return '<tr data-task-id="' + esc(t.task_id) + '"><td class="id" title="' + esc(t.task_id) + '">' + esc(t.task_id) +
      "</td><td>" + badge(t.state, "state") + err + "</td><td>" + esc(t.pool_id) + "</td><td>" + esc(t.priority) +
      "</td><td>" + esc(t.dialect || "native") + "</td><td>" + esc(t.tokens_out) + "</td><td>" + ago(s.time_ms, t.submitted_ms) + "</td><td>" +
      (live ? '<button class="cancel" type="button" data-task="' + esc(t.task_id) + '"' + (busy ? " disabled" : "") + ">" +
        (busy ? "canceling…" : "Cancel") + "</button>" : "") + "</td></tr>";
  }).join("");
  $("tasks").hidden = s.tasks.length === 0;
  $("no-tasks").hidden = s.tasks.length !== 0;
  renderWaiting(s);
  renderCharts(s, colors);
  for (const id of Array.from(canceling)) {
    if (!s.tasks.some((t) => t.task_id === id && (t.state === "queued" || t.state === "running"))) canceling.delete(id);
  }
}

// A small SSE reader: lines end with CRLF, LF or CR; a blank line dispatches the event.
function sseParser(onEvent) {
  let buf = "";
  let event = "";
  let data = [];
  return (chunk) => {
    buf += chunk;
    for (;;) {
      const m = /\r\n|\r|\n/.exec(buf);
      if (!m) break;
      // A CR at the very end may be the first half of a CRLF split across chunks.
      if (m[0] === "\r" && m.index === buf.length - 1) break;
      const line = buf.slice(0, m.index);
      buf = buf.slice(m.index + m[0].length);
      if (line === "") {
        if (data.length) onEvent(event || "message", data.join("\n"));
        event = "";
        data = [];
      } else if (line[0] !== ":") {
        const i = line.indexOf(":");
        const field = i < 0 ? line : line.slice(0, i);
        let value = i < 0 ? "" : line.slice(i + 1);
        if (value[0] === " ") value = value.slice(1);
        if (field === "event") event = value;
        else if (field === "data") data.push(value);
      }
    }
  };
}

function scheduleRetry() {
  clearTimeout(retryTimer);
  retryTimer = setTimeout(connect, 2000);
}

async function connect() {
  clearTimeout(retryTimer);
  if (abort) abort.abort();
  abort = new AbortController();
  setLive("connecting…", false);
  let resp;
  try {
    resp = await fetch("/v1/status/stream?recent=20", { headers: authHeaders(), signal: abort.signal, cache: "no-store" });
  } catch (e) {
    if (e.name !== "AbortError") { setLive("offline", false); scheduleRetry(); }
    return;
  }
  if (resp.status === 401) {
    let msg = "This daemon needs its bearer token (AUTH_TOKEN). It is kept in this tab only (sessionStorage).";
    if (token) msg = "The token was refused. " + msg;
    token = "";
    sessionStorage.removeItem(TOKEN_KEY);
    $("forget").hidden = true;
    showTokenForm(msg);
    return;
  }
  if (!resp.ok || !resp.body) {
    setLive("error " + resp.status, false);
    scheduleRetry();
    return;
  }
  $("token-form").hidden = true;
  $("main").hidden = false;
  freshStream = true;
  $("forget").hidden = !token;
  setLive("live", true);
  const reader = resp.body.getReader();
  const decoder = new TextDecoder();
  const feed = sseParser((name, data) => {
    if (name !== "status") return;
    try { render(JSON.parse(data)); } catch (e) { console.error("bad status event", e); }
  });
  try {
    for (;;) {
      const { value, done } = await reader.read();
      if (done) break;
      feed(decoder.decode(value, { stream: true }));
    }
  } catch (e) {
    if (e.name === "AbortError") return;
  }
  setLive("reconnecting…", false);
  scheduleRetry();
}

async function cancelTask(id, button) {
  canceling.add(id);
  button.disabled = true;
  button.textContent = "canceling…";
  try {
    const r = await fetch("/v1/tasks/" + encodeURIComponent(id) + "/cancel", { method: "POST", headers: authHeaders() });
    if (!r.ok) {
      const body = await r.json().catch(() => ({}));
      canceling.delete(id);
      alert("Cancel failed: " + (body.message || r.status));
    }
  } catch (e) {
    canceling.delete(id);
    alert("Cancel failed: " + e);
  }
}

document.addEventListener("click", (ev) => {
  const b = ev.target.closest("button.cancel");
  if (b && !b.disabled) cancelTask(b.dataset.task, b);
});

$("token-form").addEventListener("submit", (ev) => {
  ev.preventDefault();
  token = $("token-input").value.trim();
  $("token-input").value = "";
  if (token) sessionStorage.setItem(TOKEN_KEY, token);
  connect();
});

$("forget").addEventListener("click", () => {
  token = "";
  sessionStorage.removeItem(TOKEN_KEY);
  connect();
});

connect();

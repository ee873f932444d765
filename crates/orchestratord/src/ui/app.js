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

function render(s) {
  $("meta").textContent = "orchestratord " + s.daemon_version + " · " + s.gpu_mode + (s.shutting_down ? " · shutting down" : "");
  $("q-interactive").textContent = s.queue.interactive;
  $("q-batch").textContent = s.queue.batch;
  $("q-running").textContent = s.queue.running;

  $("gpus").querySelector("tbody").innerHTML = s.gpus.map((g) => {
    const used = g.vram_total_bytes ? (100 * g.vram_used_bytes) / g.vram_total_bytes : 0;
    const util = g.utilization_pct == null ? null : g.utilization_pct;
    return "<tr><td>gpu" + esc(g.index) + "</td><td>" + esc(g.name) + "</td><td>" +
      (util == null ? '<span class="muted">n/a</span>' : bar(util, util + "%")) + "</td><td>" +
      bar(used, gib(g.vram_used_bytes) + " / " + gib(g.vram_total_bytes) + " GiB") + "</td></tr>";
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
    return '<tr data-pool-id="' + esc(p.id) + '"><td class="id">' + esc(p.id) + "</td><td>" + esc(p.engine) +
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
      "</td><td>" + esc(t.tokens_out) + "</td><td>" + ago(s.time_ms, t.submitted_ms) + "</td><td>" +
      (live ? '<button class="cancel" type="button" data-task="' + esc(t.task_id) + '"' + (busy ? " disabled" : "") + ">" +
        (busy ? "canceling…" : "Cancel") + "</button>" : "") + "</td></tr>";
  }).join("");
  $("tasks").hidden = s.tasks.length === 0;
  $("no-tasks").hidden = s.tasks.length !== 0;
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

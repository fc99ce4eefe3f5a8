// The status page: polls /healthz, /jobs and /downloads every 2 s with the browser's session
// cookie and draws them. Every value goes in through textContent (never innerHTML): job errors
// and file names are other people's text.
"use strict";

const REFRESH_MS = 2000;
let timer = null;

const $ = (id) => document.getElementById(id);

function el(tag, text, className) {
  const node = document.createElement(tag);
  if (text !== undefined && text !== null) node.textContent = String(text);
  if (className) node.className = className;
  return node;
}

function stateCell(state) {
  return el("td", state, "state-" + String(state));
}

function row(cells) {
  const tr = document.createElement("tr");
  for (const cell of cells) tr.appendChild(cell instanceof Node ? cell : el("td", cell));
  return tr;
}

function fill(tableId, rows, empty) {
  const body = $(tableId).querySelector("tbody");
  body.replaceChildren(...(rows.length ? rows : [row([empty])]));
}

function card(title, value, className, detail) {
  const div = el("div", null, "card");
  div.appendChild(el("b", title));
  div.appendChild(el("span", value, className));
  if (detail) div.appendChild(el("div", detail, "muted"));
  return div;
}

// fraction null: under way, size unknown (an indeterminate bar).
function progressCell(fraction, label) {
  const td = el("td");
  const bar = el("progress");
  bar.max = 1;
  if (fraction !== null) bar.value = Math.max(0, Math.min(1, fraction));
  td.appendChild(bar);
  td.appendChild(el("span", " " + label, "muted"));
  return td;
}

function seconds(s) {
  if (s === null || s === undefined) return "";
  if (s < 10) return s.toFixed(2) + " s";
  if (s < 60) return s.toFixed(1) + " s";
  if (s < 3600) return Math.floor(s / 60) + " min " + Math.round(s % 60) + " s";
  return (s / 3600).toFixed(1) + " h";
}

function bytes(n) {
  if (n === null || n === undefined) return "?";
  const units = ["B", "KB", "MB", "GB", "TB"];
  let i = 0;
  while (n >= 1000 && i < units.length - 1) { n /= 1000; i++; }
  return (i ? n.toFixed(1) : n) + " " + units[i];
}

function when(unix) {
  return unix ? new Date(unix * 1000).toLocaleTimeString() : "";
}

function drawHealth(h) {
  const comfy = h.comfy || {};
  const cards = [
    card("health", h.ok ? "ok" : "not ok", h.ok ? "state-ok" : "state-bad", h.gpu_fault ? "GPU fault: " + h.gpu_fault.reason : ""),
    card("ComfyUI", comfy.state || "?", "state-" + comfy.state, comfy.reason || comfy.comfyui_version || ""),
  ];
  if (h.model_dir) cards.push(card("models", h.model_dir));
  $("health").replaceChildren(...cards);

  const version = h.version || {};
  $("version").textContent = [version.appliance && "appliance " + version.appliance,
                               version.comfy && "ComfyUI " + version.comfy].filter(Boolean).join(" · ");

  const gpu = h.gpu || {};
  const gpus = (gpu.gpus || []).map((g) => card(
    "GPU " + g.index + ": " + g.name,
    (g.utilization_gpu ?? "?") + " % busy, " + bytes((g.memory_used_mib ?? 0) * 2 ** 20) + " / " +
      bytes((g.memory_total_mib ?? 0) * 2 ** 20),
    (g.problems || []).length ? "state-bad" : "state-ok",
    [g.temperature_c !== null && g.temperature_c !== undefined ? g.temperature_c + " °C" : "",
     ...(g.problems || [])].filter(Boolean).join(", ")));
  if (!gpus.length) gpus.push(card("GPU", gpu.state || "?", "state-" + gpu.state, gpu.reason || ""));
  $("gpus").replaceChildren(...gpus);

  // One row per ComfyUI backend (one per GPU): why one is out of rotation is its own reason,
  // a latched GPU fault or its GPU's degraded state.
  fill("backends", (h.backends || []).map((b) => {
    const comfy = b.comfy || {};
    const reason = comfy.reason || (b.gpu_state === "degraded" ? "GPU degraded: " + (b.gpu_reason || "") : "");
    return row([b.program, b.gpu ?? "not pinned", b.runtime || "", stateCell(comfy.state),
                el("td", b.ok ? "yes" : "no", b.ok ? "state-ok" : "state-bad"), reason]);
  }), "no backends reported");

  const programs = h.programs || {};
  const rows = programs.error ? [row([programs.error])] : Object.entries(programs).map(([name, p]) =>
    row([name, stateCell(p.state), p.pid ?? "", p.description || ""]));
  fill("programs", rows, "no programs reported");
}

function drawJobs(listing) {
  const now = Date.now() / 1000;
  $("job-counts").textContent = Object.entries(listing.counts || {}).map(([s, n]) => n + " " + s).join(", ");
  fill("jobs", (listing.jobs || []).map((j) => {
    const end = j.finished_at || (j.state === "running" ? now : null);
    const duration = j.started_at && end ? seconds(end - j.started_at) : "";
    return row([el("td", j.job_id, "id"), stateCell(j.state),
                progressCell((j.progress || 0) / 100, Math.round(j.progress || 0) + " %"),  // percent
                j.version_id || "", when(j.created_at), duration,
                [j.error, j.detail].filter(Boolean).join(": ")]);
  }), "no jobs yet");
}

function drawDownloads(listing) {
  fill("downloads", (listing.downloads || []).map((d) => {
    const fraction = d.bytes_total ? d.bytes_done / d.bytes_total
      : {done: 1, queued: 0, running: null}[d.state] ?? 0;
    return row([d.filename || "", d.type || "", stateCell(d.state),
                progressCell(fraction, bytes(d.bytes_done) + " / " + bytes(d.bytes_total)),
                [d.error, d.detail].filter(Boolean).join(": ")]);
  }), "no downloads");
}

function showLogin(message) {
  clearTimeout(timer);
  $("dashboard").hidden = true;
  $("logout").hidden = true;
  $("login").hidden = false;
  $("login-error").textContent = message || "";
  $("token").focus();
}

class Unauthorized extends Error {}

async function getJson(path) {
  // /healthz answers 503 with its body when ComfyUI is down: that is data, not a failure.
  const resp = await fetch(path, {credentials: "same-origin", cache: "no-store"});
  if (resp.status === 401) throw new Unauthorized();
  return resp.json();
}

async function refresh() {
  try {
    // /jobs first: it is the one that says whether this browser may see anything.
    const jobs = await getJson("/jobs?limit=25");
    const [health, downloads] = await Promise.all([getJson("/healthz"), getJson("/downloads?limit=25")]);
    $("login").hidden = true;
    $("dashboard").hidden = false;
    $("logout").hidden = false;
    $("message").textContent = "";
    drawJobs(jobs);
    drawHealth(health);
    drawDownloads(downloads);
    $("updated").textContent = "Last update " + new Date().toLocaleTimeString() + ".";
  } catch (err) {
    if (err instanceof Unauthorized) {
      return showLogin($("dashboard").hidden ? "" : "Session expired: enter the token again.");
    }
    $("message").textContent = "The API did not answer: " + err.message;
  }
  timer = setTimeout(refresh, REFRESH_MS);
}

async function login(event) {
  event.preventDefault();
  const resp = await fetch("/session", {
    method: "POST", credentials: "same-origin",
    headers: {"Content-Type": "application/json"},
    body: JSON.stringify({token: $("token").value}),
  });
  if (!resp.ok) {
    const body = await resp.json().catch(() => ({}));
    $("login-error").textContent = resp.status === 401 ? "Wrong token." : (body.detail || "Login failed (" + resp.status + ").");
    return;
  }
  $("token").value = "";
  refresh();
}

async function logout() {
  await fetch("/session", {method: "DELETE", credentials: "same-origin"});
  clearTimeout(timer);
  $("dashboard").hidden = true;
  refresh();  // shows the form again, unless this API needs no token
}

document.addEventListener("DOMContentLoaded", () => {
  $("login").addEventListener("submit", login);
  $("logout").addEventListener("click", logout);
  refresh();
});

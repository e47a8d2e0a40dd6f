// The live page: polls the API every second, draws each run's stages, the
// bridges (bridges.js), the schedules (schedules.js) and each job's state. Plain DOM (no library, nothing from a CDN). User data
// goes in as text only.
"use strict";

const STATES = ["ok", "exists", "rejected", "failed", "unknown", "skipped", "cancelled", "claimed",
                "pending"];
const FAILED = ["rejected", "failed", "unknown"];
const FINISHED = ["finished", "cancelled"];
const ACTIONS = {
  pause: ["running"],
  resume: ["paused", "stopped"],
  cancel: ["planning", "planned", "running", "paused", "stopped"],
  retry: ["running", "stopped", "finished"],
};
const RUN_ACTIONS = {
  pause: ["running"],
  resume: ["planned", "paused", "stopped"],
  cancel: ["planned", "running", "paused", "stopped"],
};
const cards = new Map(); // job id -> {root, parts, status}
const runCards = new Map(); // run id -> {root, parts, stages}
const POLL_MS = 1000;

function el(tag, attrs, ...children) {
  const node = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs || {})) {
    if (k === "class") node.className = v;
    else if (k.startsWith("data-") || k === "style") node.setAttribute(k, v);
    else node[k] = v;
  }
  for (const c of children) node.append(c);
  return node;
}

function seconds(s) {
  if (s === null || s === undefined) return "?";
  s = Math.round(s);
  if (s >= 3600) return `${Math.floor(s / 3600)}h${String(Math.floor(s % 3600 / 60)).padStart(2, "0")}m`;
  return `${Math.floor(s / 60)}m${String(s % 60).padStart(2, "0")}s`;
}

async function api(path, options) {
  const response = await fetch(path, Object.assign({credentials: "same-origin"}, options || {}));
  if (response.status === 401) { location.href = "/"; throw new Error("logged out"); }
  const body = await response.json().catch(() => ({}));
  if (!response.ok) throw new Error(body.detail || `${response.status} ${response.statusText}`);
  return body;
}

function card(job) {
  const parts = {
    title: el("h2", {}, `job ${job.id}`),
    what: el("span", {class: "muted"}),
    status: el("span", {class: "status", "data-role": "status"}),
    bar: el("div", {class: "bar", "data-role": "bar"}),
    done: el("span", {class: "done", "data-role": "done"}),
    rate: el("span", {"data-role": "rate"}),
    eta: el("span", {"data-role": "eta"}),
    counts: el("ul", {class: "counts"}),
    chart: el("canvas", {class: "chart", width: 300, height: 60, "data-role": "chart"}),
    reason: el("p", {class: "error"}),
    failures: el("table", {class: "failures", "data-role": "failures"}),
    note: el("p", {class: "note", "data-role": "note", role: "status"}),
    buttons: el("div", {class: "buttons"}),
  };
  for (const action of Object.keys(ACTIONS)) {
    const button = el("button", {type: "button", "data-action": action}, action);
    button.addEventListener("click", () => steer(job.id, action, parts.note));
    parts.buttons.append(button);
  }
  const root = el("section", {class: "job", "data-job": String(job.id)},
    el("div", {class: "head"}, parts.title, parts.what, parts.status),
    parts.bar,
    el("div", {class: "numbers"}, parts.done, parts.rate, parts.eta),
    el("div", {class: "row"}, parts.counts, parts.chart),
    parts.reason, parts.failures, parts.buttons, parts.note);
  return {root, parts, status: null, detailKey: null};
}

// POST a control action to `path`; its answer, or the refusal, goes in
// `note` (as `say` words it), then the page polls again.
async function steerAt(path, action, note, say = out => `${out.message}: now ${out.status}`) {
  note.textContent = `${action}…`;
  try {
    note.textContent = say(await api(`${path}/${action}`, {method: "POST"}));
  } catch (e) {
    note.textContent = e.message;
  }
  poll();
}

// Show `items` in `area` in the API's order (newest first), one card each,
// made once and kept by id; `update` draws an item on its card. Cards of
// items no longer listed are dropped.
async function syncCards(area, items, cards, make, update) {
  const seen = new Set();
  for (const item of items) {
    seen.add(item.id);
    let c = cards.get(item.id);
    if (!c) { c = make(item); cards.set(item.id, c); }
    area.append(c.root);
    await update(c, item);
  }
  for (const [id, c] of cards) if (!seen.has(id)) { c.root.remove(); cards.delete(id); }
}

async function steer(id, action, note) {
  if (action === "cancel" && !confirm(`Cancel job ${id} for good?`)) return;
  await steerAt(`/api/jobs/${id}`, action, note);
}

function drawBar(bar, job) {
  bar.replaceChildren();
  for (const state of STATES) {
    const n = job.counts[state] || 0;
    if (!n || state === "pending" || !job.total) continue;
    bar.append(el("span", {class: `seg ${state}`, title: `${state}: ${n}`,
                           style: `width:${(100 * n / job.total).toFixed(3)}%`}));
  }
}

function drawChart(canvas, history) {
  const g = canvas.getContext("2d");
  g.clearRect(0, 0, canvas.width, canvas.height);
  const rates = [];
  for (let i = 1; i < history.length; i++) {
    const dt = history[i].t - history[i - 1].t;
    if (dt > 0) rates.push({t: history[i].t, r: (history[i].done - history[i - 1].done) / dt});
  }
  if (rates.length < 2) {
    g.fillStyle = "#888"; g.font = "11px sans-serif";
    g.fillText("rate: collecting…", 4, canvas.height / 2);
    return;
  }
  // Smooth over ~5 samples: workers record whole chunks.
  const smooth = rates.map((p, i) => {
    const w = rates.slice(Math.max(0, i - 4), i + 1);
    return {t: p.t, r: w.reduce((a, b) => a + b.r, 0) / w.length};
  });
  const t0 = smooth[0].t, t1 = smooth[smooth.length - 1].t || t0 + 1;
  const top = Math.max(1, ...smooth.map((p) => p.r));
  g.strokeStyle = "#2b7"; g.lineWidth = 1.5; g.beginPath();
  smooth.forEach((p, i) => {
    const x = (p.t - t0) / Math.max(1, t1 - t0) * (canvas.width - 2) + 1;
    const y = canvas.height - 12 - p.r / top * (canvas.height - 16);
    if (i) g.lineTo(x, y); else g.moveTo(x, y);
  });
  g.stroke();
  g.fillStyle = "#888"; g.font = "10px sans-serif";
  g.fillText(`${Math.round(top)}/s max, last ${seconds(t1 - t0)}`, 2, canvas.height - 1);
}

function render(c, job) {
  const p = c.parts;
  c.status = job.status;
  c.root.dataset.status = job.status;
  p.what.textContent = ` ${job.kind} on ${job.app}`;
  p.status.textContent = job.status;
  p.status.className = `status ${job.status}`;
  drawBar(p.bar, job);
  const pct = job.total ? Math.floor(100 * (job.done + job.cancelled) / job.total) : 100;
  p.done.textContent = `${job.done.toLocaleString()} / ${job.total.toLocaleString()} done (${pct}%)`;
  p.rate.textContent = job.rate ? `${job.rate.toFixed(1)} items/s` : "";
  p.eta.textContent = job.status === "running" ? `ETA ${seconds(job.eta_seconds)}` : "";
  p.counts.replaceChildren(...STATES.filter((s) => job.counts[s]).map((s) =>
    el("li", {class: s, "data-count": s}, `${s} ${job.counts[s].toLocaleString()}`)));
  p.reason.textContent = job.stop_reason || "";
  const failed = FAILED.some((s) => job.counts[s]);
  for (const b of p.buttons.children) {
    b.disabled = !ACTIONS[b.dataset.action].includes(job.status) || (b.dataset.action === "retry" && !failed);
  }
}

function drawFailures(t, failures) {
  t.replaceChildren();
  if (!failures.length) return;
  t.append(el("caption", {}, "first problems"),
           el("tr", {}, ...["row", "id", "outcome", "code", "reason"].map((h) => el("th", {}, h))));
  for (const f of failures) {
    t.append(el("tr", {}, ...[f.row, f.id, f.outcome, f.code || "", f.message || ""].map(
      (v) => el("td", {}, String(v)))));
  }
}

// What the job detail adds (its first failures) changes only with these.
function detailKey(job) {
  return [job.status, ...FAILED.map((s) => job.counts[s] || 0)].join(",");
}

// A job not yet settled: its progress each second (bars, counts, chart; no
// items read). Its detail, with the first failures, only when the status or
// a failed count changed since the last one (the server keeps the failures
// up to 1 s). A settled job is read once more, then left as it is.
async function follow(c, job, was) {
  const settled = FINISHED.includes(job.status);
  if (settled && was === job.status && c.detailKey !== null) return;
  let shown = job;
  if (!settled) {
    shown = await api(`/api/jobs/${job.id}/progress`);
    render(c, shown);
  }
  if (detailKey(shown) !== c.detailKey) {
    shown = await api(`/api/jobs/${job.id}`);
    c.detailKey = detailKey(shown);
    render(c, shown);
    drawFailures(c.parts.failures, shown.failures);
  }
  if (shown.history) drawChart(c.parts.chart, shown.history);
}

// -- runs: one card each, its stages as a row of small bars ---------------------------------

function runCard(run) {
  const parts = {
    title: el("h2", {}, `run ${run.name}`),
    what: el("span", {class: "muted"}),
    status: el("span", {class: "status", "data-role": "status"}),
    stages: el("ol", {class: "stages", "data-role": "stages"}),
    reason: el("p", {class: "error"}),
    note: el("p", {class: "note", "data-role": "note", role: "status"}),
    buttons: el("div", {class: "buttons"}),
  };
  for (const action of Object.keys(RUN_ACTIONS)) {
    const button = el("button", {type: "button", "data-action": action}, action);
    button.addEventListener("click", () => steerRun(run.name, action, parts.note));
    parts.buttons.append(button);
  }
  const root = el("section", {class: "run", "data-run": run.name},
    el("div", {class: "head"}, parts.title, parts.what, parts.status),
    parts.stages, parts.reason, parts.buttons, parts.note);
  return {root, parts, stages: new Map()};
}

function stageItem(stage) {
  const parts = {
    name: el("span", {class: "stage-name", "data-role": "stage"}, stage.stage),
    bar: el("div", {class: "bar small", "data-role": "bar"}),
    done: el("span", {class: "done", "data-role": "done"}),
    counts: el("ul", {class: "counts small"}),
  };
  const root = el("li", {class: "stage", "data-stage": stage.stage},
    el("div", {class: "stage-head"}, parts.name, parts.done), parts.bar, parts.counts);
  return {root, parts};
}

function renderRun(c, run) {
  const p = c.parts;
  c.root.dataset.status = run.status;
  c.root.dataset.current = run.current_stage || "";
  p.what.textContent = ` ${run.source_app} → ${run.app}`;
  p.status.textContent = run.current_stage && run.status === "running"
    ? `running: ${run.current_stage}` : run.status;
  p.status.className = `status ${run.status}`;
  for (const stage of run.stages) {
    let s = c.stages.get(stage.stage);
    if (!s) { s = stageItem(stage); c.stages.set(stage.stage, s); }
    p.stages.append(s.root); // the run's order
    s.root.dataset.status = stage.status;
    s.root.dataset.job = String(stage.id);
    s.root.classList.toggle("current", stage.stage === run.current_stage);
    s.root.title = `job ${stage.id}: ${stage.status}` +
      (stage.status === "running" && stage.rate ? `, ${stage.rate.toFixed(1)} items/s, ETA ${seconds(stage.eta_seconds)}` : "");
    drawBar(s.parts.bar, stage);
    s.parts.done.textContent = `${stage.done.toLocaleString()} / ${stage.total.toLocaleString()}`;
    s.parts.counts.replaceChildren(...STATES.filter((k) => stage.counts[k] && k !== "pending").map((k) =>
      el("li", {class: k, "data-count": k}, `${k} ${stage.counts[k].toLocaleString()}`)));
  }
  p.reason.textContent = run.stages.map((s) => s.stop_reason).find(Boolean) || "";
  for (const b of p.buttons.children) {
    b.disabled = !RUN_ACTIONS[b.dataset.action].includes(run.status);
    if (b.dataset.action === "resume") b.textContent = run.status === "planned" ? "start" : "resume";
  }
}

async function steerRun(name, action, note) {
  if (action === "cancel" && !confirm(`Cancel run ${name} for good?`)) return;
  await steerAt(`/api/runs/${name}`, action, note);
}

async function pollRuns() {
  const page = await api("/api/runs?limit=10");
  document.getElementById("runs-area").hidden = page.runs.length === 0;
  await syncCards(document.getElementById("runs"), page.runs, runCards, runCard, renderRun);
}

let busy = false;
async function poll() {
  if (busy) return;
  busy = true;
  try {
    await pollRuns();
    await pollBridges();
    await pollSchedules();
    const page = await api("/api/jobs?limit=20");
    document.getElementById("empty").hidden = page.jobs.length > 0;
    await syncCards(document.getElementById("jobs"), page.jobs, cards, card, async (c, job) => {
      const was = c.status; // null on a new card
      render(c, job);
      await follow(c, job, was);
    });
    document.getElementById("problem").textContent = "";
    document.getElementById("updated").textContent = `updated ${new Date().toLocaleTimeString()}`;
  } catch (e) {
    document.getElementById("problem").textContent = `cannot reach the server: ${e.message}`;
  } finally {
    busy = false;
  }
}

poll();
setInterval(poll, POLL_MS);

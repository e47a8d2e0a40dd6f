// The page's schedules, polled with the rest by app.js (its el() and api()):
// each schedule's command, app, when, status and next fire, its last fire
// with that job's state, and pause and resume. User data goes in as text only.
"use strict";

const SCHEDULE_ACTIONS = {pause: ["active"], resume: ["paused"]};
const scheduleCards = new Map(); // schedule id -> {root, parts}

function whenText(s) {
  if (s.zones) {
    const what = s.cron ? `cron '${s.cron}'` : `at ${s.local_at}`;
    return `${what} on each recipient's clock (${s.zones.length} zones)`;
  }
  return s.cron ? `cron '${s.cron}' in ${s.tz}` : `at ${s.at_time}`;
}

function lastFireText(f) {
  if (!f) return "never fired";
  const job = f.job;
  if (!job) return `last fire ${f.fire_time}: ${f.state}${f.note ? ` (${f.note})` : ""}`;
  const counts = STATES.filter((k) => job.counts[k]).map((k) => `${k} ${job.counts[k].toLocaleString()}`);
  return `last fire ${f.fire_time}: job ${job.id} ${job.status}, ` +
    `${job.done.toLocaleString()} / ${job.total.toLocaleString()} (${counts.join(", ")})`;
}

function scheduleCard(s) {
  const parts = {
    title: el("h2", {}, `schedule ${s.id}`),
    what: el("span", {class: "muted"}),
    status: el("span", {class: "status", "data-role": "status"}),
    when: el("span", {"data-role": "when"}),
    next: el("span", {"data-role": "next"}),
    last: el("p", {class: "last", "data-role": "last"}),
    note: el("p", {class: "note", "data-role": "note", role: "status"}),
    buttons: el("div", {class: "buttons"}),
  };
  for (const action of Object.keys(SCHEDULE_ACTIONS)) {
    const button = el("button", {type: "button", "data-action": action}, action);
    button.addEventListener("click", () => steerSchedule(s.id, action, parts.note));
    parts.buttons.append(button);
  }
  const root = el("section", {class: "schedule", "data-schedule": String(s.id)},
    el("div", {class: "head"}, parts.title, parts.what, parts.status),
    el("div", {class: "numbers"}, parts.when, parts.next), parts.last, parts.buttons, parts.note);
  return {root, parts};
}

function renderSchedule(c, s) {
  const p = c.parts;
  c.root.dataset.status = s.status;
  p.what.textContent = ` ${s.command} on ${s.app}`;
  p.status.textContent = s.status;
  p.status.className = `status ${s.status}`;
  p.when.textContent = whenText(s);
  p.next.textContent = s.next_fire ? `next fire ${s.next_fire}` : "nothing left to fire";
  p.last.textContent = lastFireText(s.last_fire);
  const job = s.last_fire && s.last_fire.job;
  p.last.dataset.fireJob = job ? String(job.id) : "";
  p.last.dataset.fireJobStatus = job ? job.status : "";
  for (const b of p.buttons.children) b.disabled = !SCHEDULE_ACTIONS[b.dataset.action].includes(s.status);
}

async function steerSchedule(id, action, note) {
  await steerAt(`/api/schedules/${id}`, action, note, out => out.message);
}

async function pollSchedules() {
  const page = await api("/api/schedules?limit=20");
  document.getElementById("schedules-area").hidden = page.schedules.length === 0;
  await syncCards(document.getElementById("schedules"), page.schedules, scheduleCards, scheduleCard,
                  renderSchedule);
}

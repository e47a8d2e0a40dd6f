// The page's cut-over bridges, polled with the rest by app.js (its el(),
// api(), steerAt() and syncCards()): each bridge's apps, run and status, per
// direction what was relayed, waits, failed or was dropped and the lag, its
// last failures, pause, resume and remove, and, while any failed or unknown,
// relay them again. User data goes in as text only.
"use strict";

const BRIDGE_ACTIONS = {pause: ["active"], resume: ["paused", "stopped"],
                        remove: ["active", "paused", "stopped"]};
// Per direction, in this order: [the report's field, its column heading].
const WAY_COUNTS = [["relayed", "relayed"], ["pending", "pending"], ["held", "held"],
                    ["failed", "failed"], ["unknown", "unknown"], ["duplicates", "duplicates dropped"],
                    ["echoes", "echoes dropped"], ["refused", "refused deliveries"]];
// Relay again: [button, the count in a direction that shows it, whether unknown ones are asked too].
// Rejected ones count as failed but are not sent again (the target said no).
const BRIDGE_RETRIES = [["retry failed", "failed", false], ["retry unknown", "unknown", true]];
const RETRY_COUNTS = {failed: (w) => w.failed - w.rejected, unknown: (w) => w.unknown};
const bridgeCards = new Map(); // bridge id -> {root, parts}

function lagText(s) {
  return s === null || s === undefined ? "–" : `${Math.round(s * 1000).toLocaleString()} ms`;
}

function bridgeCard(b) {
  const parts = {
    title: el("h2", {}, `bridge ${b.name}`),
    what: el("span", {class: "muted"}),
    status: el("span", {class: "status", "data-role": "status"}),
    reason: el("p", {class: "error", "data-role": "reason"}),
    ways: el("table", {class: "ways", "data-role": "ways"}),
    failures: el("table", {class: "failures", "data-role": "failures"}),
    note: el("p", {class: "note", "data-role": "note", role: "status"}),
    buttons: el("div", {class: "buttons"}),
  };
  for (const action of Object.keys(BRIDGE_ACTIONS)) {
    const button = el("button", {type: "button", "data-action": action}, action);
    button.addEventListener("click", () => steerBridge(b.id, action, parts.note));
    parts.buttons.append(button);
  }
  for (const [label, count, unknown] of BRIDGE_RETRIES) {
    const button = el("button", {type: "button", "data-retry": count, hidden: true}, label);
    button.addEventListener("click", () => retryBridge(b.id, unknown, parts.note));
    parts.buttons.append(button);
  }
  const root = el("section", {class: "bridge", "data-bridge": String(b.id)},
    el("div", {class: "head"}, parts.title, parts.what, parts.status),
    parts.reason, parts.ways, parts.failures, parts.buttons, parts.note);
  return {root, parts};
}

function drawWays(t, ways) {
  const head = ["direction", ...WAY_COUNTS.map(([, h]) => h), "lag p50", "lag p99"];
  t.replaceChildren(el("tr", {}, ...head.map((h) => el("th", {}, h))));
  for (const w of ways) {
    t.append(el("tr", {"data-way": `${w.from_app}>${w.to_app}`},
      el("td", {}, `${w.from_app} → ${w.to_app}`),
      ...WAY_COUNTS.map(([k]) => el("td", {class: w[k] ? k : "zero", "data-count": k}, w[k].toLocaleString())),
      el("td", {"data-lag": "p50"}, lagText(w.lag_p50)),
      el("td", {"data-lag": "p99"}, lagText(w.lag_p99))));
  }
}

function drawBridgeFailures(t, failures) {
  t.replaceChildren();
  if (!failures.length) return;
  t.append(el("caption", {}, "last failures"),
           el("tr", {}, ...["from", "message id", "state", "code", "reason"].map((h) => el("th", {}, h))));
  for (const f of failures) {
    t.append(el("tr", {}, ...[f.from_app, f.msg_id, f.state, f.code || "", f.message || ""].map(
      (v) => el("td", {}, String(v)))));
  }
}

function renderBridge(c, b) {
  const p = c.parts;
  c.root.dataset.status = b.status;
  p.what.textContent = ` ${b.source_app} → ${b.app}${b.both_ways ? " (both ways)" : ""}, run ${b.run}`;
  p.status.textContent = b.status;
  p.status.className = `status ${b.status}`;
  p.reason.textContent = b.stop_reason || "";
  drawWays(p.ways, b.directions);
  drawBridgeFailures(p.failures, b.last_failures);
  for (const btn of p.buttons.children) {
    if (btn.dataset.action) btn.disabled = !BRIDGE_ACTIONS[btn.dataset.action].includes(b.status);
    else btn.hidden = !b.directions.some((w) => RETRY_COUNTS[btn.dataset.retry](w) > 0);
  }
}

async function steerBridge(id, action, note) {
  if (action === "remove" && !confirm(`Remove bridge B${id}? It stops relaying for good.`)) return;
  await steerAt(`/api/bridges/${id}`, action, note, (out) => `bridge B${out.id} is now ${out.status}`);
}

// POST /api/bridges/ID/retry[?unknown=true], through api() as every button posts
// (the session's cookie, the page's own Origin). Unknown ones may have gone out.
async function retryBridge(id, unknown, note) {
  if (unknown && !confirm(`Relay B${id}'s unknown messages again too? Their relay may have gone `
                          + "out before it stopped: their recipients may get them twice.")) return;
  note.textContent = "retry…";
  try {
    const out = await api(`/api/bridges/${id}/retry${unknown ? "?unknown=true" : ""}`, {method: "POST"});
    note.textContent = `bridge B${out.id}: ${out.retried.toLocaleString()} to relay again`
      + (unknown ? "" : " (rejected ones are not: the target said no)");
  } catch (e) {
    note.textContent = e.message;
  }
  poll();
}

async function pollBridges() {
  const list = await api("/api/bridges");
  document.getElementById("bridges-empty").hidden = list.length > 0;
  await syncCards(document.getElementById("bridges"), list, bridgeCards, bridgeCard, renderBridge);
}

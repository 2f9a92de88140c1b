// The status page: reads /status.json every second and shows it. Every value goes in through
// textContent, never as markup.
"use strict";

const REFRESH_MS = 1000;
const $ = (id) => document.getElementById(id);

function el(tag, text, className) {
  const node = document.createElement(tag);
  if (text !== undefined && text !== null) node.textContent = String(text);
  if (className) node.className = className;
  return node;
}

function row(cells) {
  const tr = document.createElement("tr");
  for (const cell of cells) {
    const td = document.createElement("td");
    if (cell instanceof Node) td.append(cell); else td.textContent = cell ?? "";
    tr.append(td);
  }
  return tr;
}

function fill(tableId, rows, columns, emptyText) {
  const body = $(tableId).tBodies[0];
  if (rows.length === 0) {
    const td = el("td", emptyText, "empty");
    td.colSpan = columns;
    const tr = document.createElement("tr");
    tr.append(td);
    body.replaceChildren(tr);
  } else {
    body.replaceChildren(...rows);
  }
}

function bytes(n) {
  const units = ["B", "KiB", "MiB", "GiB", "TiB", "PiB"];
  let value = n, unit = 0;
  while (value >= 1024 && unit < units.length - 1) { value /= 1024; unit++; }
  return (unit === 0 ? value : value.toFixed(1)) + " " + units[unit];
}

function when(text) {
  if (!text) return "";
  const at = new Date(text);
  return isNaN(at) ? text : at.toLocaleString();
}

function seconds(s) {
  if (s < 60) return s.toFixed(1) + " s";
  const m = Math.floor(s / 60);
  if (m < 60) return m + " min " + Math.round(s % 60) + " s";
  return Math.floor(m / 60) + " h " + (m % 60) + " min";
}

function short(id) { return id ? id.slice(0, 8) : ""; }

function state(text, prefix) { return el("span", text, prefix + "-" + text); }

// The part of the work done, by bytes when there are any, else by files.
function fraction(totals) {
  if (totals.bytes_total > 0) return Math.min(1, totals.bytes_done / totals.bytes_total);
  if (totals.files_total > 0) return Math.min(1, totals.files_done / totals.files_total);
  return null;
}

function progress(totals, finished) {
  const box = el("span", null, "progress");
  const done = fraction(totals);
  const bar = document.createElement("progress");
  bar.max = 1;
  if (done !== null) bar.value = done; else if (finished) bar.value = 1;
  box.append(bar, " ");
  const parts = [];
  if (totals.bytes_total > 0) parts.push(bytes(totals.bytes_done) + " / " + bytes(totals.bytes_total));
  if (totals.files_total > 0) parts.push(totals.files_done + " / " + totals.files_total + " files");
  if (!finished && totals.rate_bytes_per_second > 0) parts.push(bytes(totals.rate_bytes_per_second) + "/s");
  if (!finished && totals.eta_seconds !== null && totals.eta_seconds !== undefined) parts.push("ETA " + seconds(totals.eta_seconds));
  box.append(el("span", parts.join(", "), "progress-text"));
  return box;
}

function runRows(report, hosts) {
  return report.runs.map((run) => {
    const finished = !["queued", "running", "canceling"].includes(run.state);
    const stateCell = el("div");
    stateCell.append(state(run.state, "state"));
    if (run.dry_run) stateCell.append(" (dry run)");
    if (run.error) stateCell.append(el("div", run.error, "error"));
    const nodes = el("div");
    for (const node of run.nodes) {
      const line = el("div", null, "node");
      line.dataset.nodeId = node.node_id;
      line.append(el("span", (hosts.get(node.node_id) || short(node.node_id)) + " " + node.phase + " "));
      line.append(progress(node.totals, finished));
      if (node.error) line.append(el("div", node.error, "error"));
      nodes.append(line);
    }
    const tr = row([
      el("span", short(run.id), "id"), run.kind, run.cluster, stateCell,
      when(run.start_time || run.create_time), seconds(run.duration_seconds),
      progress(run.totals, finished), nodes,
    ]);
    tr.dataset.runId = run.id;
    tr.dataset.state = run.state;
    tr.title = run.id;
    return tr;
  });
}

function clusterRows(report, hosts) {
  const rows = [];
  for (const cluster of report.clusters) {
    if (cluster.nodes.length === 0) rows.push(row([cluster.name, "no nodes", "", "", "", "", ""]));
    for (const node of cluster.nodes) {
      hosts.set(node.id, node.hostname || node.address);
      const health = el("div");
      health.append(state(node.health, "health"));
      if (node.message) health.append(el("div", node.message, "error"));
      const tr = row([
        cluster.name, node.hostname || short(node.id), node.address,
        [node.datacenter, node.rack].filter(Boolean).join(" / "), node.agent_version,
        health, when(node.checked_at),
      ]);
      tr.dataset.nodeId = node.id;
      rows.push(tr);
    }
  }
  return rows;
}

function scheduleRows(report) {
  return report.schedules.map((schedule) => {
    const last = el("div");
    if (schedule.last_run_state) last.append(state(schedule.last_run_state, "state"), " ", el("span", short(schedule.last_run_id), "id"));
    if (schedule.last_error) last.append(el("div", schedule.last_error, "error"));
    return row([
      schedule.name, schedule.cluster, schedule.trigger,
      schedule.paused ? "paused" : when(schedule.next_fire), last,
    ]);
  });
}

function backupRows(report) {
  return report.backups.map((backup) => {
    const tr = row([
      el("span", short(backup.id), "id"), backup.kind, backup.cluster, backup.location,
      when(backup.commit_time), backup.files, bytes(backup.bytes), bytes(backup.uploaded_bytes),
    ]);
    tr.dataset.backupId = backup.id;
    tr.title = backup.id;
    return tr;
  });
}

function show(report) {
  $("server").textContent = "server " + report.server_version;
  $("updated").textContent = "updated " + new Date(report.time).toLocaleTimeString();
  const hosts = new Map();
  fill("clusters", clusterRows(report, hosts), 7, "No clusters registered.");
  fill("runs", runRows(report, hosts), 8, "No runs yet.");
  fill("schedules", scheduleRows(report), 5, "No schedules.");
  fill("backups", backupRows(report), 8, "No backups yet.");
  $("status").hidden = false;
}

async function refresh() {
  try {
    const answer = await fetch("/status.json", { credentials: "same-origin", cache: "no-store" });
    if (answer.status === 401) {
      $("status").hidden = true;
      $("logout").hidden = true;
      $("login").hidden = false;
      $("problem").hidden = true;
      return false;
    }
    if (!answer.ok) throw new Error((await answer.text()).trim() || answer.statusText);
    show(await answer.json());
    $("login").hidden = true;
    $("logout").hidden = false;
    $("problem").hidden = true;
  } catch (error) {
    $("problem").textContent = "Could not read the status: " + error.message;
    $("problem").hidden = false;
  }
  return true;
}

async function loop() {
  // Signed out, there is nothing to poll for until the form is sent.
  if (await refresh()) setTimeout(loop, REFRESH_MS);
}

document.addEventListener("DOMContentLoaded", loop);

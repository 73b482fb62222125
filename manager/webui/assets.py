"""The web view's page: HTML, CSS and vanilla JS, served by the manager itself (no CDN, no
build step, nothing fetched from elsewhere: the Content-Security-Policy says so too).

The DOM carries stable hooks for tests and scripts: a column per node
(``data-node-id``, ``data-node-hostname``, ``data-node-state``), a card per task
(``data-task-id``, ``data-task-name``, ``data-service``, ``data-state``), legend rows
(``data-service-name``, ``data-network-name``) and ``data-revision`` on ``#cluster``.
"""

from __future__ import annotations

HTML = """<!doctype html>
<html lang="en"><head><meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>ovnet cluster</title><link rel="stylesheet" href="/app.css"></head>
<body>
<header><h1>ovnet</h1><span id="status" data-connected="false">connecting…</span>
<label><input type="checkbox" id="history"> finished tasks</label></header>
<div id="notice" hidden></div>
<main id="cluster" data-revision="0"></main>
<section id="legends">
<div><h2>Services</h2><ul id="services"></ul></div>
<div><h2>Networks</h2><ul id="networks"></ul></div>
<div><h2>Task states</h2><ul id="states">
<li><span class="swatch running"></span>running</li>
<li><span class="swatch starting"></span>starting / preparing / pending</li>
<li><span class="swatch failed"></span>failed / rejected</li>
<li><span class="swatch shutdown"></span>shutdown / complete</li></ul></div>
</section>
<script src="/app.js"></script>
</body></html>
"""

CSS = """
body { font-family: system-ui, sans-serif; margin: 0; background: #f4f5f7; color: #222; }
header { display: flex; gap: 1em; align-items: baseline; padding: .5em 1em;
  background: #263238; color: #fff; }
header h1 { font-size: 1.2em; margin: 0; }
#status[data-connected="false"] { color: #ffb74d; }
#notice { margin: 1em; padding: .7em; background: #fff3cd; border: 1px solid #e0c36a; }
#cluster { display: flex; gap: .8em; padding: 1em; overflow-x: auto; align-items: flex-start; }
.node { min-width: 12em; background: #fff; border-radius: 6px; padding: .5em;
  box-shadow: 0 1px 3px rgba(0,0,0,.2); }
.node h2 { font-size: 1em; margin: 0; }
.node .meta { font-size: .8em; color: #555; margin-bottom: .4em; }
.node[data-node-state="down"], .node[data-node-state="disconnected"] { opacity: .6; }
.task { border-radius: 4px; padding: .3em .5em; margin: .3em 0; font-size: .85em;
  color: #fff; border-left: 6px solid rgba(0,0,0,.25); }
.task .what, .task .msg { font-size: .8em; opacity: .9; word-break: break-all; }
.running { background: #2e7d32; } .starting { background: #f9a825; color: #222; }
.failed { background: #c62828; } .shutdown { background: #9e9e9e; }
body:not(.history) .task.finished { display: none; }
#legends { display: flex; gap: 2em; padding: 0 1em 1em; flex-wrap: wrap; }
#legends h2 { font-size: 1em; } #legends ul { padding-left: 1em; margin: 0; }
.swatch { display: inline-block; width: 1em; height: 1em; border-radius: 2px;
  margin-right: .4em; vertical-align: middle; }
.svc-dot { display: inline-block; width: .7em; height: .7em; border-radius: 50%;
  margin-right: .3em; }
"""

JS = r"""
"use strict";
// Renders the manager's snapshots (server-sent events on /events) without reloading.
const $ = (id) => document.getElementById(id);
function el(tag, attrs, ...children) {
  const e = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs || {})) {
    // Colours through the CSSOM: the CSP forbids inline style attributes.
    if (k === "class") e.className = v;
    else if (k === "bg") e.style.background = v;
    else e.setAttribute(k, String(v));
  }
  for (const c of children) e.append(c);
  return e;
}
function hue(name) {
  let h = 0;
  for (const ch of name) h = (h * 31 + ch.charCodeAt(0)) % 360;
  return "hsl(" + h + ",60%,45%)";
}
function taskCard(t) {
  const card = el("div", {
    class: "task " + t.class + (t.current ? "" : " finished"),
    "data-task-id": t.id, "data-task-name": t.name, "data-service": t.service,
    "data-state": t.state, "data-desired": t.desired, title: t.message || t.state,
  }, el("span", {class: "svc-dot", bg: hue(t.service)}),
     el("b", {}, t.name), " ", el("span", {class: "state"}, t.state));
  if (t.what) card.append(el("div", {class: "what"}, t.what));
  if (t.message && t.class === "failed") card.append(el("div", {class: "msg"}, t.message));
  return card;
}
function render(s) {
  const cluster = $("cluster");
  const notice = $("notice");
  if (!s.leader) {
    notice.hidden = false;
    notice.textContent = "Manager " + s.manager + " does not lead" +
      (s.leader_addr ? ": the leader is at " + s.leader_addr : "") +
      ". `ovctl cluster ui-url` prints the leader's URL.";
  } else { notice.hidden = true; }
  const byNode = new Map();
  const columns = [];
  for (const n of s.nodes) {
    const col = el("section", {
      class: "node", "data-node-id": n.id, "data-node-hostname": n.hostname,
      "data-node-state": n.state, "data-node-role": n.role,
    }, el("h2", {}, n.hostname),
       el("div", {class: "meta"}, n.role + " · " + n.state + " · " + n.availability +
          (n.addr ? " · " + n.addr : "")));
    byNode.set(n.id, col);
    columns.push(col);
  }
  const unassigned = el("section", {class: "node", "data-node-id": "",
    "data-node-hostname": ""}, el("h2", {}, "unassigned"));
  for (const t of s.tasks) {
    (byNode.get(t.node_id) || unassigned).append(taskCard(t));
  }
  if (unassigned.querySelector(".task.starting, .task.failed")) columns.push(unassigned);
  cluster.replaceChildren(...columns);
  cluster.setAttribute("data-revision", String(s.revision));
  $("services").replaceChildren(...s.services.map((v) => el("li",
    {"data-service-name": v.name}, el("span", {class: "svc-dot", bg: hue(v.name)}),
    el("b", {}, v.name), " " + v.mode +
    (v.replicas === null ? "" : " x" + v.replicas) +
    (v.ports.length ? " · ports " + v.ports.join(", ") : "") +
    (v.networks.length ? " · " + v.networks.join(", ") : ""))));
  $("networks").replaceChildren(...s.networks.map((n) => el("li",
    {"data-network-name": n.name}, el("b", {}, n.name), " " + n.subnet +
    (n.encrypted ? " · encrypted" : "") + (n.ingress ? " · ingress" : "") +
    (n.attachable ? " · attachable" : ""))));
}
function connect() {
  const status = $("status");
  const es = new EventSource("/events");
  es.addEventListener("snapshot", (e) => {
    status.textContent = "live"; status.setAttribute("data-connected", "true");
    render(JSON.parse(e.data));
  });
  es.onerror = () => {
    status.textContent = "reconnecting…"; status.setAttribute("data-connected", "false");
  };
}
$("history").addEventListener("change", (e) => {
  document.body.classList.toggle("history", e.target.checked);
});
connect();
"""

ASSETS: dict[str, tuple[str, bytes]] = {
    "/": ("text/html; charset=utf-8", HTML.encode()),
    "/index.html": ("text/html; charset=utf-8", HTML.encode()),
    "/app.css": ("text/css; charset=utf-8", CSS.encode()),
    "/app.js": ("text/javascript; charset=utf-8", JS.encode()),
}

"""The HTML page of `rlpt report` (rlpt/report.py fills the @@NAME@@ slots). Everything is inline: no network.
Data arrives as one JSON block; the script renders tables with textContent only (model output is never markup)."""

PAGE = """<!DOCTYPE html>
<html lang="en">
<head>
<meta charset="utf-8">
@@REFRESH@@
<title>@@TITLE@@</title>
<style>
body { font: 14px/1.4 system-ui, sans-serif; margin: 1.5em auto; max-width: 1400px; padding: 0 1em; color: #222; }
h1 { font-size: 1.5em; margin-bottom: 0.2em; } h2 { font-size: 1.2em; margin-top: 1.6em; border-bottom: 1px solid #ddd; }
.muted { color: #666; } .banner { background: #fff4d6; border: 1px solid #e0c068; padding: 0.5em 0.8em; }
table { border-collapse: collapse; } td, th { border: 1px solid #ddd; padding: 2px 6px; text-align: right; }
th { background: #f4f4f4; position: sticky; top: 0; } td.text { text-align: left; }
#charts svg { width: 100%; height: auto; }
.scroll { max-height: 420px; overflow: auto; border: 1px solid #ddd; }
pre { white-space: pre-wrap; word-break: break-word; margin: 0; font: 12px/1.35 ui-monospace, monospace; }
.group { border: 1px solid #ccc; border-radius: 4px; margin: 0.8em 0; padding: 0.5em 0.8em; }
.group h3 { font-size: 1em; margin: 0 0 0.4em 0; } .kind-best { border-left: 5px solid #55a868; }
.kind-worst { border-left: 5px solid #c44e52; } .kind-random { border-left: 5px solid #4c72b0; }
.error { color: #b00; } .controls label { margin-right: 1em; } .controls input[type=text] { width: 16em; }
.legend span { margin-right: 1.2em; } .dot { display: inline-block; width: 10px; height: 10px; border-radius: 5px; }
</style>
</head>
<body>
<h1>@@TITLE@@</h1>
<p class="muted">@@RUN_DIR@@ &middot; written @@WRITTEN@@ by <code>rlpt report</code></p>
@@BANNER@@

<h2>Summary</h2>
<table id="summary"><tbody>@@SUMMARY@@</tbody></table>

<h2>Curves</h2>
<div id="charts">@@CHARTS@@</div>

<h2>Events</h2>
<p class="legend">@@EVENT_LEGEND@@</p>
@@TIMELINE@@
<div class="scroll"><table id="events"><thead><tr><th>step</th><th>kind</th><th>what</th></tr></thead>
<tbody>@@EVENTS@@</tbody></table></div>

<h2>Sample rollouts</h2>
<div class="controls">
<label>step <select id="step"></select></label>
<label><input type="checkbox" class="kind" value="best" checked> best group</label>
<label><input type="checkbox" class="kind" value="worst" checked> worst group</label>
<label><input type="checkbox" class="kind" value="random" checked> random group</label>
<label><input type="checkbox" id="errors"> with errors only</label>
<label>text <input type="text" id="search" placeholder="in prompt or completion"></label>
</div>
<p class="muted" id="groups-note"></p>
<div id="groups"></div>

<h2>Every metric, every step</h2>
<div class="controls"><label>metrics matching <input type="text" id="metric-filter" placeholder="e.g. timing/"></label></div>
<div class="scroll"><table id="metrics"><thead></thead><tbody></tbody></table></div>

<h2>Resolved config</h2>
<pre id="config">@@CONFIG@@</pre>

<script id="data" type="application/json">@@DATA@@</script>
<script>
"use strict";
const data = JSON.parse(document.getElementById("data").textContent);
const fmt = v => v === null || v === undefined ? "null" : (typeof v === "number" ? String(Number(v.toPrecision(6))) : String(v));
function el(tag, text, cls) { const e = document.createElement(tag); if (text !== undefined) e.textContent = text; if (cls) e.className = cls; return e; }

function renderMetrics() {
  const want = document.getElementById("metric-filter").value.trim();
  const cols = data.keys.map((k, i) => [k, i]).filter(([k]) => !want || k.includes(want));
  const table = document.getElementById("metrics");
  const head = el("tr"); head.append(el("th", "step")); cols.forEach(([k]) => head.append(el("th", k)));
  table.tHead.replaceChildren(head);
  const body = document.createDocumentFragment();
  for (const row of data.metrics) {
    const tr = el("tr"); const step = row[0]; tr.append(el("td", String(step)));
    for (const [k, i] of cols) { const td = el("td", fmt(row[i + 1])); td.dataset.step = step; td.dataset.key = k; tr.append(td); }
    body.append(tr);
  }
  table.tBodies[0].replaceChildren(body);
}

function renderGroups() {
  const step = Number(document.getElementById("step").value);
  const kinds = new Set([...document.querySelectorAll("input.kind:checked")].map(x => x.value));
  const errorsOnly = document.getElementById("errors").checked;
  const needle = document.getElementById("search").value.trim().toLowerCase();
  const out = document.getElementById("groups"); out.replaceChildren();
  let shown = 0;
  for (const g of data.groups) {
    if (g.step !== step || !kinds.has(g.kind)) continue;
    let samples = g.samples;
    if (errorsOnly) samples = samples.filter(s => s.error);
    if (needle) samples = samples.filter(s => (String(s.completion) + " " + g.prompt).toLowerCase().includes(needle));
    if (!samples.length) continue;
    shown++;
    const box = el("div", undefined, "group kind-" + g.kind); box.dataset.kind = g.kind;
    box.append(el("h3", `step ${g.step} \u00b7 ${g.kind} group \u00b7 mean reward ${fmt(g.mean_reward)} \u00b7 prompt ${g.prompt_uid}`));
    box.append(el("pre", g.prompt));
    if (g.answer !== null && g.answer !== undefined) box.append(el("p", "answer: " + g.answer, "muted"));
    const t = el("table"); const h = el("tr");
    ["#", "reward", "correct", "finish", "tokens", "version", "engine", "verifier info", "error", "completion"].forEach(c => h.append(el("th", c)));
    t.append(h);
    for (const s of samples) {
      const tr = el("tr");
      [s.sample_index, fmt(s.reward), String(s.correct), s.finish_reason, s.num_tokens, s.policy_version, s.engine].forEach(v => tr.append(el("td", String(v))));
      tr.append(el("td", Object.entries(s.terms).map(([k, v]) => k + "=" + fmt(v)).join(" "), "text"));
      tr.append(el("td", s.error || "", "text error"));
      const c = el("td", undefined, "text"); c.append(el("pre", String(s.completion))); tr.append(c);
      t.append(tr);
    }
    box.append(t); out.append(box);
  }
  document.getElementById("groups-note").textContent = data.groups.length ?
    `${shown} group(s) shown; the page holds the best, worst and a random group of the last ${new Set(data.groups.map(g => g.step)).size} step(s).` :
    "No rollouts logged (run.log_rollouts: false, or no step finished yet).";
}

const steps = [...new Set(data.groups.map(g => g.step))].sort((a, b) => a - b);
const select = document.getElementById("step");
for (const s of steps) select.append(new Option(String(s), String(s)));
if (steps.length) select.value = String(steps[steps.length - 1]);
document.querySelectorAll(".controls input, .controls select").forEach(x => x.addEventListener("input", () => { renderGroups(); }));
document.getElementById("metric-filter").addEventListener("input", renderMetrics);
renderMetrics();
renderGroups();
</script>
</body>
</html>
"""

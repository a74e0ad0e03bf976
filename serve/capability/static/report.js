/* A `capgraph run --html` report: the console's picture of the graph with one run's inputs,
 * outputs and timings, read from the page's JSON block (never executed, never parsed as HTML). */
"use strict";

(function () {
  const {el, num, drawPicture, valueView, timingsView} = window.Capgraph;
  const run = JSON.parse(document.getElementById("capgraph-run").textContent);
  const $ = (id) => document.getElementById(id);

  $("capability").textContent = run.capability;
  $("version").textContent = run.version ? "version " + run.version : "";
  $("description").textContent = run.description;
  $("summary").textContent = `one frame on ${run.device}, ${run.when} · ${num(run.timings_ms.total)} ms · capgraph run ${run.file}`;
  document.title = run.capability + " · capgraph run";

  const picture = drawPicture($("picture"), run.picture, run.deployments);
  for (const node of run.picture.nodes) {
    const ms = run.timings_ms[node.id];
    const load = run.load_s[node.id];
    picture.setNode(node.id, ms === undefined ? "unknown" : "warm",
      [ms === undefined ? "did not run" : `ran · ${num(ms)} ms`, load === undefined ? "" : `load + warm-up ${num(load, 2)} s`, ""],
      node.id);
  }

  const figure = (name, kind, value) => el("figure", {class: "output", "data-value": name}, valueView(name, kind, value),
    el("figcaption", {text: `${name} (${kind})`}));
  $("inputs").append(el("div", {class: "outputs"}, Object.entries(run.inputs).map(([name, v]) => figure(name, v.type, v.value))));
  $("outputs").append(el("div", {class: "outputs"}, Object.entries(run.outputs).map(([name, v]) => figure(name, v.type, v.value))));
  $("timings").append(timingsView(run.picture.nodes.map((n) => n.id), run.timings_ms, {}));
})();

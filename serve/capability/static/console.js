/* The console page of a served capgraph graph (serve/capability/console.py): the picture with each
 * node's live state, the nodes' table, and a form that runs one frame through /v1. Polls
 * console/api/live every second. Every value from the service goes in as text. */
"use strict";

(function () {
  const {el, clear, num, drawPicture, valueView, timingsView} = window.Capgraph;
  const TOKEN_KEY = "capgraph-console-token";
  const POLL_MS = 1000;
  const STATES = {ok: "warm", loading: "loading", updating: "updating", moving: "updating", unhealthy: "down", failed: "down"};
  const $ = (id) => document.getElementById(id);

  let graph = null;
  let picture = null;
  let timer = null;
  let waitingForToken = false;

  class Unauthorized extends Error {}

  function token() {
    try { return sessionStorage.getItem(TOKEN_KEY) || ""; } catch (e) { return ""; }
  }

  /** The service's own message in an error answer (capgraph's or the Livepeer shape). */
  async function messageOf(reply) {
    try {
      const body = await reply.json();
      const error = body.error || body.detail || {};
      return {field: error.field || null, msg: typeof error === "string" ? error : (error.msg || `HTTP ${reply.status}`)};
    } catch (e) {
      return {field: null, msg: `HTTP ${reply.status}`};
    }
  }

  /** fetch with the bearer token; a 401 asks for the token and throws Unauthorized. */
  async function call(path, options) {
    const headers = new Headers((options || {}).headers || {});
    if (token()) headers.set("Authorization", "Bearer " + token());
    const reply = await fetch(path, Object.assign({}, options, {headers, cache: "no-store", credentials: "same-origin", redirect: "error"}));
    if (reply.status === 401) {
      askToken((await messageOf(reply)).msg);
      throw new Unauthorized();
    }
    return reply;
  }

  function askToken(message) {
    waitingForToken = true;
    clearTimeout(timer);
    $("main").hidden = true;
    $("token").hidden = false;
    $("token-error").textContent = token() ? message : "";
    $("status").textContent = "needs its token";
    $("status").className = "pill state-unknown";
    $("token-input").focus();
  }

  $("token-form").addEventListener("submit", (event) => {
    event.preventDefault();
    try { sessionStorage.setItem(TOKEN_KEY, $("token-input").value.trim()); } catch (e) { /* private mode: this load only */ }
    $("token-input").value = "";
    start();
  });

  // -- the graph, once ----------------------------------------------------------------------

  async function start() {
    waitingForToken = false;
    let reply;
    try {
      reply = await call("console/api/graph");
    } catch (e) {
      if (!(e instanceof Unauthorized)) retryLater("the service does not answer");
      return;
    }
    if (!reply.ok) return retryLater((await messageOf(reply)).msg);
    graph = await reply.json();
    $("token").hidden = true;
    $("main").hidden = false;
    $("capability").textContent = graph.capability;
    $("version").textContent = graph.version ? "version " + graph.version : "";
    $("description").textContent = graph.description;
    document.title = graph.capability + " · capgraph console";
    $("window").textContent = `· fps over the last ${graph.rate_s} s, latency and batch over the last ${graph.window_s} s`;
    picture = drawPicture($("picture"), graph.picture, graph.deployments);
    buildTable();
    buildForm();
    poll();
  }

  function retryLater(message) {
    $("status").textContent = message;
    $("status").className = "pill state-down";
    clearTimeout(timer);
    timer = setTimeout(start, 2000);
  }

  // -- live state ---------------------------------------------------------------------------

  async function poll() {
    clearTimeout(timer);
    try {
      const reply = await call("console/api/live");
      if (reply.ok) {
        show(await reply.json());
        $("conn").textContent = "· updated " + new Date().toLocaleTimeString();
      } else {
        $("conn").textContent = "· " + (await messageOf(reply)).msg;
      }
    } catch (e) {
      if (e instanceof Unauthorized) return;
      $("conn").textContent = "· the service does not answer; retrying";
      $("status").textContent = "unreachable";
      $("status").className = "pill state-down";
    }
    if (!waitingForToken) timer = setTimeout(poll, POLL_MS);
  }

  /** warm, loading, updating, down; `stalled`: warm, frames queued, none done of late;
   * `skipped`: warm, and every recent frame skipped it (a branch: its `when:` did not hold). */
  function stateOf(node) {
    const state = STATES[node.state] || "unknown";
    if (state === "warm" && node.queue > 0 && !node.fps) return "stalled";
    if (state === "warm" && node.skipped > 0 && !node.frames) return "skipped";
    return state;
  }

  function show(live) {
    const nodes = live.nodes || {};
    const states = Object.values(nodes).map(stateOf);
    const overall = live.ready ? (states.includes("stalled") ? "stalled" : "warm")
      : states.includes("down") ? "down" : states.includes("updating") ? "updating" : "loading";
    $("status").textContent = {warm: "serving", stalled: "serving, a node is stalled", down: "a node is down",
      updating: "updating", loading: "loading"}[overall];
    $("status").className = "pill state-" + overall;
    const modes = new Set(Object.values(nodes).map((n) => n.models_mode).filter(Boolean));
    $("summary").textContent = [`${live.in_flight} request${live.in_flight === 1 ? "" : "s"} in flight` +
      (live.max_in_flight ? ` (limit ${live.max_in_flight})` : ""),
      live.failed_outside_nodes ? `${live.failed_outside_nodes} failed outside any node (timeouts, lost replicas)` : null,
      modes.size ? `models: ${[...modes].join(", ")}` : null, `up ${Math.round(live.uptime_s)} s`].filter(Boolean).join(" · ");
    showStreams(live.streams || [], live.frames_by_kind || {});
    for (const [id, node] of Object.entries(nodes)) {
      const state = stateOf(node);
      const label = node.state === "ok" ? "warm" : node.state;
      picture.setNode(id, state, [
        `${state === "stalled" || state === "skipped" ? state : label} · ${num(node.fps)} fps`,
        `p50 ${num(node.p50_ms)} · p99 ${num(node.p99_ms)} ms`,
        `batch ${num(node.batch_mean)} · queue ${node.queue ?? "–"} · failed ${node.failed}` +
          (node.skipped ? ` · skipped ${node.skipped}` : ""),
      ], `${id}: ${node.state}; ${node.device || "no replica answering"}${(node.models || []).length ? "; " + node.models.join(", ") : ""}`);
      updateRow(id, node, state);
    }
    showReplaced(live.replaced || {});
  }

  /** Live streams (newest frame wins: `dropped`; similar frames: `reused`) and the frames the
   * node replicas ran by kind (live frames first, batch frames keep a share). */
  function showStreams(streams, kinds) {
    const parts = [];
    if (kinds.live || kinds.batch) parts.push(`frames run: live ${kinds.live || 0} · batch ${kinds.batch || 0}`);
    for (const s of streams.filter((s) => s.active)) {
      parts.push(`stream ${s.stream_id}: ${num(s.fps)} fps out · ${s.frames} run · dropped ${s.dropped}` +
        (s.reused ? ` · reused ${s.reused}` : "") + ` · p50 ${num(s.age_p50_ms)} ms`);
    }
    $("streams").textContent = parts.join(" · ");
  }

  function buildTable() {
    const body = clear($("nodes").tBodies[0]);
    for (const node of graph.picture.nodes) {
      body.append(el("tr", {"data-node": node.id},
        el("td", {class: "id", text: node.id}), el("td", {text: node.family}),
        ["state", "fps", "p50", "p99", "batch", "queue", "failed", "skipped", "device", "models", "load"].map((key) => el("td", {"data-key": key}))));
    }
  }

  function updateRow(id, node, state) {
    const row = [...$("nodes").tBodies[0].rows].find((r) => r.dataset.node === id);
    if (!row) return;
    const cells = Object.fromEntries([...row.cells].filter((c) => c.dataset.key).map((c) => [c.dataset.key, c]));
    const failed = node.failed_recent ? `${node.failed} (${node.failed_recent} of late)` : String(node.failed);
    const running = node.running ? ` · running ${num(node.running.running_s, 0)} s` +
      (node.running.progress ? ` (step ${node.running.progress[0]} of ${node.running.progress[1]})` : "") : "";
    const values = {state: (state === "stalled" || state === "skipped" ? state : node.state === "ok" ? "warm" : node.state) + running,
      fps: num(node.fps), p50: num(node.p50_ms), p99: num(node.p99_ms), batch: num(node.batch_mean), queue: node.queue ?? "–",
      failed, skipped: String(node.skipped ?? 0),
      device: node.device ? `${node.device} ${node.dtype || ""}`.trim() : "–",
      models: (node.models || []).length ? node.models.join(", ") + (node.models_mode ? ` (${node.models_mode})` : "") : "–",
      load: node.load_s === null || node.load_s === undefined ? "–" : `${num(node.load_s, 2)} + ${num(node.warmup_s, 2)}`};
    for (const [key, text] of Object.entries(values)) cells[key].textContent = text;
    row.className = "state-" + state;
  }

  function showReplaced(replaced) {
    const box = clear($("replaced"));
    const entries = Object.entries(replaced);
    if (!entries.length) return;
    box.append(el("h3", {text: "replaced of late"}), el("ul", {}, entries.map(([node, why]) => el("li", {}, el("b", {text: node}), ": " + why))));
  }

  // -- try it -------------------------------------------------------------------------------

  const FILE_KINDS = new Set(["image", "mask", "depth_map", "segmentation_map", "masks", "bytes", "video"]);

  function field(name, label, control, help) {
    return el("div", {class: "field", "data-field": name},
      el("label", {}, el("span", {class: "name", text: label}), control),
      help ? el("p", {class: "help", text: help}) : null,
      el("p", {class: "field-error", role: "alert"}));
  }

  function inputControl(name, spec) {
    const id = "in-" + name;
    if (FILE_KINDS.has(spec.type)) return el("input", {id, type: "file", name, accept: spec.type === "bytes" ? null : spec.type === "video" ? "video/mp4,video/*" : "image/*", "data-kind": "file"});
    if (spec.type === "text") return el("textarea", {id, name, rows: 2, "data-kind": "text"}, spec.default ?? "");
    if (spec.type === "bool") {
      return el("select", {id, name, "data-kind": "text"}, ["", "true", "false"].map((v) =>
        el("option", {value: v, selected: String(spec.default) === v ? "selected" : null, text: v || "(default)"})));
    }
    const number = spec.type === "number" || spec.type === "integer";
    return el("input", {id, name, type: number ? "number" : "text", step: spec.type === "integer" ? 1 : number ? "any" : null,
      value: spec.default === undefined || spec.default === null ? "" : typeof spec.default === "object" ? JSON.stringify(spec.default) : spec.default,
      "data-kind": "text"});
  }

  function types(prop) {
    if (prop.type) return [].concat(prop.type);
    if (prop.enum) return [...new Set(prop.enum.map((v) => typeof v))].map((t) => (t === "number" ? "number" : t));
    return (prop.anyOf || prop.oneOf || []).flatMap(types);
  }

  function bounds(prop) {
    const options = [prop, ...(prop.anyOf || [])];
    const pick = (key) => options.map((o) => o[key]).find((v) => v !== undefined);
    return {min: pick("minimum") ?? pick("exclusiveMinimum"), max: pick("maximum") ?? pick("exclusiveMaximum")};
  }

  function paramControl(key, prop) {
    const kinds = types(prop);
    const enumerated = prop.enum || (prop.anyOf || []).map((o) => o.enum).find(Boolean);
    const def = prop.default;
    const id = "param-" + key;
    if (enumerated) {
      return el("select", {id, name: key, "data-param": key, "data-default": JSON.stringify(def ?? null)},
        [el("option", {value: "", text: "(default)"}), enumerated.map((v) =>
          el("option", {value: JSON.stringify(v), selected: JSON.stringify(v) === JSON.stringify(def) ? "selected" : null, text: String(v)}))]);
    }
    if (kinds.includes("boolean")) {
      return el("select", {id, name: key, "data-param": key, "data-default": JSON.stringify(def ?? null)},
        ["", "true", "false"].map((v) => el("option", {value: v, selected: v !== "" && v === String(def) ? "selected" : null, text: v || "(default)"})));
    }
    const number = kinds.includes("integer") || kinds.includes("number");
    const {min, max} = bounds(prop);
    return el("input", {id, name: key, "data-param": key, type: number ? "number" : "text", step: number ? (kinds.includes("number") ? "any" : 1) : null,
      min: number ? min : null, max: number ? max : null, "data-default": JSON.stringify(def ?? null),
      "data-number": number ? "1" : null, "data-json": !number && !kinds.includes("string") ? "1" : null,
      value: def === null || def === undefined ? "" : typeof def === "object" ? JSON.stringify(def) : def});
  }

  function paramHelp(prop) {
    const {min, max} = bounds(prop);
    const range = min !== undefined || max !== undefined ? `${min ?? "…"} to ${max ?? "…"}` : null;
    return [prop.description, range].filter(Boolean).join(" · ");
  }

  function buildForm() {
    const schema = graph.schema;
    const inputs = clear($("try-inputs"));
    for (const [name, spec] of Object.entries(schema.inputs)) {
      inputs.append(field("inputs." + name, `${name} (${spec.type}${spec.required ? "" : ", optional"})`, inputControl(name, spec), spec.description));
    }
    // the graph's own names (no dot) in view: the params it means a caller to set; every node.param folded
    const own = clear($("try-params"));
    const nodes = clear($("try-node-params"));
    const keys = Object.keys(schema.params);
    for (const key of keys) {
      (key.includes(".") ? nodes : own).append(field("params." + key, key, paramControl(key, schema.params[key]), paramHelp(schema.params[key])));
    }
    $("try-more").hidden = !nodes.children.length;
    $("try-more").open = !own.children.length && nodes.children.length <= 8;
    const form = $("try");
    form.noValidate = true;  // the service checks every value and says what is wrong
    form.onsubmit = run;
  }

  function paramValue(control) {
    const raw = control.value.trim();
    if (raw === "") return undefined;
    if (control.tagName === "SELECT") {
      if (raw === "true" || raw === "false") return raw === "true";
      try { return JSON.parse(raw); } catch (e) { return raw; }
    }
    if (control.dataset.number) {
      const value = Number(raw);
      return Number.isFinite(value) && /^[-+0-9.eE]+$/.test(raw) ? value : raw;  // not a number: the service says so
    }
    if (control.dataset.json) {
      try { return JSON.parse(raw); } catch (e) { return raw; }
    }
    return control.value;
  }

  function clearErrors() {
    for (const box of document.querySelectorAll("#try .field")) {
      box.classList.remove("has-error");
      box.querySelector(".field-error").textContent = "";
    }
    $("try-error").textContent = "";
  }

  /** The service's message next to the field it names; elsewhere under the form. */
  function showError(fieldName, message) {
    const boxes = [...document.querySelectorAll("#try .field")];
    const box = fieldName && (boxes.find((b) => b.dataset.field === fieldName)
      || boxes.find((b) => fieldName.startsWith(b.dataset.field + ".") || fieldName.startsWith(b.dataset.field + "[")));
    if (box) {
      box.classList.add("has-error");
      box.querySelector(".field-error").textContent = message;
      const details = box.closest("details");
      if (details) details.open = true;
      box.scrollIntoView({block: "nearest"});
    } else {
      $("try-error").textContent = fieldName ? `${fieldName}: ${message}` : message;
    }
  }

  async function run(event) {
    event.preventDefault();
    clearErrors();
    const body = new FormData();
    for (const control of $("try-inputs").querySelectorAll("[data-kind]")) {
      if (control.dataset.kind === "file") {
        if (control.files.length) body.append(control.name, control.files[0], control.files[0].name);
      } else if (control.value.trim() !== "") {
        body.append(control.name, control.value);
      }
    }
    const params = {};
    for (const control of $("try").querySelectorAll("[data-param]")) {
      const value = paramValue(control);
      if (value !== undefined && JSON.stringify(value) !== control.dataset.default) params[control.name] = value;
    }
    if (Object.keys(params).length) body.append("params", JSON.stringify(params));
    const button = $("run");
    button.disabled = true;
    $("run-status").textContent = "running…";
    const started = performance.now();
    try {
      const reply = await call(graph.route, {method: "POST", body});
      const seconds = ((performance.now() - started) / 1000).toFixed(2);
      if (!reply.ok) {
        const {field: name, msg} = await messageOf(reply);
        showError(name, msg);
        $("run-status").textContent = `${reply.status} after ${seconds} s`;
        return;
      }
      const answer = await reply.json();
      const batches = Object.fromEntries((reply.headers.get("x-capgraph-batch-sizes") || "").split(",").filter(Boolean)
        .map((pair) => pair.split("=")).map(([k, v]) => [k, Number(v)]));
      showResult(answer, batches);
      $("run-status").textContent = `done in ${seconds} s`;
    } catch (e) {
      if (!(e instanceof Unauthorized)) {
        $("try-error").textContent = "the service did not answer: " + e.message;
        $("run-status").textContent = "";
      }
    } finally {
      button.disabled = false;
    }
  }

  function showResult(answer, batches) {
    const outputs = graph.schema.outputs;
    const box = clear($("result"));
    const cards = Object.entries(answer.outputs || {}).map(([name, value]) =>
      el("figure", {class: "output", "data-output-name": name}, valueView(name, (outputs[name] || {}).type, value),
        el("figcaption", {text: `${name} (${(outputs[name] || {}).type || "?"})`})));
    box.append(el("div", {class: "outputs"}, cards),
      el("h3", {text: "timings of this frame"}),
      timingsView(graph.picture.nodes.map((n) => n.id), answer.timings_ms || {}, batches));
  }

  start();
})();

/* What the console page and `capgraph run --html` reports share: building DOM, drawing the
 * graph's picture (engine.render.picture's data), showing a value and a frame's timings.
 * Every value that came from a service or a run goes into the page as text (textContent,
 * setAttribute), never as HTML; images only as checked base64 `data:` URLs. */
"use strict";

window.Capgraph = (function () {
  const SVG_NS = "http://www.w3.org/2000/svg";

  function fill(node, attrs, children) {
    for (const [key, value] of Object.entries(attrs || {})) {
      if (value === null || value === undefined || value === false) continue;
      if (/^on/i.test(key)) throw new Error("no event handler attributes: " + key);
      if (key === "text") node.textContent = String(value);
      else node.setAttribute(key, String(value));
    }
    for (const child of children.flat(Infinity)) {
      if (child === null || child === undefined || child === false) continue;
      node.appendChild(typeof child === "object" ? child : document.createTextNode(String(child)));
    }
    return node;
  }

  /** An HTML element: el("p", {class: "x"}, "text", el(...)). */
  function el(tag, attrs, ...children) {
    return fill(document.createElement(tag), attrs, children);
  }

  /** An SVG element, the same way. */
  function svg(tag, attrs, ...children) {
    return fill(document.createElementNS(SVG_NS, tag), attrs, children);
  }

  function clear(node) {
    while (node.firstChild) node.removeChild(node.firstChild);
    return node;
  }

  function num(value, digits) {
    if (value === null || value === undefined || Number.isNaN(value)) return "–";
    const d = digits === undefined ? (Math.abs(value) < 10 ? 1 : 0) : digits;
    return Number(value).toFixed(d);
  }

  // -- the picture ------------------------------------------------------------------------

  const NODE = [184, 96];
  const IO = [128, 44];
  const GAP_X = 104;
  const GAP_Y = 52;
  const BOX_PAD = 10;
  const BOX_HEAD = 30;
  const PAD = 16;

  /** Columns by longest path from the inputs; within a column, by deployment then plan order. */
  function layout(pic) {
    const items = new Map();
    const incoming = new Map();
    for (const edge of pic.edges) {
      if (!incoming.has(edge.to)) incoming.set(edge.to, []);
      incoming.get(edge.to).push(edge.from);
    }
    pic.inputs.forEach((item, i) => items.set(item.id, {kind: "input", col: 0, order: i, size: IO, data: item}));
    const boxOf = new Map();
    pic.deployments.forEach((d, i) => d.nodes.forEach((n) => boxOf.set(n, i)));
    let last = 0;
    pic.nodes.forEach((node, i) => {  // plan order is topological
      const col = 1 + Math.max(0, ...(incoming.get(node.id) || []).map((src) => (items.get(src) || {col: 0}).col));
      last = Math.max(last, col);
      items.set(node.id, {kind: "node", col, order: (boxOf.has(node.id) ? boxOf.get(node.id) : 0) * 1000 + i, size: NODE, data: node});
    });
    pic.outputs.forEach((item, i) => items.set(item.id, {kind: "output", col: last + 1, order: i, size: IO, data: item}));
    const columns = [];
    for (const item of items.values()) (columns[item.col] = columns[item.col] || []).push(item);
    const heights = columns.map((col) => (col || []).reduce((h, it) => h + it.size[1], 0) + Math.max(0, (col || []).length - 1) * GAP_Y);
    const tallest = Math.max(...heights, 0);
    let x = PAD + BOX_PAD;
    columns.forEach((col, c) => {
      if (!col) return;
      col.sort((a, b) => a.order - b.order);
      const width = Math.max(...col.map((it) => it.size[0]));
      let y = PAD + BOX_HEAD + BOX_PAD + (tallest - heights[c]) / 2;
      for (const it of col) {
        it.x = x + (width - it.size[0]) / 2;
        it.y = y;
        y += it.size[1] + GAP_Y;
      }
      x += width + GAP_X;
    });
    return {items, width: x - GAP_X + PAD + BOX_PAD, height: tallest + 2 * (PAD + BOX_PAD) + BOX_HEAD};
  }

  /** A deployment box's second line: what the planner chose for it. */
  function boxSettings(unit) {
    if (!unit) return "";
    const replicas = typeof unit.replicas === "object" ? `${unit.replicas.min}–${unit.replicas.max} replicas`
      : `${unit.replicas} replica${unit.replicas === 1 ? "" : "s"}`;
    const parts = [replicas];
    if (unit.num_gpus) parts.push(`gpu ${unit.num_gpus}`);
    parts.push(`batch ${unit.max_batch_size}`, `${unit.threads} thread${unit.threads === 1 ? "" : "s"}`);
    return parts.join(" · ");
  }

  /**
   * Draw `pic` into `container`. `units`: deployment name -> its settings (box labels).
   * Returns {setNode(id, state, lines, tooltip)}: `state` picks the colour (warm, loading,
   * updating, stalled, down, unknown), `lines` the two or three lines under the family.
   */
  function drawPicture(container, pic, units) {
    const {items, width, height} = layout(pic);
    const root = svg("svg", {class: "picture", viewBox: `0 0 ${width} ${height}`, width, height, role: "img",
      "aria-label": "graph: inputs, nodes, outputs and deployments"});
    const boxes = svg("g", {class: "boxes"});
    const wires = svg("g", {class: "wires"});
    const cards = svg("g", {class: "cards"});
    root.append(boxes, wires, cards);

    for (const dep of pic.deployments) {
      const members = dep.nodes.map((n) => items.get(n)).filter(Boolean);
      if (!members.length) continue;
      const settings = boxSettings((units || {})[dep.name]);
      const wide = Math.max(0, settings.length * 5.4 + 16 - BOX_PAD * 2 - NODE[0]) / 2;  // room for the settings line
      const x0 = Math.min(...members.map((m) => m.x)) - BOX_PAD - wide;
      const y0 = Math.min(...members.map((m) => m.y)) - BOX_PAD - BOX_HEAD;
      const x1 = Math.max(...members.map((m) => m.x + m.size[0])) + BOX_PAD + wide;
      const y1 = Math.max(...members.map((m) => m.y + m.size[1])) + BOX_PAD;
      boxes.append(svg("g", {class: "deployment", "data-deployment": dep.name},
        svg("rect", {x: x0, y: y0, width: x1 - x0, height: y1 - y0, rx: 10}),
        svg("text", {x: x0 + 8, y: y0 + 13, class: "box-label"}, svg("tspan", {class: "box-name", text: "deployment " + dep.name}),
          settings ? svg("tspan", {x: x0 + 8, dy: 12, text: settings}) : null)));
    }

    for (const edge of pic.edges) {
      const a = items.get(edge.from);
      const b = items.get(edge.to);
      if (!a || !b) continue;
      const x1 = a.x + a.size[0];
      const y1 = a.y + a.size[1] / 2;
      const x2 = b.x;
      const y2 = b.y + b.size[1] / 2;
      const bend = Math.max(24, (x2 - x1) / 2);
      const [ports, type] = String(edge.label).split(" : ");
      const mx = (x1 + x2) / 2;
      const my = (y1 + y2) / 2;
      wires.append(svg("g", {class: "wire", "data-from": edge.from, "data-to": edge.to},
        svg("path", {d: `M${x1},${y1} C${x1 + bend},${y1} ${x2 - bend},${y2} ${x2},${y2}`}),
        svg("text", {x: mx, y: my - 4, class: "wire-label"},
          svg("tspan", {x: mx, dy: 0, text: ports}),
          type === undefined ? null : svg("tspan", {x: mx, dy: 12, class: "wire-type", text: type}))));
    }

    const nodeParts = new Map();
    for (const [id, it] of items) {
      const [w, h] = it.size;
      if (it.kind === "node") {
        const lines = [0, 1, 2].map((i) => svg("text", {x: it.x + 10, y: it.y + 54 + i * 15, class: i ? "stat" : "state-text"}));
        const tip = svg("title", {text: id});
        const group = svg("g", {class: "node state-unknown", "data-node": id, "data-state": "unknown"},
          tip,
          svg("rect", {x: it.x, y: it.y, width: w, height: h, rx: 8}),
          svg("text", {x: it.x + 10, y: it.y + 19, class: "node-id", text: id}),
          svg("text", {x: it.x + 10, y: it.y + 35, class: "node-family", text: it.data.label}),
          lines);
        cards.append(group);
        nodeParts.set(id, {group, lines, tip});
      } else {
        cards.append(svg("g", {class: "io " + it.kind, "data-io": id},
          svg("rect", {x: it.x, y: it.y, width: w, height: h, rx: it.kind === "input" ? 4 : 14}),
          svg("text", {x: it.x + w / 2, y: it.y + 18, class: "io-name", text: it.data.name}),
          svg("text", {x: it.x + w / 2, y: it.y + 34, class: "io-type", text: it.data.type})));
      }
    }
    clear(container).append(root);

    return {
      setNode(id, state, lines, tooltip) {
        const parts = nodeParts.get(id);
        if (!parts) return;
        parts.group.setAttribute("class", "node state-" + state);
        parts.group.setAttribute("data-state", state);
        parts.lines.forEach((line, i) => { line.textContent = (lines || [])[i] || ""; });
        parts.tip.textContent = tooltip || id;
      },
    };
  }

  // -- values and timings -----------------------------------------------------------------

  const IMAGE_KINDS = new Set(["image", "mask", "depth_map", "segmentation_map", "bytes"]);
  const BASE64 = /^[A-Za-z0-9+/]+={0,2}$/;
  const DATA_URL = /^data:image\/(png|jpeg|webp);base64,([A-Za-z0-9+/]+={0,2})$/;

  /** A base64 PNG/JPEG/WebP (or such a `data:` URL) as a data URL; null for anything else. */
  function imageUrl(text) {
    if (typeof text !== "string") return null;
    if (DATA_URL.test(text)) return text;
    if (!BASE64.test(text)) return null;
    const mime = text.startsWith("iVBOR") ? "png" : text.startsWith("/9j/") ? "jpeg" : text.startsWith("UklGR") ? "webp" : null;
    return mime ? `data:image/${mime};base64,${text}` : null;
  }

  const VIDEO_URL = /^data:video\/mp4;base64,([A-Za-z0-9+/]+={0,2})$/;

  /** A base64 MP4 (or such a `data:` URL) as a data URL; null for anything else. */
  function videoUrl(text) {
    if (typeof text !== "string") return null;
    if (VIDEO_URL.test(text)) return text;
    return BASE64.test(text) ? `data:video/mp4;base64,${text}` : null;
  }

  /** One input or output value as the page shows it: images as <img>, videos as <video>, the rest as text. */
  function valueView(name, kind, value) {
    if (kind === "video") {
      const url = videoUrl(value);
      if (url) return el("video", {src: url, class: "shot", controls: "", loop: "", autoplay: "", muted: "",
        playsinline: "", "data-output": name});
    }
    if (IMAGE_KINDS.has(kind)) {
      const url = imageUrl(value);
      if (url) return el("img", {src: url, alt: name, class: "shot", "data-output": name});
    }
    if (kind === "masks" && value && Array.isArray(value.masks)) {
      return el("div", {class: "masks"}, value.masks.map((m, i) => el("figure", {},
        imageUrl(m) ? el("img", {src: imageUrl(m), alt: `${name} ${i}`, class: "shot small"}) : null,
        el("figcaption", {text: `score ${num((value.scores || [])[i], 3)}`}))));
    }
    const text = typeof value === "string" ? value : JSON.stringify(value, null, 1);
    return el("pre", {class: "value", text: text.length > 4000 ? text.slice(0, 4000) + " …" : text});
  }

  /** A frame's timings: each node's ms (a bar against the total), its queue wait and batch size. */
  function timingsView(order, timings, batches) {
    const total = Number(timings.total) || Math.max(1, ...order.map((n) => Number(timings[n]) || 0));
    const rows = order.filter((n) => timings[n] !== undefined).map((n) => el("tr", {"data-timing": n},
      el("td", {text: n}),
      el("td", {class: "num", text: num(timings[n])}),
      el("td", {}, el("meter", {min: 0, max: total, value: Number(timings[n]) || 0})),
      el("td", {class: "num", text: timings[n + ".queue"] === undefined ? "" : num(timings[n + ".queue"])}),
      el("td", {class: "num", text: (batches || {})[n] === undefined ? "" : String(batches[n])})));
    return el("table", {class: "grid timings"},
      el("thead", {}, el("tr", {}, ["node", "ms", "", "queue ms", "batch"].map((h) => el("th", {text: h})))),
      el("tbody", {}, rows,
        timings.total === undefined ? null : el("tr", {class: "total"}, el("td", {text: "total"}),
          el("td", {class: "num", text: num(timings.total)}), el("td"), el("td"), el("td"))));
  }

  return {el, svg, clear, num, drawPicture, imageUrl, valueView, timingsView};
})();

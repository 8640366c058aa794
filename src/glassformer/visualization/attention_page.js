// glassformer attention page: a head view (lines between tokens) and a model view (every layer x head).
// Plain SVG and canvas; the weights are embedded below as base64 bytes, weight = byte / 255.
"use strict";
(function () {
  const DATA = JSON.parse(document.getElementById("attention-data").textContent);
  const COLORS = ["#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd", "#8c564b", "#e377c2", "#7f7f7f",
    "#bcbd22", "#17becf", "#393b79", "#637939", "#8c6d31", "#843c39", "#7b4173", "#3182bd"];
  const ROW = 18, COLUMN = 150, GAP = 160, CELL = 84, ZOOM = 560;
  const SVG = "http://www.w3.org/2000/svg";
  const state = { view: 0, layer: 0, heads: new Set() };
  const bytes = new Map(); // view index -> Uint8Array, decoded on first use

  function color(head) { return COLORS[head % COLORS.length]; }
  function weights(v) {
    if (!bytes.has(v)) {
      const text = atob(DATA.views[v].weights);
      const array = new Uint8Array(text.length);
      for (let i = 0; i < text.length; i++) array[i] = text.charCodeAt(i);
      bytes.set(v, array);
    }
    return bytes.get(v);
  }
  // weight of query i to key j in (layer, head) of view v, as a byte 0..255
  function level(v, layer, head, i, j) {
    const view = DATA.views[v], q = view.queries.length, k = view.keys.length;
    return weights(v)[((layer * view.heads + head) * q + i) * k + j];
  }

  // --- controls ---------------------------------------------------------------------------------------------
  const viewSelect = document.getElementById("view-select");
  const layerSelect = document.getElementById("layer-select");
  const headBox = document.getElementById("heads");
  DATA.views.forEach((view, v) => viewSelect.add(new Option(view.label, String(v))));
  viewSelect.parentElement.style.display = DATA.views.length > 1 ? "" : "none";

  function buildControls() {
    const view = DATA.views[state.view];
    layerSelect.innerHTML = "";
    for (let l = 0; l < view.layers; l++) layerSelect.add(new Option(`layer ${l}`, String(l)));
    state.layer = Math.min(state.layer, view.layers - 1);
    layerSelect.value = String(state.layer);
    headBox.innerHTML = "";
    state.heads = new Set(view.queries.length <= DATA.allHeadsUpTo ? [...Array(view.heads).keys()] : [0]);
    for (let h = 0; h < view.heads; h++) {
      const label = document.createElement("label");
      label.className = "head-toggle";
      label.innerHTML = `<input type="checkbox" data-head="${h}"><span class="swatch" style="background:${color(h)}"></span>${h}`;
      const box = label.querySelector("input");
      box.checked = state.heads.has(h);
      box.addEventListener("change", () => {
        if (box.checked) state.heads.add(h); else state.heads.delete(h);
        drawHeadView();
      });
      headBox.appendChild(label);
    }
  }
  function setAllHeads(on) {
    headBox.querySelectorAll("input").forEach((box) => {
      box.checked = on;
      const h = Number(box.dataset.head);
      if (on) state.heads.add(h); else state.heads.delete(h);
    });
    drawHeadView();
  }
  document.getElementById("all-heads").addEventListener("click", () => setAllHeads(true));
  document.getElementById("no-heads").addEventListener("click", () => setAllHeads(false));
  viewSelect.addEventListener("change", () => { state.view = Number(viewSelect.value); buildControls(); drawAll(); });
  layerSelect.addEventListener("change", () => { state.layer = Number(layerSelect.value); drawHeadView(); });

  // --- head view: queries on the left, keys on the right, one line per weight above the threshold ---------------
  const svg = document.getElementById("head-view");
  function tokenColumn(tokens, special, x, anchor, side) {
    const group = document.createElementNS(SVG, "g");
    tokens.forEach((token, i) => {
      const text = document.createElementNS(SVG, "text");
      text.setAttribute("x", x);
      text.setAttribute("y", (i + 1) * ROW - 5);
      text.setAttribute("text-anchor", anchor);
      text.setAttribute("class", `token ${side}` + (special[i] ? " special" : ""));
      text.dataset.index = i;
      text.textContent = token;
      text.addEventListener("mouseenter", () => focus(side, i, text));
      text.addEventListener("mouseleave", () => unfocus(text));
      group.appendChild(text);
    });
    return group;
  }
  function focus(side, i, text) {
    const attribute = side === "left" ? "query" : "key";
    svg.querySelectorAll("line").forEach((line) => line.classList.toggle("active", line.dataset[attribute] === String(i)));
    svg.classList.add("focus");
    text.classList.add("hovered");
  }
  function unfocus(text) {
    svg.classList.remove("focus");
    text.classList.remove("hovered");
  }
  function drawHeadView() {
    const v = state.view, view = DATA.views[v], q = view.queries.length, k = view.keys.length;
    svg.innerHTML = "";
    svg.setAttribute("width", 2 * COLUMN + GAP);
    svg.setAttribute("height", Math.max(q, k) * ROW + 4);
    const lines = document.createElementNS(SVG, "g");
    lines.setAttribute("id", "lines");
    for (const h of [...state.heads].sort((a, b) => a - b)) {
      for (let i = 0; i < q; i++) {
        for (let j = 0; j < k; j++) {
          const byte = level(v, state.layer, h, i, j);
          if (byte < DATA.minLevel) continue;
          const line = document.createElementNS(SVG, "line");
          line.setAttribute("x1", COLUMN + 4);
          line.setAttribute("y1", (i + 0.5) * ROW);
          line.setAttribute("x2", COLUMN + GAP - 4);
          line.setAttribute("y2", (j + 0.5) * ROW);
          line.setAttribute("stroke", color(h));
          line.setAttribute("stroke-opacity", (byte / 255).toFixed(4));
          line.dataset.head = h;
          line.dataset.query = i;
          line.dataset.key = j;
          lines.appendChild(line);
        }
      }
    }
    svg.appendChild(lines);
    svg.appendChild(tokenColumn(view.queries, view.specialQueries, COLUMN, "end", "left"));
    svg.appendChild(tokenColumn(view.keys, view.specialKeys, COLUMN + GAP, "start", "right"));
  }

  // --- model view: every layer x head as a small picture, drawn when it scrolls into sight ----------------------
  const grid = document.getElementById("model-view");
  const zoom = document.getElementById("zoom");
  function paint(canvas, v, layer, head) {
    const view = DATA.views[v], q = view.queries.length, k = view.keys.length;
    const source = document.createElement("canvas");
    source.width = k;
    source.height = q;
    const context = source.getContext("2d"), image = context.createImageData(k, q);
    const rgb = [1, 3, 5].map((o) => parseInt(color(head).substr(o, 2), 16));
    for (let i = 0; i < q; i++) {
      for (let j = 0; j < k; j++) {
        const p = 4 * (i * k + j);
        image.data[p] = rgb[0]; image.data[p + 1] = rgb[1]; image.data[p + 2] = rgb[2];
        image.data[p + 3] = level(v, layer, head, i, j);
      }
    }
    context.putImageData(image, 0, 0);
    const target = canvas.getContext("2d");
    target.imageSmoothingEnabled = false;
    target.clearRect(0, 0, canvas.width, canvas.height);
    target.drawImage(source, 0, 0, canvas.width, canvas.height);
    canvas.dataset.drawn = "true";
  }
  const observer = new IntersectionObserver((entries) => {
    for (const entry of entries) {
      if (!entry.isIntersecting) continue;
      const c = entry.target;
      paint(c, state.view, Number(c.dataset.layer), Number(c.dataset.head));
      observer.unobserve(c);
    }
  });
  function drawModelView() {
    observer.disconnect();
    const view = DATA.views[state.view];
    grid.innerHTML = "";
    grid.style.gridTemplateColumns = `auto repeat(${view.heads}, ${CELL + 2}px)`;
    grid.appendChild(document.createElement("span"));
    for (let h = 0; h < view.heads; h++) {
      const label = document.createElement("span");
      label.className = "label col-label";
      label.textContent = `head ${h}`;
      grid.appendChild(label);
    }
    for (let l = 0; l < view.layers; l++) {
      const label = document.createElement("span");
      label.className = "label";
      label.textContent = `layer ${l}`;
      grid.appendChild(label);
      for (let h = 0; h < view.heads; h++) {
        const canvas = document.createElement("canvas");
        canvas.className = "cell";
        canvas.width = CELL;
        canvas.height = CELL;
        canvas.dataset.layer = l;
        canvas.dataset.head = h;
        canvas.title = `layer ${l}, head ${h}: click to enlarge`;
        canvas.addEventListener("click", () => enlarge(l, h));
        grid.appendChild(canvas);
        observer.observe(canvas);
      }
    }
  }
  function enlarge(layer, head) {
    // the picture with the query tokens down its left side and the key tokens along its top
    const canvas = zoom.querySelector("canvas");
    const view = DATA.views[state.view], q = view.queries.length, k = view.keys.length;
    const scale = ZOOM / Math.max(q, k), margin = scale >= 6 ? 110 : 0;
    const picture = document.createElement("canvas");
    picture.width = Math.round(k * scale);
    picture.height = Math.round(q * scale);
    paint(picture, state.view, layer, head);
    canvas.width = picture.width + margin;
    canvas.height = picture.height + margin;
    const context = canvas.getContext("2d");
    context.clearRect(0, 0, canvas.width, canvas.height);
    context.drawImage(picture, margin, margin);
    if (margin) {
      context.font = `${Math.min(13, Math.floor(scale) - 1)}px ui-monospace, monospace`;
      context.fillStyle = "#333";
      context.textBaseline = "middle";
      context.textAlign = "right";
      view.queries.forEach((token, i) => context.fillText(token.slice(0, 14), margin - 4, margin + (i + 0.5) * scale));
      context.textAlign = "left";
      view.keys.forEach((token, j) => {
        context.save();
        context.translate(margin + (j + 0.5) * scale, margin - 4);
        context.rotate(-Math.PI / 2);
        context.fillText(token.slice(0, 14), 0, 0);
        context.restore();
      });
    }
    zoom.querySelector(".caption").textContent = `${view.label}: layer ${layer}, head ${head} (rows: queries, columns: keys)`;
    zoom.dataset.layer = layer;
    zoom.dataset.head = head;
    zoom.classList.add("open");
  }
  zoom.addEventListener("click", () => zoom.classList.remove("open"));
  document.addEventListener("keydown", (event) => { if (event.key === "Escape") zoom.classList.remove("open"); });

  function drawAll() { drawHeadView(); drawModelView(); }
  // the sections this page shows: both by default; head_view / model_view in a notebook ask for one
  for (const section of ["head", "model"]) {
    if (!(DATA.show || ["head", "model"]).includes(section)) document.getElementById(section + "-section").hidden = true;
  }
  buildControls();
  drawAll();
  document.body.dataset.ready = "true";
})();

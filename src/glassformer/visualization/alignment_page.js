// glassformer alignment page: cross-attention of a translation as a table (target rows x source columns), the
// beam's finished hypotheses, and at each target step the tokens the model considered. Weight = byte / 255.
"use strict";
(function () {
  const DATA = JSON.parse(document.getElementById("alignment-data").textContent);
  const state = { sentence: 0, hypothesis: 0, layer: -1, head: -1 };  // -1: the mean over layers / heads
  const $ = (id) => document.getElementById(id);

  function decode(b64) {
    const text = atob(b64), out = new Uint8Array(text.length);
    for (let i = 0; i < text.length; i++) out[i] = text.charCodeAt(i);
    return out;
  }
  function option(select, value, label) {
    const o = document.createElement("option");
    o.value = String(value); o.textContent = label; select.appendChild(o);
  }
  function sentence() { return DATA.sentences[state.sentence]; }
  function hypothesis() { return sentence().hypotheses[state.hypothesis]; }

  // the weight of target t on source s for the chosen layer and head, averaged where "mean" is chosen
  function matrix(h, sources) {
    if (!h.bytes) h.bytes = decode(h.weights);
    const targets = h.targetTokens.length, layers = state.layer < 0 ? [...Array(h.layers).keys()] : [state.layer];
    const heads = state.head < 0 ? [...Array(h.heads).keys()] : [state.head];
    const m = [];
    for (let t = 0; t < targets; t++) {
      const row = new Array(sources).fill(0);
      for (const l of layers) for (const k of heads) {
        const base = ((l * h.heads + k) * targets + t) * sources;
        for (let s = 0; s < sources; s++) row[s] += h.bytes[base + s] / 255;
      }
      m.push(row.map((w) => w / (layers.length * heads.length)));
    }
    return m;
  }

  function buildControls() {
    const s = sentence(), h = s.hypotheses[0];
    const sentenceSelect = $("sentence-select");
    if (!sentenceSelect.options.length) DATA.sentences.forEach((x, i) => option(sentenceSelect, i, (i + 1) + ": " + x.source.slice(0, 50)));
    sentenceSelect.parentElement.hidden = DATA.sentences.length < 2;
    for (const [id, count, what] of [["layer-select", h.layers, "layer"], ["head-select", h.heads, "head"]]) {
      const select = $(id);
      select.textContent = "";
      option(select, -1, "mean of all " + what + "s");
      for (let i = 0; i < count; i++) option(select, i, what + " " + i);
      select.value = String(what === "layer" ? state.layer : state.head);
    }
    $("length-penalty").textContent = String(s.lengthPenalty);
  }

  function drawHypotheses() {
    const body = $("hypotheses").tBodies[0];
    body.textContent = "";
    sentence().hypotheses.forEach((h, i) => {
      const tr = body.insertRow();
      tr.className = i === state.hypothesis ? "selected" : "";
      for (const text of [String(i + 1), h.score.toFixed(3), h.logProbability.toFixed(2), h.text]) tr.insertCell().textContent = text;
      tr.addEventListener("click", () => { state.hypothesis = i; drawHypotheses(); drawAlignment(); });
    });
  }

  function drawAlignment() {
    const s = sentence(), h = hypothesis(), table = $("alignment");
    const m = matrix(h, s.sourceTokens.length);
    const head = table.tHead, body = table.tBodies[0];
    head.textContent = ""; body.textContent = "";
    const top = head.insertRow();
    top.appendChild(document.createElement("th"));
    s.sourceTokens.forEach((token, j) => {
      const th = document.createElement("th");
      th.textContent = token;
      if (s.specialSources[j]) th.className = "special";
      top.appendChild(th);
    });
    h.targetTokens.forEach((token, t) => {
      const tr = body.insertRow();
      const th = document.createElement("th");
      th.textContent = token;
      if (h.specialTargets[t]) th.className = "special";
      tr.appendChild(th);
      m[t].forEach((w, j) => {
        const td = tr.insertCell();
        td.dataset.weight = w.toFixed(3);
        td.style.background = "rgba(31, 119, 180, " + w.toFixed(3) + ")";
        td.title = token + " → " + s.sourceTokens[j] + ": " + w.toFixed(3);
      });
      tr.addEventListener("mouseenter", () => { tr.classList.add("hovered"); showAlternatives(t); });
      tr.addEventListener("mouseleave", () => tr.classList.remove("hovered"));
    });
  }

  function showAlternatives(t) {
    const h = hypothesis(), box = $("alternatives");
    box.textContent = "";
    const title = document.createElement("p");
    title.textContent = "step " + (t + 1) + ": wrote " + h.targetTokens[t] + " (p = " + h.probabilities[t].toFixed(3) + "); the model's top tokens:";
    box.appendChild(title);
    for (const [token, p] of h.alternatives[t]) {
      const row = document.createElement("div");
      if (token === h.targetTokens[t]) row.className = "chosen";
      const bar = document.createElement("span");
      bar.className = "bar"; bar.style.width = Math.round(160 * p) + "px";
      row.appendChild(bar);
      row.appendChild(document.createTextNode(p.toFixed(3) + "  " + token));
      box.appendChild(row);
    }
    box.dataset.step = String(t);
  }

  $("sentence-select").addEventListener("change", (e) => {
    state.sentence = Number(e.target.value); state.hypothesis = 0; buildControls(); drawHypotheses(); drawAlignment();
  });
  $("layer-select").addEventListener("change", (e) => { state.layer = Number(e.target.value); drawAlignment(); });
  $("head-select").addEventListener("change", (e) => { state.head = Number(e.target.value); drawAlignment(); });
  buildControls();
  drawHypotheses();
  drawAlignment();
  document.body.dataset.ready = "true";
})();

/* The rsmi-nn report's dashboard: variable cards with search, filters, sort and paging, and the graph view.
   Reads the JSON in <script id="rsmi-data"> (layout: rsmi_nn/app/report_data.py). No network, no libraries. */
(function () {
  "use strict";
  const D = JSON.parse(document.getElementById("rsmi-data").textContent);
  const PAGE = D.page_size || 24;
  const PALETTE = ["#e6194b", "#3cb44b", "#4363d8", "#f58231", "#911eb4", "#42d4f4", "#f032e6", "#bfef45",
    "#469990", "#9a6324", "#800000", "#808000", "#000075", "#fabed4", "#ffd8b1", "#aaffc3", "#dcbeff",
    "#a9a9a9", "#ffe119", "#2f4f4f", "#ff7f50", "#6b8e23", "#c71585", "#1e90ff"];
  const $ = (id) => document.getElementById(id);
  const esc = (s) => String(s).replace(/[&<>"']/g, (c) =>
    ({ "&": "&amp;", "<": "&lt;", ">": "&gt;", '"': "&quot;", "'": "&#39;" })[c]);
  const fmt = (x, d) => (x === null || x === undefined || !isFinite(x)) ? "–" :
    (Math.abs(x) >= 1e-3 || x === 0 ? String(Number(x.toPrecision(d || 3))) : x.toExponential(1));
  const unitName = (u) => {
    if (u < 0 || u >= D.units.names.length) return "?";
    const p = D.units.names[u], pre = D.units.prefixes[p[0]];
    return pre ? pre + ":" + p[1] : p[1];
  };
  const byNumber = {};
  D.levels.forEach((lv, i) => { byNumber[lv.level] = i; });
  const link = (level, v, text) => byNumber[level] === undefined ? esc(text) :
    `<a href="#v${level}-${v}">${esc(text)}</a>`;

  /* ---------- examples ---------- */
  function exToken(ex) {
    if (ex.length === 5) { const t = D.inputs[ex[1]]; return t ? (t[ex[2] + ex[3]] || "") : ""; }
    if (typeof ex[1] === "string" && ex[1].indexOf("[[") >= 0) {
      const m = /\[\[(.*?)\]\]/.exec(ex[1]); return m ? m[1] : "";
    }
    return "";
  }
  function shade(q) {
    const a = Math.min(1, Math.abs(q) / 100) * 0.85;
    return q >= 0 ? `rgba(255,128,0,${a.toFixed(2)})` : `rgba(40,110,255,${a.toFixed(2)})`;
  }
  function textExample(lv, v, ex) {
    const val = `<span class="val" title="value of the variable on the marked token">${fmt(ex[0])}</span>`;
    if (ex.length === 5) {
      const toks = D.inputs[ex[1]] || [], q = ex[4], scale = lv.scale[v];
      let html = "";
      for (let i = 0; i < q.length; i++) {
        const t = toks[ex[2] + i] || "", f = i === ex[3] ? " f" : "";
        html += `<span class="tok${f}" style="background:${shade(q[i])}" title="${esc(t.trim())}: ` +
          `${fmt(q[i] / 100 * scale, 2)}">${esc(t)}</span>`;
      }
      return `<div class="ex">${val}${html}</div>`;
    }
    if (typeof ex[1] === "string" && lv.picture === null) {
      const s = esc(ex[1]).replace(/\[\[(.*?)\]\]/, "<mark>$1</mark>");
      return `<div class="ex">${val}${s}</div>`;
    }
    return "";
  }
  function pictures(lv, list, label) {
    if (!list.length) return "";
    const shape = lv.picture.join(",");
    const items = list.map((ex) => `<span class="pic"><canvas data-pic="${ex[1]}" data-shape="${shape}">` +
      `</canvas><br>${fmt(ex[0])}</span>`).join("");
    return `<div class="sec">${label} (value under each)</div><div class="pics">${items}</div>`;
  }
  function examples(lv, v, which, label) {
    const list = (lv[which] || [])[v] || [];
    if (!list.length) return "";
    if (lv.picture) return pictures(lv, list, label);
    return `<div class="sec">${label}</div>` + list.map((ex) => textExample(lv, v, ex)).join("");
  }
  function drawCanvases(root) {
    root.querySelectorAll("canvas[data-pic]").forEach((c) => {
      const shape = c.dataset.shape.split(",").map(Number), h = shape[0], w = shape[1], rgb = shape.length === 3;
      const raw = atob(c.dataset.pic), zoom = Math.max(2, Math.floor(72 / Math.max(h, w)));
      c.width = w * zoom; c.height = h * zoom;
      const ctx = c.getContext("2d"), img = ctx.createImageData(w, h);
      for (let i = 0; i < h * w; i++) {
        const r = rgb ? raw.charCodeAt(3 * i) : 255 - raw.charCodeAt(i);
        img.data[4 * i] = r;
        img.data[4 * i + 1] = rgb ? raw.charCodeAt(3 * i + 1) : r;
        img.data[4 * i + 2] = rgb ? raw.charCodeAt(3 * i + 2) : r;
        img.data[4 * i + 3] = 255;
      }
      const tmp = document.createElement("canvas"); tmp.width = w; tmp.height = h;
      tmp.getContext("2d").putImageData(img, 0, 0);
      ctx.imageSmoothingEnabled = false; ctx.drawImage(tmp, 0, 0, w * zoom, h * zoom);
    });
    root.querySelectorAll("canvas[data-lat]").forEach((c) => {
      const L = Number(c.dataset.side), raw = atob(c.dataset.lat), zoom = Math.max(2, Math.floor(150 / L));
      c.width = L * zoom; c.height = L * zoom;
      const ctx = c.getContext("2d");
      for (let i = 0; i < L * L; i++) {
        let q = raw.charCodeAt(i); if (q > 127) q -= 256;
        const a = Math.abs(q) / 127, r = q >= 0 ? 255 : Math.round(255 * (1 - a)), b = q >= 0 ? Math.round(255 * (1 - a)) : 255;
        ctx.fillStyle = `rgb(${r},${Math.round(255 * (1 - a))},${b})`;
        ctx.fillRect((i % L) * zoom, Math.floor(i / L) * zoom, zoom, zoom);
      }
    });
  }

  /* ---------- one card ---------- */
  function histogram(lv, v) {
    const h = lv.hist[v]; if (!h || !h[2].length) return "";
    const [lo, hi, counts] = h, W = 320, H = 64, n = counts.length, max = Math.max(...counts, 1);
    let bars = "";
    counts.forEach((c, i) => {
      const bh = c ? Math.max(1, Math.round((H - 4) * c / max)) : 0;
      bars += `<rect x="${(i * W / n).toFixed(1)}" y="${H - bh}" width="${(W / n - 1).toFixed(1)}" ` +
        `height="${bh}" fill="#6a8fd0"><title>${fmt(lo + i * (hi - lo) / n)} to ${fmt(lo + (i + 1) * (hi - lo) / n)}: ${c} samples</title></rect>`;
    });
    let zero = "";
    if (lo < 0 && hi > 0) { const x = (W * (-lo) / (hi - lo)).toFixed(1); zero = `<line x1="${x}" x2="${x}" y1="0" y2="${H}" stroke="#999" stroke-dasharray="2,2"/>`; }
    return `<div class="sec">activation histogram <span class="note">(all ${counts.reduce((a, b) => a + b, 0)} samples; tallest bar ${max})</span></div>` +
      `<svg class="hist" width="${W}" height="${H + 14}" role="img" aria-label="histogram of the variable's values">` +
      `${bars}${zero}<text x="0" y="${H + 12}" font-size="10">${fmt(lo)}</text>` +
      `<text x="${W}" y="${H + 12}" font-size="10" text-anchor="end">${fmt(hi)}</text></svg>`;
  }
  function relatives(lv, li, v) {
    const parts = [], b = Math.floor(v / lv.hidden), par = lv.parents[v] || [], ch = lv.children[v] || [];
    parts.push(`block <a href="#b${lv.level}-${b}">${b}</a> of ${ch.length} unit(s)`);
    if (par.length) parts.push("parent: " + par.map((p) => link(lv.level + 1, p, `level ${lv.level + 1} · variable ${p}`)).join(", "));
    else parts.push(li + 1 < D.levels.length ? "parent: none (dropped by the next graph)" : "parent: none (top level)");
    if (li > 0) parts.push("children: " + ch.map((c) => link(lv.level - 1, c, `v${c}`)).join(" "));
    else parts.push("children (level-0 units): <span class='mono'>" + ch.slice(0, 12).map((u) => esc(unitName(u))).join(", ") +
      (ch.length > 12 ? ", …" : "") + "</span>");
    return `<div class="rel">${parts.join(" · ")}</div>`;
  }
  function card(li, v, focus) {
    const lv = D.levels[li], b = Math.floor(v / lv.hidden);
    const comp = lv.hidden > 1 ? `, component ${v % lv.hidden}` : "";
    const se = lv.se ? ` ± ${fmt(lv.se[v], 2)}` : "";
    const eff = lv.effect ? ` · output effect ${fmt(lv.effect[v])}` : "";
    const units = (lv.units[v] || []).map(([u, w]) =>
      `<li><span class="mono">${esc(unitName(u))}</span> <span class="${w >= 0 ? "pos" : "neg"}">${w >= 0 ? "+" : ""}${fmt(w)}</span></li>`).join("");
    const lat = lv.lattice ? `<div class="sec">weights on the level-0 lattice (red +, blue −)</div>` +
      `<canvas data-lat="${lv.lattice.weights[v]}" data-side="${lv.lattice.side}"></canvas>` : "";
    const id = focus ? ` id="v${lv.level}-${v}"` : "";
    return `<div class="card${focus ? " wide" : ""}" data-key="${lv.level}-${v}"${id}>` +
      `<h3><a href="#v${lv.level}-${v}">level ${lv.level} · variable ${v}</a> <span class="note">(block ${b}${comp})</span></h3>` +
      `<div>I(H;E) = <b>${fmt(lv.mi[v])}</b>${se} nats${eff}</div>` + relatives(lv, li, v) + histogram(lv, v) +
      examples(lv, v, "top", "top examples") + examples(lv, v, "bottom", "bottom examples") +
      `<div class="sec">top level-0 units (composed weight)</div><ol>${units}</ol>` + lat + `</div>`;
  }

  /* ---------- the list: search, filter, sort, pages ---------- */
  const VARS = [];
  D.levels.forEach((lv, li) => {
    for (let v = 0; v < lv.mi.length; v++) {
      const toks = [].concat((lv.top[v] || []).map(exToken), (lv.bottom[v] || []).map(exToken));
      const names = (lv.units[v] || []).map((p) => unitName(p[0]));
      VARS.push({ li, v, mi: lv.mi[v], effect: lv.effect ? lv.effect[v] : null,
        search: (toks.map((t) => t.trim()).join(" | ") + " | " + names.join(" | ")).toLowerCase() });
    }
  });
  let page = 0;
  function matches() {
    const terms = $("search").value.toLowerCase().split(/\s+/).filter(Boolean);
    const level = $("level").value, minMi = parseFloat($("min-mi").value);
    let out = VARS.filter((x) => (level === "all" || String(D.levels[x.li].level) === level) &&
      (!isFinite(minMi) || x.mi >= minMi) && terms.every((t) => x.search.indexOf(t) >= 0));
    const key = $("sort").value, num = (x) => (x === null || !isFinite(x)) ? -Infinity : x;
    const cmp = {
      "mi": (a, b) => num(b.mi) - num(a.mi), "mi-asc": (a, b) => num(a.mi) - num(b.mi),
      "effect": (a, b) => num(b.effect) - num(a.effect), "index": (a, b) => a.li - b.li || a.v - b.v,
    }[key];
    out = out.slice().sort((a, b) => cmp(a, b) || a.li - b.li || a.v - b.v);
    return out;
  }
  function render() {
    const list = matches(), pages = Math.max(1, Math.ceil(list.length / PAGE));
    page = Math.min(page, pages - 1);
    const shown = list.slice(page * PAGE, (page + 1) * PAGE);
    $("cards").innerHTML = shown.map((x) => card(x.li, x.v, false)).join("");
    $("count").textContent = `${list.length} of ${VARS.length} variables match · page ${page + 1} of ${pages}`;
    $("prev").disabled = page === 0; $("next").disabled = page >= pages - 1;
    drawCanvases($("cards"));
  }
  ["search", "level", "sort", "min-mi"].forEach((id) => $(id).addEventListener("input", () => { page = 0; render(); }));
  $("prev").addEventListener("click", () => { page -= 1; render(); });
  $("next").addEventListener("click", () => { page += 1; render(); });

  /* ---------- the graph view: quotient graph per level, zoom into one block ---------- */
  let gLevel = 0;
  function quotientSvg(li) {
    const g = D.levels[li].graph, S = 560, pad = 12, sc = (S - 2 * pad) / 1000, xy = g.xy;
    const sizes = new Array(xy.length).fill(0); g.blocks.forEach((b) => { sizes[b] += 1; });
    const r = Math.max(1.5, Math.min(9, 110 / Math.sqrt(xy.length)));
    let s = `<svg width="${S}" height="${S}" role="img" aria-label="quotient graph of level ${D.levels[li].level}">`;
    g.edges.forEach(([a, b, w]) => {
      s += `<line x1="${pad + xy[a][0] * sc}" y1="${pad + xy[a][1] * sc}" x2="${pad + xy[b][0] * sc}" ` +
        `y2="${pad + xy[b][1] * sc}" stroke="#888" stroke-opacity="${(0.25 + 0.6 * w / 100).toFixed(2)}" stroke-width="${(0.4 + 1.6 * w / 100).toFixed(2)}"/>`;
    });
    xy.forEach((p, b) => {
      s += `<a href="#b${D.levels[li].level}-${b}"><circle cx="${pad + p[0] * sc}" cy="${pad + p[1] * sc}" ` +
        `r="${(r * Math.sqrt(Math.max(sizes[b], 1) / 8)).toFixed(1)}" fill="${PALETTE[g.colour[b] % PALETTE.length]}" stroke="#333" stroke-width="0.3">` +
        `<title>block ${b}: ${sizes[b]} units</title></circle></a>`;
    });
    return s + "</svg>";
  }
  function zoomSvg(li, block) {
    const lv = D.levels[li], g = lv.graph, S = 420, c = S / 2;
    const inner = []; g.blocks.forEach((b, u) => { if (b === block) inner.push(u); });
    const seen = new Set(inner), outer = [];
    inner.forEach((u) => (g.nbrs[u] || []).forEach((n) => { if (!seen.has(n) && outer.length < 48) { seen.add(n); outer.push(n); } }));
    const pos = {};
    inner.forEach((u, i) => { const t = 2 * Math.PI * i / inner.length; pos[u] = [c + 70 * Math.cos(t), c + 70 * Math.sin(t)]; });
    outer.forEach((u, i) => { const t = 2 * Math.PI * i / Math.max(outer.length, 1); pos[u] = [c + 170 * Math.cos(t), c + 170 * Math.sin(t)]; });
    let s = `<svg width="${S}" height="${S}" role="img" aria-label="block ${block} and its neighbours">`;
    Object.keys(pos).forEach((u) => (g.nbrs[u] || []).forEach((n) => {
      if (pos[n] && (seen.has(Number(u)))) s += `<line x1="${pos[u][0]}" y1="${pos[u][1]}" x2="${pos[n][0]}" y2="${pos[n][1]}" stroke="#999" stroke-opacity="0.5"/>`;
    }));
    const label = (u) => li > 0 ? `v${g.cols[u]}` : unitName(u);
    Object.keys(pos).forEach((key) => {
      const u = Number(key), b = g.blocks[u], href = li > 0 ? `#v${lv.level - 1}-${g.cols[u]}` : `#b${lv.level}-${b}`;
      s += `<a href="${href}"><circle cx="${pos[u][0]}" cy="${pos[u][1]}" r="${b === block ? 7 : 5}" fill="${PALETTE[g.colour[b] % PALETTE.length]}" stroke="#222" stroke-width="${b === block ? 1.5 : 0.4}">` +
        `<title>${esc(label(u))} (block ${b})</title></circle></a>`;
    });
    return s + "</svg>";
  }
  function showGraph(li, block) {
    gLevel = li;
    document.querySelectorAll("#graph-tabs button").forEach((b, i) => b.classList.toggle("on", i === li));
    $("graph-main").innerHTML = quotientSvg(li);
    const lv = D.levels[li], g = lv.graph;
    $("graph-note").innerHTML = `level ${lv.level}: ${lv.num_units} units in ${lv.num_blocks} blocks; drawn: the ` +
      `${g.edges.length} strongest of ${g.num_quotient_edges} block-to-block edges (up to 3 per block). ` +
      `Adjacent blocks have different colours. Click a block to zoom into its units and their neighbours.`;
    if (block === undefined) { $("graph-zoom").innerHTML = ""; return; }
    const vars = [];
    for (let c = 0; c < lv.hidden; c++) vars.push(block * lv.hidden + c);
    const par = lv.parents[vars[0]] || [];
    const up = par.length && li + 1 < D.levels.length ? ` · at level ${lv.level + 1} it is a unit of <a href="#b${lv.level + 1}-${Math.floor(par[0] / D.levels[li + 1].hidden)}">block ${Math.floor(par[0] / D.levels[li + 1].hidden)}</a>` : "";
    const down = li > 0 ? " · its units are level-" + (lv.level - 1) + " variables (click one to open its card)" : "";
    $("graph-zoom").innerHTML = `<div><b>level ${lv.level}, block ${block}</b>: variable ` +
      vars.map((v) => link(lv.level, v, String(v))).join(", ") + up + down +
      `<br><span class="note">inner ring: the block's units; outer ring: their strongest neighbours, coloured by block</span></div>` +
      zoomSvg(li, block);
  }
  $("graph-tabs").innerHTML = D.levels.map((lv, i) => `<button type="button">level ${lv.level}</button>`).join("");
  document.querySelectorAll("#graph-tabs button").forEach((b, i) => b.addEventListener("click", () => showGraph(i)));

  /* ---------- links: #vL-V opens a variable, #bL-B zooms into a block ---------- */
  function route() {
    const m = /^#v(\d+)-(\d+)$/.exec(location.hash), g = /^#b(\d+)-(\d+)$/.exec(location.hash);
    if (m && byNumber[m[1]] !== undefined && Number(m[2]) < D.levels[byNumber[m[1]]].mi.length) {
      $("focus").innerHTML = `<div class="note">selected variable (<a href="#variables">close</a>)</div>` +
        card(byNumber[m[1]], Number(m[2]), true);
      drawCanvases($("focus"));
      $(`v${m[1]}-${m[2]}`).scrollIntoView();
    } else if (g && byNumber[g[1]] !== undefined) {
      showGraph(byNumber[g[1]], Number(g[2]));
      $("graphs").scrollIntoView();
    } else if (location.hash === "#variables") {
      $("focus").innerHTML = "";
    }
  }
  window.addEventListener("hashchange", route);
  showGraph(0);
  render();
  route();
})();

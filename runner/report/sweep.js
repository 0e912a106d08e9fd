// The sweep view of report.html: a sortable, filterable table of every run, accuracy against wall time,
// parallel coordinates of the varied values, and the curves of the best and of the selected runs.
// Data comes from the page's <script id="sweep-data">; every text is set with textContent, never as markup.
(() => {
  "use strict";
  const D = JSON.parse(document.getElementById("sweep-data").textContent);
  const SVG = "http://www.w3.org/2000/svg";
  const cols = D.columns;
  const at = (key) => cols.findIndex((c) => c.key === key);
  const PALETTE = ["#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd", "#8c564b", "#e377c2", "#17becf"];
  const BEST = 5; // runs whose curves are drawn when none is selected... and beside the selected ones

  const num = (v) => typeof v === "number" && isFinite(v);
  const fmt = {
    pct: (v) => (v * 100).toFixed(2) + "%",
    int: (v) => Math.round(v).toLocaleString("en"),
    dur: (v) => {
      if (v < 60) return v.toFixed(1) + " s";
      const m = Math.round(v / 60);
      return m < 60 ? `${Math.floor(v / 60)} min ${String(Math.round(v % 60)).padStart(2, "0")} s`
        : `${Math.floor(m / 60)} h ${String(m % 60).padStart(2, "0")} min`;
    },
    g: (v) => (num(v) ? String(+v.toPrecision(4)) : String(v)),
  };
  const show = (c, v) => (v === null || v === undefined ? "—" : (fmt[c.fmt] || String)(v));

  const selected = new Set();
  let sortCol = at(D.metric), sortDir = -1, visible = D.rows.map((_, i) => i);

  function el(tag, attrs = {}, text) {
    const node = tag.startsWith("svg:") ? document.createElementNS(SVG, tag.slice(4)) : document.createElement(tag);
    for (const [k, v] of Object.entries(attrs)) node.setAttribute(k, v);
    if (text !== undefined) node.textContent = text;
    return node;
  }

  // Filter: words a row must contain (any column), or comparisons on a column named by its key or its key's
  // last part: "lr<0.01", "acc>=0.9", "framework=torch", "state!=succeeded".
  const COMPARE = /^([\w.]+)(<=|>=|!=|=|<|>)(.+)$/;
  function matcher(query) {
    const tests = query.trim().toLowerCase().split(/\s+/).filter(Boolean).map((word) => {
      const m = COMPARE.exec(word);
      const c = m ? cols.findIndex((c) => c.key === m[1] || c.key.split(".").pop() === m[1]) : -1;
      if (c < 0) return (row) => row.some((v, i) => show(cols[i], v).toLowerCase().includes(word));
      const [, , op, raw] = m;
      const want = Number(raw.replace(/%$/, "")) / (raw.endsWith("%") ? 100 : 1);
      return (row) => {
        const v = row[c];
        if (v === null || v === undefined) return op === "!=";
        if (num(v) && isFinite(want)) {
          return { "<": v < want, "<=": v <= want, ">": v > want, ">=": v >= want, "=": v === want, "!=": v !== want }[op];
        }
        const s = show(cols[c], v).toLowerCase();
        return op === "!=" ? s !== raw : op === "=" ? s === raw : false;
      };
    });
    return (row) => tests.every((t) => t(row));
  }

  function compare(a, b) {
    const x = D.rows[a][sortCol], y = D.rows[b][sortCol];
    if (x === null || x === undefined) return y === null || y === undefined ? a - b : 1;
    if (y === null || y === undefined) return -1;
    const d = num(x) && num(y) ? x - y : String(x).localeCompare(String(y), "en", { numeric: true });
    return d * sortDir || a - b;
  }

  // The table

  const table = document.getElementById("sweep-table");
  function header() {
    const tr = el("tr");
    tr.appendChild(el("th", { title: "select: draws its curves, marks it in the plots" }, "✓"));
    cols.forEach((c, i) => {
      const th = el("th", { "data-col": c.key, "aria-sort": i === sortCol ? (sortDir > 0 ? "ascending" : "descending") : "none" });
      const button = el("button", { type: "button", title: `sort by ${c.label}` },
        c.label + (i === sortCol ? (sortDir > 0 ? " ▲" : " ▼") : ""));
      button.addEventListener("click", () => {
        sortDir = i === sortCol ? -sortDir : c.type === "num" ? -1 : 1;
        sortCol = i;
        draw();
      });
      th.appendChild(button);
      tr.appendChild(th);
    });
    const thead = el("thead");
    thead.appendChild(tr);
    return thead;
  }

  function body() {
    const tbody = el("tbody");
    const best = new Set(D.best);
    for (const r of visible) {
      const tr = el("tr", { "data-run": String(r) });
      if (selected.has(r)) tr.className = "selected";
      const box = el("input", { type: "checkbox", "aria-label": "select " + D.rows[r][0] });
      box.checked = selected.has(r);
      box.addEventListener("change", () => toggle(r));
      const td = el("td");
      td.appendChild(box);
      tr.appendChild(td);
      D.rows[r].forEach((v, i) => {
        const c = cols[i];
        const cell = el("td", c.type === "num" ? { class: "num" } : {});
        if (i === 0 && D.pages[r]) cell.appendChild(el("a", { href: D.pages[r] }, show(c, v)));
        else cell.textContent = show(c, v);
        if (c.key === D.metric && best.has(r)) cell.classList.add("best");
        tr.appendChild(cell);
      });
      tbody.appendChild(tr);
    }
    return tbody;
  }

  // Plots, as SVG

  function niceTicks(lo, hi, n = 5) {
    if (lo === hi) return [lo];
    const step0 = (hi - lo) / n, mag = Math.pow(10, Math.floor(Math.log10(step0)));
    const step = [1, 2, 5, 10].map((s) => s * mag).find((s) => s >= step0);
    const ticks = [];
    for (let t = Math.ceil(lo / step) * step; t <= hi + step * 1e-9; t += step) ticks.push(+t.toPrecision(12));
    return ticks;
  }

  function frame(svg, w, h, m, x, y, xlabel, ylabel, xfmt, yfmt) {
    const g = el("svg:g", { class: "axes" });
    g.appendChild(el("svg:line", { x1: m.l, y1: h - m.b, x2: w - m.r, y2: h - m.b }));
    g.appendChild(el("svg:line", { x1: m.l, y1: m.t, x2: m.l, y2: h - m.b }));
    for (const t of x.ticks) {
      g.appendChild(el("svg:line", { x1: x(t), y1: h - m.b, x2: x(t), y2: h - m.b + 4 }));
      g.appendChild(el("svg:text", { x: x(t), y: h - m.b + 16, "text-anchor": "middle" }, xfmt(t)));
    }
    for (const t of y.ticks) {
      g.appendChild(el("svg:line", { x1: m.l - 4, y1: y(t), x2: w - m.r, y2: y(t), class: "grid" }));
      g.appendChild(el("svg:text", { x: m.l - 7, y: y(t) + 4, "text-anchor": "end" }, yfmt(t)));
    }
    g.appendChild(el("svg:text", { x: (m.l + w - m.r) / 2, y: h - 4, "text-anchor": "middle" }, xlabel));
    g.appendChild(el("svg:text", { x: 12, y: (m.t + h - m.b) / 2, "text-anchor": "middle",
      transform: `rotate(-90 12 ${(m.t + h - m.b) / 2})` }, ylabel));
    svg.appendChild(g);
  }

  function linear(lo, hi, a, b) {
    if (lo === hi) { lo -= 0.5; hi += 0.5; }
    const f = (v) => a + ((v - lo) / (hi - lo)) * (b - a);
    f.ticks = niceTicks(lo, hi);
    return f;
  }

  function clear(id) {
    const svg = document.getElementById(id);
    while (svg.firstChild) svg.removeChild(svg.firstChild);
    return svg;
  }

  const frameworkOf = at("framework");
  const frameworks = [...new Set(D.rows.map((r) => r[frameworkOf]))].sort();
  const colourOf = (r) => PALETTE[frameworks.indexOf(D.rows[r][frameworkOf]) % PALETTE.length];

  function scatter() {
    const svg = clear("sweep-scatter"), w = 640, h = 360, m = { l: 56, r: 16, t: 12, b: 40 };
    const xi = at(D.x), yi = at(D.metric);
    const pts = visible.filter((r) => num(D.rows[r][xi]) && num(D.rows[r][yi]));
    if (!pts.length) return;
    const xs = pts.map((r) => D.rows[r][xi] / 60), ys = pts.map((r) => D.rows[r][yi]);
    const x = linear(0, Math.max(...xs) * 1.05, m.l, w - m.r);
    const y = linear(Math.min(...ys), Math.max(...ys), h - m.b, m.t);
    frame(svg, w, h, m, x, y, "wall time (min)", cols[yi].label, fmt.g, fmt.pct);
    pts.sort((a, b) => selected.has(a) - selected.has(b)).forEach((r) => {
      const dot = el("svg:circle", { cx: x(D.rows[r][xi] / 60), cy: y(D.rows[r][yi]), r: selected.has(r) ? 6 : 4,
        fill: colourOf(r), class: selected.has(r) ? "dot selected" : "dot", "data-run": String(r) });
      dot.appendChild(el("svg:title", {}, `${D.rows[r][0]}: ${fmt.pct(D.rows[r][yi])} in ${fmt.dur(D.rows[r][xi])}`));
      dot.addEventListener("click", () => toggle(r));
      svg.appendChild(dot);
    });
    const legend = el("svg:g", { class: "legend" });
    frameworks.forEach((f, i) => {
      legend.appendChild(el("svg:circle", { cx: w - m.r - 110, cy: h - m.b - 14 - 16 * i, r: 4, fill: PALETTE[i % PALETTE.length] }));
      legend.appendChild(el("svg:text", { x: w - m.r - 100, y: h - m.b - 10 - 16 * i }, String(f)));
    });
    svg.appendChild(legend);
  }

  function axisOf(key, rows) {
    const i = at(key), c = cols[i], values = rows.map((r) => D.rows[r][i]);
    if (c.type === "num" && values.every(num)) {
      const log = D.log.includes(key) && Math.min(...values) > 0;
      const t = log ? Math.log10 : (v) => v;
      const lo = t(Math.min(...values)), hi = t(Math.max(...values));
      const place = (v) => (hi === lo ? 0.5 : (t(v) - lo) / (hi - lo));
      const ends = [Math.min(...values), Math.max(...values)];
      return { label: c.label + (log ? " (log)" : ""), place: (r) => place(D.rows[r][i]),
        ticks: [...new Set(ends)].map((v) => [place(v), show(c, v)]) };
    }
    const levels = [...new Set(values.map((v) => show(c, v)))].sort((a, b) => a.localeCompare(b, "en", { numeric: true }));
    const place = (s) => (levels.length === 1 ? 0.5 : levels.indexOf(s) / (levels.length - 1));
    return { label: c.label, place: (r) => place(show(c, D.rows[r][i])), ticks: levels.slice(0, 12).map((s) => [place(s), s]) };
  }

  function parallel() {
    const svg = clear("sweep-parallel"), w = 960, h = 360, m = { l: 40, r: 40, t: 30, b: 24 };
    const mi = at(D.metric);
    const rows = visible.filter((r) => num(D.rows[r][mi]));
    if (!rows.length || D.axes.length < 2) return;
    const axes = D.axes.map((k) => axisOf(k, rows));
    const gap = (w - m.l - m.r) / (axes.length - 1), ys = (p) => h - m.b - p * (h - m.t - m.b);
    const scores = rows.map((r) => D.rows[r][mi]), lo = Math.min(...scores), hi = Math.max(...scores);
    const hue = (v) => `hsl(${(hi === lo ? 120 : 240 - 240 * ((v - lo) / (hi - lo))).toFixed(0)} 70% 45%)`;
    rows.sort((a, b) => selected.has(a) - selected.has(b) || D.rows[a][mi] - D.rows[b][mi]).forEach((r) => {
      const points = axes.map((a, j) => `${(m.l + j * gap).toFixed(1)},${ys(a.place(r)).toFixed(1)}`).join(" ");
      const line = el("svg:polyline", { points, fill: "none", stroke: selected.has(r) ? "#111" : hue(D.rows[r][mi]),
        class: selected.has(r) ? "line selected" : "line", "data-run": String(r) });
      line.appendChild(el("svg:title", {}, `${D.rows[r][0]}: ${fmt.pct(D.rows[r][mi])}`));
      line.addEventListener("click", () => toggle(r));
      svg.appendChild(line);
    });
    axes.forEach((a, j) => {
      const x = m.l + j * gap, g = el("svg:g", { class: "axes" });
      g.appendChild(el("svg:line", { x1: x, y1: m.t, x2: x, y2: h - m.b }));
      g.appendChild(el("svg:text", { x, y: m.t - 12, "text-anchor": j === 0 ? "start" : j === axes.length - 1 ? "end" : "middle" }, a.label));
      for (const [p, text] of a.ticks) g.appendChild(el("svg:text", { x: x + 4, y: ys(p) + 4, class: "tick" }, text));
      svg.appendChild(g);
    });
  }

  function curves() {
    const svg = clear("sweep-curves"), w = 640, h = 360, m = { l: 56, r: 16, t: 12, b: 40 };
    const mi = at(D.metric);
    const ranked = visible.filter((r) => D.curves[r] && num(D.rows[r][mi])).sort((a, b) => D.rows[b][mi] - D.rows[a][mi]);
    const shown = [...new Set([...ranked.slice(0, BEST), ...selected])].filter((r) => D.curves[r]);
    const legend = document.getElementById("sweep-legend");
    legend.textContent = "";
    if (!shown.length) return;
    const epochs = shown.flatMap((r) => D.curves[r][0]), values = shown.flatMap((r) => [...D.curves[r][1], ...D.curves[r][2]]);
    const x = linear(Math.min(...epochs), Math.max(...epochs), m.l, w - m.r);
    x.ticks = x.ticks.filter(Number.isInteger);
    const y = linear(Math.min(...values), Math.max(...values), h - m.b, m.t);
    frame(svg, w, h, m, x, y, "epoch", "accuracy (solid: validation, dashed: test)", String, fmt.pct);
    shown.forEach((r, k) => {
      const [ep, val, test] = D.curves[r], colour = PALETTE[k % PALETTE.length];
      for (const [series, dash] of [[val, ""], [test, "4 3"]]) {
        const points = ep.map((e, j) => `${x(e).toFixed(1)},${y(series[j]).toFixed(1)}`).join(" ");
        const line = el("svg:polyline", { points, fill: "none", stroke: colour, "stroke-width": selected.has(r) ? 2.5 : 1.5,
          "stroke-dasharray": dash, "data-run": String(r) });
        line.appendChild(el("svg:title", {}, D.rows[r][0]));
        svg.appendChild(line);
      }
      const item = el("li");
      item.appendChild(el("span", { class: "swatch", style: `background:${colour}` }));
      item.appendChild(document.createTextNode(`${D.rows[r][0]} (${fmt.pct(D.rows[r][mi])})${selected.has(r) ? ", selected" : ""}`));
      legend.appendChild(item);
    });
  }

  // Wiring

  const filter = document.getElementById("sweep-filter"), count = document.getElementById("sweep-count");
  function toggle(r) {
    if (selected.has(r)) selected.delete(r);
    else selected.add(r);
    draw();
  }
  function draw() {
    const keep = matcher(filter.value);
    visible = D.rows.map((_, i) => i).filter((i) => keep(D.rows[i])).sort(compare);
    table.replaceChildren(header(), body());
    count.textContent = `${visible.length} of ${D.rows.length} runs shown, ${selected.size} selected`;
    scatter();
    parallel();
    curves();
  }
  filter.addEventListener("input", draw);
  document.getElementById("sweep-clear").addEventListener("click", () => { selected.clear(); draw(); });
  draw();
})();

/* unstall timeline: draws the embedded report as SVG. No dependencies, no network.
   Report strings are only ever written with textContent / setAttribute, never as markup.
   When done, <body data-rendered="ok">; any error lands in <body data-errors="...">. */
(function () {
  "use strict";
  const body = document.body;
  const errors = [];
  function fail(message) {
    errors.push(String(message));
    body.setAttribute("data-errors", errors.join("\n"));
    body.setAttribute("data-rendered", "error");
  }
  window.addEventListener("error", (e) => fail(e.message || e.error || "script error"));
  const consoleError = console.error.bind(console);
  console.error = (...args) => { fail(args.join(" ")); consoleError(...args); };

  const NS = "http://www.w3.org/2000/svg";
  const M = { left: 56, right: 14, axis: 26, title: 24, chart: 66, gap: 5, track: 20, after: 20 };

  function svg(tag, attrs, parent) {
    const node = document.createElementNS(NS, tag);
    for (const k in attrs) node.setAttribute(k, attrs[k]);
    if (parent) parent.appendChild(node);
    return node;
  }
  function h(tag, cls, text, parent) {
    const node = document.createElement(tag);
    if (cls) node.className = cls;
    if (text !== undefined && text !== null) node.textContent = String(text);
    if (parent) parent.appendChild(node);
    return node;
  }
  // The same format as unstall._report.format.format_duration: 0.050 s, 0.25 s, 1 min 05 s, 1 h 02 min.
  function fmtDur(s) {
    if (Math.round(s * 1000) / 1000 < 0.1) return s.toFixed(3) + " s";
    if (Math.round(s * 100) / 100 < 60) return s.toFixed(2) + " s";
    const whole = Math.round(s);
    if (whole < 3600) return Math.floor(whole / 60) + " min " + String(whole % 60).padStart(2, "0") + " s";
    const minutes = Math.round(s / 60);
    return Math.floor(minutes / 60) + " h " + String(minutes % 60).padStart(2, "0") + " min";
  }
  function fmtLag(s) {
    if (s < 1) return +(s * 1000).toPrecision(3) + " ms";
    return +s.toPrecision(3) + " s";
  }
  function niceStep(span, target) {
    const raw = span / Math.max(1, target), mag = Math.pow(10, Math.floor(Math.log10(raw)));
    for (const m of [1, 2, 5, 10]) if (m * mag >= raw) return m * mag;
    return 10 * mag;
  }
  function fmtTick(t, step, long) {
    if (long) {
      const m = Math.floor(t / 60), s = t - 60 * m;
      const sec = step < 1 ? s.toFixed(1).padStart(4, "0") : String(Math.round(s)).padStart(2, "0");
      return m + ":" + sec;
    }
    const decimals = step >= 1 ? 0 : Math.min(3, Math.ceil(-Math.log10(step)));
    return t.toFixed(decimals) + " s";
  }
  function clip(text, n) { text = String(text); return text.length > n ? text.slice(0, n - 1) + "…" : text; }
  function baseName(path) { return String(path).split(/[\\/]/).pop(); }
  // Each frame carries "short": its file as unstall._report.format.short_path shows it.
  function shortPath(frame) { return frame.short || String(frame.file); }
  function isLibrary(frame) {
    const f = String(frame.file);
    return f.includes("site-packages") || f.includes("/lib/python") || f.startsWith("<");
  }
  function severity(stall) {
    if (stall.ongoing) return "hang";
    if (stall.dur < 0.25) return "minor";
    return stall.dur < 1 ? "moderate" : "severe";
  }
  function culpritName(stall) {
    return stall.culprit ? stall.culprit.function : (stall.call || "unknown code");
  }
  function culpritWhere(stall) {
    return stall.culprit ? baseName(stall.culprit.file) + ":" + stall.culprit.line : "no frame of your code";
  }

  const data = JSON.parse(document.getElementById("unstall-data").textContent);
  for (const s of data.stalls) s.stack = s.stack.map((k) => data.frames[k]);
  const root = document.getElementById("timeline");
  const details = document.getElementById("details");
  const resetButton = document.getElementById("reset-zoom");
  const end = data.meta.end;
  const state = { t0: 0, t1: end, selected: null, group: null };
  const byLane = data.lanes.map(() => []);
  for (const s of data.stalls) byLane[s.lane].push(s);
  let tip = null;

  function laneHeight() { return M.title + M.chart + M.gap + M.track + M.after; }

  function draw() {
    root.textContent = "";
    tip = h("div", "tip", null, root);
    tip.hidden = true;
    if (!data.lanes.length) {
      h("p", "empty", "Nothing was recorded: no loop was watched.", root);
      return;
    }
    const width = Math.max(280, root.clientWidth);
    const plotW = width - M.left - M.right;
    const span = Math.max(1e-6, state.t1 - state.t0);
    const x = (t) => M.left + ((t - state.t0) / span) * plotW;
    const height = M.axis + data.lanes.length * laneHeight();
    const chart = svg("svg", { width: width, height: height, viewBox: "0 0 " + width + " " + height,
      role: "img", "aria-label": "timeline of loop lag and stalls", "data-timeline": "1" }, root);
    defs(chart);
    axis(chart, x, plotW, height, span);
    data.lanes.forEach((lane, i) => drawLane(chart, lane, i, x, plotW));
    brush(chart, x, plotW, height);
    if (!data.stalls.length) {
      h("p", "empty ok", "No stalls: every callback returned within " + fmtDur(data.meta.threshold) + ".", root);
    }
  }

  function defs(chart) {
    const d = svg("defs", {}, chart);
    const p = svg("pattern", { id: "unstall-hatch", width: 8, height: 8, patternUnits: "userSpaceOnUse",
      patternTransform: "rotate(45)" }, d);
    svg("rect", { width: 8, height: 8, style: "fill: var(--hang); opacity: .25" }, p);
    svg("rect", { width: 4, height: 8, style: "fill: var(--hang)" }, p);
  }

  function axis(chart, x, plotW, height, span) {
    const step = niceStep(span, Math.max(2, Math.floor(plotW / 90)));
    const long = end >= 120;
    for (let t = Math.ceil(state.t0 / step) * step; t <= state.t1 + 1e-9; t += step) {
      const px = x(t);
      svg("line", { x1: px, x2: px, y1: M.axis - 4, y2: height - M.after + 4, class: "grid" }, chart);
      const label = svg("text", { x: px, y: M.axis - 9, "text-anchor": "middle" }, chart);
      label.textContent = fmtTick(t, step, long);
    }
    svg("line", { x1: M.left, x2: M.left + plotW, y1: M.axis - 4, y2: M.axis - 4, class: "axis" }, chart);
  }

  // One scale for every lane, so lanes compare at a glance.
  function lagScale() {
    let top = Math.max(data.meta.threshold * 3, 0.01);
    for (const lane of data.lanes) for (const p of lane.lag) top = Math.max(top, p[1]);
    const lo = -3, hi = Math.ceil(Math.log10(top));
    return { lo: lo, hi: hi, y: (v, y0) => y0 + M.chart * (1 - (Math.log10(Math.max(v, 1e-3)) - lo) / (hi - lo)) };
  }

  function drawLane(chart, lane, index, x, plotW) {
    const top = M.axis + index * laneHeight();
    const stalls = byLane[index];
    const blocked = stalls.reduce((a, s) => a + s.dur, 0);
    const title = svg("text", { x: M.left, y: top + 16, class: "lane-title halo" }, chart);
    title.textContent = clip(lane.thread, Math.max(12, Math.floor(plotW / 16)));
    const meta = svg("tspan", { class: "m", dx: 8 }, title);
    const compact = plotW < 460;
    meta.textContent = (compact ? "" : lane.kind + " loop · ") + stalls.length + " stall" +
      (stalls.length === 1 ? "" : "s") + (stalls.length ? " · " + fmtDur(blocked) + " blocked" : "");
    const y0 = top + M.title;
    svg("rect", { x: M.left, y: y0, width: plotW, height: M.chart, class: "chart-bg", rx: 3 }, chart);
    const scale = lagScale();
    const every = (scale.hi - scale.lo) > 4 ? 2 : 1;
    for (let d = scale.lo; d <= scale.hi; d += every) {
      const py = scale.y(Math.pow(10, d), y0);
      svg("line", { x1: M.left, x2: M.left + plotW, y1: py, y2: py, class: "grid" }, chart);
      const label = svg("text", { x: M.left - 6, y: py + 3.5, "text-anchor": "end" }, chart);
      label.textContent = fmtLag(Math.pow(10, d));
    }
    for (const s of stalls) {
      if (s.start + s.dur < state.t0 || s.start > state.t1) continue;
      const x1 = Math.max(M.left, x(s.start)), x2 = Math.min(M.left + plotW, x(s.start + s.dur));
      svg("rect", { x: x1, y: y0, width: Math.max(1, x2 - x1), height: M.chart,
        class: "shade sev-" + severity(s), "data-shade": s.i }, chart);
    }
    lagPath(chart, lane, x, scale, y0, plotW);
    const ty = scale.y(data.meta.threshold, y0);
    svg("line", { x1: M.left, x2: M.left + plotW, y1: ty, y2: ty, class: "thr" }, chart);
    const tl = svg("text", { x: M.left + 4, y: ty - 4, class: "thr-label halo" }, chart);
    tl.textContent = "threshold " + fmtDur(data.meta.threshold);
    const trackY = y0 + M.chart + M.gap;
    svg("rect", { x: M.left, y: trackY, width: plotW, height: M.track, class: "track", rx: 3 }, chart);
    const label = svg("text", { x: M.left - 6, y: trackY + 14, "text-anchor": "end" }, chart);
    label.textContent = "stalls";
    for (const s of stalls) drawBar(chart, s, x, trackY, plotW);
  }

  // A heartbeat measured lag L at time t: the loop was blocked from t - L on, so the
  // line starts rising there, not at the previous (earlier) measurement.
  function rising(lag) {
    const out = [];
    lag.forEach((p, k) => {
      const prev = lag[k - 1], from = p[0] - p[1];
      if (prev && from > prev[0] && p[1] > data.meta.threshold / 2) out.push([from, prev[1]]);
      out.push(p);
    });
    return out;
  }

  function lagPath(chart, lane, x, scale, y0, plotW) {
    const pts = rising(lane.lag).filter((p, k, all) => {
      const next = all[k + 1], prev = all[k - 1];
      return (p[0] >= state.t0 || (next && next[0] >= state.t0)) && (p[0] <= state.t1 || (prev && prev[0] <= state.t1));
    });
    if (!pts.length) return;
    const clip = (px) => Math.min(M.left + plotW, Math.max(M.left, px));
    const base = y0 + M.chart;
    let line = "", area = "M" + clip(x(pts[0][0])).toFixed(1) + "," + base;
    for (const p of pts) {
      const seg = clip(x(p[0])).toFixed(1) + "," + scale.y(p[1], y0).toFixed(1);
      line += (line ? "L" : "M") + seg;
      area += "L" + seg;
    }
    area += "L" + clip(x(pts[pts.length - 1][0])).toFixed(1) + "," + base + "Z";
    svg("path", { d: area, class: "lag-area" }, chart);
    svg("path", { d: line, class: "lag-line", "data-lag": lane.id }, chart);
  }

  function drawBar(chart, s, x, trackY, plotW) {
    const visible = !(s.start + s.dur < state.t0 || s.start > state.t1);
    const x1 = Math.max(M.left, x(s.start));
    const x2 = Math.min(M.left + plotW, x(s.start + s.dur));
    const w = visible ? Math.max(2, x2 - x1) : 0;
    const sev = severity(s);
    const bar = svg("rect", { x: visible ? x1 : M.left, y: trackY + 2, width: w, height: M.track - 4, rx: 2,
      class: "bar sev-" + sev, tabindex: visible ? 0 : -1, "data-stall": s.i, "data-visible": visible ? 1 : 0,
      role: "button" }, chart);
    bar.setAttribute("aria-label", culpritName(s) + " blocked the loop for " + fmtDur(s.dur));
    if (state.selected === s.i) bar.classList.add("selected");
    if (state.group !== null && s.group !== state.group) bar.classList.add("dim");
    bar.addEventListener("pointerenter", () => showTip(s, bar));
    bar.addEventListener("pointerleave", hideTip);
    bar.addEventListener("focus", () => showTip(s, bar));
    bar.addEventListener("blur", hideTip);
    bar.addEventListener("click", (e) => { e.stopPropagation(); select(s.i); });
    bar.addEventListener("keydown", (e) => keyNav(e, s));
    if (!visible) return;
    const name = (s.ongoing ? "HANG " : "") + culpritName(s);
    if (w > 6.4 * name.length + 10) {
      const t = svg("text", { x: x1 + 5, y: trackY + 14,
        class: "bar-label" + (sev === "minor" ? " dark" : "") + (s.ongoing ? " halo-hang" : "") }, chart);
      t.textContent = name;
    }
    if (s.ongoing) {
      const t = svg("text", { x: Math.min(x2, M.left + plotW) - 4, y: trackY - M.gap - M.chart + 13,
        "text-anchor": "end", class: "hang-label halo" }, chart);
      t.textContent = "still blocked ▸";
    }
  }

  function keyNav(e, s) {
    if (e.key === "Enter" || e.key === " ") { e.preventDefault(); select(s.i); return; }
    const d = e.key === "ArrowRight" ? 1 : e.key === "ArrowLeft" ? -1 : 0;
    if (!d) return;
    e.preventDefault();
    const lane = byLane[s.lane], k = lane.indexOf(s) + d;
    if (k >= 0 && k < lane.length) {
      const next = root.querySelector('[data-stall="' + lane[k].i + '"]');
      if (next) next.focus();
    }
  }

  function showTip(s, bar) {
    tip.textContent = "";
    h("b", null, culpritName(s), tip);
    h("div", "row", fmtDur(s.dur) + (s.ongoing ? " so far, still blocked" : "") + " · " + s.kind +
      " · " + culpritWhere(s), tip);
    h("div", "row", (s.task ? "task " + s.task + (s.coro ? " (" + s.coro + ")" : "") : s.callback || "outside a task") +
      (s.call ? " · in " + s.call : ""), tip);
    if (s.culprit && s.culprit.code) h("code", null, s.culprit.code, tip);
    tip.hidden = false;
    const box = root.getBoundingClientRect(), b = bar.getBoundingClientRect();
    const left = Math.min(Math.max(0, b.left - box.left), Math.max(0, box.width - tip.offsetWidth));
    tip.style.left = left + "px";
    tip.style.top = (b.bottom - box.top + 6) + "px";
  }
  function hideTip() { if (tip) tip.hidden = true; }

  function brush(chart, x, plotW, height) {
    const invert = (px) => state.t0 + ((px - M.left) / plotW) * (state.t1 - state.t0);
    let start = null, rect = null;
    const local = (e) => e.clientX - chart.getBoundingClientRect().left;
    chart.addEventListener("pointerdown", (e) => {
      if (e.target.classList.contains("bar") || e.button !== 0) return;
      start = Math.min(M.left + plotW, Math.max(M.left, local(e)));
      rect = svg("rect", { x: start, y: M.axis - 4, width: 0, height: height - M.axis, class: "brush" }, chart);
      try {
        chart.setPointerCapture(e.pointerId);
      } catch (_) {
        // a pointer the browser no longer tracks: the drag still works inside the chart
      }
    });
    chart.addEventListener("pointermove", (e) => {
      if (start === null) return;
      const now = Math.min(M.left + plotW, Math.max(M.left, local(e)));
      rect.setAttribute("x", Math.min(start, now));
      rect.setAttribute("width", Math.abs(now - start));
    });
    chart.addEventListener("pointerup", (e) => {
      if (start === null) return;
      const now = Math.min(M.left + plotW, Math.max(M.left, local(e)));
      const a = start;
      start = null;
      rect.remove();
      if (Math.abs(now - a) < 8) return;
      zoom(invert(Math.min(a, now)), invert(Math.max(a, now)));
    });
    chart.addEventListener("dblclick", () => zoom(0, end));
  }

  function zoom(t0, t1) {
    state.t0 = Math.max(0, t0);
    state.t1 = Math.min(end, Math.max(t1, state.t0 + 1e-3));
    resetButton.hidden = state.t0 <= 0 && state.t1 >= end;
    draw();
  }

  function select(i) {
    state.selected = state.selected === i ? null : i;
    for (const b of root.querySelectorAll(".bar.selected")) b.classList.remove("selected");
    if (state.selected === null) { details.hidden = true; return; }
    const bar = root.querySelector('[data-stall="' + i + '"]');
    if (bar) bar.classList.add("selected");
    showDetails(data.stalls[i]);
  }

  function showDetails(s) {
    details.textContent = "";
    details.hidden = false;
    details.setAttribute("data-selected", s.i);
    const head = h("h3", null, culpritName(s) + "  ", details);
    h("span", "hint", culpritWhere(s), head);
    const badges = h("div", "badges", null, details);
    h("span", "tag sev-" + severity(s), (s.ongoing ? "hang: " : "") + fmtDur(s.dur) + (s.ongoing ? " so far" : ""), badges);
    h("span", "tag", s.kind === "cpu" ? "CPU work" : s.kind === "wait" ? "blocking wait" : "unknown kind", badges);
    h("span", "tag", "at +" + s.start.toFixed(3) + " s", badges);
    h("p", "fixbox", s.fix, details);
    const dl = h("dl", "meta", null, details);
    const rows = [["thread", s.thread], ["loop", s.loop], ["task", s.task], ["coroutine", s.coro],
      ["callback", s.callback], ["innermost call", s.call], ["source", s.culprit && s.culprit.code],
      ["samples", s.sample_count + " (" + s.method + ")"]];
    const ctx = s.context || {};
    if (ctx["http.route"]) rows.splice(3, 0, ["request", ((ctx["http.method"] || "") + " " + ctx["http.route"]).trim()]);
    if (ctx["trace_id"]) rows.splice(4, 0, ["trace", ctx["trace_id"]]);
    for (const k of Object.keys(ctx).sort()) {
      if (!k.startsWith("http.") && k !== "trace_id") rows.push([k, ctx[k]]);
    }
    for (const [k, v] of rows) {
      if (v === null || v === undefined || v === "") continue;
      const d = h("div", null, null, dl);
      h("dt", null, k, d);
      h("dd", null, v, d);
    }
    if (s.samples.length && s.sample_count) {
      h("div", "stack-title", "where the samples fell", details);
      const list = h("ol", "stack samples", null, details);
      for (const sm of s.samples.slice(0, 5)) {
        const li = h("li", null, null, list);
        h("span", "fn", Math.round((100 * sm.count) / s.sample_count) + "%  " + sm.function, li);
        h("span", "loc", shortPath(sm) + ":" + sm.line, li);
      }
    }
    h("div", "stack-title", "stack, outermost call first (" + s.stack.length + " frames)", details);
    drawStack(s, h("ol", "stack", null, details), false);
  }

  function drawStack(s, list, expanded) {
    list.textContent = "";
    const frames = s.stack;
    const hideFrom = 3, hideTo = frames.length - 9;
    frames.forEach((f, k) => {
      if (!expanded && hideTo > hideFrom + 1 && k >= hideFrom && k < hideTo) {
        if (k === hideFrom) {
          const li = h("li", "more", null, list);
          const more = h("button", null, "… " + (hideTo - hideFrom) + " more frames", li);
          more.type = "button";
          more.addEventListener("click", () => drawStack(s, list, true));
        }
        return;
      }
      const isCulprit = s.culprit && f.file === s.culprit.file && f.line === s.culprit.line;
      const li = h("li", isCulprit ? "culprit" : isLibrary(f) ? "lib" : "", null, list);
      h("span", "fn", f.function, li);
      const loc = h("span", "loc", shortPath(f) + ":" + f.line, li);
      loc.title = f.file + ":" + f.line;
      if (f.code) h("span", "src", f.code, li);
    });
  }

  function wireTable() {
    for (const row of document.querySelectorAll("table.culprits tbody tr")) {
      const g = Number(row.getAttribute("data-group"));
      const pick = () => {
        state.group = state.group === g ? null : g;
        for (const r of document.querySelectorAll("table.culprits tr.active")) r.classList.remove("active");
        if (state.group !== null) row.classList.add("active");
        draw();
        if (state.group !== null) {
          const worst = data.groups[g].reduce((a, i) => (data.stalls[i].dur > data.stalls[a].dur ? i : a));
          state.selected = null;
          select(worst);
          root.scrollIntoView({ behavior: "smooth", block: "start" });
        }
      };
      row.addEventListener("click", pick);
      row.addEventListener("keydown", (e) => { if (e.key === "Enter") pick(); });
    }
  }

  try {
    draw();
    wireTable();
    resetButton.addEventListener("click", () => zoom(0, end));
    let pending = false, lastWidth = root.clientWidth;
    window.addEventListener("resize", () => {
      if (pending || root.clientWidth === lastWidth) return;
      pending = true;
      requestAnimationFrame(() => { pending = false; lastWidth = root.clientWidth; draw(); });
    });
    const linked = /^#stall=(\d+|worst)$/.exec(location.hash);
    if (linked && data.stalls.length) {
      const worst = data.stalls.reduce((a, s) => (s.dur > a.dur ? s : a));
      const pick = linked[1] === "worst" ? worst : data.stalls[Number(linked[1])];
      if (pick) select(pick.i);
    }
    if (!errors.length) body.setAttribute("data-rendered", "ok");
  } catch (e) {
    fail(e && e.stack ? e.stack : e);
    h("p", "empty", "The timeline could not be drawn: " + e, root);
  }
})();

// streamrec's /dashboard: draws /dashboard/data.json every 10 s (?refresh=<s>) with hand-made SVG
// (nothing fetched from elsewhere). Every quantity has one format, in FMT.
"use strict";

const COLORS = ["#1f77b4", "#d62728", "#2ca02c", "#9467bd", "#ff7f0e", "#8c564b"];
const fixed = (x, digits) => x.toLocaleString("en-US", {
  minimumFractionDigits: digits, maximumFractionDigits: digits});
const FMT = {
  count: (x) => fixed(x, 0),
  rate: (x) => fixed(x, 1) + " /s",
  ms: (x) => (x === null || x === undefined) ? "-" : fixed(x, 1) + " ms",
  pct: (x) => (100 * x).toFixed(1) + " %",
  interval: (ci) => FMT.pct(ci[0]) + " - " + FMT.pct(ci[1]),
  score: (x) => x.toFixed(4),
};

function el(tag, attrs, text) {
  const e = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs || {})) e.setAttribute(k, v);
  if (text !== undefined) e.textContent = text;
  return e;
}
function svgEl(tag, attrs, text) {
  const e = document.createElementNS("http://www.w3.org/2000/svg", tag);
  for (const [k, v] of Object.entries(attrs || {})) e.setAttribute(k, v);
  if (text !== undefined) e.textContent = text;
  return e;
}
function row(attrs, cells) {
  // cells: [field or null, text]
  const r = el("tr", attrs);
  for (const [field, text] of cells) r.appendChild(el("td", field ? {"data-field": field} : {}, text));
  return r;
}
function clock(t, span) {
  const opts = {hour: "2-digit", minute: "2-digit"};
  if (span < 600) opts.second = "2-digit";
  if (span > 86400) { opts.month = "short"; opts.day = "numeric"; }
  return new Date(t * 1000).toLocaleString([], opts);
}
// The time axis is the data's own: from its first point with a value to its last (a
// minute around a single point), so recent points are never squeezed against the end of
// a fixed window.
function timeDomain(lists) {
  let t0 = Infinity, t1 = -Infinity;
  for (const pts of lists) {
    for (const p of pts) if (p[1] !== null) { t0 = Math.min(t0, p[0]); t1 = Math.max(t1, p[0]); }
  }
  if (t0 === Infinity) return null;
  if (t1 - t0 < 1) { t0 -= 30; t1 += 30; }
  return [t0, t1];
}
function niceTop(max) {
  if (!(max > 0)) return 1;
  const step = Math.pow(10, Math.floor(Math.log10(max)));
  for (const m of [1, 2, 2.5, 5, 10]) if (m * step >= max) return m * step;
  return 10 * step;
}

// series: {name: [[t, y], ...]} (y may be null). opts: {name, format, top}
function lineChart(series, opts) {
  const W = 600, H = 190, L = 86, R = 170, T = 12, B = 28;
  const svg = svgEl("svg", {width: W, height: H, class: "chart", "data-chart": opts.name,
                            "data-plot-x": L + "," + (W - R)});
  const lists = Object.values(series);
  const domain = timeDomain(lists);
  if (!domain) return svg;
  const [t0, t1] = domain;
  let max = 0;
  for (const pts of lists) for (const p of pts) if (p[1] !== null) max = Math.max(max, p[1]);
  const top = opts.top ? Math.min(opts.top, niceTop(max)) : niceTop(max);
  const x = (t) => L + (W - L - R) * (t - t0) / (t1 - t0);
  const y = (v) => H - B - (H - T - B) * v / top;
  const text = (attrs, s) => svg.appendChild(svgEl("text", {class: "axis", ...attrs}, s));
  for (const v of [0, top / 2, top]) {
    svg.appendChild(svgEl("line", {x1: L, y1: y(v), x2: W - R, y2: y(v),
                                   stroke: v ? "#eee" : "#999"}));
    text({x: L - 6, y: y(v) + 4, "text-anchor": "end"}, opts.format(v));
  }
  svg.appendChild(svgEl("line", {x1: L, y1: T, x2: L, y2: H - B, stroke: "#999"}));
  const span = t1 - t0;
  text({x: L, y: H - B + 16, "text-anchor": "start"}, clock(t0, span));
  text({x: (L + W - R) / 2, y: H - B + 16, "text-anchor": "middle"}, clock((t0 + t1) / 2, span));
  text({x: W - R, y: H - B + 16, "text-anchor": "end"}, clock(t1, span));
  Object.entries(series).forEach(([label, pts], i) => {
    const color = COLORS[i % COLORS.length];
    // A point without a value (no traffic then) is skipped: the line joins its neighbours.
    const d = pts.filter((p) => p[1] !== null)
      .map((p, j) => (j ? "L" : "M") + x(p[0]).toFixed(1) + "," + y(p[1]).toFixed(1)).join(" ");
    svg.appendChild(svgEl("path", {d, fill: "none", stroke: color, "stroke-width": 2,
                                   "data-series": label}));
    if (pts.length <= 40) {
      for (const p of pts) {
        if (p[1] === null) continue;
        const dot = svgEl("circle", {cx: x(p[0]), cy: y(p[1]), r: 2.5, fill: color});
        dot.appendChild(svgEl("title", {}, clock(p[0], 0) + ": " + opts.format(p[1])));
        svg.appendChild(dot);
      }
    }
    svg.appendChild(svgEl("line", {x1: W - R + 12, y1: T + 8 + 16 * i, x2: W - R + 30,
                                   y2: T + 8 + 16 * i, stroke: color, "stroke-width": 3}));
    svg.appendChild(svgEl("text", {x: W - R + 36, y: T + 12 + 16 * i, class: "legend",
                                   style: "fill: " + color}, label));
  });
  return svg;
}

// Promotions and rollbacks on a strip: which version was in service when.
function timeline(history, current, now) {
  const W = 760, H = 84, L = 10, R = 60, Y = 30;
  const svg = svgEl("svg", {width: W, height: H, class: "timeline"});
  const steps = history.filter((h) => h.ts !== null);
  if (!steps.length) {
    svg.appendChild(svgEl("text", {x: L, y: Y}, "in service: " + (current || "none") +
                                                 " (no promotion recorded)"));
    return svg;
  }
  const t0 = steps[0].ts, t1 = Math.max(now, t0 + 60);
  const x = (t) => L + (W - L - R) * (t - t0) / (t1 - t0);
  const versions = [...new Set(steps.map((h) => h.version))];
  let lastX = -Infinity, lane = 0;  // labels of steps close together go a line lower
  steps.forEach((h, i) => {
    lane = x(h.ts) - lastX < 40 ? (lane + 1) % 3 : 0;
    lastX = x(h.ts);
    const end = i + 1 < steps.length ? steps[i + 1].ts : t1;
    const color = COLORS[versions.indexOf(h.version) % COLORS.length];
    svg.appendChild(svgEl("rect", {x: x(h.ts), y: Y - 6, width: Math.max(1, x(end) - x(h.ts)),
                                   height: 12, fill: color, opacity: 0.35}));
    const g = svgEl("g", {"data-action": h.action, "data-version": h.version});
    const mark = h.action === "rollback"
      ? svgEl("path", {d: `M${x(h.ts) - 6},${Y - 14} h12 l-6,10 z`, fill: "#b00"})
      : svgEl("path", {d: `M${x(h.ts) - 6},${Y + 14} h12 l-6,-10 z`, fill: "#2ca02c"});
    g.appendChild(mark);
    g.appendChild(svgEl("title", {}, h.action + " to " + h.version +
      (h.previous ? " from " + h.previous : "") + ", " + new Date(h.ts * 1000).toLocaleString()));
    g.appendChild(svgEl("text", {x: x(h.ts) + 2 + 12 * lane,
                                 y: h.action === "rollback" ? Y - 16 : Y + 26 + 12 * lane},
                        (h.action === "rollback" ? "rollback " : "") + h.version));
    svg.appendChild(g);
  });
  svg.appendChild(svgEl("text", {x: W - R + 4, y: Y + 4}, "now"));
  return svg;
}

function renderLive(live) {
  const box = document.getElementById("live");
  if (!live) {
    box.querySelector(".headline").replaceChildren(
      el("div", {class: "muted"}, "no live numbers from this process"));
    return;
  }
  const now = live.last_minute;
  for (const [field, value] of [["events_per_s", FMT.rate(now.events_per_s)],
                                ["recs_per_s", FMT.rate(now.recs_per_s)],
                                ["p50_ms", FMT.ms(now.p50_ms)], ["p99_ms", FMT.ms(now.p99_ms)]]) {
    box.querySelector(`.headline [data-field="${field}"]`).textContent = value;
  }
  const pts = live.points;
  const charts = document.getElementById("live-charts");
  charts.replaceChildren(
    lineChart({"events in": pts.map((p) => [p.t, p.events_per_s]),
               "recommendations out": pts.map((p) => [p.t, p.recs_per_s])},
              {name: "throughput", format: FMT.rate}),
    lineChart({"p50": pts.map((p) => [p.t, p.p50_ms]), "p99": pts.map((p) => [p.t, p.p99_ms])},
              {name: "latency", format: FMT.ms}));
  const lag = document.querySelector("#lag tbody");
  lag.replaceChildren();
  if (live.partitions === null) {
    lag.appendChild(row({}, [[null, "not measured by this engine"], [null, ""], [null, ""]]));
  } else {
    for (const p of live.partitions) {
      lag.appendChild(row({"data-partition": p.topic + ":" + p.partition},
                          [["topic", p.topic], ["partition", String(p.partition)],
                           ["lag", FMT.count(p.lag)]]));
    }
    if (!live.partitions.length) lag.appendChild(row({}, [[null, "no partitions assigned"]]));
  }
  const dead = document.querySelector("#dead-letters tbody");
  dead.replaceChildren();
  for (const [reason, n] of Object.entries(live.dead_letters)) {
    dead.appendChild(row({"data-reason": reason}, [["reason", reason], ["count", FMT.count(n)]]));
  }
  if (!Object.keys(live.dead_letters).length) dead.appendChild(row({}, [[null, "none"], [null, ""]]));
}

function countsTable(rows, key, extra) {
  const table = el("table", {class: key + "s"});
  const head = table.appendChild(el("tr", {}));
  const heads = [key, ...extra.map((e) => e[1]), "recommendations", "hits", "hit rate",
                 "95 % interval (Wilson)"];
  for (const h of heads) head.appendChild(el("th", {}, h));
  for (const [name, v] of rows) {
    table.appendChild(row({["data-" + key]: name}, [
      [null, name], ...extra.map(([field, , fmt]) => [field, fmt(v[field])]),
      ["recommendations", FMT.count(v.recommendations)], ["hits", FMT.count(v.hits)],
      ["hit_rate", FMT.pct(v.hit_rate)], ["ci", FMT.interval(v.ci)]]));
  }
  return table;
}

function renderTenants(data) {
  const modes = document.getElementById("modes");
  modes.replaceChildren();
  for (const m of ["on", "freeze", "off"]) {
    modes.appendChild(el("span", {"data-mode": m, class: m}, m + ": " + FMT.count(data.modes[m])));
  }
  const body = document.querySelector("#tenants tbody");
  body.replaceChildren();
  const details = document.getElementById("details");
  details.replaceChildren();
  for (const t of data.tenants) {
    let recs = 0, hits = 0;
    for (const v of Object.values(t.variants)) { recs += v.recommendations; hits += v.hits; }
    const r = row({"data-tenant": t.tenant}, [
      ["tenant", t.tenant], ["mode", t.mode], ["policy", t.policy], ["version", t.version || "-"],
      ["recommendations", FMT.count(recs)], ["hit_rate", recs ? FMT.pct(hits / recs) : "-"]]);
    r.children[1].className = t.mode;
    body.appendChild(r);
    if (!recs && !t.experiment && !(t.history && t.history.length)) continue;
    const box = el("div", {class: "tenant", "data-tenant": t.tenant});
    box.appendChild(el("h3", {}, t.tenant + " (" + t.policy + ", " + (t.version || "no model") + ")"));
    if (t.history !== null) {
      box.appendChild(el("div", {class: "muted"}, "version in service over time"));
      box.appendChild(timeline(t.history, t.version, data.generated));
      const latest = t.history.slice(-5).map((h) => (h.action === "rollback"
        ? "rolled back to " : "promoted ") + h.version + (h.ts ? " at " +
        new Date(h.ts * 1000).toLocaleString() : ""));
      if (latest.length) box.appendChild(el("div", {class: "steps muted"}, latest.join("; ")));
    }
    if (recs) {
      box.appendChild(countsTable(Object.entries(t.variants), "variant",
                                  [["purchases", "purchases", FMT.count]]));
    }
    if (Object.keys(t.series).length) {
      box.appendChild(el("div", {class: "muted"}, "online hit rate per variant over time"));
      box.appendChild(lineChart(
        Object.fromEntries(Object.entries(t.series).map(([v, pts]) => [v, pts.map((p) => [p[0], p[1]])])),
        {name: "hit_rate", format: FMT.pct, top: 1}));
    }
    if (t.experiment) {
      const e = t.experiment;
      const div = el("div", {class: "experiment", "data-decision": e.decision || ""});
      div.appendChild(el("h3", {}, "experiment: " + e.policy +
        (e.started ? ", since " + new Date(e.started * 1000).toLocaleString() : "")));
      div.appendChild(countsTable(Object.entries(e.arms), "arm", [["share", "share", FMT.pct]]));
      const p = e.policy === "ab" && e.p_value !== null ? " (p = " + e.p_value.toPrecision(3) + ")" : "";
      div.appendChild(el("p", {}, "decision: " + e.decision + p));
      box.appendChild(div);
    }
    details.appendChild(box);
  }
  const select = document.getElementById("try-tenant");
  const names = data.tenants.map((t) => t.tenant).sort();
  if ([...select.options].map((o) => o.value).join("\n") !== names.join("\n")) {
    const chosen = select.value;
    select.replaceChildren(...names.map((n) => el("option", {value: n}, n)));
    if (names.includes(chosen)) select.value = chosen;
  }
}

async function trySession(event) {
  event.preventDefault();
  const out = document.getElementById("try-result");
  const tenant = document.getElementById("try-tenant").value;
  const items = document.getElementById("try-items").value.split(/[\s,]+/).filter((s) => s);
  const key = document.getElementById("try-key").value;
  out.replaceChildren(el("span", {class: "muted"}, "ranking..."));
  out.removeAttribute("data-source");
  if (!tenant || !items.length) {
    out.replaceChildren(el("span", {class: "error"}, "choose a tenant and type item ids"));
    return;
  }
  const headers = {"Content-Type": "application/json"};
  if (key) headers.Authorization = "Bearer " + key;
  const res = await fetch("v1/" + encodeURIComponent(tenant) + "/recommendations", {
    method: "POST", credentials: "same-origin", headers, body: JSON.stringify({items, n: 10})});
  const body = await res.json().catch(() => ({}));
  if (!res.ok) {
    out.replaceChildren(el("span", {class: "error"}, "error " + res.status + ": " +
                                                     (body.error || res.statusText)));
    return;
  }
  out.setAttribute("data-source", body.strategy);
  out.setAttribute("data-version", body.model_version || "");
  const table = el("table", {});
  const head = table.appendChild(el("tr", {}));
  for (const h of ["#", "item", "score", "source"]) head.appendChild(el("th", {}, h));
  body.items.forEach((it, i) => {
    table.appendChild(row({"data-item": it.item_id}, [
      ["rank", String(i + 1)], ["item", it.item_id], ["score", FMT.score(it.score)],
      ["source", it.source]]));
  });
  out.replaceChildren(
    el("div", {}, "model " + (body.model_version || "none (popular items)")),
    body.items.length ? table : el("div", {class: "muted"}, "no candidates"));
}

async function refresh() {
  const since = new URLSearchParams(location.search).get("since") || "3600";
  // The admin token travels in the cookie /dashboard?token=... set (same origin only).
  const res = await fetch("dashboard/data.json?since=" + encodeURIComponent(since),
                          {credentials: "same-origin"});
  const updated = document.getElementById("updated");
  if (!res.ok) {
    const reason = res.status === 401 || res.status === 403
      ? " (open /dashboard?token=<admin token> again)" : "";
    const body = await res.json().catch(() => ({}));
    updated.textContent = "error " + res.status + ": " + (body.error || "") + reason;
    return;
  }
  const data = await res.json();
  updated.textContent = "hit rates over the last " + FMT.count(Math.round(data.since_s / 60)) +
    " min (all workers); updated " + new Date(data.generated * 1000).toLocaleTimeString();
  renderLive(data.live);
  renderTenants(data);
  document.body.setAttribute("data-loaded", "1");
}

document.getElementById("try").addEventListener("submit", trySession);
refresh();
// ?refresh=<seconds> (default 10; 0 keeps the page as first drawn).
const every = Number(new URLSearchParams(location.search).get("refresh") ?? "10");
if (every > 0) setInterval(refresh, 1000 * Math.max(1, every));

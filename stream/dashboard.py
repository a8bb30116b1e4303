"""``/dashboard``: a page served by the worker (no extra service, nothing fetched from
elsewhere): tenants with mode, policy and version in service, online hit rate per
variant over time (an SVG chart per tenant), running experiments with their decision,
and how many tenants are on / freeze / off (many switching off says quality is poor).

``/dashboard/data.json`` is what the page draws: the same numbers as ``streamrec
stats`` / ``GET /v1/{tenant}/stats`` and ``streamrec experiment status``, computed by
the same functions. Plugged into the API by ``stream.web.ROUTERS`` at import.
"""

from __future__ import annotations

import asyncio
import time
from collections import Counter
from typing import Annotated, Any

from fastapi import APIRouter, Query, Request
from fastapi.responses import HTMLResponse

from models.errors import StreamrecError
from models.policy_file import all_policies
from models.registry import Registry
from state.connection import RedisError
from state.feedback import read_buckets, totals
from stream.feedback_stats import stats_json
from stream.policies import experiment_status
from stream.web import ROUTERS, ApiError, WebContext, error_responses
from stream.web_auth import Credentials, admin_access

# Tenants drawn (most recommendations in the window first); the rest are listed.
MAX_CHARTED = 12
POINTS = 30  # points per chart line


def _registry_view(registry: Registry) -> tuple[dict[str, str], dict[str, Any], dict[str, Any]]:
    modes = registry.tenant_modes()
    versions = {t: registry.current_version(t) for t in modes}
    return modes, versions, all_policies(registry)


async def dashboard_data(ctx: WebContext, since_s: float, now: float | None = None) -> dict:
    now = time.time() if now is None else now
    processor = ctx.backend()
    client = getattr(getattr(processor, "_tenants", None), "_client", None)
    if client is None:
        raise ApiError(503, "the worker is starting")
    registry = Registry(ctx.settings.registry_dir)
    try:
        modes, versions, policies = await asyncio.to_thread(_registry_view, registry)
    except (OSError, StreamrecError) as exc:
        raise ApiError(503, f"the registry cannot be read: {exc}") from None
    bucket_s = ctx.settings.feedback_bucket_s
    directory = getattr(processor, "policies", None)
    bandit = directory.bandit_shares_now() if directory is not None else {}
    tenants = []
    for tenant in sorted(modes):
        try:
            buckets = await read_buckets(client, tenant, now - since_s, now, bucket_s)
        except (RedisError, OSError) as exc:
            raise ApiError(503, f"the counter store is unavailable: {exc}") from None
        stats = stats_json(tenant, totals(buckets), since_s)
        policy = policies.get(tenant)
        entry: dict[str, Any] = {
            "tenant": tenant,
            "mode": modes[tenant],
            "policy": policy["policy"] if policy else "fixed",
            "version": versions.get(tenant),
            "variants": stats["variants"],
            "series": _series(buckets, now - since_s, now),
        }
        if policy is not None:
            since = float(policy.get("started", now - since_s))
            arms = [b for b in buckets if b[0] >= since - bucket_s]
            if since < now - since_s:
                arms = await read_buckets(client, tenant, since, now, bucket_s)
            entry["experiment"] = experiment_status(
                tenant, policy, arms, bandit.get(tenant), versions.get(tenant)
            )
        tenants.append(entry)
    tenants.sort(key=lambda t: -sum(v["recommendations"] for v in t["variants"].values()))
    for i, t in enumerate(tenants):
        if i >= MAX_CHARTED:
            t["series"] = {}
    return {
        "generated": now,
        "since_s": since_s,
        "modes": {m: Counter(modes.values()).get(m, 0) for m in ("on", "freeze", "off")},
        "tenants": tenants,
    }


def _series(buckets: list, start: float, end: float) -> dict[str, list[list[float]]]:
    """Hit rate per variant over ``POINTS`` slices of the window: ``[[t, rate, recs]]``."""
    width = max(1.0, (end - start) / POINTS)
    slices: dict[str, dict[int, list[int]]] = {}
    for ts, per in buckets:
        k = min(POINTS - 1, int((ts - start) // width))
        for variant, c in per.items():
            acc = slices.setdefault(variant, {}).setdefault(k, [0, 0])
            acc[0] += c.hits
            acc[1] += c.recommendations
    return {
        variant: [
            [round(start + (k + 0.5) * width, 1), round(h / n, 5), n]
            for k, (h, n) in sorted(points.items())
            if n
        ]
        for variant, points in sorted(slices.items())
    }


def routes(ctx: WebContext) -> APIRouter:
    router = APIRouter(tags=["dashboard"])

    @router.get("/dashboard", response_class=HTMLResponse, summary="The built-in dashboard")
    async def page() -> HTMLResponse:
        return HTMLResponse(PAGE)

    @router.get(
        "/dashboard/data.json",
        summary="What the dashboard draws (the admin token when keys are required)",
        responses=error_responses(400, 401, 403, 503),
    )
    async def data(
        request: Request,
        since: Annotated[float, Query(gt=0, le=30 * 86400, description="seconds")] = 3600,
        credentials: Credentials = None,
    ) -> dict[str, Any]:
        """Every tenant's numbers: where every tenant route needs a key
        (``STREAMREC_REQUIRE_KEYS``), they need the admin token (``/dashboard#token=...``
        sends it)."""
        if ctx.settings.require_keys:
            await admin_access(request, credentials)
        return await dashboard_data(ctx, since)

    return router


ROUTERS.append(routes)


PAGE = """<!doctype html>
<html lang="en"><head><meta charset="utf-8">
<link rel="icon" href="data:,">
<title>streamrec dashboard</title>
<style>
 body { font: 14px system-ui, sans-serif; margin: 1.5em; color: #222; }
 h1 { font-size: 1.4em; margin: 0 0 .3em; }
 table { border-collapse: collapse; margin: .4em 0 1em; }
 th, td { border-bottom: 1px solid #ddd; padding: .25em .7em; text-align: right; }
 th:first-child, td:first-child { text-align: left; }
 .modes span { display: inline-block; margin-right: 1.2em; font-size: 1.1em; }
 .tenant { border: 1px solid #ccc; border-radius: 6px; padding: .6em 1em; margin: 1em 0; }
 .muted { color: #777; } .off { color: #b00; } .freeze { color: #a60; }
 svg text { font-size: 11px; fill: #555; }
</style></head>
<body>
<h1>streamrec</h1>
<div class="muted" id="updated">loading...</div>
<h2>Tenants by mode</h2>
<div class="modes" id="modes"></div>
<h2>Tenants</h2>
<table id="tenants"><thead><tr><th>tenant</th><th>mode</th><th>policy</th>
<th>version in service</th><th>recommendations</th><th>hit rate</th></tr></thead>
<tbody></tbody></table>
<div id="details"></div>
<script>
"use strict";
const COLORS = ["#1f77b4", "#d62728", "#2ca02c", "#9467bd", "#ff7f0e", "#8c564b"];
const pct = (x) => (100 * x).toFixed(2) + " %";
function el(tag, attrs, text) {
  const e = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs || {})) e.setAttribute(k, v);
  if (text !== undefined) e.textContent = text;
  return e;
}
function svgEl(tag, attrs) {
  const e = document.createElementNS("http://www.w3.org/2000/svg", tag);
  for (const [k, v] of Object.entries(attrs)) e.setAttribute(k, v);
  return e;
}
function chart(series, t0, t1) {
  // Plot area inside margins: left for the rate labels, right for the legend, below for
  // the times, so no label sits on a line.
  const W = 660, H = 190, L = 58, R = 96, T = 12, B = 28;
  const svg = svgEl("svg", {width: W, height: H, class: "chart"});
  let top = 0.05;
  for (const pts of Object.values(series)) for (const p of pts) top = Math.max(top, p[1]);
  top = Math.min(1, Math.ceil(top * 20) / 20);  // a round top: the next 5 %
  const x = (t) => L + (W - L - R) * (t - t0) / Math.max(1, t1 - t0);
  const y = (r) => H - B - (H - T - B) * r / top;
  const text = (attrs, s) => {
    const e = svgEl("text", {class: "axis", ...attrs}); e.textContent = s; svg.appendChild(e);
  };
  for (const r of [0, top / 2, top]) {
    svg.appendChild(svgEl("line", {x1: L, y1: y(r), x2: W - R, y2: y(r),
                                   stroke: r ? "#eee" : "#999"}));
    text({x: L - 6, y: y(r) + 4, "text-anchor": "end"}, pct(r).replace(".00", ""));
  }
  svg.appendChild(svgEl("line", {x1: L, y1: T, x2: L, y2: H - B, stroke: "#999"}));
  const clock = (t) => new Date(t * 1000).toLocaleTimeString([], {hour: "2-digit",
                                                                   minute: "2-digit"});
  text({x: L, y: H - B + 16, "text-anchor": "start"}, clock(t0));
  text({x: W - R, y: H - B + 16, "text-anchor": "end"}, clock(t1));
  Object.entries(series).forEach(([variant, pts], i) => {
    const color = COLORS[i % COLORS.length];
    const d = pts.map((p, j) => (j ? "L" : "M") + x(p[0]).toFixed(1) + "," + y(p[1]).toFixed(1));
    svg.appendChild(svgEl("path", {d: d.join(" "), fill: "none", stroke: color, "stroke-width": 2,
                                   "data-variant": variant}));
    for (const pt of pts) {
      svg.appendChild(svgEl("circle", {cx: x(pt[0]), cy: y(pt[1]), r: 3, fill: color}));
    }
    svg.appendChild(svgEl("line", {x1: W - R + 12, y1: T + 8 + 16 * i, x2: W - R + 30,
                                   y2: T + 8 + 16 * i, stroke: color, "stroke-width": 3}));
    const t = svgEl("text", {x: W - R + 36, y: T + 12 + 16 * i, class: "legend",
                             style: "fill: " + color});
    t.textContent = variant; svg.appendChild(t);
  });
  return svg;
}
function render(data) {
  document.getElementById("updated").textContent =
    "last " + Math.round(data.since_s / 60) + " min, updated " +
    new Date(data.generated * 1000).toLocaleTimeString();
  const modes = document.getElementById("modes"); modes.replaceChildren();
  for (const m of ["on", "freeze", "off"]) {
    const s = el("span", {"data-mode": m, class: m});
    s.textContent = m + ": " + data.modes[m];
    modes.appendChild(s);
  }
  const body = document.querySelector("#tenants tbody"); body.replaceChildren();
  const details = document.getElementById("details"); details.replaceChildren();
  for (const t of data.tenants) {
    let recs = 0, hits = 0;
    for (const v of Object.values(t.variants)) { recs += v.recommendations; hits += v.hits; }
    const row = el("tr", {"data-tenant": t.tenant});
    for (const [k, v] of [["tenant", t.tenant], ["mode", t.mode], ["policy", t.policy],
                          ["version", t.version || "-"], ["recommendations", recs],
                          ["hit_rate", recs ? pct(hits / recs) : "-"]]) {
      row.appendChild(el("td", {"data-field": k, class: k === "mode" ? t.mode : ""}, String(v)));
    }
    body.appendChild(row);
    if (!recs && !t.experiment) continue;
    const box = el("div", {class: "tenant", "data-tenant": t.tenant});
    box.appendChild(el("h3", {}, t.tenant + " (" + t.policy + ")"));
    const table = el("table", {class: "variants"});
    const head = table.appendChild(el("tr", {}));
    const heads = ["variant", "recommendations", "hits", "hit rate", "95 % interval", "purchases"];
    for (const h of heads) {
      head.appendChild(el("th", {}, h));
    }
    for (const [name, v] of Object.entries(t.variants)) {
      const r = el("tr", {"data-variant": name});
      r.append(el("td", {}, name),
               el("td", {"data-field": "recommendations"}, String(v.recommendations)),
               el("td", {"data-field": "hits"}, String(v.hits)),
               el("td", {"data-field": "hit_rate"}, v.hit_rate.toFixed(4)),
               el("td", {}, pct(v.ci[0]) + " - " + pct(v.ci[1])),
               el("td", {"data-field": "purchases"}, String(v.purchases)));
      table.appendChild(r);
    }
    box.appendChild(table);
    if (Object.keys(t.series).length) {
      box.appendChild(el("div", {class: "muted"}, "online hit rate per variant over time"));
      box.appendChild(chart(t.series, data.generated - data.since_s, data.generated));
    }
    if (t.experiment) {
      const e = t.experiment;
      const p = el("p", {class: "experiment", "data-decision": e.decision || ""});
      const shares = Object.entries(e.arms).map(([a, v]) => a + " " + pct(v.share)).join(", ");
      p.textContent = "experiment: " + e.policy + ", arms " + shares + ", decision " + e.decision +
        (e.p_value !== null ? " (p = " + e.p_value.toPrecision(3) + ")" : "");
      box.appendChild(p);
    }
    details.appendChild(box);
  }
}
async function refresh() {
  const since = new URLSearchParams(location.search).get("since") || "3600";
  // Locked down (STREAMREC_REQUIRE_KEYS=1): the admin token, from /dashboard#token=...
  // (a fragment never reaches a server or a log).
  const token = new URLSearchParams(location.hash.slice(1)).get("token");
  const headers = token ? {"Authorization": "Bearer " + token} : {};
  const res = await fetch("dashboard/data.json?since=" + encodeURIComponent(since), {headers});
  if (!res.ok) { document.getElementById("updated").textContent = "error " + res.status; return; }
  render(await res.json());
  document.body.setAttribute("data-loaded", "1");
}
refresh();
setInterval(refresh, 10000);
</script>
</body></html>
"""

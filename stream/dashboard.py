"""``/dashboard``: a page served by the worker (no extra service, nothing fetched from
elsewhere): tenants with mode, policy and version in service, online hit rate per
variant over time (an SVG chart per tenant), running experiments with their decision,
and how many tenants are on / freeze / off (many switching off says quality is poor).

Both need the admin token (``stream.web_auth``): ``/dashboard?token=...`` trades it
for a cookie. ``/dashboard/data.json`` is what the page draws: the same numbers as ``streamrec
stats`` / ``GET /v1/{tenant}/stats`` and ``streamrec experiment status``, computed by
the same functions. Plugged into the API by ``stream.web.ROUTERS`` at import.
"""

from __future__ import annotations

import asyncio
import hmac
import time
from collections import Counter
from typing import Annotated, Any

from fastapi import APIRouter, Depends, Query, Request
from fastapi.responses import HTMLResponse, RedirectResponse, Response

from models.errors import StreamrecError
from models.policy_file import all_policies
from models.registry import Registry
from state.connection import RedisError
from state.feedback import read_buckets, totals
from stream.feedback_stats import stats_json
from stream.policies import experiment_status
from stream.web import ROUTERS, ApiError, WebContext, error_responses
from stream.web_auth import (
    VIEW_COOKIE,
    VIEW_COOKIE_MAX_AGE_S,
    Credentials,
    view_access,
    view_cookie,
)

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

    @router.get(
        "/dashboard",
        response_class=HTMLResponse,
        summary="The built-in dashboard (the admin token)",
        responses={303: {"description": "the token traded for a cookie"}}
        | error_responses(401, 403),
    )
    async def page(
        request: Request,
        credentials: Credentials = None,
        token: Annotated[
            str | None,
            Query(description="the admin token, traded for a cookie (then left out of the URL)"),
        ] = None,
    ) -> Response:
        """Open ``/dashboard?token=<admin token>`` once: the answer sets an HttpOnly,
        SameSite=Strict cookie and redirects to the same address without the token, so it
        stays out of the browser's history and of proxies' logs."""
        if token is not None:
            admin = ctx.settings.admin_token
            if not (admin and hmac.compare_digest(token.encode(), admin.encode())):
                raise ApiError(401, "the token is not the admin token")
            rest = request.url.remove_query_params("token")
            location = rest.path + (f"?{rest.query}" if rest.query else "")
            answer = RedirectResponse(location, status_code=303, headers=PRIVATE)
            answer.set_cookie(
                VIEW_COOKIE,
                view_cookie(admin),
                max_age=VIEW_COOKIE_MAX_AGE_S,
                path="/",
                secure=request.url.scheme == "https",
                httponly=True,
                samesite="strict",
            )
            return answer
        await view_access(request, credentials)
        return HTMLResponse(PAGE, headers=PRIVATE)

    @router.get(
        "/dashboard/data.json",
        summary="What the dashboard draws (the admin token)",
        responses=error_responses(400, 401, 403, 503),
        dependencies=[Depends(view_access)],
    )
    async def data(
        since: Annotated[float, Query(gt=0, le=30 * 86400, description="seconds")] = 3600,
    ) -> dict[str, Any]:
        """Every tenant's numbers: the admin token (a bearer header, or the cookie
        ``/dashboard?token=...`` sets), unless ``STREAMREC_PUBLIC_DASHBOARD`` is on."""
        return await dashboard_data(ctx, since)

    return router


# Pages and answers naming every tenant are kept out of caches; no address is passed on.
PRIVATE = {"Cache-Control": "no-store", "Referrer-Policy": "no-referrer"}


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
  // The admin token travels in the cookie /dashboard?token=... set (same origin only).
  const res = await fetch("dashboard/data.json?since=" + encodeURIComponent(since),
                          {credentials: "same-origin"});
  if (!res.ok) {
    const reason = res.status === 401 || res.status === 403
      ? " (open /dashboard?token=<admin token> again)" : "";
    document.getElementById("updated").textContent = "error " + res.status + reason;
    return;
  }
  render(await res.json());
  document.body.setAttribute("data-loaded", "1");
}
refresh();
setInterval(refresh, 10000);
</script>
</body></html>
"""

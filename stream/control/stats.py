"""Online hit rates per variant from the feedback counters: shared by ``streamrec stats``,
``GET /v1/{tenant}/stats`` and the dashboard."""

from __future__ import annotations

import re
import time
from typing import Any

from models.errors import InvalidSettingError
from models.experiments import wilson
from state.connection import AsyncRedis as Redis
from state.feedback import VariantCounts, read_buckets, totals

_SINCE = re.compile(r"(\d+(?:\.\d+)?)\s*([smhd]?)")
_UNITS = {"": 1, "s": 1, "m": 60, "h": 3600, "d": 86400}


def parse_since(text: str) -> float:
    """``90s``, ``30m``, ``1h``, ``7d`` (or plain seconds) as seconds."""
    match = _SINCE.fullmatch(text.strip())
    if match is None or float(match.group(1)) <= 0:
        raise InvalidSettingError(f"--since {text!r}: give a duration like 30m, 1h or 7d")
    return float(match.group(1)) * _UNITS[match.group(2)]


def variant_json(c: VariantCounts) -> dict[str, Any]:
    low, high = wilson(c.hits, c.recommendations)
    return {
        "recommendations": c.recommendations,
        "hits": c.hits,
        "hit_rate": round(c.hit_rate, 6),
        "ci": [round(low, 6), round(high, 6)],
        "mean_hit_position": round(c.hit_position_sum / c.hits, 3) if c.hits else None,
        "clicks": c.clicks,
        "add_to_cart": c.add_to_cart,
        "purchases": c.purchases,
    }


def stats_json(tenant: str, counts: dict[str, VariantCounts], since_s: float) -> dict[str, Any]:
    return {
        "tenant": tenant,
        "since_s": since_s,
        "variants": {v: variant_json(c) for v, c in sorted(counts.items())},
    }


async def tenant_stats(
    client: Redis, tenant: str, since_s: float, bucket_s: int, now: float | None = None
) -> dict[str, Any]:
    now = time.time() if now is None else now
    buckets = await read_buckets(client, tenant, now - since_s, now, bucket_s)
    return stats_json(tenant, totals(buckets), since_s)


def stats_table(report: dict[str, Any]) -> str:
    lines = [
        f"tenant {report['tenant']}, last {report['since_s']:g} s",
        f"{'variant':10s} {'recs':>9s} {'hits':>8s} {'hit rate':>9s} {'95% CI':>17s} "
        f"{'purchases':>9s}",
    ]
    for variant, v in report["variants"].items():
        low, high = v["ci"]
        lines.append(
            f"{variant:10s} {v['recommendations']:9d} {v['hits']:8d} {v['hit_rate']:9.2%} "
            f"{f'{low:.2%} - {high:.2%}':>17s} {v['purchases']:9d}"
        )
    if not report["variants"]:
        lines.append("(no recommendations counted in that window)")
    return "\n".join(lines)

"""Which version serves which session: each tenant's policy (fixed, ab, bandit), cached
in the worker, the bandit's shares recomputed every few seconds from the counters, and
an experiment's status (shared by the worker, the CLI and the dashboard).

Assignment is sticky: a new session's fixed point in [0, 1) (a hash of tenant and
session id) falls in one arm's slice of the shares, stored with the session's click;
after that the session stays on that arm, or the one that served its previous list,
while it has a share (``BatchProcessor._arms``), so one session sees one variant while a
bandit's shares move.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable
from typing import Any

from models.experiments import (
    ab_decision,
    assignment_point,
    discounted,
    is_variant,
    pick_arm,
    posterior_mean,
    thompson_shares,
    wilson,
)
from state.connection import AsyncRedis as Redis
from state.feedback import VariantCounts, read_buckets, totals
from state.policies import cache_policies, read_policies

log = logging.getLogger(f"streamrec.{__name__}")

Buckets = list[tuple[int, dict[str, VariantCounts]]]


def ab_arms(control: str, candidate: str, share: float) -> dict[str, float]:
    """An A/B policy's arms: ``share`` of the sessions to the candidate."""
    return {control: round(1 - share, 6), candidate: share}


def ab_policy(
    control: str,
    candidate: str,
    share: float,
    *,
    min_recommendations: int = 1000,
    alpha: float = 0.05,
    started: float | None = None,
) -> dict[str, Any]:
    """An A/B test of ``candidate`` against ``control`` (the version in service), decided
    once each arm served ``min_recommendations``, at significance ``alpha``."""
    return {
        "policy": "ab",
        "arms": ab_arms(control, candidate, share),
        "control": control,
        "candidate": candidate,
        "started": time.time() if started is None else started,
        "min_recommendations": min_recommendations,
        "alpha": alpha,
    }


def arm_buckets(buckets: Buckets, arms: list[str]) -> dict[str, list[tuple[float, float, float]]]:
    """Per arm: ``(bucket start, hits, recommendations)`` per bucket."""
    out: dict[str, list[tuple[float, float, float]]] = {a: [] for a in arms}
    for start, per in buckets:
        for arm in arms:
            c = per.get(arm)
            if c is not None:
                out[arm].append((float(start), float(c.hits), float(c.recommendations)))
    return out


def bandit_counts(
    policy: dict[str, Any], buckets: Buckets, now: float, bucket_s: int
) -> dict[str, tuple[float, float]]:
    """Each arm of a bandit policy: its discounted ``(hits, recommendations)``."""
    arms = sorted(policy["arms"])
    discount = float(policy.get("discount", 0.999))
    per_arm = arm_buckets(buckets, arms)
    return {a: discounted(per_arm[a], now, discount, bucket_s) for a in arms}


def bandit_shares(
    policy: dict[str, Any], buckets: Buckets, now: float, bucket_s: int
) -> dict[str, float]:
    """Thompson sampling shares of a bandit policy from its arms' discounted counts."""
    counts = bandit_counts(policy, buckets, now, bucket_s)
    return thompson_shares(counts, floor=float(policy.get("floor", 0.01)))


def bandit_posteriors(
    policy: dict[str, Any], buckets: Buckets, now: float, bucket_s: int
) -> dict[str, float]:
    """Each arm's posterior mean hit rate, from the counts its shares are drawn from."""
    counts = bandit_counts(policy, buckets, now, bucket_s)
    return {arm: posterior_mean(hits, n) for arm, (hits, n) in counts.items()}


def experiment_status(
    tenant: str,
    policy: dict[str, Any] | None,
    buckets: Buckets,
    shares: dict[str, float] | None = None,
    serving: str | None = None,
    posterior: dict[str, float] | None = None,
) -> dict[str, Any]:
    """``{"tenant", "policy", "arms": {v: {share, recommendations, hits, hit_rate, ci}},
    "decision", "p_value"}`` from the counters since the experiment started. A bandit
    has no p-value (it decides by itself, "running" until stopped); its arms carry the
    ``posterior_mean`` its shares come from, when ``posterior`` is given."""
    if policy is None:
        return {
            "tenant": tenant,
            "policy": "fixed",
            "arms": {serving: {"share": 1.0}} if serving else {},
            "decision": None,
            "p_value": None,
        }
    arms = sorted(policy["arms"])
    shares = shares or policy["arms"]
    counted = totals(buckets)
    out_arms = {}
    for arm in arms:
        c = counted.get(arm, VariantCounts())
        low, high = wilson(c.hits, c.recommendations)
        out_arms[arm] = {
            "share": round(float(shares.get(arm, 0.0)), 4),
            "recommendations": c.recommendations,
            "hits": c.hits,
            "hit_rate": round(c.hit_rate, 6),
            "ci": [round(low, 6), round(high, 6)],
        }
        if posterior is not None and arm in posterior:
            out_arms[arm]["posterior_mean"] = round(posterior[arm], 6)
    kind = policy["policy"]
    control, candidate = policy.get("control"), policy.get("candidate")
    if kind == "ab" and control in out_arms and candidate in out_arms:
        c, x = out_arms[control], out_arms[candidate]
        decision, p = ab_decision(
            (c["hits"], c["recommendations"]),
            (x["hits"], x["recommendations"]),
            alpha=float(policy.get("alpha", 0.05)),
            min_recommendations=int(policy.get("min_recommendations", 1000)),
        )
    else:
        decision, p = "running", None
    status: dict[str, Any] = {
        "tenant": tenant,
        "policy": kind,
        "arms": out_arms,
        "decision": decision,
        "p_value": None if p is None else round(p, 6),
        "started": policy.get("started"),
    }
    if kind == "ab":
        status.update(control=control, candidate=candidate)
    if "rollout" in policy:
        status["rollout"] = policy["rollout"]
    return status


class PolicyDirectory:
    """The worker's view of every tenant's policy, read from Redis every ``ttl_s`` (the
    durable files refill Redis when it started empty), and the bandits' shares."""

    def __init__(
        self,
        client: Redis,
        *,
        durable: Callable[[], dict[str, dict[str, Any]]],
        ttl_s: float = 2.0,
        bucket_s: int = 60,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self._client = client
        self._durable = durable
        self._ttl_s = ttl_s
        self._bucket_s = bucket_s
        self._clock = clock
        self._policies: dict[str, dict[str, Any]] = {}
        self._at = float("-inf")
        self._bandit: dict[str, dict[str, float]] = {}  # tenant -> shares

    async def policies(self) -> dict[str, dict[str, Any]]:
        now = time.monotonic()
        if now - self._at > self._ttl_s:
            policies = await read_policies(self._client)
            if policies is None:
                policies = await asyncio.to_thread(self._durable)
                await cache_policies(self._client, policies)
                if policies:
                    log.info("tenant policies loaded into Redis from the registry: %s", policies)
            self._policies = policies
            self._at = now
        return self._policies

    async def get(self, tenant: str) -> dict[str, Any] | None:
        """The tenant's policy, None for fixed."""
        policy = (await self.policies()).get(tenant)
        if policy is None or policy.get("policy") == "fixed":
            return None
        return policy

    def shares(self, tenant: str, policy: dict[str, Any]) -> list[tuple[str, float]]:
        """The arms' shares in a fixed order (a bandit's as last computed)."""
        shares = self._bandit.get(tenant) if policy["policy"] == "bandit" else None
        if shares is None:
            shares = policy["arms"]
        return sorted(shares.items())

    def assign(self, tenant: str, session_id: str, shares: list[tuple[str, float]]) -> str:
        return pick_arm(assignment_point(tenant, session_id), shares)

    async def refresh_bandits(self) -> None:
        """Recompute every bandit's shares from its counters (every few seconds, never
        per event)."""
        now = self._clock()
        for tenant, policy in (await self.policies()).items():
            if policy.get("policy") != "bandit":
                continue
            since = float(policy.get("started", now - 3600))
            buckets = await read_buckets(
                self._client, tenant, since, now, self._bucket_s, is_variant
            )
            shares = bandit_shares(policy, buckets, now, self._bucket_s)
            if shares != self._bandit.get(tenant):
                log.debug("tenant %s: bandit shares %s", tenant, shares)
            self._bandit[tenant] = shares
        for tenant in list(self._bandit):
            if (self._policies.get(tenant) or {}).get("policy") != "bandit":
                del self._bandit[tenant]

    def bandit_shares_now(self) -> dict[str, dict[str, float]]:
        return dict(self._bandit)

    def invalidate(self) -> None:
        self._at = float("-inf")

"""Staged rollout: a candidate that passed the offline gate serves 10 %, then 50 %, then
100 % of a tenant's sessions while its online hit rate is not worse than the version in
service's, and is rolled back as soon as it is.

The rollout is an A/B policy with a ``rollout`` entry (stage, shares, when the stage
began), kept in the registry like any policy; the trainer process checks it every few
seconds (``check_rollouts``), from the feedback counters since the stage began. At each
look the candidate needs a minimum of recommendations per arm; then a one-sided
two-proportion test says ``worse`` (roll back) or ``advance`` (see
``models.experiments.staged_verdict``). Every step is logged and appended to the
tenant's registry history (``HISTORY.jsonl``, entries ``rollout-*``).
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from typing import Any

from models.errors import StreamrecError
from models.experiments import staged_verdict
from models.policy_file import log_rollout, read_policy
from models.registry import DamagedFileError, Registry
from state.connection import RedisError, SyncRedis, sync_client
from state.feedback import read_buckets_sync, totals
from state.notify import notify_model_change
from stream.config import Settings
from stream.control.experiments import apply_policy

log = logging.getLogger(f"streamrec.{__name__}")

STAGES = (0.1, 0.5, 1.0)


@dataclass(frozen=True)
class RolloutSettings:
    min_recommendations: int = 1000  # per arm and stage, before a stage may be judged
    alpha: float = 0.05
    stages: tuple[float, ...] = STAGES


def start_rollout(
    settings: Settings, tenant: str, candidate: str, control: str, rollout: RolloutSettings
) -> dict[str, Any]:
    """The candidate's first stage: an A/B arm with the first stage's share."""
    now = time.time()
    share = rollout.stages[0]
    policy = {
        "policy": "ab",
        "arms": {control: round(1 - share, 6), candidate: share},
        "control": control,
        "candidate": candidate,
        "started": now,
        "min_recommendations": rollout.min_recommendations,
        "alpha": rollout.alpha,
        "rollout": {"stages": list(rollout.stages), "stage": 0, "stage_started": now},
    }
    apply_policy(settings, tenant, policy)
    _record(settings, tenant, "rollout-start", policy, share=share)
    return policy


def _record(
    settings: Settings, tenant: str, action: str, policy: dict[str, Any], **extra: Any
) -> None:
    entry = {
        "action": action,
        "candidate": policy["candidate"],
        "control": policy["control"],
        "ts": time.time(),
        **extra,
    }
    log_rollout(Registry(settings.registry_dir), tenant, entry)
    log.info(
        "tenant %s: %s %s (control %s)%s",
        tenant,
        action,
        policy["candidate"],
        policy["control"],
        "".join(f" {k}={v}" for k, v in extra.items()),
    )


def check_rollouts(settings: Settings, now: float | None = None) -> list[tuple[str, str]]:
    """One look at every running rollout; ``[(tenant, what happened)]`` for those that
    moved (``advance``, ``promote``, ``rollback``)."""
    registry = Registry(settings.registry_dir)
    now = time.time() if now is None else now
    client = sync_client(settings.redis)
    moved: list[tuple[str, str]] = []
    try:
        for tenant in registry.tenants():
            try:
                step = _look_at(settings, registry, client, tenant, now)
            except DamagedFileError as exc:
                _damaged(tenant, exc)
                continue
            _damaged(tenant, None)
            if step is not None:
                moved.append((tenant, step))
    finally:
        client.close()
    return moved


def _look_at(
    settings: Settings, registry: Registry, client: SyncRedis, tenant: str, now: float
) -> str | None:
    if not _has_rollout(read_policy(registry, tenant)):
        return None  # most tenants: one read, no lock
    with registry.locked(tenant):
        # Read again under the lock: the step is decided from, and replaces, this policy.
        policy = read_policy(registry, tenant)
        if not _has_rollout(policy) or (registry.mode(tenant) or "on") != "on":
            return None  # freeze keeps the policy and arms as they are
        return _look(settings, registry, client, tenant, policy, now)  # type: ignore[arg-type]


def _has_rollout(policy: dict[str, Any] | None) -> bool:
    return policy is not None and "rollout" in policy


# Tenant -> the damage last logged, so a damaged file is logged once, not at every look.
_reported: dict[str, str] = {}


def _damaged(tenant: str, exc: DamagedFileError | None) -> None:
    said = _reported.get(tenant)
    if exc is None:
        if said is not None:
            del _reported[tenant]
            log.info("tenant %s: control files readable again; rollouts looked at", tenant)
        return
    if said != str(exc):
        _reported[tenant] = str(exc)
        log.error("%s; its rollout waits until the file is repaired", exc)


def look_at_rollouts(settings: Settings) -> list[tuple[str, str]]:
    """:func:`check_rollouts` for the trainer's loop: Redis away is a warning and no
    step (the rollouts wait where they are), not the end of the trainer. A step whose
    policy reached the registry but not Redis is a ``StreamrecError`` saying so."""
    try:
        return check_rollouts(settings)
    except (RedisError, OSError, StreamrecError) as exc:
        log.warning(
            "rollouts not looked at: Redis at %s unavailable (%s); next look in a while",
            settings.redis_display,
            exc,
        )
        return []


def _look(
    settings: Settings,
    registry: Registry,
    client: SyncRedis,
    tenant: str,
    policy: dict[str, Any],
    now: float,
) -> str | None:
    rollout = policy["rollout"]
    control, candidate = policy["control"], policy["candidate"]
    buckets = read_buckets_sync(
        client, tenant, float(rollout["stage_started"]), now, settings.feedback_bucket_s
    )
    counted = totals(buckets)
    c, x = counted.get(control), counted.get(candidate)
    arms = (
        (c.hits if c else 0, c.recommendations if c else 0),
        (x.hits if x else 0, x.recommendations if x else 0),
    )
    verdict = staged_verdict(
        *arms,
        alpha=float(policy.get("alpha", 0.05)),
        min_recommendations=int(policy.get("min_recommendations", 1000)),
    )
    rates = {
        "control_hit_rate": round(arms[0][0] / arms[0][1], 5) if arms[0][1] else None,
        "candidate_hit_rate": round(arms[1][0] / arms[1][1], 5) if arms[1][1] else None,
        "recommendations": [arms[0][1], arms[1][1]],
    }
    if verdict == "hold":
        return None
    if verdict == "worse":
        apply_policy(settings, tenant, None)
        _record(settings, tenant, "rollout-rollback", policy, **rates)
        return "rollback"
    stages = rollout["stages"]
    nxt = int(rollout["stage"]) + 1
    if nxt >= len(stages) or stages[nxt] >= 1.0:
        registry.promote(tenant, candidate)
        apply_policy(settings, tenant, None)
        notify_model_change(settings.redis, tenant, candidate)
        _record(settings, tenant, "rollout-promote", policy, **rates)
        return "promote"
    share = float(stages[nxt])
    policy = {
        **policy,
        "arms": {control: round(1 - share, 6), candidate: share},
        "rollout": {**rollout, "stage": nxt, "stage_started": now},
    }
    apply_policy(settings, tenant, policy)
    _record(settings, tenant, "rollout-stage", policy, share=share, **rates)
    return "advance"

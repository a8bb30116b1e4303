"""A tenant's experiments and bandits, shared by ``streamrec experiment|bandit`` and the
admin API: which model versions serve its sessions, and what the online hit rates say.

A policy is written to the registry (durable) first, then to Redis's cache, and the
workers are told at once. Errors a caller can act on are ``StreamrecError``s; Redis
unreachable while reading the counters is a ``RedisError`` / ``OSError``.
"""

from __future__ import annotations

import asyncio
import time
from typing import Any

from models.errors import StreamrecError
from models.policy_file import log_rollout, read_policy, write_policy
from models.registry import Registry, UnknownVersionError
from state.connection import RedisError, async_client, sync_client
from state.feedback import read_buckets
from state.notify import notify_model_change
from state.policies import set_policy
from stream.config import Settings
from stream.control.policies import bandit_posteriors, bandit_shares, experiment_status

ACTIONS = ("promote", "keep")
_POLICY_NAMES = {"ab": "an A/B test", "bandit": "a bandit"}


def _version(registry: Registry, tenant: str, version: str) -> str:
    """A version that exists and loads (fully validated), else a one-line error."""
    known = [info.version for info in registry.versions(tenant)]
    if version not in known:
        raise UnknownVersionError(
            f"tenant {tenant!r} has no version {version} (versions: {', '.join(known) or 'none'})"
        )
    registry.load(tenant, version)
    return version


def _require_on(registry: Registry, tenant: str) -> None:
    mode = registry.mode(tenant) or "on"
    if mode != "on":
        raise StreamrecError(f"tenant {tenant!r} is {mode}: switch it on first")


def _none_running(registry: Registry, tenant: str) -> None:
    """A new experiment must not silently replace a running one (its counts and, for a
    staged rollout, its record in the history would end without a decision)."""
    running = read_policy(registry, tenant)
    if running is None:
        return
    what = (
        "a staged rollout"
        if "rollout" in running
        else _POLICY_NAMES.get(running["policy"], "a policy")
    )
    raise StreamrecError(
        f"tenant {tenant!r} runs {what} over {', '.join(sorted(running['arms']))}: "
        f"stop it first (`streamrec experiment stop {tenant} --keep` or --promote)"
    )


def apply_policy(settings: Settings, tenant: str, policy: dict[str, Any] | None) -> int:
    """Write the policy durably (registry), then to Redis's cache, both under the
    tenant's lock (so two changes reach both in the same order); tell the workers.
    A caller that decided from the policy on disk holds the lock around both. The
    number of workers that heard."""
    registry = Registry(settings.registry_dir)
    client = sync_client(settings.redis)
    try:
        with registry.locked(tenant):
            write_policy(registry, tenant, policy)
            set_policy(client, tenant, policy)
    except RedisError as exc:
        raise StreamrecError(
            f"policy saved in the registry, but Redis at {settings.redis_display} is "
            f"unreachable ({exc}); workers pick it up when Redis is back"
        ) from None
    finally:
        client.close()
    return notify_model_change(settings.redis, tenant, None)


def status(settings: Settings, tenant: str, now: float | None = None) -> dict[str, Any]:
    """The experiment's status as ``experiment status --json`` prints it (runs its own
    event loop: call it from a thread when one is running)."""
    registry = Registry(settings.registry_dir)
    policy = read_policy(registry, tenant)
    serving = registry.current_version(tenant)
    now = time.time() if now is None else now
    if policy is None:
        return experiment_status(tenant, None, [], serving=serving)

    async def read() -> list:
        client = async_client(settings.redis)
        try:
            since = float(policy.get("started", now - 3600))
            return await read_buckets(client, tenant, since, now, settings.feedback_bucket_s)
        finally:
            await client.aclose()

    buckets = asyncio.run(read())
    shares = posterior = None
    if policy["policy"] == "bandit":
        shares = bandit_shares(policy, buckets, now, settings.feedback_bucket_s)
        posterior = bandit_posteriors(policy, buckets, now, settings.feedback_bucket_s)
    report = experiment_status(tenant, policy, buckets, shares, serving, posterior)
    report["serving"] = serving
    return report


def start_ab(
    settings: Settings, tenant: str, variant: str, share: float, min_recommendations: int = 1000
) -> tuple[dict[str, Any], int]:
    """An A/B test: ``variant`` to ``share`` of the sessions, the version in service to
    the rest. The policy and the number of workers told."""
    if not 0.0 < share < 1.0:
        raise StreamrecError(f"share must be between 0 and 1 (exclusive), not {share}")
    if min_recommendations < 1:
        raise StreamrecError("min_recommendations must be at least 1")
    registry = Registry(settings.registry_dir)
    control = registry.current_version(tenant)
    if control is None:
        raise StreamrecError(f"tenant {tenant!r} has no version in service to compare with")
    _version(registry, tenant, variant)
    if variant == control:
        raise StreamrecError(f"{variant} is the version in service already")
    policy = {
        "policy": "ab",
        "arms": {control: round(1 - share, 6), variant: share},
        "control": control,
        "candidate": variant,
        "started": time.time(),
        "min_recommendations": min_recommendations,
        "alpha": 0.05,
    }
    return policy, _start(settings, registry, tenant, policy)


def start_bandit(
    settings: Settings,
    tenant: str,
    versions: list[str] | tuple[str, ...],
    discount: float = 0.999,
    floor: float = 0.01,
) -> tuple[dict[str, Any], int]:
    """A Thompson-sampling bandit over ``versions`` (two or more)."""
    if len(set(versions)) < 2:
        raise StreamrecError("a bandit needs at least two different versions")
    if not 0.0 < discount <= 1.0 or not 0.0 <= floor <= 0.5:
        raise StreamrecError("discount must be in (0, 1] and floor in [0, 0.5]")
    registry = Registry(settings.registry_dir)
    for v in versions:
        _version(registry, tenant, v)
    arms = sorted(set(versions))
    policy = {
        "policy": "bandit",
        "arms": {v: round(1 / len(arms), 6) for v in arms},
        "discount": discount,
        "floor": floor,
        "started": time.time(),
    }
    return policy, _start(settings, registry, tenant, policy)


def _start(settings: Settings, registry: Registry, tenant: str, policy: dict[str, Any]) -> int:
    """The checks that nothing else runs and the write, under the tenant's lock: two
    experiments started at once cannot both pass."""
    with registry.locked(tenant):
        _require_on(registry, tenant)
        _none_running(registry, tenant)
        return apply_policy(settings, tenant, policy)


def stop(settings: Settings, tenant: str, action: str) -> tuple[str | None, int]:
    """End the experiment or bandit, ``promote`` (the candidate; a bandit's best arm by
    hit rate) or ``keep`` the version in service. The version serving afterwards and the
    number of workers told."""
    if action not in ACTIONS:
        raise StreamrecError(f"action must be one of {', '.join(ACTIONS)}")
    registry = Registry(settings.registry_dir)
    with registry.locked(tenant):  # the decision and its writes see the same policy
        policy = read_policy(registry, tenant)
        if policy is None:
            raise StreamrecError(f"tenant {tenant!r} runs no experiment")
        if action == "promote":
            if policy["policy"] == "ab":
                winner = policy["candidate"]
            else:
                arms = status(settings, tenant)["arms"]
                winner = max(arms, key=lambda a: (arms[a]["hit_rate"], arms[a]["recommendations"]))
            if winner != registry.current_version(tenant):
                registry.promote(tenant, winner)
        if "rollout" in policy:
            # A staged rollout ended by hand: its history says so, as it says every step.
            log_rollout(
                registry,
                tenant,
                {"action": "rollout-stop", "candidate": policy["candidate"],
                 "control": policy["control"], "decision": action, "ts": time.time()},
            )  # fmt: skip
        heard = apply_policy(settings, tenant, None)
    return registry.current_version(tenant), heard

"""A tenant's serving policy, kept durably in the registry (``<tenant>/POLICY.json``),
beside its MODE: a Redis restart must not end an experiment. Redis caches it
(``state.policies``).

``{"policy": "fixed" | "ab" | "bandit", "arms": {"v3": share, ...}, "control": "v3",
"candidate": "v5", "discount": 0.999, "started": unix_ts, "min_recommendations": N,
"alpha": 0.05, "rollout": {...} (a staged rollout, see stream.retrain.rollout)}``; no file (or
``fixed``) means today's behaviour: the CURRENT version serves everything.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from models.errors import StreamrecError
from models.experiments import POLICIES, is_variant
from models.registry import DamagedFileError, Registry, _atomic_write

POLICY = "POLICY.json"


def _path(registry: Registry, tenant: str) -> Path:
    return registry.pointer_path(tenant).parent / POLICY


def check_policy(policy: dict[str, Any]) -> dict[str, Any]:
    """The policy if well formed; raises StreamrecError saying what is wrong."""
    kind = policy.get("policy")
    if kind not in POLICIES:
        raise StreamrecError(f"policy must be one of {', '.join(POLICIES)}, not {kind!r}")
    arms = policy.get("arms") or {}
    if kind != "fixed":
        if not isinstance(arms, dict) or len(arms) < 2:
            raise StreamrecError(f"a {kind} policy needs at least two arms")
        for arm, share in arms.items():
            if not is_variant(arm) or arm == "popular":
                raise StreamrecError(f"arm {arm!r} is not a version name (like v3)")
            if not isinstance(share, int | float) or not 0 <= share <= 1:
                raise StreamrecError(f"arm {arm}: share {share!r} is not between 0 and 1")
    return policy


def read_policy(registry: Registry, tenant: str) -> dict[str, Any] | None:
    """The tenant's policy; None when it has none (fixed). ``DamagedFileError`` when the
    file cannot be read or is not a policy."""
    text = registry.control_text(tenant, POLICY)
    if text is None:
        return None
    try:
        policy = json.loads(text)
    except (ValueError, RecursionError) as exc:
        raise DamagedFileError(tenant, _path(registry, tenant), f"not valid JSON: {exc}") from None
    if not isinstance(policy, dict):
        raise DamagedFileError(tenant, _path(registry, tenant), "not a JSON object")
    try:
        check_policy(policy)
    except StreamrecError as exc:
        raise DamagedFileError(tenant, _path(registry, tenant), str(exc)) from None
    if policy.get("policy") == "fixed":
        return None
    return policy


def write_policy(registry: Registry, tenant: str, policy: dict[str, Any] | None) -> None:
    """Set the tenant's policy (None: back to fixed), on disk when this returns. A
    decision taken from the policy read before belongs under ``registry.locked(tenant)``
    with this write."""
    if policy is None:
        policy = {"policy": "fixed"}
    text = json.dumps(check_policy(policy), sort_keys=True) + "\n"
    with registry.locked(tenant):
        _atomic_write(_path(registry, tenant), text)


def all_policies(registry: Registry) -> dict[str, dict[str, Any]]:
    """Every tenant's policy other than fixed (tenants whose policy file is damaged are
    left out: see ``Registry.each_tenant`` to know which)."""
    found, _ = registry.each_tenant(lambda t: read_policy(registry, t))
    return {t: p for t, p in found.items() if p is not None}


def log_rollout(registry: Registry, tenant: str, entry: dict[str, Any]) -> None:
    """Append a rollout step to the tenant's registry history (``HISTORY.jsonl``). The
    entry names the ``candidate``, not a ``version``: promotions and rollbacks, which
    decide what is in service, stay the only entries with a version."""
    assert "version" not in entry
    registry.append_history(tenant, entry)


def rollout_history(registry: Registry, tenant: str) -> list[dict[str, Any]]:
    return [
        e
        for e in registry.history_entries(tenant)
        if str(e.get("action", "")).startswith("rollout-")
    ]

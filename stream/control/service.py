"""The control plane: every change of a tenant's control state, for the CLI, the admin
API, the retrain job and staged rollouts alike. Modes, API keys, serving rules,
promotions and rollbacks, experiments, bandits and rollouts.

Each change is written to the registry (durable) first, then to Redis's cache, both under
the tenant's lock (two changes reach both in the same order), then announced (the change
notice) so workers drop their cached copy at once. A change is on disk before it is
answered: with Redis away it raises :class:`CacheBehind`, and the workers' caches catch up
from the registry, whose changed control files they re-read.
"""

from __future__ import annotations

import hashlib
import logging
import secrets
import time
from collections.abc import Callable, Iterable
from typing import Any, TypeVar

from models.errors import StreamrecError
from models.experiments import is_variant
from models.policy_file import log_rollout, read_policy, write_policy
from models.registry import Registry, UnknownVersionError
from models.rules import ServingRules
from state.connection import RedisError, RedisSettings, SyncRedis, sync_client
from state.control import add_key_sync, cache_tenant_sync, revoke_key_sync, set_rules_sync
from state.feedback import read_buckets_sync, totals
from state.notify import notify_model_change
from state.policies import set_policy
from state.tenants import list_tenants
from state.tenants import set_mode as cache_mode
from stream.config import Settings
from stream.control.policies import (
    Buckets,
    ab_policy,
    bandit_posteriors,
    bandit_shares,
    experiment_status,
)
from stream.control.stats import stats_json

T = TypeVar("T")
log = logging.getLogger(f"streamrec.{__name__}")

KEY_PREFIX = "srk_"
ACTIONS = ("promote", "keep")  # how an experiment ends
# What a read of Redis raises when Redis is away (a change raises CacheBehind instead).
UNREACHABLE: tuple[type[Exception], ...] = (RedisError, OSError)
_POLICY_NAMES = {"ab": "an A/B test", "bandit": "a bandit"}


def key_digest(key: str) -> str:
    """How a tenant key is stored and looked up: its SHA-256, hex."""
    return hashlib.sha256(key.encode()).hexdigest()


class UnknownTenantError(StreamrecError):
    """An operation named a tenant that was never created."""


class CacheBehind(StreamrecError):
    """A change reached the registry (durable) but not Redis's cache."""


class RedisCache:
    """Redis's copy of the control state and the change notice, through one client (a
    command that only reads the registry never connects)."""

    def __init__(self, settings: RedisSettings) -> None:
        self.client: SyncRedis = sync_client(settings)  # connects at its first command

    def close(self) -> None:
        self.client.close()

    def add_tenant(self, tenant: str) -> None:
        cache_tenant_sync(self.client, tenant)

    def set_mode(self, tenant: str, mode: str) -> None:
        cache_mode(self.client, tenant, mode)

    def set_rules(self, tenant: str, rules: dict[str, Any]) -> None:
        set_rules_sync(self.client, tenant, rules)

    def add_key(self, digest: str, tenant: str, key_id: str) -> None:
        add_key_sync(self.client, digest, tenant, key_id)

    def revoke_key(self, digest: str, tenant: str, key_id: str) -> None:
        revoke_key_sync(self.client, digest, tenant, key_id)

    def set_policy(self, tenant: str, policy: dict[str, Any] | None) -> None:
        set_policy(self.client, tenant, policy)

    def announce(self, tenant: str, version: str | None) -> int:
        """The change notice; the number of workers that heard (0, logged, when Redis is
        away: workers also look at the registry on their own timer)."""
        return notify_model_change(self.client, tenant, version)

    def modes(self) -> dict[str, str]:
        return list_tenants(self.client)

    def buckets(self, tenant: str, since: float, until: float, bucket_s: int) -> Buckets:
        return read_buckets_sync(self.client, tenant, since, until, bucket_s, is_variant)


class Control:
    """The one service that changes tenants' control state (see the module's doc).
    Holds one Redis client: close it (or use ``with``) when done."""

    def __init__(self, settings: Settings, cache: RedisCache | None = None) -> None:
        self.settings = settings
        self.registry = Registry(settings.registry_dir)
        self.cache = cache if cache is not None else RedisCache(settings.redis)

    def __enter__(self) -> Control:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        self.cache.close()

    # -- the one way a change is made ----------------------------------------------------
    def _change(
        self,
        tenant: str,
        what: str,
        durable: Callable[[], T],
        cached: Callable[[RedisCache], None] | None = None,
        version: str | None = None,
    ) -> tuple[T, int]:
        """``durable()`` (the registry), then ``cached(cache)`` (Redis), both under the
        tenant's lock; then the notice. Its result and the number of workers that heard."""
        with self.registry.locked(tenant):
            result = durable()
            if cached is not None:
                try:
                    cached(self.cache)
                except UNREACHABLE as exc:
                    raise CacheBehind(
                        f"{what} saved in the registry, but Redis at "
                        f"{self.settings.redis_display} is unreachable ({exc}); workers pick "
                        "it up when Redis is back"
                    ) from None
        return result, self.cache.announce(tenant, version)

    # -- tenants -------------------------------------------------------------------------
    def require(self, tenant: str) -> None:
        if not self.registry.exists(tenant):
            raise UnknownTenantError(
                f"unknown tenant {tenant!r}: create it first (`streamrec tenant create {tenant}`)"
            )

    def create(self, tenant: str) -> bool:
        """True if created, False if it existed already."""
        created, _ = self._change(
            tenant,
            "tenant",
            lambda: self.registry.create_tenant(tenant),
            lambda cache: cache.add_tenant(tenant),
        )
        return created

    def set_mode(self, tenant: str, mode: str) -> int:
        self.require(tenant)
        _, heard = self._change(
            tenant,
            "mode",
            lambda: self.registry.set_mode(tenant, mode),
            lambda cache: cache.set_mode(tenant, mode),
        )
        return heard

    def tenant_modes(self) -> dict[str, str]:
        """Every tenant known to the registry or to Redis (one that has only sent clicks),
        with its mode: the registry's wherever it has one."""
        return {**self.cache.modes(), **self.registry.tenant_modes()}

    def rules(self, tenant: str) -> dict[str, Any]:
        self.require(tenant)
        return ServingRules.from_dict(self.registry.rules(tenant)).to_dict()

    def set_rules(self, tenant: str, rules: ServingRules) -> dict[str, Any]:
        self.require(tenant)
        data = rules.to_dict()
        self._change(
            tenant,
            "serving rules",
            lambda: self.registry.set_rules(tenant, data),
            lambda cache: cache.set_rules(tenant, data),
        )
        return data

    def keys(self, tenant: str) -> dict[str, dict[str, Any]]:
        """Key id -> its entry (creation time, ...), never the key."""
        self.require(tenant)
        return self.registry.keys(tenant)

    def create_key(self, tenant: str) -> tuple[str, str]:
        """A new key (key id, key): the key is returned once and stored as a digest (with
        Redis away too, with a warning: the workers learn of it from the registry)."""
        self.require(tenant)
        key_id = secrets.token_hex(4)
        key = f"{KEY_PREFIX}{key_id}_{secrets.token_urlsafe(32)}"
        sha = key_digest(key)
        try:
            self._change(
                tenant,
                "key",
                lambda: self.registry.add_key(tenant, key_id, sha),
                lambda cache: cache.add_key(sha, tenant, key_id),
            )
        except CacheBehind as exc:  # the key is valid: this answer is its only copy
            log.warning("tenant %s: %s", tenant, exc)
        return key_id, key

    def revoke_key(self, tenant: str, key_id: str) -> None:
        self.require(tenant)
        if key_id.startswith(KEY_PREFIX):  # the whole key given: its id is inside
            key_id = key_id[len(KEY_PREFIX) :].split("_", 1)[0]
        digest = ""

        def durable() -> None:
            nonlocal digest
            digest = self.registry.revoke_key(tenant, key_id) or ""
            if not digest:
                raise UnknownTenantError(f"tenant {tenant!r} has no active key {key_id!r}")

        self._change(
            tenant, "revocation", durable, lambda cache: cache.revoke_key(digest, tenant, key_id)
        )

    # -- models --------------------------------------------------------------------------
    def promote(self, tenant: str, version: str) -> int:
        """Validate ``version`` and put it in service; the number of workers told."""
        self.require(tenant)
        _, heard = self._change(
            tenant, "promotion", lambda: self.registry.promote(tenant, version), version=version
        )
        return heard

    def rollback(self, tenant: str, version: str | None = None) -> tuple[str, int]:
        """Back to ``version`` (default: the one promoted before): it and the number of
        workers told."""
        self.require(tenant)
        with self.registry.locked(tenant):
            after = self.registry.rollback(tenant, version)
        return after, self.cache.announce(tenant, after)

    def promote_candidate(self, tenant: str, version: str) -> int:
        """The retrain job's promotion. The tenant must still be on and run no policy (it
        may have been frozen, or an experiment started, while the candidate trained):
        a ``StreamrecError`` otherwise, and nothing changes."""
        with self.registry.locked(tenant):
            self._free(tenant)
            return self.promote(tenant, version)

    # -- experiments, bandits and rollouts -----------------------------------------------
    def apply_policy(self, tenant: str, policy: dict[str, Any] | None) -> int:
        """Set the tenant's policy (None: one version serves every session). A caller that
        decided from the policy on disk holds the tenant's lock around this. The number of
        workers told."""
        _, heard = self._change(
            tenant,
            "policy",
            lambda: write_policy(self.registry, tenant, policy),
            lambda cache: cache.set_policy(tenant, policy),
        )
        return heard

    def start_ab(
        self, tenant: str, variant: str, share: float, min_recommendations: int = 1000
    ) -> tuple[dict[str, Any], int]:
        """An A/B test: ``variant`` to ``share`` of the sessions, the version in service to
        the rest. The policy and the number of workers told."""
        if not 0.0 < share < 1.0:
            raise StreamrecError(f"share must be between 0 and 1 (exclusive), not {share}")
        if min_recommendations < 1:
            raise StreamrecError("min_recommendations must be at least 1")
        self.require(tenant)
        control = self.registry.current_version(tenant)
        if control is None:
            raise StreamrecError(f"tenant {tenant!r} has no version in service to compare with")
        self._loads(tenant, variant)
        if variant == control:
            raise StreamrecError(f"{variant} is the version in service already")
        policy = ab_policy(control, variant, share, min_recommendations=min_recommendations)
        return policy, self._start(tenant, policy)

    def start_bandit(
        self,
        tenant: str,
        versions: Iterable[str],
        discount: float = 0.999,
        floor: float = 0.01,
    ) -> tuple[dict[str, Any], int]:
        """A Thompson-sampling bandit over ``versions`` (two or more)."""
        arms = sorted(set(versions))
        if len(arms) < 2:
            raise StreamrecError("a bandit needs at least two different versions")
        if not 0.0 < discount <= 1.0 or not 0.0 <= floor <= 0.5:
            raise StreamrecError("discount must be in (0, 1] and floor in [0, 0.5]")
        self.require(tenant)
        for v in arms:
            self._loads(tenant, v)
        policy = {
            "policy": "bandit",
            "arms": {v: round(1 / len(arms), 6) for v in arms},
            "discount": discount,
            "floor": floor,
            "started": time.time(),
        }
        return policy, self._start(tenant, policy)

    def start_rollout(self, tenant: str, policy: dict[str, Any]) -> int:
        """A staged rollout's first stage (``policy``: an A/B policy with its ``rollout``)."""
        return self._start(tenant, policy)

    def stop(self, tenant: str, action: str) -> tuple[str | None, int]:
        """End the experiment or bandit, ``promote`` (the candidate; a bandit's best arm by
        hit rate) or ``keep`` the version in service. The version serving afterwards and
        the number of workers told."""
        if action not in ACTIONS:
            raise StreamrecError(f"action must be one of {', '.join(ACTIONS)}")
        self.require(tenant)
        with self.registry.locked(tenant):  # the decision and its writes see one policy
            policy = read_policy(self.registry, tenant)
            if policy is None:
                raise StreamrecError(f"tenant {tenant!r} runs no experiment")
            if action == "promote":
                if policy["policy"] == "ab":
                    winner = policy["candidate"]
                else:
                    arms = self.experiment_status(tenant)["arms"]
                    winner = max(
                        arms, key=lambda a: (arms[a]["hit_rate"], arms[a]["recommendations"])
                    )
                if winner != self.registry.current_version(tenant):
                    self.registry.promote(tenant, winner)
            if "rollout" in policy:
                # A staged rollout ended by hand: its history says so, as it says every step.
                log_rollout(
                    self.registry,
                    tenant,
                    {"action": "rollout-stop", "candidate": policy["candidate"],
                     "control": policy["control"], "decision": action, "ts": time.time()},
                )  # fmt: skip
            heard = self.apply_policy(tenant, None)
            return self.registry.current_version(tenant), heard

    def end_rollout(self, tenant: str, promote: str | None) -> int:
        """A staged rollout's last step: ``promote`` its candidate (None: roll back to the
        version in service) and one version serves every session again."""
        with self.registry.locked(tenant):
            if promote is not None:
                self.registry.promote(tenant, promote)
            return self.apply_policy(tenant, None)

    # -- reading what the counters say ---------------------------------------------------
    def experiment_status(self, tenant: str, now: float | None = None) -> dict[str, Any]:
        """The experiment's status as ``experiment status --json`` prints it."""
        policy = read_policy(self.registry, tenant)
        serving = self.registry.current_version(tenant)
        now = time.time() if now is None else now
        if policy is None:
            return experiment_status(tenant, None, [], serving=serving)
        since = float(policy.get("started", now - 3600))
        bucket_s = self.settings.feedback_bucket_s
        buckets = self.cache.buckets(tenant, since, now, bucket_s)
        shares = posterior = None
        if policy["policy"] == "bandit":
            shares = bandit_shares(policy, buckets, now, bucket_s)
            posterior = bandit_posteriors(policy, buckets, now, bucket_s)
        report = experiment_status(tenant, policy, buckets, shares, serving, posterior)
        report["serving"] = serving
        return report

    def stats(self, tenant: str, since_s: float, now: float | None = None) -> dict[str, Any]:
        """Hit rates per variant over the last ``since_s`` seconds (``streamrec stats``)."""
        now = time.time() if now is None else now
        buckets = self.cache.buckets(tenant, now - since_s, now, self.settings.feedback_bucket_s)
        return stats_json(tenant, totals(buckets), since_s)

    # -- checks ----------------------------------------------------------------------------
    def _loads(self, tenant: str, version: str) -> None:
        """The version exists and loads (fully validated), else a one-line error."""
        known = [info.version for info in self.registry.versions(tenant)]
        if version not in known:
            raise UnknownVersionError(
                f"tenant {tenant!r} has no version {version} "
                f"(versions: {', '.join(known) or 'none'})"
            )
        self.registry.load(tenant, version)

    def _start(self, tenant: str, policy: dict[str, Any]) -> int:
        """The checks and the write under the tenant's lock: two experiments started at
        once cannot both pass."""
        with self.registry.locked(tenant):
            self._free(tenant)
            return self.apply_policy(tenant, policy)

    def _free(self, tenant: str) -> None:
        """The tenant is on and runs no policy (a caller holds its lock)."""
        mode = self.registry.mode(tenant) or "on"
        if mode != "on":
            raise StreamrecError(f"tenant {tenant!r} is {mode}: switch it on first")
        running = read_policy(self.registry, tenant)
        if running is not None:
            what = (
                "a staged rollout"
                if "rollout" in running
                else _POLICY_NAMES.get(running["policy"], "a policy")
            )
            raise StreamrecError(
                f"tenant {tenant!r} runs {what} over {', '.join(sorted(running['arms']))}: "
                f"stop it first (`streamrec experiment stop {tenant} --keep` or --promote)"
            )

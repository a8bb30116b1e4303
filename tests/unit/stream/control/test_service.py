"""The control service on a real registry directory, with Redis's side recorded in memory:
each change reaches the registry first, then the cache under the tenant's lock, then the
notice; with Redis away the change is durable and the error says so."""

from __future__ import annotations

import fcntl
import os
from pathlib import Path
from typing import Any

import pytest

from models.bundle import ModelBundle
from models.datasets import synthetic_sessions
from models.errors import StreamrecError
from models.policy_file import read_policy, rollout_history, write_policy
from models.registry import LOCK, LOCKS, Registry
from models.rules import ServingRules
from models.train import TrainParams, train_model
from state.connection import RedisError
from state.feedback import VariantCounts
from stream.config import Settings
from stream.control.policies import ab_policy
from stream.control.service import CacheBehind, Control, UnknownTenantError, key_digest


def _locked_elsewhere(registry: Registry, tenant: str) -> bool:
    """Whether the tenant's lock is held (an attempt from another file description fails)."""
    fd = os.open(registry.root / LOCKS / f"{tenant}{LOCK}", os.O_RDWR | os.O_CREAT)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        return True
    finally:
        os.close(fd)
    return False


class FakeCache:
    """Redis's side in memory: every call with what the registry held at that moment and
    whether the tenant's lock was held."""

    def __init__(self, registry: Registry, away: bool = False) -> None:
        self.registry = registry
        self.away = away
        self.calls: list[tuple[Any, ...]] = []
        self.buckets_given: list[tuple[int, dict[str, VariantCounts]]] = []
        self.closed = False

    def _write(self, name: str, tenant: str, *args: Any) -> None:
        if self.away:
            raise RedisError("Connection refused")
        self.calls.append((name, tenant, *args, _locked_elsewhere(self.registry, tenant)))

    def add_tenant(self, tenant: str) -> None:
        self._write("tenant", tenant, self.registry.exists(tenant))

    def set_mode(self, tenant: str, mode: str) -> None:
        self._write("mode", tenant, mode, self.registry.mode(tenant))

    def set_rules(self, tenant: str, rules: dict[str, Any]) -> None:
        self._write("rules", tenant, rules, self.registry.rules(tenant))

    def add_key(self, digest: str, tenant: str, key_id: str) -> None:
        self._write("key", tenant, key_id, digest, key_id in self.registry.keys(tenant))

    def revoke_key(self, digest: str, tenant: str, key_id: str) -> None:
        self._write("revoke", tenant, key_id, digest)

    def set_policy(self, tenant: str, policy: dict[str, Any] | None) -> None:
        self._write("policy", tenant, policy, read_policy(self.registry, tenant))

    def announce(self, tenant: str, version: str | None) -> int:
        self.calls.append(("notice", tenant, version, _locked_elsewhere(self.registry, tenant)))
        return 2

    def modes(self) -> dict[str, str]:
        if self.away:
            raise RedisError("Connection refused")
        return {"clicks-only": "on", "shop": "off"}

    def buckets(self, tenant: str, since: float, until: float, bucket_s: int) -> list:
        return self.buckets_given

    def close(self) -> None:
        self.closed = True


@pytest.fixture(scope="module")
def bundle() -> ModelBundle:
    return train_model(synthetic_sessions(300, 30, seed=1), TrainParams(epochs=1, n_clusters=2))


@pytest.fixture
def control(tmp_path: Path) -> Control:
    settings = Settings(redis_url="redis://127.0.0.1:1/0", model_dir=str(tmp_path / "models"))
    registry = Registry(settings.registry_dir)
    return Control(settings, cache=FakeCache(registry))  # type: ignore[arg-type]


def _versions(control: Control, bundle: ModelBundle, tenant: str = "shop", n: int = 3) -> None:
    control.create(tenant)
    for _ in range(n):
        control.registry.register(tenant, bundle, {})
    control.registry.promote(tenant, "v1")
    control.cache.calls.clear()  # type: ignore[attr-defined]


def test_each_change_reaches_the_registry_then_the_cache_under_the_lock_then_the_notice(
    control: Control,
) -> None:
    cache: FakeCache = control.cache  # type: ignore[assignment]
    assert control.create("shop") is True
    assert control.set_mode("shop", "freeze") == 2  # the workers that heard
    rules = control.set_rules("shop", ServingRules(exclude="seen", blocklist=frozenset({"i1"})))
    key_id, key = control.create_key("shop")
    control.revoke_key("shop", key)  # the whole key names its id
    assert cache.calls == [
        ("tenant", "shop", True, True),
        ("notice", "shop", None, False),
        ("mode", "shop", "freeze", "freeze", True),
        ("notice", "shop", None, False),
        ("rules", "shop", rules, rules, True),
        ("notice", "shop", None, False),
        ("key", "shop", key_id, key_digest(key), True, True),
        ("notice", "shop", None, False),
        ("revoke", "shop", key_id, key_digest(key), True),
        ("notice", "shop", None, False),
    ]
    assert control.keys("shop")[key_id]["revoked"]
    assert control.create("shop") is False


def test_with_redis_away_a_change_is_durable_and_says_so(control: Control) -> None:
    control.create("shop")
    cache: FakeCache = control.cache  # type: ignore[assignment]
    cache.away, cache.calls = True, []
    with pytest.raises(CacheBehind, match="mode saved in the registry, but Redis at redis://"):
        control.set_mode("shop", "off")
    assert control.registry.mode("shop") == "off"
    assert cache.calls == []  # no notice for a change Redis does not hold
    key_id, _ = control.create_key("shop")  # the key is shown: it is valid
    assert key_id in control.keys("shop")
    with pytest.raises(RedisError):  # a read has nothing saved to speak of
        control.tenant_modes()


def test_an_unknown_tenant_or_key_is_refused_before_anything_is_written(
    control: Control,
) -> None:
    with pytest.raises(UnknownTenantError, match="create it first"):
        control.set_mode("nobody", "off")
    control.create("shop")
    with pytest.raises(UnknownTenantError, match="has no active key 'abc'"):
        control.revoke_key("shop", "abc")
    assert not control.registry.exists("nobody")


def test_the_registrys_modes_win_over_redis(control: Control) -> None:
    control.create("shop")
    assert control.tenant_modes() == {"clicks-only": "on", "shop": "on"}


def test_promote_and_rollback_tell_the_workers_the_version(
    control: Control, bundle: ModelBundle
) -> None:
    _versions(control, bundle)
    cache: FakeCache = control.cache  # type: ignore[assignment]
    assert control.promote("shop", "v2") == 2
    assert control.rollback("shop") == ("v1", 2)
    assert cache.calls == [("notice", "shop", "v2", False), ("notice", "shop", "v1", False)]
    assert control.registry.current_version("shop") == "v1"


def test_the_trainers_promotion_is_refused_over_an_operators_change(
    control: Control, bundle: ModelBundle
) -> None:
    _versions(control, bundle)
    control.set_mode("shop", "freeze")
    with pytest.raises(StreamrecError, match="is freeze"):
        control.promote_candidate("shop", "v2")
    control.set_mode("shop", "on")
    control.start_ab("shop", "v3", 0.2)
    with pytest.raises(StreamrecError, match="runs an A/B test over v1, v3"):
        control.promote_candidate("shop", "v2")
    assert control.registry.current_version("shop") == "v1"
    control.stop("shop", "keep")
    assert control.promote_candidate("shop", "v2") == 2
    assert control.registry.current_version("shop") == "v2"


def test_an_ab_test_is_one_policy_shape_and_one_at_a_time(
    control: Control, bundle: ModelBundle
) -> None:
    _versions(control, bundle)
    policy, heard = control.start_ab("shop", "v2", 0.25, min_recommendations=50)
    assert heard == 2
    assert policy == ab_policy("v1", "v2", 0.25, min_recommendations=50, started=policy["started"])
    assert read_policy(control.registry, "shop") == policy
    with pytest.raises(StreamrecError, match="runs an A/B test over v1, v2: stop it first"):
        control.start_bandit("shop", ["v1", "v3"])
    with pytest.raises(StreamrecError, match="has no version v9"):
        control.start_ab("shop", "v9", 0.1)


@pytest.mark.parametrize(
    ("share", "variant", "message"),
    [(1.0, "v2", "share must be between 0 and 1"), (0.1, "v1", "v1 is the version in service")],
)
def test_an_ab_test_refuses_what_it_cannot_compare(
    control: Control, bundle: ModelBundle, share: float, variant: str, message: str
) -> None:
    _versions(control, bundle)
    with pytest.raises(StreamrecError, match=message):
        control.start_ab("shop", variant, share)
    assert read_policy(control.registry, "shop") is None


def test_stopping_a_bandit_promotes_its_best_arm_by_hit_rate(
    control: Control, bundle: ModelBundle
) -> None:
    _versions(control, bundle)
    control.start_bandit("shop", ["v2", "v3", "v2"])
    cache: FakeCache = control.cache  # type: ignore[assignment]
    cache.buckets_given = [(0, {"v2": VariantCounts(100, 5), "v3": VariantCounts(100, 9)})]
    status = control.experiment_status("shop")
    assert status["policy"] == "bandit" and set(status["arms"]) == {"v2", "v3"}
    assert control.stop("shop", "promote") == ("v3", 2)
    assert read_policy(control.registry, "shop") is None


def test_a_rollout_stopped_or_ended_is_one_change(control: Control, bundle: ModelBundle) -> None:
    _versions(control, bundle)
    rollout = {"stages": [0.1, 1.0], "stage": 0, "stage_started": 0.0}
    write_policy(control.registry, "shop", {**ab_policy("v1", "v2", 0.1), "rollout": rollout})
    assert control.stop("shop", "promote") == ("v2", 2)
    (entry,) = rollout_history(control.registry, "shop")
    assert (entry["action"], entry["decision"]) == ("rollout-stop", "promote")
    control.start_rollout("shop", {**ab_policy("v2", "v3", 0.1), "rollout": rollout})
    cache: FakeCache = control.cache  # type: ignore[assignment]
    cache.calls.clear()
    assert control.end_rollout("shop", promote="v3") == 2
    assert control.registry.current_version("shop") == "v3"
    assert [c[0] for c in cache.calls] == ["policy", "notice"]


def test_closing_the_service_closes_its_redis_client(control: Control) -> None:
    with control:
        pass
    assert control.cache.closed  # type: ignore[attr-defined]

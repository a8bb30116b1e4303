"""Control state in the registry (keys, rules, modes, policies, promotions): concurrent
changes from many processes lose nothing, and every change is on disk when it returns."""

from __future__ import annotations

import json
import multiprocessing
from pathlib import Path

import pytest

from models.datasets import synthetic_sessions
from models.policy_file import read_policy, write_policy
from models.registry import Registry, TenantNameRefused
from models.train import TrainParams, train_model

PROCESSES = 10


def _add_keys(root: str, tenant: str, ids: list[str], start: object) -> None:
    start.wait()  # type: ignore[attr-defined]
    registry = Registry(root)
    for key_id in ids:
        registry.add_key(tenant, key_id, f"digest-{key_id}")


def _revoke_keys(root: str, tenant: str, ids: list[str], start: object) -> None:
    start.wait()  # type: ignore[attr-defined]
    registry = Registry(root)
    for key_id in ids:
        assert registry.revoke_key(tenant, key_id) == f"digest-{key_id}"


def _run(jobs: list[tuple[object, tuple[object, ...]]]) -> None:
    ctx = multiprocessing.get_context("fork")
    start = ctx.Barrier(len(jobs))
    procs = [ctx.Process(target=fn, args=(*args, start)) for fn, args in jobs]  # type: ignore
    for p in procs:
        p.start()
    for p in procs:
        p.join(60)
    assert [p.exitcode for p in procs] == [0] * len(procs)


def test_fifty_concurrent_key_creations_and_revocations_across_processes_lose_nothing(
    tmp_path: Path,
) -> None:
    registry = Registry(tmp_path)
    registry.create_tenant("shop")
    doomed = [f"old{i}" for i in range(25)]
    for key_id in doomed:
        registry.add_key("shop", key_id, f"digest-{key_id}")
    created = [f"new{i}" for i in range(25)]
    jobs: list[tuple[object, tuple[object, ...]]] = []
    for n in range(PROCESSES // 2):
        jobs.append((_add_keys, (str(tmp_path), "shop", created[n::5])))
        jobs.append((_revoke_keys, (str(tmp_path), "shop", doomed[n::5])))
    _run(jobs)

    keys = json.loads((tmp_path / "shop" / "KEYS.json").read_text())
    assert sorted(k for k in keys if k.startswith("new")) == sorted(created)
    assert all(not keys[k].get("revoked") for k in created)
    assert [k for k in doomed if not keys[k].get("revoked")] == []
    assert {d: a for d, (_, _, a) in registry.all_keys().items()} == {
        **{f"digest-{k}": True for k in created},
        **{f"digest-{k}": False for k in doomed},
    }


def _promote_many(root: str, tenant: str, versions: list[str], start: object) -> None:
    start.wait()  # type: ignore[attr-defined]
    registry = Registry(root)
    for version in versions:
        registry.promote(tenant, version)


def test_concurrent_promotions_keep_the_history_a_chain_that_ends_at_current(
    tmp_path: Path,
) -> None:
    registry = Registry(tmp_path)
    bundle = train_model(synthetic_sessions(200, 20, seed=1), TrainParams(epochs=1, n_clusters=2))
    versions = [registry.register("shop", bundle, {}) for _ in range(4)]
    jobs: list[tuple[object, tuple[object, ...]]] = [
        (_promote_many, (str(tmp_path), "shop", [versions[n % 4]] * 5)) for n in range(8)
    ]
    _run(jobs)
    history = registry.history_entries("shop")
    assert len(history) == 40
    # Each promotion names the one it replaced: two that read CURRENT at once break this.
    for before, after in zip(history, history[1:], strict=False):
        assert after["previous"] == before["version"], history
    assert registry.current_version("shop") == history[-1]["version"]


def _set_rules(root: str, tenant: str, n: int, start: object) -> None:
    start.wait()  # type: ignore[attr-defined]
    registry = Registry(root)
    for i in range(20):
        with registry.locked(tenant):
            rules = registry.rules(tenant)
            rules[f"p{n}-{i}"] = i
            registry.set_rules(tenant, rules)


def test_read_modify_write_under_the_tenant_lock_loses_nothing(tmp_path: Path) -> None:
    Registry(tmp_path).create_tenant("shop")
    _run([(_set_rules, (str(tmp_path), "shop", n)) for n in range(5)])
    assert len(Registry(tmp_path).rules("shop")) == 100


def test_a_lock_is_reentrant_in_one_thread(tmp_path: Path) -> None:
    registry = Registry(tmp_path)
    registry.create_tenant("shop")
    with registry.locked("shop"), registry.locked("shop"):
        registry.set_mode("shop", "off")
        write_policy(registry, "shop", None)
    assert registry.mode("shop") == "off" and read_policy(registry, "shop") is None


@pytest.mark.parametrize("name", ["KEYS.json", "RULES.json", "MODE", "POLICY.json"])
def test_nothing_is_left_behind_but_the_file(tmp_path: Path, name: str) -> None:
    registry = Registry(tmp_path)
    registry.create_tenant("shop")
    registry.add_key("shop", "k1", "d1")
    registry.set_rules("shop", {"exclude": "none"})
    registry.set_mode("shop", "freeze")
    write_policy(registry, "shop", None)
    names = {p.name for p in (tmp_path / "shop").iterdir()}
    assert name in names and not [n for n in names if n.startswith(".")]


@pytest.mark.parametrize(
    ("name", "content"),
    [
        ("KEYS.json", "{broken"),
        ("KEYS.json", '{"k1": "not an entry"}'),
        ("RULES.json", "[1,2"),
        ("RULES.json", '{"exclude": "everything"}'),
        ("MODE", "of\n"),
        ("MODE", b"\xff\xfe"),
        ("POLICY.json", '{"policy": "ab", "arms": {"v1": 2}}'),
    ],
)
def test_one_tenants_damaged_file_is_named_and_the_others_are_read(
    tmp_path: Path, name: str, content: str | bytes
) -> None:
    registry = Registry(tmp_path)
    for tenant in ("shop-a", "shop-b"):
        registry.create_tenant(tenant)
        registry.add_key(tenant, "k1", f"digest-{tenant}")
        registry.set_rules(tenant, {"blocklist": ["x"]})
    path = tmp_path / "shop-b" / name
    if isinstance(content, bytes):
        path.write_bytes(content)
    else:
        path.write_text(content)
    readers = {
        "KEYS.json": registry.keys,
        "RULES.json": registry.rules,
        "MODE": registry.mode,
        "POLICY.json": lambda t: read_policy(registry, t),
    }
    found, damaged = registry.each_tenant(readers[name])
    assert list(found) == ["shop-a"] and list(damaged) == ["shop-b"]
    assert damaged["shop-b"].path == path and damaged["shop-b"].reason
    # The readers of every tenant leave the damaged one out instead of failing for all.
    assert {t for t, _, _ in registry.all_keys().values()} >= {"shop-a"}
    assert "shop-a" in registry.all_rules() and "shop-a" in registry.tenant_modes()


def test_taking_a_tenants_lock_never_creates_the_tenant(tmp_path: Path) -> None:
    registry = Registry(tmp_path)
    assert registry.revoke_key("ghost", "k1") is None
    with registry.locked("ghost2"):
        pass
    assert registry.tenants() == []


def _create(root: str, name: str, start: object) -> None:
    start.wait()  # type: ignore[attr-defined]
    try:
        Registry(root).create_tenant(name)
    except TenantNameRefused:
        pass


def test_lookalikes_created_at_once_from_several_processes_make_one_tenant(
    tmp_path: Path,
) -> None:
    names = ["shop", "Shop", "SHOP", "sh.op", "shop-", "s.hop", "shop_", "sHop"]
    for n in range(3):
        root = tmp_path / f"r{n}"
        _run([(_create, (str(root), name)) for name in names])
        assert len(Registry(root).tenants()) == 1, Registry(root).tenants()

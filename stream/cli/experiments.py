"""``streamrec experiment start|status|stop`` and ``streamrec bandit start``: which model
versions serve a tenant's sessions, and what the online hit rates say."""

from __future__ import annotations

import asyncio
import time
from typing import Any

import click
import orjson

from models.errors import StreamrecError
from models.policy_file import read_policy, write_policy
from models.registry import Registry
from state.connection import RedisError, SyncRedis, async_client, sync_client
from state.feedback import read_buckets
from state.notify import notify_model_change
from state.policies import set_policy
from stream.cli.params import EXISTING_TENANT, json_flag, uses
from stream.config import Settings
from stream.policies import bandit_shares, experiment_status


def _client(settings: Settings) -> SyncRedis:
    return sync_client(settings.redis)


def _version(registry: Registry, tenant: str, version: str) -> str:
    """A version that exists and loads (fully validated), else a one-line error."""
    registry.load(tenant, version)
    return version


def _mode(settings: Settings, registry: Registry, tenant: str) -> str:
    return registry.mode(tenant) or "on"


def apply_policy(settings: Settings, tenant: str, policy: dict[str, Any] | None) -> int:
    """Write the policy durably (registry), then to Redis's cache; tell the workers."""
    registry = Registry(settings.registry_dir)
    write_policy(registry, tenant, policy)
    try:
        set_policy(_client(settings), tenant, policy)
    except RedisError as exc:
        raise click.ClickException(
            f"policy saved in the registry, but Redis at {settings.redis_display} is unreachable "
            f"({exc}); workers pick it up when Redis is back"
        ) from None
    return notify_model_change(settings.redis, tenant, None)


def status(settings: Settings, tenant: str, now: float | None = None) -> dict[str, Any]:
    """The experiment's status as ``experiment status --json`` prints it."""
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

    try:
        buckets = asyncio.run(read())
    except (RedisError, OSError) as exc:
        raise click.ClickException(
            f"cannot reach Redis at {settings.redis_display}: {exc}"
        ) from None
    shares = None
    if policy["policy"] == "bandit":
        shares = bandit_shares(policy, buckets, now, settings.feedback_bucket_s)
    report = experiment_status(tenant, policy, buckets, shares, serving)
    report["serving"] = serving
    return report


def status_table(report: dict[str, Any]) -> str:
    lines = [
        f"tenant {report['tenant']}: policy {report['policy']}"
        + (
            f", decision {report['decision']} (p = {report['p_value']:.4g})"
            if report.get("decision")
            else ""
        )
    ]
    lines.append(
        f"{'arm':8s} {'share':>6s} {'recs':>9s} {'hits':>8s} {'hit rate':>9s} {'95% CI':>17s}"
    )
    for arm, a in report["arms"].items():
        if "recommendations" not in a:
            lines.append(f"{arm:8s} {a['share']:6.0%}")
            continue
        low, high = a["ci"]
        lines.append(
            f"{arm:8s} {a['share']:6.1%} {a['recommendations']:9d} {a['hits']:8d} "
            f"{a['hit_rate']:9.2%} {f'{low:.2%} - {high:.2%}':>17s}"
        )
    return "\n".join(lines)


@click.group("experiment", epilog=uses("registry", "redis"))
def experiment() -> None:
    """A/B tests between the version in service and a candidate, and their status.

    \b
    Assignment is sticky: a session keeps its arm (a hash of tenant and session id).
    Hit rate = implicit hits (a click on an item of the session's previous list) per
    recommendation, from the feedback counters (`streamrec stats`).
    """


@experiment.command("start")
@click.argument("tenant", type=EXISTING_TENANT)
@click.option("--variant", required=True, help="The candidate version (like v5).")
@click.option(
    "--share",
    type=click.FloatRange(0.0, 1.0, min_open=True, max_open=True),
    default=0.1,
    help="The candidate's share of sessions.",
)
@click.option(
    "--min-recommendations",
    type=click.IntRange(1),
    default=1000,
    help="Per arm, before the test may decide.",
)
@click.pass_obj
def experiment_start(
    settings: Settings, tenant: str, variant: str, share: float, min_recommendations: int
) -> None:
    """Serve VARIANT to a share of TENANT's sessions, the version in service to the rest."""
    registry = Registry(settings.registry_dir)
    control = registry.current_version(tenant)
    if control is None:
        raise StreamrecError(f"tenant {tenant!r} has no version in service to compare with")
    _version(registry, tenant, variant)
    if variant == control:
        raise StreamrecError(f"{variant} is the version in service already")
    if _mode(settings, registry, tenant) != "on":
        raise StreamrecError(f"tenant {tenant!r} is {registry.mode(tenant)}: switch it on first")
    policy = {
        "policy": "ab",
        "arms": {control: round(1 - share, 6), variant: share},
        "control": control,
        "candidate": variant,
        "started": time.time(),
        "min_recommendations": min_recommendations,
        "alpha": 0.05,
    }
    heard = apply_policy(settings, tenant, policy)
    click.echo(
        f"tenant {tenant}: A/B {control} {1 - share:.0%} / {variant} {share:.0%} "
        f"({heard} worker(s) notified)"
    )


@experiment.command("status")
@click.argument("tenant", type=EXISTING_TENANT)
@json_flag
@click.pass_obj
def experiment_status_cmd(settings: Settings, tenant: str, as_json: bool) -> None:
    """Each arm's share, recommendations, hits, hit rate and 95 % interval; for an A/B
    test the decision (running / promote / keep) and its p-value."""
    report = status(settings, tenant)
    click.echo(orjson.dumps(report).decode() if as_json else status_table(report))


@experiment.command("stop")
@click.argument("tenant", type=EXISTING_TENANT)
@click.option(
    "--promote",
    "action",
    flag_value="promote",
    help="Promote the candidate (a bandit: its best arm by hit rate).",
)
@click.option("--keep", "action", flag_value="keep", help="Keep the version in service.")
@click.pass_obj
def experiment_stop(settings: Settings, tenant: str, action: str | None) -> None:
    """End the experiment or bandit: back to one version for every session."""
    if action is None:
        raise click.UsageError("say --promote or --keep")
    registry = Registry(settings.registry_dir)
    policy = read_policy(registry, tenant)
    if policy is None:
        raise StreamrecError(f"tenant {tenant!r} runs no experiment")
    winner = None
    if action == "promote":
        if policy["policy"] == "ab":
            winner = policy["candidate"]
        else:
            arms = status(settings, tenant)["arms"]
            winner = max(arms, key=lambda a: (arms[a]["hit_rate"], arms[a]["recommendations"]))
        if winner != registry.current_version(tenant):
            registry.promote(tenant, winner)
    heard = apply_policy(settings, tenant, None)
    serving = registry.current_version(tenant)
    click.echo(
        f"tenant {tenant}: experiment stopped, {serving} serves ({heard} worker(s) notified)"
    )


@click.group("bandit", epilog=uses("registry", "redis"))
def bandit() -> None:
    """A multi-armed bandit over model versions (Thompson sampling on hit rate)."""


@bandit.command("start")
@click.argument("tenant", type=EXISTING_TENANT)
@click.argument("versions", nargs=-1, required=True)
@click.option(
    "--discount",
    type=click.FloatRange(0.0, 1.0, min_open=True),
    default=0.999,
    help="Weight of counts per minute of age (forgetting).",
)
@click.option(
    "--floor",
    type=click.FloatRange(0.0, 0.5),
    default=0.01,
    help="Smallest share of an arm (it keeps being explored).",
)
@click.pass_obj
def bandit_start(
    settings: Settings, tenant: str, versions: tuple[str, ...], discount: float, floor: float
) -> None:
    """Share TENANT's sessions among VERSIONS (two or more) by Thompson sampling; the
    workers recompute the shares from the counters every few seconds."""
    if len(set(versions)) < 2:
        raise click.UsageError("a bandit needs at least two different versions")
    registry = Registry(settings.registry_dir)
    for v in versions:
        _version(registry, tenant, v)
    if _mode(settings, registry, tenant) != "on":
        raise StreamrecError(f"tenant {tenant!r} is {registry.mode(tenant)}: switch it on first")
    arms = sorted(set(versions))
    policy = {
        "policy": "bandit",
        "arms": {v: round(1 / len(arms), 6) for v in arms},
        "discount": discount,
        "floor": floor,
        "started": time.time(),
    }
    heard = apply_policy(settings, tenant, policy)
    click.echo(f"tenant {tenant}: bandit over {', '.join(arms)} ({heard} worker(s) notified)")

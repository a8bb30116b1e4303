"""``streamrec experiment start|status|stop`` and ``streamrec bandit start|status|stop``:
which model versions serve a tenant's sessions, and what the online hit rates say."""

from __future__ import annotations

from typing import Any

import click
import orjson

from models.policy_file import read_policy
from models.registry import Registry
from state.connection import RedisError
from stream.cli.params import EXISTING_TENANT, json_flag, option, uses
from stream.config import Settings
from stream.control import experiments


def status(settings: Settings, tenant: str) -> dict[str, Any]:
    try:
        return experiments.status(settings, tenant)
    except (RedisError, OSError) as exc:
        raise click.ClickException(
            f"cannot reach Redis at {settings.redis_display}: {exc}"
        ) from None


def status_table(report: dict[str, Any]) -> str:
    """An A/B test: each arm's counts with the decision and its p-value; a bandit: each
    arm's share, counts and the posterior mean hit rate its share is drawn from."""
    bandit = report["policy"] == "bandit"
    if bandit:
        head = f"tenant {report['tenant']}: bandit (Thompson sampling on hit rate), running"
    elif report.get("p_value") is not None:
        head = (
            f"tenant {report['tenant']}: A/B test, decision {report['decision']} "
            f"(p = {report['p_value']:.4g})"
        )
    else:
        head = f"tenant {report['tenant']}: policy {report['policy']}"
    last = "posterior" if bandit else "95% CI"
    lines = [
        head,
        f"{'arm':8s} {'share':>6s} {'served':>9s} {'hits':>8s} {'hit rate':>9s} {last:>17s}",
    ]
    for arm, a in report["arms"].items():
        if "recommendations" not in a:
            lines.append(f"{arm:8s} {a['share']:6.0%}")
            continue
        low, high = a["ci"]
        tail = f"{a['posterior_mean']:.2%}" if bandit else f"{low:.2%} - {high:.2%}"
        lines.append(
            f"{arm:8s} {a['share']:6.1%} {a['recommendations']:9d} {a['hits']:8d} "
            f"{a['hit_rate']:9.2%} {tail:>17s}"
        )
    return "\n".join(lines)


@click.group("experiment", epilog=uses("registry", "redis"))
def experiment() -> None:
    """A/B tests between the version in service and a candidate, and their status.

    \b
    Assignment is sticky: a new session gets an arm by a hash of tenant and session id,
    then keeps it while it has a share (sessions already running stay on their version).
    Hit rate = implicit hits (a click on an item of the session's previous list) per
    recommendation, from the feedback counters (`streamrec stats`).
    """


@experiment.command("start")
@click.argument("tenant", type=EXISTING_TENANT)
@option("--variant", required=True, help="The candidate version (like v5).")
@option(
    "--share",
    type=click.FloatRange(0.0, 1.0, min_open=True, max_open=True),
    default=0.1,
    help="The candidate's share of sessions.",
)
@option(
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
    policy, heard = experiments.start_ab(settings, tenant, variant, share, min_recommendations)
    control = policy["control"]
    click.echo(
        f"tenant {tenant}: A/B {control} {1 - share:.0%} / {variant} {share:.0%} "
        f"({heard} worker(s) notified)"
    )


@experiment.command("status")
@click.argument("tenant", required=False, type=EXISTING_TENANT)
@json_flag
@click.pass_obj
def experiment_status_cmd(settings: Settings, tenant: str | None, as_json: bool) -> None:
    """TENANT's experiment (default: every tenant that runs one): each arm's share,
    recommendations served, hits and hit rate; for an A/B test the 95 % interval and the
    decision (running / promote / keep) with its p-value, for a bandit the posterior mean
    hit rate each share is drawn from."""
    if tenant is None:
        registry = Registry(settings.registry_dir)
        tenants = [t for t in registry.tenants() if read_policy(registry, t) is not None]
        if not tenants:
            click.echo("no experiment or bandit runs")
            return
    else:
        tenants = [tenant]
    reports = [status(settings, t) for t in tenants]
    if as_json:
        click.echo(orjson.dumps(reports[0] if tenant else {"tenants": reports}).decode())
    else:
        click.echo("\n\n".join(status_table(r) for r in reports))


@experiment.command("stop")
@click.argument("tenant", type=EXISTING_TENANT)
@option(
    "--promote",
    "action",
    flag_value="promote",
    help="Promote the candidate (a bandit: its best arm by hit rate).",
)
@option("--keep", "action", flag_value="keep", help="Keep the version in service.")
@click.pass_obj
def experiment_stop(settings: Settings, tenant: str, action: str | None) -> None:
    """End the experiment or bandit: back to one version for every session."""
    if action is None:
        raise click.UsageError("say --promote or --keep")
    try:
        serving, heard = experiments.stop(settings, tenant, action)
    except (RedisError, OSError) as exc:  # a bandit's best arm is read from the counters
        raise click.ClickException(
            f"cannot reach Redis at {settings.redis_display}: {exc}"
        ) from None
    click.echo(
        f"tenant {tenant}: experiment stopped, {serving} serves ({heard} worker(s) notified)"
    )


@click.group("bandit", epilog=uses("registry", "redis"))
def bandit() -> None:
    """A multi-armed bandit over model versions (Thompson sampling on hit rate).

    `bandit status` and `bandit stop` are `experiment status` and `experiment stop`.
    """


@bandit.command("start")
@click.argument("tenant", type=EXISTING_TENANT)
@click.argument("versions", nargs=-1, required=True)
@option(
    "--discount",
    type=click.FloatRange(0.0, 1.0, min_open=True),
    default=0.999,
    help="Weight of counts per minute of age (forgetting).",
)
@option(
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
    policy, heard = experiments.start_bandit(settings, tenant, versions, discount, floor)
    arms = list(policy["arms"])
    click.echo(f"tenant {tenant}: bandit over {', '.join(arms)} ({heard} worker(s) notified)")


# The same commands under `bandit`, where a user of `bandit start` looks for them.
bandit.add_command(experiment_status_cmd, "status")
bandit.add_command(experiment_stop, "stop")

"""``streamrec dev up|down|status``: the embedded broker and Redis for a laptop."""

from __future__ import annotations

import click

from stream.cli.params import option, setting_option, uses
from stream.config import Settings
from stream.dev.kafka_node import BROKER_KINDS
from stream.dev.stack import REDIS_MODES, EmbeddedStack, stack_for


def stack_topics(settings: Settings) -> list[str]:
    return [settings.clicks_topic, settings.recs_topic, settings.dlq_topic, settings.feedback_topic]


@click.group("dev", epilog=uses("home", "broker", "redis", "topics"))
def dev() -> None:
    """Run the embedded broker (Apache Kafka or Tansu) and Redis in the background.

    Pid files, logs and Kafka's data go under $STREAMREC_HOME/run (default
    ./.streamrec/run). Addresses come from STREAMREC_BROKER (default 127.0.0.1:19092)
    and STREAMREC_REDIS_URL (default redis://127.0.0.1:16379/0). The broker is Apache
    Kafka when a JDK >= 17 is here (jars fetched once with Maven, or from KAFKA_HOME),
    else Tansu; --broker or STREAMREC_EMBEDDED_BROKER chooses.

    `dev up --redis cluster` starts a Redis Cluster of three masters instead (ports from
    the Redis URL's up, one replica each with --replicas); the run directory records
    it, so every later command with this STREAMREC_HOME uses the cluster until
    `dev up --redis single`.
    """


@dev.command("up")
@setting_option(
    "--broker",
    "kind",
    setting="embedded_broker",
    type=click.Choice(BROKER_KINDS),
    help="auto: Apache Kafka if a JDK >= 17 is here, else Tansu.",
)
@option(
    "--redis",
    "redis_mode",
    type=click.Choice(REDIS_MODES),
    default=None,
    help="single: one Redis; cluster: a three-master Redis Cluster on consecutive ports "
    "from the Redis URL's. [default: what this STREAMREC_HOME last started, else single]",
)
@option("--replicas", is_flag=True, help="With --redis cluster: one replica per master (failover).")
@click.pass_obj
def dev_up(settings: Settings, kind: str | None, redis_mode: str | None, replicas: bool) -> None:
    """Start broker and Redis, wait until they answer, create the topics."""
    if replicas and redis_mode != "cluster":
        raise click.UsageError("--replicas goes with --redis cluster")
    stack = stack_for(
        settings.with_(embedded_broker=kind), redis_mode=redis_mode, replicas=replicas
    )
    click.echo(f"broker: {stack.broker_why}")
    stack.up(stack_topics(settings), settings.partitions)
    for name, pid, address, _ in stack.status():
        what = f"  ({stack.broker_label})" if name == "broker" else _redis_role(stack, name)
        click.echo(f"{name:8s} up    pid {pid}  {address}{what}")
    if stack.redis_cluster:
        click.echo(f"redis:   {stack.redis_label}; clients use it through {stack.redis_url}")
    click.echo(f"logs in {settings.run_dir}")


def _redis_role(stack: EmbeddedStack, name: str) -> str:
    if not stack.redis_cluster:
        return ""
    return "  (cluster replica)" if name.endswith("r") else "  (cluster master)"


@dev.command("down")
@click.pass_obj
def dev_down(settings: Settings) -> None:
    """Stop broker and Redis (SIGTERM, then SIGKILL after 10 s)."""
    stopped = stack_for(settings.with_(embedded_broker="tansu")).down()  # any kind stops
    click.echo(f"stopped: {', '.join(stopped)}" if stopped else "nothing was running")


@dev.command("status")
@option("--check", is_flag=True, help="Exit 1 unless both services answer.")
@click.pass_obj
def dev_status(settings: Settings, check: bool) -> None:
    """Show whether broker and Redis (each node of a cluster) are running and answering."""
    stack = stack_for(settings.with_(embedded_broker="tansu"))  # status only: no JDK probe
    rows = stack.status()
    for name, pid, address, answering in rows:
        state = "up" if answering else ("not answering" if pid else "down")
        kind = stack.services[0].running_kind() if name == "broker" and pid else None
        what = f"  ({'Tansu' if kind == 'tansu' else stack.kafka_dist.label()})" if kind else ""
        if name != "broker":
            what = _redis_role(stack, name)
        click.echo(f"{name:8s} {state:14s} pid {pid or '-'}  {address}{what}")
    if stack.redis_cluster:
        click.echo(f"redis:   {stack.redis_label}")
    if check and not all(r[3] for r in rows):
        raise SystemExit(1)

"""``streamrec dev up|down|status``: the embedded broker and Redis for a laptop."""

from __future__ import annotations

import click

from stream.cli.params import option, setting_option, uses
from stream.config import Settings
from stream.dev.kafka_node import BROKER_KINDS
from stream.dev.stack import stack_for


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
    """


@dev.command("up")
@setting_option(
    "--broker",
    "kind",
    setting="embedded_broker",
    type=click.Choice(BROKER_KINDS),
    help="auto: Apache Kafka if a JDK >= 17 is here, else Tansu.",
)
@click.pass_obj
def dev_up(settings: Settings, kind: str | None) -> None:
    """Start broker and Redis, wait until they answer, create the topics."""
    stack = stack_for(settings.with_(embedded_broker=kind))
    click.echo(f"broker: {stack.broker_why}")
    stack.up(stack_topics(settings), settings.partitions)
    for name, pid, address, _ in stack.status():
        what = f"  ({stack.broker_label})" if name == "broker" else ""
        click.echo(f"{name:7s} up    pid {pid}  {address}{what}")
    click.echo(f"logs in {settings.run_dir}")


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
    """Show whether broker and Redis are running and answering."""
    stack = stack_for(settings.with_(embedded_broker="tansu"))  # status only: no JDK probe
    rows = stack.status()
    for name, pid, address, answering in rows:
        state = "up" if answering else ("not answering" if pid else "down")
        kind = stack.services[0].running_kind() if name == "broker" and pid else None
        what = f"  ({'Tansu' if kind == 'tansu' else stack.kafka_dist.label()})" if kind else ""
        click.echo(f"{name:7s} {state:14s} pid {pid or '-'}  {address}{what}")
    if check and not all(r[3] for r in rows):
        raise SystemExit(1)

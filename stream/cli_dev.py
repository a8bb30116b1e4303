"""``streamrec dev up|down|status``: the embedded broker and Redis for a laptop."""

from __future__ import annotations

import click

from stream.config import Settings
from stream.devstack import EmbeddedStack


def stack_for(settings: Settings) -> EmbeddedStack:
    return EmbeddedStack(settings.run_dir, settings.broker, settings.redis_url)


def stack_topics(settings: Settings) -> list[str]:
    return [settings.clicks_topic, settings.recs_topic, settings.dlq_topic]


@click.group("dev")
def dev() -> None:
    """Run the embedded Kafka-compatible broker (Tansu) and Redis in the background.

    Pid files and logs go under $STREAMREC_HOME/run (default ./.streamrec/run).
    Addresses come from STREAMREC_BROKER (default 127.0.0.1:19092) and
    STREAMREC_REDIS_URL (default redis://127.0.0.1:16379/0).
    """


@dev.command("up")
@click.pass_obj
def dev_up(settings: Settings) -> None:
    """Start broker and Redis, wait until they answer, create the topics."""
    stack = stack_for(settings)
    stack.up(stack_topics(settings), settings.partitions)
    for name, pid, address, _ in stack.status():
        click.echo(f"{name:7s} up    pid {pid}  {address}")
    click.echo(f"logs in {settings.run_dir}")


@dev.command("down")
@click.pass_obj
def dev_down(settings: Settings) -> None:
    """Stop broker and Redis (SIGTERM, then SIGKILL after 10 s)."""
    stopped = stack_for(settings).down()
    click.echo(f"stopped: {', '.join(stopped)}" if stopped else "nothing was running")


@dev.command("status")
@click.option("--check", is_flag=True, help="Exit 1 unless both services answer.")
@click.pass_obj
def dev_status(settings: Settings, check: bool) -> None:
    """Show whether broker and Redis are running and answering."""
    rows = stack_for(settings).status()
    for name, pid, address, answering in rows:
        state = "up" if answering else ("not answering" if pid else "down")
        click.echo(f"{name:7s} {state:14s} pid {pid or '-'}  {address}")
    if check and not all(r[3] for r in rows):
        raise SystemExit(1)


def register(group: click.Group) -> None:
    group.add_command(dev)

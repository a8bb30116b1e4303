"""``streamrec tenant mode|list``: each shop's on / freeze / off switch."""

from __future__ import annotations

import click
import redis

from models.registry import Registry
from state.notify import notify_model_change
from state.tenants import MODES, list_tenants, set_mode
from stream.cli_params import TENANT
from stream.config import Settings


def _client(settings: Settings) -> redis.Redis:
    return redis.Redis.from_url(settings.redis_url, socket_connect_timeout=3, socket_timeout=5)


@click.group("tenant")
def tenant() -> None:
    """Tenants (shops) and their switch.

    \b
      on      retrained and hot-swapped (default)
      freeze  keeps serving its current version; the trainer skips it
      off     no recommendations are published; clicks are still recorded
    """


@tenant.command("mode")
@click.argument("name", type=TENANT)
@click.argument("mode", type=click.Choice(MODES))
@click.pass_obj
def tenant_mode(settings: Settings, name: str, mode: str) -> None:
    """Switch tenant NAME on, freeze it, or switch it off."""
    # The registry holds it durably (it survives a Redis restart); Redis caches it.
    Registry(settings.registry_dir).set_mode(name, mode)
    try:
        set_mode(_client(settings), name, mode)
    except redis.RedisError as exc:
        raise click.ClickException(f"cannot reach Redis at {settings.redis_url}: {exc}") from None
    heard = notify_model_change(settings.redis_url, name, None)
    click.echo(f"tenant {name}: {mode} ({heard} worker(s) notified)")


@tenant.command("list")
@click.pass_obj
def tenant_list(settings: Settings) -> None:
    """Every tenant that has sent clicks or has a model, with its mode and model."""
    registry = Registry(settings.registry_dir)
    try:
        modes = {**list_tenants(_client(settings)), **registry.modes()}
    except redis.RedisError as exc:
        raise click.ClickException(f"cannot reach Redis at {settings.redis_url}: {exc}") from None
    names = sorted(set(modes) | set(registry.tenants()))
    if not names:
        click.echo("no tenants yet")
        return
    click.echo(f"{'tenant':24s} {'mode':7s} model")
    for name in names:
        click.echo(f"{name:24s} {modes.get(name, 'on'):7s} {registry.current_version(name) or '-'}")


def register(group: click.Group) -> None:
    group.add_command(tenant)

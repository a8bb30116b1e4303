"""``streamrec tenant mode|list``: each shop's on / freeze / off switch."""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import TypeVar

import click

from models.errors import StreamrecError
from models.registry import Registry
from models.rules import EXCLUDE_MODES, ServingRules
from state.connection import RedisError, SyncRedis, sync_client
from state.tenants import MODES, list_tenants
from stream.cli.params import TENANT, option, uses
from stream.config import Settings
from stream.control.tenants import TenantControl

T = TypeVar("T")


def _client(settings: Settings) -> SyncRedis:
    return sync_client(settings.redis)


@click.group("tenant", epilog=uses("registry", "redis"))
def tenant() -> None:
    """Tenants (shops): create, switch, serving rules, API keys.

    \b
      on      retrained and hot-swapped (default)
      freeze  keeps serving its current version; the trainer skips it
      off     no recommendations are published; clicks are still recorded
    """


@tenant.command("create")
@click.argument("name", type=TENANT)
@click.pass_obj
def tenant_create(settings: Settings, name: str) -> None:
    """Create tenant NAME (in the registry, durable; cached in Redis).

    A name that differs from an existing tenant's only by case, dots or trailing
    punctuation, or that is a reserved device name (CON, NUL, COM1, ...), is refused.
    No admin token is asked for: whoever runs this can write the registry and Redis.
    """
    created = _control(settings, lambda c: c.create(name))
    click.echo(f"tenant {name}: {'created' if created else 'exists already'}")


@tenant.command("mode")
@click.argument("name", type=TENANT)
@click.argument("mode", type=click.Choice(MODES))
@click.pass_obj
def tenant_mode(settings: Settings, name: str, mode: str) -> None:
    """Switch tenant NAME on, freeze it, or switch it off (it must exist)."""
    # The registry holds it durably (it survives a Redis restart); Redis caches it.
    heard = _control(settings, lambda c: c.set_mode(name, mode))
    click.echo(f"tenant {name}: {mode} ({heard} worker(s) notified)")


@tenant.command("set")
@click.argument("name", type=TENANT)
@option(
    "--exclude",
    type=click.Choice(EXCLUDE_MODES),
    help="the session's items kept out of its list: none, current (the item being "
    "viewed; default) or seen (every item of the session)",
)
@option("--block", multiple=True, help="an item never recommended (repeatable)")
@option("--unblock", multiple=True, help="take an item off the blocklist")
@option("--include-category", multiple=True, help="only recommend these categories")
@option("--exclude-category", multiple=True, help="never recommend these categories")
@option("--clear-categories", is_flag=True, help="drop both category lists first")
@click.pass_obj
def tenant_set(
    settings: Settings,
    name: str,
    exclude: str | None,
    block: tuple[str, ...],
    unblock: tuple[str, ...],
    include_category: tuple[str, ...],
    exclude_category: tuple[str, ...],
    clear_categories: bool,
) -> None:
    """Serving rules of tenant NAME, applied after ranking in the worker and over HTTP."""

    def change(control: TenantControl) -> dict[str, object]:
        rules = ServingRules.from_dict(control.rules(name))
        include = set() if clear_categories else set(rules.include_categories)
        excluded = set() if clear_categories else set(rules.exclude_categories)
        updated = ServingRules(
            exclude or rules.exclude,
            frozenset((set(rules.blocklist) | set(block)) - set(unblock)),
            frozenset(include | set(include_category)),
            frozenset(excluded | set(exclude_category)),
        )
        return control.set_rules(name, updated)

    click.echo(f"tenant {name}: {json.dumps(_control(settings, change))}")


@tenant.group("key")
def tenant_key() -> None:
    """API keys of a tenant (Authorization: Bearer <key> on /v1/{tenant}/...)."""


@tenant_key.command("create")
@click.argument("name", type=TENANT)
@click.pass_obj
def key_create(settings: Settings, name: str) -> None:
    """Create a key for tenant NAME; it is printed once and stored only as a digest."""
    key_id, key = _control(settings, lambda c: c.create_key(name))
    click.echo(f"tenant {name}: key {key_id} created; it is shown this once:", err=True)
    click.echo(key)


@tenant_key.command("revoke")
@click.argument("name", type=TENANT)
@click.argument("key_id")
@click.pass_obj
def key_revoke(settings: Settings, name: str, key_id: str) -> None:
    """Revoke tenant NAME's key KEY_ID (the id `key create` printed, or the key itself)."""
    _control(settings, lambda c: c.revoke_key(name, key_id))
    click.echo(f"tenant {name}: key revoked")


@tenant_key.command("list")
@click.argument("name", type=TENANT)
@click.pass_obj
def key_list(settings: Settings, name: str) -> None:
    """The ids and creation times of tenant NAME's keys (never the keys)."""

    def keys(control: TenantControl) -> dict[str, dict[str, object]]:
        control.require(name)
        return control.registry.keys(name)

    for key_id, entry in sorted(_control(settings, keys).items()):
        click.echo(f"{key_id}  created {entry.get('created', '?')}")


def _control(settings: Settings, action: Callable[[TenantControl], T]) -> T:
    """Run an admin action; a failure is one line, not a traceback."""
    try:
        return action(TenantControl(settings))
    except StreamrecError as exc:
        raise click.ClickException(str(exc)) from None
    except RedisError as exc:
        raise click.ClickException(
            f"cannot reach Redis at {settings.redis_display}: {exc}"
        ) from None


@tenant.command("list")
@click.pass_obj
def tenant_list(settings: Settings) -> None:
    """Every tenant that has sent clicks or has a model, with its mode and model."""
    registry = Registry(settings.registry_dir)
    try:
        modes = {**list_tenants(_client(settings)), **registry.tenant_modes()}
    except RedisError as exc:
        raise click.ClickException(
            f"cannot reach Redis at {settings.redis_display}: {exc}"
        ) from None
    names = sorted(set(modes) | set(registry.tenants()))
    if not names:
        click.echo("no tenants yet")
        return
    click.echo(f"{'tenant':24s} {'mode':7s} model")
    for name in names:
        click.echo(f"{name:24s} {modes.get(name, 'on'):7s} {registry.current_version(name) or '-'}")

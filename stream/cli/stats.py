"""``streamrec stats [TENANT]``: online hit rate per variant, from the feedback counters."""

from __future__ import annotations

import asyncio

import click
import orjson

from models.registry import Registry
from state.connection import RedisError, async_client
from stream.cli.params import EXISTING_TENANT, json_flag, option, uses
from stream.config import Settings
from stream.control.stats import parse_since, stats_table, tenant_stats


def _since(ctx: click.Context, param: click.Parameter, value: str) -> float:
    try:
        return parse_since(value)
    except ValueError as exc:
        raise click.BadParameter(str(exc).split(": ", 1)[-1]) from None


async def _read(settings: Settings, tenants: list[str], since_s: float) -> list[dict]:
    client = async_client(settings.redis)
    try:
        return [await tenant_stats(client, t, since_s, settings.feedback_bucket_s) for t in tenants]
    finally:
        await client.aclose()


@click.command("stats", epilog=uses("redis"))
@click.argument("tenant", required=False, type=EXISTING_TENANT)
@option("--since", "since_s", default="1h", callback=_since,
              help="Window: 30m, 1h, 7d ...")  # fmt: skip
@json_flag
@click.pass_obj
def stats(settings: Settings, tenant: str | None, since_s: float, as_json: bool) -> None:
    """Recommendations, implicit hits, hit rate with its 95 % Wilson interval, and
    purchases, per variant (model version or popular) of TENANT.

    Without TENANT: every tenant, one table each (--json: {"tenants": [...]}).
    """
    tenants = [tenant] if tenant else Registry(settings.registry_dir).tenants()
    if not tenants:
        click.echo("no tenants yet: `streamrec tenant create NAME` or `streamrec train`")
        return
    try:
        reports = asyncio.run(_read(settings, tenants, since_s))
    except (RedisError, OSError) as exc:
        raise click.ClickException(
            f"cannot reach Redis at {settings.redis_display}: {exc}"
        ) from None
    if as_json:
        click.echo(orjson.dumps(reports[0] if tenant else {"tenants": reports}).decode())
    else:
        click.echo("\n\n".join(stats_table(r) for r in reports))

"""``streamrec stats TENANT``: online hit rate per variant, from the feedback counters."""

from __future__ import annotations

import asyncio

import click
import orjson

from state.connection import RedisError, async_client
from stream.cli.params import EXISTING_TENANT, json_flag, uses
from stream.config import Settings
from stream.feedback_stats import parse_since, stats_table, tenant_stats


def _since(ctx: click.Context, param: click.Parameter, value: str) -> float:
    try:
        return parse_since(value)
    except ValueError as exc:
        raise click.BadParameter(str(exc).split(": ", 1)[-1]) from None


async def _read(settings: Settings, tenant: str, since_s: float) -> dict:
    client = async_client(settings.redis)
    try:
        return await tenant_stats(client, tenant, since_s, settings.feedback_bucket_s)
    finally:
        await client.aclose()


@click.command("stats", epilog=uses("redis"))
@click.argument("tenant", type=EXISTING_TENANT)
@click.option("--since", "since_s", default="1h", callback=_since,
              help="Window: 30m, 1h, 7d ...")  # fmt: skip
@json_flag
@click.pass_obj
def stats(settings: Settings, tenant: str, since_s: float, as_json: bool) -> None:
    """Recommendations, implicit hits, hit rate with its 95 % Wilson interval, and
    purchases, per variant (model version or popular) of TENANT."""
    try:
        report = asyncio.run(_read(settings, tenant, since_s))
    except (RedisError, OSError) as exc:
        raise click.ClickException(
            f"cannot reach Redis at {settings.redis_display}: {exc}"
        ) from None
    click.echo(orjson.dumps(report).decode() if as_json else stats_table(report))

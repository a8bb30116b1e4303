"""``streamrec stats [TENANT]``: online hit rate per variant, from the feedback counters."""

from __future__ import annotations

import click
import orjson

from stream.cli.params import EXISTING_TENANT, Duration, json_flag, option, unreachable, uses
from stream.config import Settings
from stream.control.service import UNREACHABLE, Control
from stream.control.stats import stats_table


@click.command("stats", epilog=uses("redis"))
@click.argument("tenant", required=False, type=EXISTING_TENANT)
@option("--since", "since_s", type=Duration(), default="1h",
              help="Window: 30m, 1h, 7d ...")  # fmt: skip
@json_flag
@click.pass_obj
def stats(settings: Settings, tenant: str | None, since_s: float, as_json: bool) -> None:
    """Recommendations, implicit hits, hit rate with its 95 % Wilson interval, and
    purchases, per variant (model version or popular) of TENANT.

    Without TENANT: every tenant, one table each (--json: {"tenants": [...]}).
    """
    with Control(settings) as control:
        tenants = [tenant] if tenant else control.registry.tenants()
        if not tenants:
            click.echo("no tenants yet: `streamrec tenant create NAME` or `streamrec train`")
            return
        try:
            reports = [control.stats(t, since_s) for t in tenants]
        except UNREACHABLE as exc:
            raise unreachable(settings, exc) from None
    if as_json:
        click.echo(orjson.dumps(reports[0] if tenant else {"tenants": reports}).decode())
    else:
        click.echo("\n\n".join(stats_table(r) for r in reports))

"""``streamrec recs tail``: the lists the workers publish, as they come."""

from __future__ import annotations

import logging

import click

from stream.cli.params import TENANT, broker_option, option, setting_option
from stream.config import Settings


@click.group("recs")
def recs() -> None:
    """Follow the recommendations the workers publish."""


@recs.command("tail")
@option("--tenant", type=TENANT, help="Only this tenant's lists.", show_default="every tenant")
@option("--session", help="Only this session's lists.", show_default="every session")
@option("--limit", type=click.IntRange(min=1), help="Stop after N lists.", show_default="none")
@option("--json", "as_json", is_flag=True, help="Print each record as it is on the topic.")
@option("--from-beginning", is_flag=True, help="Start at the topic's oldest record, not now.")
@broker_option
@setting_option("--topic", setting="recs_topic", help="Topic the workers publish to.")
@click.pass_obj
def tail(
    settings: Settings,
    tenant: str | None,
    session: str | None,
    limit: int | None,
    as_json: bool,
    from_beginning: bool,
    broker: str | None,
    topic: str | None,
) -> None:
    """Print the recommendation lists published from now on (Ctrl-C stops).

    \b
    One line per list: tenant/session, the click it answers, the top items (the source
    of the top one, the list's `strategy`), the model version, and the time from the
    click to the list's publication (emitted_ts - event_ts). --json prints the records.

    \b
    Examples:
      streamrec recs tail                          # every list from now on
      streamrec recs tail --tenant shop-7 --limit 10
      streamrec recs tail --from-beginning --session s-42 --json
    """
    from stream.kafka.config import RDKAFKA_LOG
    from stream.kafka.recs_tail import follow, list_line, matches, parse

    if not logging.getLogger().isEnabledFor(logging.DEBUG):
        # Without -v, librdkafka's "connection refused" lines would bury the one-line
        # error that says the broker does not answer.
        RDKAFKA_LOG.setLevel(logging.CRITICAL)
    settings = settings.with_(broker=broker, recs_topic=topic)
    shown = 0
    try:
        for raw in follow(settings.kafka, settings.recs_topic, from_beginning=from_beginning):
            rec = parse(raw)
            if rec is None or not matches(rec, tenant, session):
                continue
            click.echo(raw.decode(errors="replace") if as_json else list_line(rec))
            shown += 1
            if limit is not None and shown >= limit:
                return
    except KeyboardInterrupt:
        return  # Ctrl-C is how a tail ends

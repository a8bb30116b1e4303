"""``streamrec worker``: run the Faust stream worker."""

from __future__ import annotations

import os
from pathlib import Path

import click

from stream.cli.params import broker_option, option, setting_option, uses
from stream.config import Settings


@click.command("worker", epilog=uses("home", "topics"))
@broker_option
@setting_option("--redis-url", setting="redis_url", help="Redis URL (rediss:// for TLS).")
@setting_option(
    "--model-dir",
    setting="model_dir",
    default=None,
    show_default="$STREAMREC_HOME/models",
    help="Model registry directory.",
)
@setting_option(
    "--web-port",
    setting="web_port",
    type=int,
    help="HTTP port for the worker's web server; 0 = off.",
)
@setting_option(
    "--batch-size",
    setting="batch_size",
    type=click.IntRange(1, 100_000),
    help="Max events per batch.",
)
@setting_option(
    "--delivery",
    setting="delivery",
    type=click.Choice(["at_least_once", "exactly_once"]),
    help="exactly_once: outputs and offsets in one Kafka transaction per batch (Apache Kafka "
    "only).",
)
@setting_option(
    "--log-level",
    setting="log_level",
    type=click.Choice(["debug", "info", "warning", "error"], case_sensitive=False),
    help="Worker log level.",
)
@click.option(
    "--verbose",
    is_flag=True,
    help="Also log the frameworks' own lines (Faust's start-up steps and tables, aiokafka, "
    "uvicorn); by default only their warnings and errors.",
)
@click.pass_obj
def worker(
    settings: Settings,
    broker: str | None,
    redis_url: str | None,
    model_dir: str | None,
    web_port: int | None,
    batch_size: int | None,
    delivery: str | None,
    log_level: str | None,
    verbose: bool,
) -> None:
    """Consume `clicks`, keep sessions in Redis, publish ranked items to `recommendations`.

    Malformed events go to `clicks.dlq` with the reason in the `streamrec-reason` header.
    A newly promoted model version is picked up within a few seconds, without a restart.
    Several workers with the same STREAMREC_APP_ID share the topic's partitions.
    Stop with Ctrl-C or SIGTERM: the batch in hand is finished and committed first; the
    worker exits within 10 s whatever state the broker and Redis are in. Exit code 3: in
    exactly-once mode another worker took over this worker's transactional id.

    Before it joins the consumer group and reports ready (/health/ready), the worker loads
    every tenant's model in service and ranks once with each: the compiled ranking
    kernels come from numba's cache (NUMBA_CACHE_DIR, default
    $STREAMREC_HOME/cache/numba), or are compiled then, on a first start.
    """
    settings = settings.with_(
        broker=broker,
        redis_url=redis_url,
        model_dir=model_dir,
        web_port=web_port,
        batch_size=batch_size,
        delivery=delivery,
        log_level=log_level,
    )
    _default_numba_cache(Path(settings.home) / "cache" / "numba")
    from stream.app import create_app
    from stream.kafka.transactions import check_delivery_mode, probe_transactions
    from stream.shutdown import Worker

    if check_delivery_mode(settings.delivery) == "exactly_once":
        probe_transactions(settings)  # a broker without transactions: one line, now
    app = create_app(settings)
    Worker(app, loglevel=settings.log_level, quiet=True, verbose=verbose).execute_from_commandline()


def _default_numba_cache(directory: Path) -> None:
    """numba keeps compiled kernels beside the installed sources or under $HOME, where a
    service user often cannot write (then every start compiles them again): a directory
    of the worker's own, unless NUMBA_CACHE_DIR says otherwise. Before numba is imported:
    it reads the setting once."""
    if os.environ.get("NUMBA_CACHE_DIR"):
        return
    try:
        directory.mkdir(parents=True, exist_ok=True)
    except OSError:
        return  # numba's own default then
    os.environ["NUMBA_CACHE_DIR"] = str(directory)


@click.command("demo")
@option(
    "--events",
    type=click.IntRange(1, 165_474),
    default=20_000,
    help="How many clicks of the shipped Kaggle file to replay.",
)
@option(
    "--rate",
    type=click.FloatRange(1, 1_000_000),
    default=2_000,
    help="Events per second offered.",
)
@option(
    "--show",
    type=click.IntRange(0, 1000),
    default=8,
    help="How many live recommendations to print.",
)
@click.pass_obj
def demo(settings: Settings, events: int, rate: float, show: int) -> None:
    """Run everything end to end on a private embedded stack, then stop it all.

    Starts the embedded broker and Redis on free ports, trains on the shipped Kaggle
    clickstream, starts a worker, replays clicks (and a few malformed events), prints
    live recommendations and a summary (events, recommendations, dead letters,
    throughput, latency), and stops every process it started.
    """
    from stream.dev.demo import run_demo

    raise SystemExit(run_demo(settings, events=events, rate=rate, show=show, echo=click.echo))

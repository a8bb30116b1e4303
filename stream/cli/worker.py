"""``streamrec worker``: run the Faust stream worker."""

from __future__ import annotations

import asyncio
import importlib.util
import os
import tempfile
import time
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
    kernels come from numba's cache, or are compiled then (see `streamrec warm`, which
    fills the cache ahead of a first start).
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
    use_kernel_cache(settings)
    from stream.app import create_app
    from stream.kafka.transactions import check_delivery_mode, probe_transactions
    from stream.shutdown import Worker

    if check_delivery_mode(settings.delivery) == "exactly_once":
        probe_transactions(settings)  # a broker without transactions: one line, now
    app = create_app(settings)
    Worker(app, loglevel=settings.log_level, quiet=True, verbose=verbose).execute_from_commandline()


def use_kernel_cache(settings: Settings) -> str:
    """Where numba keeps the compiled kernels, chosen before numba is imported (it reads
    NUMBA_CACHE_DIR once), and said in words: NUMBA_CACHE_DIR when set; else numba's own
    place beside the installed sources, when it is writable: one cache per installation
    whatever STREAMREC_HOME, so the one `streamrec warm` fills (scripts/setup.sh runs it)
    serves the demo's and every other worker; else $STREAMREC_HOME/cache/numba, for a
    service user who can write neither there nor under $HOME (numba's next choice)."""
    given = os.environ.get("NUMBA_CACHE_DIR")
    if given:
        return given
    models = importlib.util.find_spec("models")
    if models is not None and models.submodule_search_locations:
        beside = Path(list(models.submodule_search_locations)[0]) / "__pycache__"
        if _writable(beside):
            return str(beside)
    directory = Path(settings.home) / "cache" / "numba"
    if not _writable(directory):
        return "numba's default (neither the sources' directory nor STREAMREC_HOME is writable)"
    os.environ["NUMBA_CACHE_DIR"] = str(directory)
    return str(directory)


def _writable(directory: Path) -> bool:
    """numba's own test of a cache directory."""
    try:
        directory.mkdir(parents=True, exist_ok=True)
        tempfile.TemporaryFile(dir=directory).close()
    except OSError:
        return False
    return True


@click.command("warm")
@option(
    "--check",
    is_flag=True,
    help="Exit 1 if a kernel had to be compiled: the cache was empty, or made for other "
    "sources, another numba or another CPU.",
)
@click.pass_obj
def warm(settings: Settings, check: bool) -> None:
    """Compile the ranking kernels into numba's cache, so that a worker's first start loads them.

    Trains a small model on synthetic clicks in a temporary registry, then loads it and
    ranks with it as a worker does before it reports ready: every kernel the worker and
    `streamrec train` run is compiled and cached, or loaded when the cache holds it
    already (a second run takes a few seconds). The cache is the worker's, named on the
    first line: NUMBA_CACHE_DIR, else beside the installed sources, else (not writable
    there) $STREAMREC_HOME/cache/numba. It holds for the same sources, numba and CPU
    model, and for any x86-64 CPU with NUMBA_CPU_NAME=generic set both here and for the
    worker (as the Docker image does, at a cost in ranking speed: BENCHMARKS.md).
    scripts/setup.sh and the image's build run this.
    """
    where = use_kernel_cache(settings)
    click.echo(f"warming the ranking kernels in {where}: compiling them takes a while")
    started = time.perf_counter()
    from models.kernels import kernel_count, sample_bundle
    from models.registry import Registry
    from stream.pipeline.model_cache import ModelCache

    bundle = sample_bundle()
    with tempfile.TemporaryDirectory(prefix="streamrec-warm-") as tmp:
        registry = Registry(tmp)
        registry.promote("sample", registry.register("sample", bundle))
        asyncio.run(ModelCache(registry, rank_threads=settings.rank_threads).preload())
    count = kernel_count()
    click.echo(
        f"kernels warm: {count.signatures} signature(s), {count.compiled} compiled and "
        f"cached, {count.from_cache} loaded from the cache, in "
        f"{time.perf_counter() - started:.1f} s"
    )
    if check and count.compiled:
        raise click.ClickException(
            f"{count.compiled} kernel signature(s) were compiled: the cache in {where} did "
            "not hold them for these sources, this numba and this CPU"
        )


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

"""Producer commands: ``replay``, ``synth`` and ``loadtest``.

Thin wrappers over ``producers``: check the options, make sure the topics exist (a
broker that does not answer is a one-line error here, not a hang later), run, print.
"""

from __future__ import annotations

import logging
import math
import shlex
import sys
from pathlib import Path
from typing import Any

import click

from models.errors import StreamrecError
from producers.progress import duration
from stream.cli.params import (
    POSITIVE,
    ColumnSpec,
    Target,
    click_log_argument,
    column_options,
    option,
    pacing_options,
    setting_option,
    target_options,
    uses,
)
from stream.config import Settings

# -- shared steps --------------------------------------------------------------------------


def _tenants(target: Target) -> list[str]:
    from producers.replay import tenant_names

    return tenant_names(target.tenants, target.tenant_name)


def _pacer(rate: float | None, speedup: float | None) -> Any:
    from producers.timing import Pacer

    if rate is not None and speedup is not None:
        raise click.BadParameter("use either --rate or --speedup, not both", param_hint="--rate")
    return Pacer(rate=rate, speedup=speedup)


def _ensure_topics(settings: Settings, *topics: str) -> None:
    """Fail fast, in one line, when the broker is not there; create missing topics."""
    from confluent_kafka import KafkaException
    from confluent_kafka.admin import AdminClient

    from producers.client import RDKAFKA_LOG
    from stream.kafka.topics import ensure_topics

    if not logging.getLogger().isEnabledFor(logging.DEBUG):
        # Without -v, "connection refused" lines from librdkafka would bury the summary;
        # failures still show up in the delivery counts and the final line.
        RDKAFKA_LOG.setLevel(logging.CRITICAL)
    admin = AdminClient({**settings.kafka.admin(), "logger": RDKAFKA_LOG})
    try:
        admin.list_topics(timeout=5)
    except KafkaException as exc:
        raise StreamrecError(
            f"Kafka broker at {settings.broker} does not answer ({exc.args[0].str()}); start "
            "one with `streamrec dev up` or point --broker / STREAMREC_BROKER at yours"
        ) from None
    ensure_topics(settings.kafka, list(topics), settings.partitions, timeout=10)


def _producer(settings: Settings, topic: str, linger_ms: float) -> Any:
    from producers import ClickProducer

    return ClickProducer(settings.kafka, topic, linger_ms=linger_ms)


def _finish(result: Any, what: str) -> None:
    click.echo(f"{what}: {result.summary()}")
    if result.stats.failed:
        raise StreamrecError(
            f"{result.stats.failed:,} events were not delivered; is the broker at the address "
            "given by --broker / STREAMREC_BROKER running?"
        )


def _load_table(file: Path | None, spec: ColumnSpec, seed: int) -> Any:
    from models.datasets import eshop_path
    from producers.replay import load_replay

    return load_replay(file or eshop_path(), spec.fmt, seed=seed, **spec.columns())


# -- replay -------------------------------------------------------------------------------


@click.command("replay")
@click_log_argument
@column_options()
@pacing_options
@option(
    "--loop",
    "loops",
    type=click.IntRange(1, 1_000_000),
    default=1,
    help="Replay the file N times; sessions get new ids in every loop after the first.",
)
@option("--limit", type=click.IntRange(min=1), help="Stop after N events (over all loops).")
@option(
    "--seed",
    type=int,
    default=0,
    help="Seed for the invented time of day of date-only files.",
)
@target_options
@click.pass_obj
def replay(
    settings: Settings,
    file: Path | None,
    spec: ColumnSpec,
    rate: float | None,
    speedup: float | None,
    loops: int,
    limit: int | None,
    seed: int,
    target: Target,
) -> None:
    """Replay a click log into the clicks topic, keyed by session id.

    \b
    FILE: the Kaggle e-shop CSV (';'-separated), a YOOCHOOSE TSV (SessionId ItemId Time)
    or any CSV with --format csv --session-col ... --item-col ... [--time-col | --order-col].
    Clicks go out in time order, so sessions interleave as they happened. Every event
    gets ts = the moment it is sent (so latency can be measured downstream) and a unique
    event_id. Without --rate or --speedup it sends as fast as it can.

    \b
    On a terminal a progress bar shows the time left; elsewhere one line per tenth.

    \b
    Examples:
      streamrec replay --rate 1000 --limit 20000   # 20,000 clicks in 20 s
      streamrec replay --rate 1000                 # the whole file: 165,474 clicks, ~2 min 45 s
      streamrec replay                             # the shipped file, as fast as possible
      streamrec replay --rate 2000 --loop 10       # 1.65 M events at 2,000/s
      streamrec replay clicks.tsv --speedup 60 --tenants 3
    """
    settings = target.settings(settings)
    pacer = _pacer(rate, speedup)
    names = _tenants(target)
    from producers.replay import iter_events, send_events

    # The file first: a file that cannot be read is its own one-line error, whatever the
    # broker's state, and nothing is created on the broker for it.
    table = _load_table(file, spec, seed)
    _ensure_topics(settings, settings.clicks_topic)
    total = len(table) * loops if limit is None else min(limit, len(table) * loops)
    click.echo(
        f"replaying {total:,} events ({len(table):,} clicks in {table.n_sessions:,} "
        f"sessions x {loops} loop(s)) to '{settings.clicks_topic}' at {settings.broker}, "
        f"{_pace_text(rate, speedup)}" + (f", about {duration(total / rate)}" if rate else ""),
        err=True,
    )
    producer = _producer(settings, settings.clicks_topic, target.linger())
    events = iter_events(table, loops=loops, tenants=names)
    result = send_events(
        producer, events, pacer=pacer, limit=total, progress=not target.no_progress
    )
    _finish(result, "replay")


def _pace_text(rate: float | None, speedup: float | None) -> str:
    if rate is not None:
        return f"{rate:,.0f} events/s"
    if speedup is not None:
        return f"original timing x{speedup:g}"
    return "as fast as possible"


# -- synth --------------------------------------------------------------------------------


@click.command("synth")
@option(
    "--out",
    type=click.Path(dir_okay=False, path_type=Path),
    help="Write a YOOCHOOSE-format TSV (SessionId ItemId Time; .gz compresses).",
)
@option("--kafka", "to_kafka", is_flag=True, help="Send the stream to the clicks topic.")
@option(
    "--items",
    type=click.IntRange(1, 1_000_000),
    default=10_000,
    help="Catalogue size.",
)
@option(
    "--sessions",
    type=click.IntRange(min=1),
    default=20_000,
    help="Sessions to generate (about 6.3 clicks each).",
)
@option(
    "--categories",
    type=click.IntRange(min=1),
    show_default="about sqrt(items)",
    help="Latent categories (product lines).",
)
@option(
    "--zipf",
    type=click.FloatRange(0, 5),
    default=1.05,
    help="Popularity exponent (1.05 matches the rank/frequency slope of real data).",
)
@option(
    "--stay",
    type=click.FloatRange(0, 1),
    default=0.7,
    help="Probability that a category step stays in the current category.",
)
@option(
    "--days",
    type=POSITIVE,
    default=30.0,
    help="Time span of the session starts.",
)
@option("--seed", type=int, default=0)
@pacing_options
@option("--limit", type=click.IntRange(min=1), help="--kafka: stop after N events.")
@target_options
@click.pass_obj
def synth(
    settings: Settings,
    out: Path | None,
    to_kafka: bool,
    items: int,
    sessions: int,
    categories: int | None,
    zipf: float,
    stay: float,
    days: float,
    seed: int,
    rate: float | None,
    speedup: float | None,
    limit: int | None,
    target: Target,
) -> None:
    """Generate a realistic synthetic clickstream, seeded: to a file or into Kafka.

    \b
    Zipf item popularity, items in latent categories with Markov steps between them,
    moves along a product line, returns to the previous item, session lengths and
    click gaps like the real data. Same options + seed = same stream.

    \b
    Examples:
      streamrec synth --out synth.tsv.gz --items 100000 --sessions 1000000
      streamrec train synth.tsv.gz --format yoochoose
      streamrec synth --kafka --items 100000 --sessions 50000 --rate 5000
    """
    from producers.synth import SynthParams

    if bool(out) == to_kafka:
        raise click.BadParameter(
            "say where the stream goes: --out FILE or --kafka", param_hint="--out/--kafka"
        )
    params = SynthParams(
        items=items,
        sessions=sessions,
        categories=categories,
        zipf=zipf,
        stay=stay,
        days=days,
        seed=seed,
    )
    try:
        params.check()
    except ValueError as exc:
        raise click.BadParameter(str(exc)) from None
    if out is not None:
        _synth_to_file(out, params, progress=not target.no_progress)
        return
    settings = target.settings(settings)
    pacer = _pacer(rate, speedup)
    names = _tenants(target)
    from producers.replay import iter_events, prepare_replay, send_events
    from producers.synth import generate_clicks

    _ensure_topics(settings, settings.clicks_topic)
    table = prepare_replay(generate_clicks(params))
    total = len(table) if limit is None else min(limit, len(table))
    click.echo(
        f"sending {total:,} synthetic clicks ({sessions:,} sessions, {items:,} items) to "
        f"'{settings.clicks_topic}' ({_pace_text(rate, speedup)})",
        err=True,
    )
    producer = _producer(settings, settings.clicks_topic, target.linger())
    result = send_events(
        producer,
        iter_events(table, tenants=names),
        pacer=pacer,
        limit=total,
        progress=not target.no_progress,
    )
    _finish(result, "synth")


def _synth_to_file(out: Path, params: Any, *, progress: bool) -> None:
    from tqdm import tqdm

    from producers.synth import write_yoochoose

    with tqdm(total=params.sessions, unit="session", unit_scale=True, disable=not progress) as bar:
        clicks, sessions = write_yoochoose(
            out, params, on_chunk=lambda chunk: bar.update(int(chunk.session_ids[-1]) - bar.n)
        )
    click.echo(
        f"synth: wrote {clicks:,} clicks in {sessions:,} sessions over {params.items:,} "
        f"items to {out}; train on it with: streamrec train {shlex.quote(str(out))} "
        "--format yoochoose"
    )


# -- loadtest -----------------------------------------------------------------------------

# The load test's latency counts from each event's send: a producer holding events
# back to fill batches would be measured as the worker's latency.
LOADTEST_LINGER_MS = 1.0


def _parse_sweep(value: str | None) -> list[float]:
    if not value:
        return []
    try:
        rates = [float(v) for v in value.split(",") if v.strip()]
    except ValueError:
        raise click.BadParameter(
            "a comma-separated list of rates, e.g. 1000,2000,5000", param_hint="--sweep"
        ) from None
    if not rates or any(r <= 0 for r in rates):
        raise click.BadParameter("rates must be positive", param_hint="--sweep")
    return rates


@click.command("loadtest", epilog=uses("topics"))
@option(
    "--rate",
    type=POSITIVE,
    default=1000.0,
    help="Offered load in events per second.",
)
@option("--duration", type=POSITIVE, default=60.0, help="Seconds of offered load.")
@option(
    "--max",
    "max_mode",
    is_flag=True,
    help="Send --events as fast as possible and measure how long until every one "
    "is answered: the worker's sustained throughput.",
)
@option("--events", type=click.IntRange(min=1), help="--max: how many events to send.")
@option(
    "--sweep",
    help="Comma-separated rates: one run of --duration each, then a plot "
    "of latency against offered load (find the knee).",
)
@option(
    "--source",
    show_default="the shipped e-shop file, which the default model is trained on",
    help="A click file to replay (looped as needed), or 'synth'.",
)
@column_options()
@option(
    "--synth-items",
    type=click.IntRange(1, 1_000_000),
    default=10_000,
    help="--source synth: catalogue size.",
)
@option("--seed", type=int, default=0)
@option(
    "--json",
    "json_path",
    type=click.Path(dir_okay=False, path_type=Path),
    help="Write the report here, with FILE.md beside it, and FILE.png (latency plots) "
    "when matplotlib is installed (the plots extra).",
)
@setting_option("--group", setting="app_id", help="The worker's consumer group, for the lag.")
@option(
    "--drain-timeout",
    type=POSITIVE,
    default=30.0,
    help="After the last send, give up waiting when no recommendation arrived for "
    "this many seconds.",
)
@option("--check", is_flag=True, help="Exit 1 if any event is missing or dead-lettered.")
@target_options
@click.pass_obj
def loadtest(
    settings: Settings,
    rate: float,
    duration: float,
    max_mode: bool,
    events: int | None,
    sweep: str | None,
    source: str | None,
    spec: ColumnSpec,
    synth_items: int,
    seed: int,
    json_path: Path | None,
    group: str | None,
    drain_timeout: float,
    check: bool,
    target: Target,
) -> None:
    """Offer clicks to a running worker and measure latency and throughput end to end.

    \b
    Needs a running `streamrec worker` on the same broker. Reads `recommendations`,
    matches each one to its event by event_id and reports: achieved throughput, latency
    (event sent -> recommendation received) p50/p95/p99/max, events with no
    recommendation (missing), dead letters, and the worker group's lag at the end.
    One warm-up click per tenant must be answered before the clock starts. Sessions get
    fresh ids per run, so runs never share session state.

    \b
    Examples:
      streamrec loadtest --rate 1000 --duration 60 --json out/lt-1000.json
      streamrec loadtest --max --events 200000
      streamrec loadtest --sweep 1000,2000,5000,10000 --duration 30 --json out/sweep.json
    """
    from producers import loadtest as lt
    from producers.replay import prepare_replay
    from producers.synth import SynthParams, generate_clicks

    rates = _parse_sweep(sweep)
    if max_mode and rates:
        raise click.BadParameter("--max and --sweep do not go together", param_hint="--max")
    if max_mode and events is None:
        raise click.BadParameter("--max needs --events N", param_hint="--events")
    if events is not None and not max_mode:
        raise click.BadParameter(
            "--events goes with --max; otherwise use --rate and --duration", param_hint="--events"
        )
    settings = target.settings(settings)
    names = _tenants(target)
    plan: list[tuple[float | None, int]] = (
        [(None, events or 0)]
        if max_mode
        else [(r, lt.events_for(r, duration)) for r in (rates or [rate])]
    )
    if source == "synth":
        biggest = max(n for _, n in plan)
        params = SynthParams(items=synth_items, sessions=max(1, math.ceil(biggest / 6)), seed=seed)
        table = prepare_replay(generate_clicks(params))
        source_text = f"synth (items={synth_items}, seed={seed})"
    else:
        table = _load_table(Path(source) if source else None, spec, seed)
        source_text = source or "shipped e-shop clothing 2008 clickstream"
    _ensure_topics(settings, settings.clicks_topic, settings.recs_topic, settings.dlq_topic)
    command = "streamrec " + shlex.join(sys.argv[1:])
    runs = []
    for run_rate, n_events in plan:
        config = lt.LoadTestConfig(
            broker=settings.kafka,
            clicks_topic=settings.clicks_topic,
            recs_topic=settings.recs_topic,
            dlq_topic=settings.dlq_topic,
            worker_group=group or settings.app_id,
            rate=run_rate,
            events=n_events,
            tenants=names,
            drain_timeout_s=drain_timeout,
            linger_ms=target.linger(LOADTEST_LINGER_MS),
            progress=not target.no_progress,
            source=source_text,
        )
        click.echo(
            f"load test: {n_events:,} events "
            f"{'as fast as possible' if run_rate is None else f'at {run_rate:,.0f}/s'} "
            f"to '{settings.clicks_topic}' at {settings.broker}",
            err=True,
        )
        data = lt.run_loadtest(table, config, echo=lambda line: click.echo(line, err=True))
        runs.append(data)
        click.echo(lt.markdown_report(data.report))
        if data.report["answered"] == 0:
            click.echo(
                "no recommendation came back: is `streamrec worker` running against "
                f"{settings.broker} with a trained model?",
                err=True,
            )
    if json_path is not None:
        _write_loadtest_files(json_path, runs, command)
    if check:
        bad = sum(d.report["missing"] + d.report["dead_letters"] for d in runs)
        if bad:
            raise StreamrecError(f"{bad:,} events were missing or dead-lettered")


def _write_loadtest_files(json_path: Path, runs: list[Any], command: str) -> None:
    from models.plots import require_matplotlib
    from producers import loadtest as lt

    reports = [d.report for d in runs]
    if len(runs) == 1:
        payload = reports[0] | {"command": command}
        written = lt.write_outputs(json_path, payload, lt.markdown_report(reports[0], command))
    else:
        payload = {"command": command, "runs": reports}
        written = lt.write_outputs(json_path, payload, lt.markdown_sweep(reports, command))
    click.echo("wrote " + ", ".join(str(p) for p in written))
    try:
        require_matplotlib()
    except StreamrecError as exc:  # the report is whole without its pictures
        click.echo(f"pictures skipped: {exc}")
        return
    if len(runs) == 1:
        pictures = [lt.plot_run(runs[0], json_path.with_suffix(".png"))]
    else:
        pictures = [lt.plot_sweep(reports, json_path.with_suffix(".png"))]
        for data in runs:
            rate = data.report["offered_rate"]
            pictures.append(
                lt.plot_run(data, json_path.with_name(f"{json_path.stem}-{rate:.0f}.png"))
            )
    click.echo("wrote " + ", ".join(str(p) for p in pictures))

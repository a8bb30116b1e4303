"""``streamrec trainer``: periodic, gated retraining of every tenant from the click log."""

from __future__ import annotations

import logging
import os
import time
from collections import Counter
from collections.abc import Callable
from typing import TYPE_CHECKING

import click
from tqdm import tqdm

from models.errors import StreamrecError
from models.gate import GATE_METRICS, GatePolicy
from models.train import TrainParams
from stream.cli.params import TENANT, Duration, option, uses
from stream.config import Settings

if TYPE_CHECKING:
    from stream.retrain.group import Train
    from stream.retrain.job import PassReport
    from stream.retrain.passes import PassInfo

log = logging.getLogger(f"streamrec.{__name__}")

# How a decision is counted in a pass's summary line, where its name alone is not clear.
_SUMMARY = {"unjudged": "with no fresh sessions to judge"}


@click.command("trainer", epilog=uses("registry", "redis", "broker", "topics", "retrain"))
@option("--once", is_flag=True, help="One pass over all tenants, then exit.")
@option(
    "--every",
    type=Duration(),
    default="1h",
    help="Time between passes when not --once.",
)
@option(
    "--window",
    type=Duration(),
    default="7d",
    help="How far back to read clicks from the `clicks` topic.",
)
@option("--tenant", "tenants", multiple=True, type=TENANT, help="Only these tenants (repeatable).")
@option(
    "--gate-metric",
    type=click.Choice(GATE_METRICS),
    default="hr",
    help="Metric that decides whether a candidate replaces the current model.",
)
@option(
    "--gate-margin",
    type=click.FloatRange(-1, 1),
    default=GatePolicy.margin,
    help="How much better than the current model a candidate must be (negative: how much "
    "worse it may be).",
)
@option(
    "--keep-unpromoted",
    type=click.IntRange(1),
    default=5,
    help="Versions never promoted kept per tenant, at least the newest, whose log "
    "positions tell the next pass whether there are new clicks (older ones deleted; never "
    "one in service, in the promotion history or in an experiment).",
)
@option(
    "--holdout",
    type=click.FloatRange(0.01, 0.9),
    default=0.2,
    help="Newest share of sessions held out to compare candidate and current (only those "
    "that started after the current model's last training click and are not, item for "
    "item, one of its training sessions).",
)
@option(
    "--min-sessions",
    type=click.IntRange(2),
    default=20,
    help="Tenants with fewer sessions in the window are skipped.",
)
@option(
    "--jobs",
    type=click.IntRange(1, 64),
    default=os.cpu_count() or 1,
    help="Processes reading the click log, then training tenants, in parallel.",
)
@option(
    "--rollout",
    type=click.Choice(("direct", "staged")),
    default="direct",
    help="direct: a candidate that passes the gate is promoted at once; staged: it serves "
    "10 %, 50 %, then 100 % of sessions while its online hit rate is not worse, and is "
    "rolled back if it is.",
)
@option(
    "--rollout-min-recommendations",
    type=click.IntRange(1),
    default=1000,
    help="Recommendations per arm before a stage is judged.",
)
@option(
    "--rollout-check",
    type=Duration(),
    default="10s",
    help="How often running rollouts are looked at, between passes.",
)
@option(
    "--epochs",
    type=click.IntRange(1, 1000),
    show_default="20, fewer above 150k clicks",
    help="Word2Vec epochs (a log under 30k clicks is embedded without Word2Vec).",
)
@option("--seed", type=int, show_default="42", help="Random seed for training.")
@option(
    "--ranker",
    type=click.Choice(["linear", "blend"]),
    show_default="linear",
    help="How the served model orders candidates (see `streamrec train --help`).",
)
@option(
    "--rerank-top",
    type=click.IntRange(0, 1000),
    show_default="50",
    help="Boosted trees reorder the linear ranker's best N; 0: none "
    "(see `streamrec train --help`).",
)
@option(
    "--group",
    metavar="NAME",
    help="Share the tenants with every trainer started with this group name, on this "
    "machine or others: each pass's work is one record per tenant on the `retrain` topic, "
    "consumed in the Kafka consumer group NAME, so each tenant is trained by one trainer "
    "and a trainer that dies has its tenants taken over. With --once, every trainer of "
    "the group exits when the pass is done; with --every, one of them (whichever holds "
    "the group's lease in Redis) publishes the passes. The group's trainers share the "
    "reading of the click log too: they fill a click archive in the registry directory "
    "(<registry>/.clicks, on storage they all share), each click decoded once, and each "
    "trainer reads only its tenants' clicks from it.",
)
@option(
    "--quiet",
    "-q",
    is_flag=True,
    help="Only each pass's summary line (and warnings): no progress, no per-tenant lines.",
)
@click.pass_obj
def trainer(
    settings: Settings,
    once: bool,
    every: float,
    window: float,
    tenants: tuple[str, ...],
    gate_metric: str,
    gate_margin: float,
    keep_unpromoted: int,
    holdout: float,
    min_sessions: int,
    jobs: int,
    rollout: str,
    rollout_min_recommendations: int,
    rollout_check: float,
    epochs: int | None,
    seed: int | None,
    ranker: str | None,
    rerank_top: int | None,
    group: str | None,
    quiet: bool,
) -> None:
    """Retrain each tenant's model from the click log and promote it only if it is better.

    For every tenant with clicks in the window (and mode `on`): build sessions, hold out
    the newest ones that started after the version in service's last training click
    and do not repeat one of its training sessions item for item (a replay), train
    Word2Vec + KMeans on the others, compare the candidate with the version in service
    on the held-out sessions, register the candidate with both scores in its manifest,
    and promote it (workers swap within seconds) only if it beats the version
    in service by the gate's margin. A tenant with no such fresh session is not judged;
    frozen and switched-off tenants are skipped, and so is a tenant with no new clicks
    since its last trained version.
    """
    from stream.retrain.job import run_once
    from stream.retrain.rollout import RolloutSettings, look_at_rollouts

    staged = (
        RolloutSettings(min_recommendations=rollout_min_recommendations)
        if rollout == "staged"
        else None
    )

    def look() -> None:
        for tenant, step in look_at_rollouts(settings):
            click.echo(f"trainer: tenant {tenant}: rollout {step}")

    policy = GatePolicy(
        metric=gate_metric, margin=gate_margin, holdout=holdout, min_sessions=min_sessions
    )
    given = {"epochs": epochs, "seed": seed, "ranker": ranker, "rerank_top": rerank_top}
    overrides = {k: v for k, v in given.items() if v is not None}
    params = TrainParams(**overrides)
    if quiet:
        logging.getLogger("streamrec").setLevel(logging.WARNING)
    if group is not None:
        _in_group(
            settings, group, once=once, every=every, window=window, tenants=tenants,
            quiet=quiet, look=look, rollout_check=rollout_check,
            train=lambda names, info, step: run_once(
                settings, window_s=info.window_s, now=info.now, params=params,
                policy=policy, tenants=names, progress=step, jobs=jobs,
                keep_unpromoted=keep_unpromoted, rollout=staged, pass_id=info.id,
                archived=info.clicks,
            ),
        )  # fmt: skip
        return
    while True:
        started = time.perf_counter()
        # On a terminal a bar; elsewhere the log's line per stage and tenant says it all.
        bar = tqdm(desc="retraining", unit="tenant", disable=True if quiet else None)

        def step(tenant: str, bar: tqdm = bar) -> None:
            bar.set_postfix_str(tenant, refresh=False)
            bar.update()

        try:
            report = run_once(
                settings,
                window_s=window,
                params=params,
                policy=policy,
                tenants=tenants or None,
                progress=step,
                jobs=jobs,
                keep_unpromoted=keep_unpromoted,
                rollout=staged,
            )
        except StreamrecError as exc:
            bar.close()
            if once:
                raise
            # The broker or Redis away for a while must not end the periodic trainer: the
            # models in service keep serving, and the next pass tries again.
            log.error("trainer: this pass failed: %s; the next one in %.0fs", exc, every)
        else:
            bar.close()
            click.echo(f"trainer: {_summary(report, time.perf_counter() - started)}")
            if once:
                look()
                return
            log.info("next pass in %.0fs", every)
        # Between passes, running rollouts move on (or back) as their counters say.
        next_pass = time.monotonic() + every
        while time.monotonic() < next_pass:
            look()
            time.sleep(max(0.0, min(rollout_check, next_pass - time.monotonic())))


def _summary(report: PassReport, elapsed: float) -> str:
    counts = Counter(o.decision.action for o in report.outcomes)
    return (
        f"{len(report.outcomes)} tenant(s) in {elapsed:.1f}s (reading {report.clicks} "
        f"clicks: {report.read_s:.1f}s): "
        + ", ".join(
            f"{counts[a]} {_SUMMARY.get(a, a)}"
            for a in ("promoted", "rollout", "kept", "unjudged", "skipped", "failed")
            if counts[a] or a in ("promoted", "kept", "skipped")
        )
    )


def _in_group(
    settings: Settings,
    group: str,
    *,
    once: bool,
    every: float,
    window: float,
    tenants: tuple[str, ...],
    quiet: bool,
    look: Callable[[], None],
    rollout_check: float,
    train: Train,
) -> None:
    """This process as one of the trainers of ``group`` (stream.retrain.group)."""
    from stream.retrain.group import GroupOptions, GroupTrainer

    options = GroupOptions(group, once, every, window, tenants, quiet)
    last_look = 0.0

    def between() -> None:  # the publisher moves running rollouts on, between batches
        nonlocal last_look
        if time.monotonic() - last_look >= rollout_check:
            last_look = time.monotonic()
            look()

    def on_batch(report: PassReport, info: PassInfo, elapsed: float) -> None:
        click.echo(f"trainer: group {group}, pass {info.id}: {_summary(report, elapsed)}")

    started = time.perf_counter()
    with GroupTrainer(settings, options) as member:
        member.run(train, on_batch, between)
        click.echo(
            f"trainer: group {group}: pass {member.info.id if member.info else '?'} done in "
            f"{time.perf_counter() - started:.1f}s ({len(member.trained)} of its "
            f"{member.info.tenants if member.info else '?'} tenant(s) by this trainer)"
        )
    look()
    if member.failed:
        # The pass is over (the others' tenants trained); a scheduler sees it go wrong.
        raise StreamrecError(
            f"{len(member.failed)} tenant(s) failed in this trainer's share of the pass: "
            f"{', '.join(sorted(member.failed))} (their clicks could not be read; see above)"
        )

"""Offline model commands: ``train``, ``similar`` and ``evaluate``.

Thin wrappers over ``models``: parse options, read the data, call the pure code, print.
No broker here (``train`` tells the workers of a promotion through Redis); the registry
directory comes from ``Settings.registry_dir``.
"""

from __future__ import annotations

import json
import logging
import sys
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

import click

from models.datasets import Session, build_sessions, eshop_path
from models.names import tenant_refusal
from models.registry import Registry
from stream.cli.params import (
    CLICK_LOG,
    ColumnSpec,
    click_log_argument,
    column_options,
    option,
    stacked,
    tenant_option,
    uses,
)
from stream.config import Settings
from stream.control.service import Control

if TYPE_CHECKING:
    from models.train import TrainParams

_SHIPPED = "the shipped e-shop clothing 2008 clickstream"


# None = the tuned default of TrainParams (shown, not passed, so the tuning stays in one place).
_train_options = stacked(
    option(
        "--vector-size", type=click.IntRange(2, 1000), show_default="10", help="Embedding size."
    ),
    option(
        "--window", type=click.IntRange(1, 100), show_default="5", help="Word2Vec context window."
    ),
    option("--clusters", type=click.IntRange(1, 10000), show_default="10", help="KMeans clusters."),
    option(
        "--epochs",
        type=click.IntRange(1, 1000),
        show_default="20, fewer above 150k clicks",
        help="Word2Vec epochs (a log under 30k clicks is embedded without Word2Vec).",
    ),
    option("--seed", type=int, show_default="42", help="Seed for every random choice."),
    option(
        "--ranker",
        type=click.Choice(["linear", "blend"]),
        show_default="linear",
        help="How the served model orders candidates: linear = a ranker fitted on the "
        "training log (best lists); blend = the fixed mix of the same features that the "
        "ranker starts from.",
    ),
    option(
        "--rerank-top",
        type=click.IntRange(0, 1000),
        show_default="50",
        help="Boosted trees reorder the linear ranker's best N (logs of 30k clicks or "
        "more): better lists, at more ranking CPU per event; 0 fits no trees, for the "
        "most events per second.",
    ),
    option(
        "--workers",
        type=click.IntRange(1, 64),
        show_default="1",
        help="Word2Vec threads; more than 1 is faster but not reproducible.",
    ),
)


def _train_params(**given: Any) -> TrainParams:
    """TrainParams from CLI options; options left out keep the tuned defaults."""
    from models.train import TrainParams

    given["n_clusters"] = given.pop("clusters", None)
    return TrainParams.from_dict(given)


def _read_sessions(
    path: Path, spec: ColumnSpec, *, collapse_repeats: bool = True
) -> tuple[list[Session], int]:
    """Sessions (ordered, one-click sessions dropped; consecutive repeats collapsed unless
    told otherwise) and the raw click count."""
    clicks = spec.read(path)
    return build_sessions(clicks, min_length=2, collapse_repeats=collapse_repeats), len(clicks)


def _quiet_libraries() -> None:
    # gensim logs every epoch at INFO; the progress bars say the same thing in one line.
    if not logging.getLogger().isEnabledFor(logging.DEBUG):
        for name in ("gensim", "matplotlib"):
            logging.getLogger(name).setLevel(logging.WARNING)


class _Stages:
    """Training progress from ``train_model``'s callback: on a terminal one tqdm bar per
    stage; elsewhere (a log, a pipe) one line per stage with its time when it ends, so a
    log gets no carriage-return-joined bars; ``quiet``: nothing."""

    def __init__(self, quiet: bool = False) -> None:
        self._quiet = quiet
        self._bars = not quiet and sys.stderr.isatty()
        self._stage: str | None = None
        self._started = 0.0
        self._bar: Any = None

    def __call__(self, stage: str, fraction: float) -> None:
        if stage != self._stage:
            self.close()
            self._stage, self._started = stage, time.perf_counter()
            if self._bars:
                from tqdm import tqdm

                self._bar = tqdm(
                    total=100,
                    desc=f"{stage:<10}",
                    unit="%",
                    leave=True,
                    bar_format="{desc} {bar} {n:3.0f}% {elapsed}",
                )
        if self._bar is not None:
            self._bar.update(round(fraction * 100) - self._bar.n)

    def close(self) -> None:
        if self._bar is not None:
            self._bar.close()
            self._bar = None
        elif self._stage is not None and not self._quiet:
            took = time.perf_counter() - self._started
            click.echo(f"{self._stage:<10} done in {took:.1f} s", err=True)
        self._stage = None


@click.command(epilog=uses("registry", "redis"))
@click_log_argument
@column_options(category=True)
@tenant_option(help="Tenant the version is registered for.")
@_train_options
@option(
    "--eval-days",
    type=click.FloatRange(min=0, min_open=True),
    help="Also fit on all but the last N days and store HR/MRR@20 on those days in the manifest.",
)
@option("--no-promote", is_flag=True, help="Register the version without putting it in service.")
@option("--quiet", "-q", is_flag=True, help="No progress: only the result line.")
@option(
    "--plots",
    type=click.Path(file_okay=False, path_type=Path),
    help="Write cluster-size and embedding-map PNGs into this directory.",
)
@click.pass_obj
def train(
    settings: Settings,
    file: Path | None,
    spec: ColumnSpec,
    tenant: str,
    vector_size: int | None,
    window: int | None,
    clusters: int | None,
    epochs: int | None,
    seed: int | None,
    workers: int | None,
    ranker: str | None,
    rerank_top: int | None,
    eval_days: float | None,
    no_promote: bool,
    quiet: bool,
    plots: Path | None,
) -> None:
    """Train item embeddings and clusters on FILE and register (and promote) a model version.

    FILE defaults to the shipped e-shop clothing 2008 clickstream. With --category-col the
    ranker also weighs each candidate's category against the session's (the periodic
    trainer takes categories from the tenant's catalogue instead).
    """
    from models.datasets import item_categories
    from models.train import holdout_metrics, train_model

    _quiet_libraries()
    started = time.perf_counter()
    # A new tenant's name follows the rules of `streamrec tenant create`, checked first.
    refused = tenant_refusal(tenant, Registry(settings.registry_dir).tenants())
    if refused is not None:
        raise click.ClickException(refused.reason)
    path = file or eshop_path()
    if not quiet:
        click.echo(f"reading {path}")
    clicks = spec.read(path)
    sessions, n_clicks = build_sessions(clicks, min_length=2), len(clicks)
    categories = item_categories(clicks) or None
    params = _train_params(
        vector_size=vector_size,
        window=window,
        clusters=clusters,
        epochs=epochs,
        seed=seed,
        workers=workers,
        ranker=ranker,
        rerank_top=rerank_top,
    )
    bars = _Stages(quiet)
    try:
        bundle = train_model(
            [s.items for s in sessions], params, progress=bars, categories=categories
        )
    finally:
        bars.close()
    extra: dict[str, Any] = {}
    if eval_days is not None:
        click.echo(f"evaluating on the last {eval_days:g} days (a second fit on the days before)")
        extra["metrics"] = holdout_metrics(sessions, eval_days, params, categories=categories)
        shown = {k: v for k, v in extra["metrics"].items() if k.startswith(("hr", "mrr"))}
        click.echo("  " + "  ".join(f"{k}={v:.4f}" for k, v in shown.items()))
    registry = Registry(settings.registry_dir)
    data = {
        "source": str(path),
        "format": spec.fmt,
        "clicks": n_clicks,
        "sessions": len(sessions),
        "from_ts": min((s.start for s in sessions), default=None),
        "to_ts": max((s.end for s in sessions), default=None),
    }
    version = registry.register(tenant, bundle, {"data": data, **extra})
    if not no_promote:
        with Control(settings) as control:
            control.promote(tenant, version)
    if plots is not None:
        for name in _write_plots(registry.load(tenant, version), plots):
            click.echo(f"wrote {name}")
    counts = bundle.manifest["counts"]
    state = "registered" if no_promote else "registered and promoted"
    click.echo(
        f"{state} {tenant}/{version}: {counts['items']} items, {counts['sessions']} sessions, "
        f"{n_clicks} clicks, {len(bundle.centroids)} clusters, {counts['categories']} categories "
        f"in {time.perf_counter() - started:.1f}s "
        f"({registry.root / tenant / version})"
    )


def _write_plots(bundle: Any, directory: Path) -> list[Path]:
    from models.plots import cluster_sizes_figure, embedding_map_figure

    directory.mkdir(parents=True, exist_ok=True)
    written = []
    for name, make in (
        ("cluster_sizes.png", cluster_sizes_figure),
        ("embedding_map.png", embedding_map_figure),
    ):
        fig = make(bundle)
        fig.savefig(directory / name, dpi=120, bbox_inches="tight")
        written.append(directory / name)
    return written


@click.command(epilog=uses("registry"))
@click.argument("item")
@option("--k", default=5, type=click.IntRange(1, 1000), help="How many items.")
@tenant_option()
@option("--any-cluster", is_flag=True, help="Search all items, not only ITEM's cluster.")
@click.pass_obj
def similar(settings: Settings, item: str, k: int, tenant: str, any_cluster: bool) -> None:
    """The K products most similar to ITEM (cosine of embeddings, within ITEM's cluster)."""
    from models.ranking import similar_items

    bundle = Registry(settings.registry_dir).load(tenant)
    i = bundle.index(item)
    if i is None:
        raise click.BadParameter(
            f"{item!r} is not in model {tenant}/{bundle.version}", param_hint="ITEM"
        )
    rows = similar_items(bundle, item, k=k, same_cluster=not any_cluster)
    scope = "all items" if any_cluster else f"cluster {int(bundle.clusters[i])}"
    click.echo(f"items most similar to {item} ({scope}, model {tenant}/{bundle.version}):")
    click.echo(f"  {'rank':>4}  {'item':<12} {'cosine':>7}")
    for rank, (other, score) in enumerate(rows, start=1):
        click.echo(f"  {rank:>4}  {other:<12} {score:7.3f}")


MODEL_NAMES = (
    "streamrec",
    "pop",
    "transitions",
    "sr",
    "item_knn",
    "item2vec",
    "cluster_random",
    "sknn",
    "vsknn",
    "stan",
)
DEFAULT_MODELS = ("streamrec", "pop", "transitions", "sr", "item_knn", "sknn", "vsknn", "stan")


@click.command()
@option(
    "--train",
    "train_file",
    type=CLICK_LOG,
    show_default=_SHIPPED,
    help="Training clicks.",
)
@option(
    "--test",
    "test_file",
    type=CLICK_LOG,
    help="Test clicks, same format as --train.",
)
@option(
    "--split-days",
    type=click.FloatRange(min=0, min_open=True),
    help="Instead of --test: sessions starting in the last N days of --train are the test set.",
)
@option(
    "--valid",
    "valid_file",
    type=CLICK_LOG,
    help="Validation clicks: models that tune settings choose them on this split only.",
)
@option(
    "--valid-days",
    type=click.FloatRange(min=0, min_open=True),
    help="Instead of --valid: the last N days of the training sessions are the validation split.",
)
@column_options(category=True)
@option(
    "--protocol",
    type=click.Choice(("next-item", "serving")),
    default="next-item",
    help="next-item: the literature protocol (nothing filtered, repeats kept); "
    "serving: the same cases with the --exclude rule applied after ranking.",
)
@option(
    "--exclude",
    type=click.Choice(("none", "current", "seen")),
    default="current",
    help="serving: what a list may not contain (the item being looked at, or any item "
    "of the session).",
)
@option("--k", default=20, type=click.IntRange(1, 1000), help="List length.")
@option(
    "--models",
    "model_list",
    default=",".join(DEFAULT_MODELS),
    help=f"Comma-separated models to compare, from: {', '.join(MODEL_NAMES)}.",
)
@option(
    "--json",
    "json_out",
    type=click.Path(dir_okay=False, path_type=Path),
    help="Also write the results as JSON to this file.",
)
@option(
    "--plot",
    "plot_out",
    type=click.Path(dir_okay=False, path_type=Path),
    help="Also draw HR@K and MRR@K of every model as a bar chart (PNG) to this file "
    "(needs the plots extra, matplotlib).",
)
@_train_options
@click.pass_obj
def evaluate(
    settings: Settings,
    train_file: Path | None,
    test_file: Path | None,
    split_days: float | None,
    valid_file: Path | None,
    valid_days: float | None,
    spec: ColumnSpec,
    protocol: str,
    exclude: str,
    k: int,
    model_list: str,
    json_out: Path | None,
    plot_out: Path | None,
    **train_options: Any,
) -> None:
    """Compare streamrec with baselines on next-item prediction (HR@K, MRR@K, coverage, speed).

    Every prefix of every test session is a case: clicks 1..i predict click i+1, consecutive
    repeats kept. Settings a model tunes are chosen on --valid / --valid-days only.
    """
    from models.baselines import model_factories
    from models.datasets import item_categories, split_last_days
    from models.evaluate import evaluate as run_evaluation

    _quiet_libraries()
    names = [m.strip() for m in model_list.split(",") if m.strip()]
    unknown = sorted(set(names) - set(MODEL_NAMES))
    if unknown or not names:
        raise click.BadParameter(
            f"unknown model(s) {', '.join(unknown) or '(none)'}; choose from "
            f"{', '.join(MODEL_NAMES)}",
            param_hint="--models",
        )
    if (test_file is None) == (split_days is None):
        raise click.BadParameter(
            "give exactly one of --test FILE or --split-days N", param_hint="--test"
        )
    if valid_file is not None and valid_days is not None:
        raise click.BadParameter(
            "give at most one of --valid FILE or --valid-days N", param_hint="--valid"
        )
    # Outputs are checked before the long run, not after it.
    for flag, out in (("--json", json_out), ("--plot", plot_out)):
        if out is not None and not out.resolve().parent.is_dir():
            raise click.BadParameter(f"no directory {out.parent} to write into", param_hint=flag)
    if plot_out is not None:
        from models.plots import require_matplotlib

        require_matplotlib()
    train_path = train_file or eshop_path()
    train_sessions, _ = _read_sessions(train_path, spec, collapse_repeats=False)
    if test_file is not None:
        test_sessions, _ = _read_sessions(test_file, spec, collapse_repeats=False)
    else:
        train_sessions, test_sessions = split_last_days(train_sessions, split_days or 0)
    valid_sessions: list[Session] | None = None
    fit_part: list[Session] | None = None
    if valid_file is not None:
        valid_sessions, _ = _read_sessions(valid_file, spec, collapse_repeats=False)
    elif valid_days is not None:
        # Tuning sees only the training sessions: the last days of them play the test.
        fit_part, valid_sessions = split_last_days(train_sessions, valid_days)
    categories = item_categories(spec.read(train_path)) if spec.category_col else None
    factories = model_factories(_train_params(**train_options), categories)
    click.echo(
        f"train: {len(train_sessions)} sessions from {train_path}; "
        f"test: {len(test_sessions)} sessions"
        + (f" (last {split_days:g} days)" if split_days else f" from {test_file}")
        + f"; protocol {protocol}"
        + (f" (exclude {exclude})" if protocol == "serving" else "")
    )
    results: dict[str, Any] = {}
    cases = 0
    for name, metrics in run_evaluation(
        {n: factories[n] for n in names},
        [s.items for s in train_sessions],
        [s.items for s in test_sessions],
        k=k,
        protocol=protocol,
        exclude=exclude,
        valid=[s.items for s in valid_sessions] if valid_sessions is not None else None,
        tune_train=[s.items for s in fit_part] if fit_part is not None else None,
    ):
        cases = metrics.cases
        results[name] = metrics.as_dict()
        click.echo(f"  {name}: HR@{k} {metrics.hr:.4f}  MRR@{k} {metrics.mrr:.4f}", err=True)
    click.echo(_metrics_table(results, k, cases))
    if json_out is not None:
        payload = {
            "protocol": protocol,
            "exclude": exclude if protocol == "serving" else "none",
            "cases": cases,
            "k": k,
            "tuned_on": str(valid_file)
            if valid_file
            else (f"last {valid_days:g} days of train" if valid_days else None),
            "models": {
                n: {key: v for key, v in m.items() if key != "cases"} for n, m in results.items()
            },
        }
        json_out.write_text(json.dumps(payload, indent=2) + "\n", encoding="utf-8")
        click.echo(f"wrote {json_out}")
    if plot_out is not None:
        from models.plots import evaluation_figure

        rule = f", exclude {exclude}" if protocol == "serving" else ""
        tested = (
            f"{test_file.parent.name}/{test_file.name}"
            if test_file is not None
            else f"{train_path.name}, last {split_days:g} days"
        )
        title = f"{tested}: {cases:,} cases, protocol {protocol}{rule}"
        evaluation_figure(results, k, title).savefig(plot_out, dpi=120, bbox_inches="tight")
        click.echo(f"wrote {plot_out}")


def _metrics_table(results: dict[str, dict[str, Any]], k: int, cases: int) -> str:
    """A fixed-width table; the best HR and MRR are starred."""
    best_hr = max((m["hr"] for m in results.values()), default=0.0)
    best_mrr = max((m["mrr"] for m in results.values()), default=0.0)
    lines = [
        f"{cases} cases, k={k}",
        f"{'model':<15} {'HR@' + str(k):>9} {'MRR@' + str(k):>9} {'coverage':>9} "
        f"{'pop.rank':>9} {'train s':>8} {'recs/s':>9}",
    ]
    for name, m in results.items():
        hr = f"{m['hr']:.4f}{'*' if m['hr'] == best_hr else ' '}"
        mrr = f"{m['mrr']:.4f}{'*' if m['mrr'] == best_mrr else ' '}"
        lines.append(
            f"{name:<15} {hr:>9} {mrr:>9} {m['coverage']:>9.3f} {m['popularity_rank']:>9.1f} "
            f"{m['train_s']:>8.1f} {m['recs_per_s']:>9.0f}"
        )
    return "\n".join(lines)

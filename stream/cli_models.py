"""Model commands: ``train``, ``similar``, ``evaluate`` and ``models list|promote|rollback``.

Thin wrappers over ``models``: parse options, read the data, call the pure code, print.
No broker or Redis here; the registry directory comes from ``Settings.registry_dir``.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

import click

from models.datasets import FORMATS, Session, build_sessions, eshop_path, read_clicks
from models.registry import Registry
from state.notify import notify_model_change
from stream.cli_params import TENANT
from stream.config import Settings

if TYPE_CHECKING:
    from models.train import TrainParams

_DEFAULTS_HINT = "default: the shipped e-shop clothing 2008 clickstream"


def register(group: click.Group) -> None:
    """Add this module's commands to ``group``."""
    for command in (train, similar, evaluate, models_group):
        group.add_command(command)


def format_options(func: Callable[..., Any]) -> Callable[..., Any]:
    options = [
        click.option(
            "--format",
            "fmt",
            type=click.Choice(FORMATS),
            default="auto",
            show_default=True,
            help="Input format: eshop (Kaggle CSV), yoochoose (TSV), csv (name the columns).",
        ),
        click.option("--session-col", help="csv: column holding the session id."),
        click.option("--item-col", help="csv: column holding the item id."),
        click.option("--time-col", help="csv: column with timestamps (unix seconds or ISO 8601)."),
        click.option("--order-col", help="csv: column with the click's position in its session."),
    ]
    for option in reversed(options):
        func = option(func)
    return func


def _train_options(func: Callable[..., Any]) -> Callable[..., Any]:
    options = [
        click.option(
            "--vector-size", type=click.IntRange(2, 1000), help="Embedding size [default: 10]."
        ),
        click.option(
            "--window", type=click.IntRange(1, 100), help="Word2Vec context window [default: 5]."
        ),
        click.option(
            "--clusters", type=click.IntRange(1, 10000), help="KMeans clusters [default: 10]."
        ),
        click.option(
            "--epochs",
            type=click.IntRange(1, 1000),
            help="Word2Vec epochs [default: 20, fewer above 150k clicks].",
        ),
        click.option("--seed", type=int, help="Seed for every random choice [default: 42]."),
        click.option(
            "--workers",
            type=click.IntRange(1, 64),
            help="Word2Vec threads; more than 1 is faster but not reproducible [default: 1].",
        ),
    ]
    for option in reversed(options):
        func = option(func)
    return func


def _train_params(**given: Any) -> TrainParams:
    """TrainParams from CLI options; options left out keep the tuned defaults."""
    from models.train import TrainParams

    given["n_clusters"] = given.pop("clusters", None)
    return TrainParams.from_dict(given)


def _read_sessions(
    path: Path, fmt: str, cols: dict[str, str | None], *, collapse_repeats: bool = True
) -> tuple[list[Session], int]:
    """Sessions (ordered, one-click sessions dropped; consecutive repeats collapsed unless
    told otherwise) and the raw click count."""
    clicks = read_clicks(path, fmt, **cols)
    return build_sessions(clicks, min_length=2, collapse_repeats=collapse_repeats), len(clicks)


def _quiet_libraries() -> None:
    # gensim logs every epoch at INFO; the progress bars say the same thing in one line.
    if not logging.getLogger().isEnabledFor(logging.DEBUG):
        for name in ("gensim", "matplotlib"):
            logging.getLogger(name).setLevel(logging.WARNING)


class _StageBars:
    """One tqdm bar per training stage, fed by ``train_model``'s progress callback."""

    def __init__(self) -> None:
        from tqdm import tqdm

        self._tqdm = tqdm
        self._stage: str | None = None
        self._bar: Any = None

    def __call__(self, stage: str, fraction: float) -> None:
        if stage != self._stage:
            self.close()
            self._stage = stage
            self._bar = self._tqdm(
                total=100,
                desc=f"{stage:<10}",
                unit="%",
                leave=True,
                bar_format="{desc} {bar} {n:3.0f}% {elapsed}",
            )
        self._bar.update(round(fraction * 100) - self._bar.n)

    def close(self) -> None:
        if self._bar is not None:
            self._bar.close()
            self._bar = None


@click.command()
@click.argument(
    "file", required=False, type=click.Path(exists=True, dir_okay=False, path_type=Path)
)
@format_options
@click.option("--tenant", default="default", show_default=True, type=TENANT)
@_train_options
@click.option(
    "--eval-days",
    type=click.FloatRange(min=0, min_open=True),
    help="Also fit on all but the last N days and store HR/MRR@20 on those days in the manifest.",
)
@click.option(
    "--no-promote", is_flag=True, help="Register the version without putting it in service."
)
@click.option(
    "--plots",
    type=click.Path(file_okay=False, path_type=Path),
    help="Write cluster-size and embedding-map PNGs into this directory.",
)
@click.pass_obj
def train(
    settings: Settings,
    file: Path | None,
    fmt: str,
    session_col: str | None,
    item_col: str | None,
    time_col: str | None,
    order_col: str | None,
    tenant: str,
    vector_size: int | None,
    window: int | None,
    clusters: int | None,
    epochs: int | None,
    seed: int | None,
    workers: int | None,
    eval_days: float | None,
    no_promote: bool,
    plots: Path | None,
) -> None:
    """Train item embeddings and clusters on FILE and register (and promote) a model version.

    FILE defaults to the shipped e-shop clothing 2008 clickstream.
    """
    from models.train import holdout_metrics, train_model

    _quiet_libraries()
    started = time.perf_counter()
    path = file or eshop_path()
    cols = {
        "session_col": session_col,
        "item_col": item_col,
        "time_col": time_col,
        "order_col": order_col,
    }
    click.echo(f"reading {path}")
    sessions, n_clicks = _read_sessions(path, fmt, cols)
    params = _train_params(
        vector_size=vector_size,
        window=window,
        clusters=clusters,
        epochs=epochs,
        seed=seed,
        workers=workers,
    )
    bars = _StageBars()
    try:
        bundle = train_model([s.items for s in sessions], params, progress=bars)
    finally:
        bars.close()
    extra: dict[str, Any] = {}
    if eval_days is not None:
        click.echo(f"evaluating on the last {eval_days:g} days (a second fit on the days before)")
        extra["metrics"] = holdout_metrics(sessions, eval_days, params)
        shown = {k: v for k, v in extra["metrics"].items() if k.startswith(("hr", "mrr"))}
        click.echo("  " + "  ".join(f"{k}={v:.4f}" for k, v in shown.items()))
    registry = Registry(settings.registry_dir)
    data = {
        "source": str(path),
        "format": fmt,
        "clicks": n_clicks,
        "sessions": len(sessions),
        "from_ts": min((s.start for s in sessions), default=None),
        "to_ts": max((s.end for s in sessions), default=None),
    }
    version = registry.register(tenant, bundle, {"data": data, **extra})
    if not no_promote:
        registry.promote(tenant, version)
        notify_model_change(settings.redis, tenant, version)
    if plots is not None:
        for name in _write_plots(registry.load(tenant, version), plots):
            click.echo(f"wrote {name}")
    counts = bundle.manifest["counts"]
    state = "registered" if no_promote else "registered and promoted"
    click.echo(
        f"{state} {tenant}/{version}: {counts['items']} items, {counts['sessions']} sessions, "
        f"{n_clicks} clicks, {len(bundle.centroids)} clusters "
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


@click.command()
@click.argument("item")
@click.option("--k", default=5, show_default=True, type=click.IntRange(1, 1000))
@click.option("--tenant", default="default", show_default=True, type=TENANT)
@click.option("--any-cluster", is_flag=True, help="Search all items, not only ITEM's cluster.")
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
    "hybrid",
    "streamrec",
    "pop",
    "transitions",
    "sr",
    "item_knn",
    "item2vec",
    "cluster_random",
    "sknn",
    "vsknn",
)
DEFAULT_MODELS = ("hybrid", "pop", "transitions", "sr", "item_knn", "sknn", "vsknn")


@click.command()
@click.option(
    "--train",
    "train_file",
    type=click.Path(exists=True, dir_okay=False, path_type=Path),
    help=f"Training clicks [{_DEFAULTS_HINT}].",
)
@click.option(
    "--test",
    "test_file",
    type=click.Path(exists=True, dir_okay=False, path_type=Path),
    help="Test clicks, same format as --train.",
)
@click.option(
    "--split-days",
    type=click.FloatRange(min=0, min_open=True),
    help="Instead of --test: sessions starting in the last N days of --train are the test set.",
)
@click.option(
    "--valid",
    "valid_file",
    type=click.Path(exists=True, dir_okay=False, path_type=Path),
    help="Validation clicks: models that tune settings choose them on this split only.",
)
@click.option(
    "--valid-days",
    type=click.FloatRange(min=0, min_open=True),
    help="Instead of --valid: the last N days of the training sessions are the validation split.",
)
@format_options
@click.option("--category-col", help="csv: column with the item's category (optional).")
@click.option(
    "--protocol",
    type=click.Choice(("next-item", "serving")),
    default="next-item",
    show_default=True,
    help="next-item: the literature protocol (nothing filtered, repeats kept); "
    "serving: the same cases with the --exclude rule applied after ranking.",
)
@click.option(
    "--exclude",
    type=click.Choice(("none", "current", "seen")),
    default="current",
    show_default=True,
    help="serving: what a list may not contain (the item being looked at, or any item "
    "of the session).",
)
@click.option(
    "--k", default=20, show_default=True, type=click.IntRange(1, 1000), help="List length."
)
@click.option(
    "--models",
    "model_list",
    default=",".join(DEFAULT_MODELS),
    show_default=True,
    help=f"Comma-separated models to compare, from: {', '.join(MODEL_NAMES)}.",
)
@click.option(
    "--json",
    "json_out",
    type=click.Path(dir_okay=False, path_type=Path),
    help="Also write the results as JSON to this file.",
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
    fmt: str,
    session_col: str | None,
    item_col: str | None,
    time_col: str | None,
    order_col: str | None,
    category_col: str | None,
    protocol: str,
    exclude: str,
    k: int,
    model_list: str,
    json_out: Path | None,
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
    cols = {
        "session_col": session_col,
        "item_col": item_col,
        "time_col": time_col,
        "order_col": order_col,
        "category_col": category_col,
    }
    train_path = train_file or eshop_path()
    train_sessions, _ = _read_sessions(train_path, fmt, cols, collapse_repeats=False)
    if test_file is not None:
        test_sessions, _ = _read_sessions(test_file, fmt, cols, collapse_repeats=False)
    else:
        train_sessions, test_sessions = split_last_days(train_sessions, split_days or 0)
    valid_sessions: list[Session] | None = None
    fit_part: list[Session] | None = None
    if valid_file is not None:
        valid_sessions, _ = _read_sessions(valid_file, fmt, cols, collapse_repeats=False)
    elif valid_days is not None:
        # Tuning sees only the training sessions: the last days of them play the test.
        fit_part, valid_sessions = split_last_days(train_sessions, valid_days)
    categories = item_categories(read_clicks(train_path, fmt, **cols)) if category_col else None
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


@click.group("models")
def models_group() -> None:
    """List, promote and roll back model versions per tenant."""


def gate_line(manifest: dict) -> str:
    """The trainer's gate decision for a version: both scores and the hold-out."""
    gate = manifest.get("gate")
    if not isinstance(gate, dict):
        return ""
    metric = (gate.get("policy") or {}).get("metric", "hr")
    k = (gate.get("policy") or {}).get("k", "")
    cand, cur = gate.get("candidate") or {}, gate.get("current") or {}

    def score(s: dict) -> str:
        return f"{s[metric]:.4f}" if isinstance(s.get(metric), float | int) else "-"

    window = manifest.get("data_window") or {}
    when = ""
    if isinstance(window.get("from"), float | int) and isinstance(window.get("to"), float | int):
        fmt = "%Y-%m-%d %H:%M"
        when = (
            f" of the window {time.strftime(fmt, time.gmtime(window['from']))} - "
            f"{time.strftime(fmt, time.gmtime(window['to']))} UTC"
        )
    return (
        f"gate: {gate.get('decision', '?')}, {metric.upper()}@{k} {score(cand)} vs "
        f"{score(cur)} ({gate.get('current_version') or 'none'} in service), on the newest "
        f"{gate.get('holdout_sessions', '?')} sessions{when} held out"
    )


@models_group.command("list")
@click.argument("tenant", required=False, type=TENANT)
@click.pass_obj
def models_list(settings: Settings, tenant: str | None) -> None:
    """Versions of TENANT (default: every tenant); `*` marks the one in service."""
    registry = Registry(settings.registry_dir)
    tenants = [tenant] if tenant else registry.tenants()
    if not tenants:
        click.echo(f"no models in {registry.root}; run `streamrec train`")
        return
    for name in tenants:
        click.echo(f"{name}:")
        infos = registry.versions(name)
        if not infos:
            click.echo("  (no versions)")
        for info in infos:
            mark = "*" if info.current else " "
            metrics = " ".join(
                f"{k}={v:.4f}" if isinstance(v, float) else f"{k}={v}"
                for k, v in sorted(info.metrics.items())
            )
            parent = info.parent or "-"
            items = info.counts.get("items", "?") if info.valid else "?"
            note = "" if info.valid else "  (unreadable manifest)"
            click.echo(
                f" {mark} {info.version:<6} {info.created or '-':<21} parent={parent:<6} "
                f"items={items} {metrics}{note}".rstrip()
            )
            gate = gate_line(registry.manifest(name, info.version))
            if gate:
                click.echo(f"          {gate}")


@models_group.command("promote")
@click.argument("tenant", type=TENANT)
@click.argument("version")
@click.pass_obj
def models_promote(settings: Settings, tenant: str, version: str) -> None:
    """Validate VERSION and put it in service for TENANT."""
    Registry(settings.registry_dir).promote(tenant, version)
    heard = notify_model_change(settings.redis, tenant, version)
    click.echo(f"{tenant}: {version} is now in service ({heard} worker(s) notified)")


@models_group.command("rollback")
@click.argument("tenant", default="default", type=TENANT)
@click.argument("version", required=False)
@click.pass_obj
def models_rollback(settings: Settings, tenant: str, version: str | None) -> None:
    """Put VERSION (default: the previously promoted one) back in service for TENANT."""
    registry = Registry(settings.registry_dir)
    before = registry.current_version(tenant)
    after = registry.rollback(tenant, version)
    heard = notify_model_change(settings.redis, tenant, after)
    click.echo(f"{tenant}: rolled back {before} -> {after} ({heard} worker(s) notified)")

"""Pictures of a model, as matplotlib Figures (the caller decides where to save them).

matplotlib is the ``plots`` extra (the worker never draws): it is imported only when a
picture is drawn, and its absence is a one-line error saying what to install.
"""

from __future__ import annotations

from types import ModuleType
from typing import TYPE_CHECKING

import numpy as np

from models.errors import StreamrecError

if TYPE_CHECKING:
    from matplotlib.figure import Figure

    from models.bundle import ModelBundle

# Item labels on the embedding map: at most this many, the most clicked first, none
# closer to another than this share of the plot's width / height (labels are wide).
MAX_ITEM_LABELS = 40
_LABEL_GAP = (0.09, 0.03)


def require_matplotlib() -> ModuleType:
    """matplotlib, or a StreamrecError saying how to install it."""
    try:
        import matplotlib
    except ImportError:
        raise StreamrecError(
            "plots need matplotlib, which is not installed: pip install 'streamrec[plots]'"
        ) from None
    return matplotlib


def pyplot() -> ModuleType:
    """matplotlib.pyplot on the file-only Agg backend (never needs a display)."""
    require_matplotlib().use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _figure(width: float, height: float) -> Figure:
    # The object API, not pyplot: no global state and no GUI backend needed.
    require_matplotlib()
    from matplotlib.figure import Figure

    return Figure(figsize=(width, height))


def cluster_sizes_figure(bundle: ModelBundle) -> Figure:
    """Bar chart: number of items in each KMeans cluster."""
    clusters = np.asarray(bundle.clusters)
    sizes = np.bincount(clusters, minlength=len(bundle.centroids))
    fig = _figure(8, 4)
    ax = fig.add_subplot()
    colours = _palette(len(sizes))
    ax.bar(np.arange(len(sizes)), sizes, color=colours)
    ax.set_xticks(np.arange(len(sizes)))
    ax.set_xlabel("cluster")
    ax.set_ylabel("items")
    ax.set_title(f"Cluster sizes, model {bundle.version} ({bundle.n_items} items)")
    for x, size in enumerate(sizes):
        ax.annotate(str(size), (x, size), ha="center", va="bottom", fontsize=8)
    return fig


def embedding_map_figure(bundle: ModelBundle, max_points: int = 5000, seed: int = 0) -> Figure:
    """Items projected to 2-D by PCA, coloured by cluster, centroids as black crosses.

    PCA rather than t-SNE: it is deterministic, fast at 40k items, and centroids
    project with the same linear map so they land where their members are.
    """
    vectors = np.asarray(bundle.vectors, dtype=np.float64)
    clusters = np.asarray(bundle.clusters)
    centroids = np.asarray(bundle.centroids, dtype=np.float64)
    mean = vectors.mean(axis=0)
    _, _, vt = np.linalg.svd(vectors - mean, full_matrices=False)
    axes = vt[:2].T
    shown = np.arange(len(vectors))
    if len(shown) > max_points:  # keep the picture readable and quick; seeded sample
        shown = np.sort(np.random.default_rng(seed).choice(shown, max_points, replace=False))
    points = (vectors[shown] - mean) @ axes
    centres = (centroids - mean) @ axes
    colours = _palette(len(centroids))
    fig = _figure(10, 7)
    ax = fig.add_subplot()
    sizes = np.bincount(clusters, minlength=len(centroids))
    member_of = clusters[shown]
    for c in range(len(centroids)):
        mine = member_of == c
        ax.scatter(
            points[mine, 0],
            points[mine, 1],
            color=colours[c],
            s=12 if len(shown) < 1000 else 3,
            alpha=0.8,
            linewidths=0,
            label=f"cluster {c} ({sizes[c]} items)",
        )
    # Centroids in their cluster's colour: the legend names them, so no numbers to overlap.
    ax.scatter(
        centres[:, 0],
        centres[:, 1],
        color=colours,
        marker="X",
        s=160,
        edgecolors="black",
        linewidths=1.2,
        label="centroid (cluster colour)",
    )
    position = {int(i): row for row, i in enumerate(shown.tolist())}
    popular = [position[int(i)] for i in bundle.popularity if int(i) in position]
    for row in thin_labels(points, popular, MAX_ITEM_LABELS, _LABEL_GAP, occupied=centres):
        ax.annotate(
            bundle.item_list[int(shown[row])],
            points[row],
            xytext=(3, -3),
            textcoords="offset points",
            fontsize=6,
            alpha=0.8,
        )
    ax.set_xlabel("PC 1")
    ax.set_ylabel("PC 2")
    ax.set_title(
        f"Item embeddings (PCA), coloured by cluster, model {bundle.version}; "
        f"the {MAX_ITEM_LABELS} most clicked items named where there is room",
        fontsize=10,
    )
    legend = ax.legend(
        loc="upper left",
        bbox_to_anchor=(1.01, 1.0),
        fontsize=8,
        ncols=1 if len(centroids) <= 25 else 2,
    )
    for handle in legend.legend_handles:
        handle.set_sizes([40])  # type: ignore[union-attr]
    return fig


def evaluation_figure(results: dict[str, dict[str, float]], k: int, title: str) -> Figure:
    """Horizontal bars: HR@k and MRR@k of each model (``results``: name -> metrics with
    ``hr`` and ``mrr``), the best HR on top, each bar labelled with its value."""
    names = sorted(results, key=lambda n: (-results[n]["hr"], -results[n]["mrr"], n))
    fig = _figure(8, 1.2 + 0.45 * len(names))
    ax = fig.add_subplot()
    y = np.arange(len(names))[::-1].astype(float)
    for offset, key, label, colour in (
        (0.2, "hr", f"HR@{k}", "#1f77b4"),
        (-0.2, "mrr", f"MRR@{k}", "#ff7f0e"),
    ):
        values = [results[n][key] for n in names]
        bars = ax.barh(y + offset, values, height=0.38, color=colour, label=label)
        ax.bar_label(bars, fmt="%.3f", padding=2, fontsize=7)
    ax.set_yticks(y)
    ax.set_yticklabels(names)
    top = max((max(m["hr"], m["mrr"]) for m in results.values()), default=1.0)
    ax.set_xlim(0, min(1.0, top * 1.15) or 1.0)
    ax.set_xlabel("share of cases")
    ax.set_title(title, fontsize=10)
    ax.legend(loc="best", fontsize=8)
    return fig


def thin_labels(
    points: np.ndarray,
    order: list[int],
    limit: int,
    gap: tuple[float, float],
    occupied: np.ndarray | None = None,
) -> list[int]:
    """Rows of ``points`` to label, taken in ``order``: at most ``limit``, and none within
    ``gap`` (shares of the plot's x and y range) of one already taken or of an
    ``occupied`` point (a marker), so that labels do not overlap."""
    if not len(points):
        return []
    both = points if occupied is None else np.vstack([points, occupied])
    low, span = both.min(axis=0), np.ptp(both, axis=0)
    scale = np.where(span > 0, span, 1.0)
    placed = [] if occupied is None else list((occupied - low) / scale)
    taken: list[int] = []
    for row in order:
        if len(taken) >= limit:
            break
        here = (points[row] - low) / scale
        if not placed or not np.any((np.abs(np.asarray(placed) - here) < gap).all(axis=1)):
            taken.append(row)
            placed.append(here)
    return taken


def _palette(n: int) -> np.ndarray:
    require_matplotlib()
    from matplotlib import colormaps

    cmap = colormaps["tab10" if n <= 10 else "tab20"]
    return np.array([cmap(i % cmap.N) for i in range(n)])

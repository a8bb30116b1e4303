"""Pictures of a model, as matplotlib Figures (the caller decides where to save them)."""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np

from models.bundle import ModelBundle

if TYPE_CHECKING:
    from matplotlib.figure import Figure


def _figure(width: float, height: float) -> Figure:
    # The object API, not pyplot: no global state and no GUI backend needed.
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
    fig = _figure(8, 7)
    ax = fig.add_subplot()
    ax.scatter(
        points[:, 0],
        points[:, 1],
        c=colours[clusters[shown]],
        s=12 if len(shown) < 1000 else 3,
        alpha=0.8,
        linewidths=0,
    )
    ax.scatter(centres[:, 0], centres[:, 1], c="black", marker="X", s=120, label="centroids")
    for c, (x, y) in enumerate(centres):
        ax.annotate(
            str(c), (x, y), xytext=(5, 5), textcoords="offset points", fontsize=9, weight="bold"
        )
    if len(vectors) <= 300:  # small catalogues (the e-shop has 217) read better with names
        for i, (x, y) in zip(shown.tolist(), points, strict=True):
            ax.annotate(bundle.item_list[i], (x, y), fontsize=5, alpha=0.7)
    ax.set_xlabel("PC 1")
    ax.set_ylabel("PC 2")
    ax.set_title(f"Item embeddings (PCA), coloured by cluster, model {bundle.version}")
    ax.legend(loc="best")
    return fig


def _palette(n: int) -> np.ndarray:
    from matplotlib import colormaps

    cmap = colormaps["tab10" if n <= 10 else "tab20"]
    return np.array([cmap(i % cmap.N) for i in range(n)])

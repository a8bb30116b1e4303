"""The served model's ranking stage, fitted at train time (``models.train``).

The ranker is linear over every feature of the table (``models.features``) and its
square root: a softmax over each next-click case's candidates with the clicked one as
the label, started from the table's fixed blend. Its weights are stored in the bundle's
manifest by feature name.
"""

from __future__ import annotations

import itertools
from collections.abc import Callable

import numpy as np

from models import features

MAX_ITER = 60  # L-BFGS iterations of the ranker's fit
FEATURES_SHARE = 0.25  # about the part of the fit spent ranking its cases and scaling them


def fit_ranker(
    rank_features: Callable[[], tuple[np.ndarray, np.ndarray]],
    targets: np.ndarray,
    *,
    l2: float,
    max_iter: int = MAX_ITER,
    progress: Callable[[float], None] = lambda fraction: None,
) -> tuple[np.ndarray, dict[str, float]]:
    """Softmax over each case's candidates with the next click as the label (L2,
    L-BFGS). ``rank_features()`` returns, for the cases of ``targets``, the candidates
    serving would score (items [cases, c], -1 padded) and their features [cases, c, F].
    Deterministic: no random choice here. The fixed blend when too few cases hold
    their next click among the candidates. At most ``max_iter`` L-BFGS iterations;
    ``progress`` hears the fraction done."""
    items, feats = rank_features()
    progress(FEATURES_SHARE)
    where = items == targets[:, None]
    found = where.any(axis=1)
    info: dict[str, float] = {"cases": float(found.sum())}
    info["recall"] = float(found.mean()) if len(found) else 0.0
    if found.sum() < 20:
        return features.LAYOUT.blend_weights(), info
    # float32 throughout, in one array: the fit's time was mostly copies of [cases,
    # candidates, features] float64 arrays.
    raw = feats[found].astype(np.float32)
    mask = items[found] >= 0
    y = where[found].argmax(axis=1)
    nf = raw.shape[-1]
    x = np.empty((*raw.shape[:-1], 2 * nf), dtype=np.float32)
    x[..., :nf] = raw
    np.sqrt(np.maximum(raw, 0.0), out=x[..., nf:])
    steps = itertools.count(1)  # L-BFGS iterations, of at most max_iter

    def step(_: np.ndarray) -> None:
        progress(FEATURES_SHARE + (1 - FEATURES_SHARE) * min(1.0, next(steps) / max_iter))

    start = features.LAYOUT.blend_weights()
    return fit_scaled(x, mask, y, start, l2, step, max_iter), info


def fit_scaled(
    x: np.ndarray,
    mask: np.ndarray,
    y: np.ndarray,
    start: np.ndarray,
    l2: float,
    step: Callable[[np.ndarray], None] | None = None,
    max_iter: int = MAX_ITER,
) -> np.ndarray:
    """Weights over the columns of ``x`` ([cases, candidates, columns] float32, scaled in
    place to unit spread for the fit; ``mask``: real candidates, ``y``: the clicked one),
    from ``start``; both in the columns' own units."""
    real = x[mask]
    # Sums in float64 without a float64 copy of the cases (``std`` would make one).
    mean = real.mean(axis=0, dtype=np.float64)
    var = np.einsum("ij,ij->j", real, real, dtype=np.float64) / max(1, len(real)) - mean**2
    scale = np.maximum(np.sqrt(np.maximum(var, 0.0)), 1e-6)
    x /= scale.astype(np.float32)
    return _softmax_fit(x, mask, y, start * scale, l2, step, max_iter) / scale


def _softmax_fit(
    x: np.ndarray,
    mask: np.ndarray,
    y: np.ndarray,
    start: np.ndarray,
    l2: float,
    step: Callable[[np.ndarray], None] | None = None,
    max_iter: int = MAX_ITER,
) -> np.ndarray:
    rows = np.arange(len(y))
    penalty = np.where(mask, 0.0, -1e9)
    flat = x.reshape(-1, x.shape[-1])  # two matrix-vector products per step (BLAS)

    def loss(w: np.ndarray) -> tuple[float, np.ndarray]:
        s = (flat @ w.astype(np.float32)).reshape(mask.shape).astype(np.float64) + penalty
        s -= s.max(axis=1, keepdims=True)
        e = np.exp(s)
        z = e.sum(axis=1, keepdims=True)
        value = -(s[rows, y] - np.log(z[:, 0])).mean() + l2 * (w @ w)
        grad_s = e / z
        grad_s[rows, y] -= 1.0
        grad = grad_s.astype(np.float32).ravel() @ flat / len(y) + 2 * l2 * w
        return float(value), grad.astype(np.float64)

    from scipy.optimize import minimize  # training only: kept off the worker's start-up

    fit = minimize(
        loss, start, jac=True, method="L-BFGS-B", options={"maxiter": max_iter}, callback=step
    )
    return np.asarray(fit.x, dtype=np.float64)

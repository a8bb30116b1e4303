"""The served model's ranking stage, fitted at train time (``models.train``).

The ranker is linear over every feature of the table (``models.features``) and its
square root: a softmax over each next-click case's candidates with the clicked one as
the label, started from the table's fixed blend. Its weights are stored in the bundle's
manifest by feature name.

The fit runs to the optimum: Newton steps (the exact Hessian of a few dozen weights costs
a few gradients, and a handful of steps replace dozens of L-BFGS iterations) until the
gradient is at the float32 sums' noise. A fit stopped early depends on its path: columns that
never separate the fit's cases (features of sessions seen verbatim in training) keep
whatever weight the path left them, and rounding alone then moves the rankings. A
``max_iter`` instead caps L-BFGS, cheaper per step, for small logs (``models.train``).
"""

from __future__ import annotations

import itertools
from collections.abc import Callable

import numpy as np

from models import features

MAX_ITER = 60  # L-BFGS iterations of a capped fit (``max_iter``)
# The optimum's gradient norm (standardised columns): the objective's float32 sums leave
# a noise of about 1e-6 in it, which a tighter bound would chase for nothing.
GRADIENT_TOL = 1e-5
NEWTON_DECREMENT = 1e-9  # a step's promised decrease the float32 objective cannot show
NEWTON_MAX_ITER = 50  # a fit to the optimum takes under 10 steps; a bound, not a setting
NEWTON_STEPS = 8  # about the steps of a fit to the optimum, for its progress
FEATURES_SHARE = 0.25  # about the part of the fit spent ranking its cases and scaling them
HESSIAN_BLOCK = 2_000  # cases per block of the Hessian's sums
SPREAD_FLOOR = 1e-6  # a column's spread at most this: the column is constant


def fit_ranker(
    rank_features: Callable[[], tuple[np.ndarray, np.ndarray]],
    targets: np.ndarray,
    *,
    l2: float,
    max_iter: int | None = None,
    progress: Callable[[float], None] = lambda fraction: None,
) -> tuple[np.ndarray, dict[str, float]]:
    """Softmax over each case's candidates with the next click as the label (L2).
    ``rank_features()`` returns, for the cases of ``targets``, the candidates serving
    would score (items [cases, c], -1 padded) and their features [cases, c, F].
    Deterministic: no random choice here. The fixed blend when too few cases hold
    their next click among the candidates. To the optimum, or at most ``max_iter``
    L-BFGS iterations; ``progress`` hears the fraction done. The info tells the cases,
    the iterations and the gradient's norm at the weights."""
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
    steps = itertools.count(1)
    expected = max_iter or NEWTON_STEPS

    def step(*_: object) -> None:
        progress(FEATURES_SHARE + (1 - FEATURES_SHARE) * min(1.0, next(steps) / expected))

    start = features.LAYOUT.blend_weights()
    weights, fitted = fit_scaled(x, mask, y, start, l2, step, max_iter)
    return weights, {**info, **fitted}


def fit_scaled(
    x: np.ndarray,
    mask: np.ndarray,
    y: np.ndarray,
    start: np.ndarray,
    l2: float,
    step: Callable[..., None] | None = None,
    max_iter: int | None = None,
) -> tuple[np.ndarray, dict[str, float]]:
    """Weights over the columns of ``x`` ([cases, candidates, columns] float32, scaled in
    place to unit spread for the fit; ``mask``: real candidates, ``y``: the clicked one),
    from ``start``; both in the columns' own units. With the fit's iterations and the
    gradient's norm at the weights (``fit_standardised``)."""
    scale = standardise(x, mask)
    weights = np.zeros_like(start, dtype=np.float64)
    live = scale > SPREAD_FLOOR
    if max_iter is None and not live.all():
        # A column without spread (a feature the log never has) moves no case's softmax:
        # its optimum weighs 0, and left in, it only slows the Newton steps.
        x = x[..., live]
    else:
        live[:] = True
    weights[live], info = fit_standardised(x, mask, y, (start * scale)[live], l2, step, max_iter)
    return weights / scale, info


def standardise(x: np.ndarray, mask: np.ndarray) -> np.ndarray:
    """Scale ``x``'s columns in place to unit spread over the real candidates; the scales."""
    real = x[mask]
    # Sums in float64 without a float64 copy of the cases (``std`` would make one).
    mean = real.mean(axis=0, dtype=np.float64)
    var = np.einsum("ij,ij->j", real, real, dtype=np.float64) / max(1, len(real)) - mean**2
    scale = np.maximum(np.sqrt(np.maximum(var, 0.0)), SPREAD_FLOOR)
    x /= scale.astype(np.float32)
    return scale


def softmax_loss(
    x: np.ndarray, mask: np.ndarray, y: np.ndarray, l2: float
) -> Callable[[np.ndarray], tuple[float, np.ndarray]]:
    """The fit's objective and its gradient at weights ``w``: the mean negative
    log-likelihood of each case's clicked candidate plus ``l2 * |w|^2``."""
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

    return loss


def softmax_hessian(
    x: np.ndarray, mask: np.ndarray, l2: float
) -> Callable[[np.ndarray], np.ndarray]:
    """The Hessian of ``softmax_loss`` at weights ``w``: the mean over cases of each case's
    feature covariance under its candidates' softmax, plus ``2 * l2`` on the diagonal. In
    blocks of cases, so its temporaries stay small."""
    n, _, nf = x.shape
    penalty = np.where(mask, 0.0, -1e9)

    def hessian(w: np.ndarray) -> np.ndarray:
        out = np.zeros((nf, nf), dtype=np.float64)
        w32 = w.astype(np.float32)
        for lo in range(0, n, HESSIAN_BLOCK):
            xb = x[lo : lo + HESSIAN_BLOCK]
            s = (xb @ w32).astype(np.float64) + penalty[lo : lo + HESSIAN_BLOCK]
            e = np.exp(s - s.max(axis=1, keepdims=True))
            p = (e / e.sum(axis=1, keepdims=True)).astype(np.float32)
            mean = np.einsum("cj,cjf->cf", p, xb)
            flat = xb.reshape(-1, nf)
            out += (flat * p.reshape(-1, 1)).T @ flat
            out -= mean.T @ mean
        return out / n + 2 * l2 * np.eye(nf)

    return hessian


def fit_standardised(
    x: np.ndarray,
    mask: np.ndarray,
    y: np.ndarray,
    start: np.ndarray,
    l2: float,
    step: Callable[..., None] | None = None,
    max_iter: int | None = None,
) -> tuple[np.ndarray, dict[str, float]]:
    """``fit_scaled``'s weights in the standardised columns, from ``start`` (in them too):
    to the optimum (``max_iter`` None) or after at most ``max_iter`` L-BFGS iterations."""
    loss = softmax_loss(x, mask, y, l2)
    if max_iter is None:
        weights, iterations = _newton(loss, softmax_hessian(x, mask, l2), start, step)
    else:
        from scipy.optimize import minimize  # training only: off the worker's start-up

        options = {"maxiter": max_iter}
        fit = minimize(loss, start, jac=True, method="L-BFGS-B", options=options, callback=step)
        weights, iterations = np.asarray(fit.x, dtype=np.float64), int(fit.nit)
    gradient = float(np.linalg.norm(loss(weights)[1]))
    return weights, {"iterations": float(iterations), "gradient": gradient}


def _newton(
    loss: Callable[[np.ndarray], tuple[float, np.ndarray]],
    hessian: Callable[[np.ndarray], np.ndarray],
    w: np.ndarray,
    step: Callable[..., None] | None,
) -> tuple[np.ndarray, int]:
    """Newton steps with a backtracking line search from ``w`` (the objective is convex)
    to a gradient norm under ``GRADIENT_TOL``. Once a step promises less than the float32
    objective can show (``NEWTON_DECREMENT``), it is taken whole and the fit ends: a
    trust region or a line search would reject it on the objective's rounding alone and
    spend Hessians shrinking it."""
    w = np.array(w, dtype=np.float64)
    for iteration in range(1, NEWTON_MAX_ITER + 1):
        value, grad = loss(w)
        if np.linalg.norm(grad) < GRADIENT_TOL:
            return w, iteration - 1
        direction = np.linalg.solve(hessian(w), grad)
        decrement = float(grad @ direction)
        size = 1.0
        if decrement > NEWTON_DECREMENT:
            while size > 1e-6 and loss(w - size * direction)[0] > value - 0.25 * size * decrement:
                size /= 2
        w -= size * direction
        if step is not None:
            step(w)
        if decrement <= NEWTON_DECREMENT:
            return w, iteration
    return w, NEWTON_MAX_ITER

from __future__ import annotations

import numpy as np
from scipy.optimize import minimize

from models import features, fit


def _cases(
    seed: int = 0, n: int = 3_000, c: int = 30, f: int = 16
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Next-click cases shaped like the ranker's: heavy-tailed columns, zero for most
    candidates, each beside a noisy square root of itself (nearly collinear)."""
    rng = np.random.default_rng(seed)
    base = rng.gamma(0.1, 1.0, size=(n, c, f // 2))
    base *= rng.random(size=base.shape) > 0.9 * np.arange(f // 2) / (f // 2)
    feats = np.concatenate([base, np.sqrt(base) + rng.normal(0, 0.01, base.shape)], axis=-1)
    scores = feats @ rng.normal(0, 1, size=f) + rng.gumbel(size=(n, c))
    items = np.tile(np.arange(c), (n, 1))
    items[:, -3:] = -1  # padding
    scores[:, -3:] = -np.inf
    return items, feats, scores.argmax(axis=1)


def _optimum(items: np.ndarray, feats: np.ndarray, targets: np.ndarray, l2: float) -> np.ndarray:
    """The problem's minimum in float64, by L-BFGS run far past any practical budget: the
    objective written out again, independently of the fit's float32 one."""
    mask = items >= 0
    real = feats[mask]
    scale = np.maximum(real.std(axis=0), 1e-6)
    x = feats / scale
    rows = np.arange(len(targets))

    def loss(w: np.ndarray) -> tuple[float, np.ndarray]:
        s = np.where(mask, x @ w, -np.inf)
        s -= s.max(axis=1, keepdims=True)
        p = np.exp(s)
        p /= p.sum(axis=1, keepdims=True)
        value = -np.log(p[rows, targets]).mean() + l2 * (w @ w)
        p[rows, targets] -= 1.0
        return value, np.einsum("cj,cjf->f", p, x) / len(rows) + 2 * l2 * w

    opts = {"maxiter": 20_000, "ftol": 1e-16, "gtol": 1e-12}
    w = minimize(loss, np.zeros(x.shape[-1]), jac=True, method="L-BFGS-B", options=opts).x
    return w / scale


def _design(seed: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    items, feats, targets = _cases(seed)
    return feats.astype(np.float32), items >= 0, targets


def test_a_fit_without_an_iteration_limit_reaches_the_optimum() -> None:
    items, feats, targets = _cases()
    x, mask, y = _design(0)
    weights, info = fit.fit_scaled(x, mask, y, np.zeros(x.shape[-1]), 1e-3)
    want = _optimum(items, feats, targets, 1e-3)
    assert np.abs(weights - want).max() < 1e-4 * np.abs(want).max()
    assert info["gradient"] < fit.GRADIENT_TOL


def test_an_all_zero_column_leaves_the_other_weights_where_they_were() -> None:
    x, mask, y = _design(1)
    zero = np.concatenate([x, np.zeros((*x.shape[:-1], 1), dtype=x.dtype)], axis=-1)
    w, _ = fit.fit_scaled(x, mask, y, np.zeros(x.shape[-1]), 1e-3)
    w0, _ = fit.fit_scaled(zero, mask, y, np.zeros(zero.shape[-1]), 1e-3)
    assert abs(w0[-1]) < 1e-12
    np.testing.assert_allclose(w0[:-1], w, atol=1e-4 * np.abs(w).max(), rtol=0)


def test_a_limited_fit_stops_after_its_iterations() -> None:
    x, mask, y = _design(2)
    steps: list[np.ndarray] = []
    fit.fit_scaled(x, mask, y, np.zeros(x.shape[-1]), 1e-4, steps.append, max_iter=5)
    assert 1 <= len(steps) <= 5


def test_the_rankers_fit_reports_how_close_it_came_to_the_optimum() -> None:
    """Its iterations and the gradient's norm at the weights (standardised columns)."""
    nf = features.LAYOUT.n_features
    items, feats, targets = _cases(seed=3, f=nf + 1)
    weights, info = fit.fit_ranker(lambda: (items, feats[..., :nf].copy()), targets, l2=1e-3)
    assert weights.shape == (2 * nf,)
    assert 1 <= info["iterations"] < 100
    assert info["gradient"] < 1e-4

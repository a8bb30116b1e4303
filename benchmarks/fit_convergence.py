"""Does the ranker's fit converge? Its objective, gradient and scores per solver setting.

    nice -n 19 .venv/bin/python benchmarks/fit_convergence.py --cache DIR
        [--sets tmall-cgg,yoochoose-cgg,yoochoose-100k] [--splits valid,test,test-novel]
        [--solvers shipped,...] [--extra zero,noise] [--l2 1e-3,1e-4] [--fit-without a,b]

Per set the served model is trained once as ``benchmarks/ablation.py`` trains it (one
bundle for the -cgg sets, two for yoochoose-100k: valid and test), and the arrays its
ranker is fitted on (the cases' columns, their mask and labels, the start) are kept
with the bundle in ``--cache`` (a second run only fits and scores). Each solver then
refits those arrays; the table gives its objective, gradient norm, iterations, time and
HR@20 / MRR@20 (literature protocol) of the bundle ranking with its weights.
``shipped`` is the trainer's fit (to the optimum), ``lbfgs60`` the fit before it (60
L-BFGS iterations), ``reference`` L-BFGS run for 1,000 iterations with tight tolerances.

``--extra zero,noise`` adds the swing check: every solver fits the same arrays again with
one more feature (its raw and square-root columns), all zero or uniform noise, a change
that must not move any figure of a converged fit. ``--l2`` refits with other L2 strengths and
``--fit-without`` holds features at 0 in the fit (their weights stay 0), to choose
settings on valid from a converged fit at no training cost. Run with
``OPENBLAS_NUM_THREADS=1`` for CPU times comparable with the trainer's job (one thread).
"""

from __future__ import annotations

import argparse
import itertools
import json
import sys
import time
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path

import numpy as np
from ablation import SETS, _read, score
from served_valid import DATA, training_and_valid

import models.fit as fit_module
from models.bundle import ModelBundle, load_bundle, save_bundle
from models.features import LAYOUT
from models.train import TrainParams, train_model

Trainer = Callable[[], ModelBundle]
Parts = dict[str, list[list[str]]]
Solver = Callable[[np.ndarray, np.ndarray, np.ndarray, np.ndarray, float], tuple[np.ndarray, int]]


def _lbfgs(max_iter: int, **options: float) -> Solver:
    def solve(x, mask, y, start, l2):  # type: ignore[no-untyped-def]
        from scipy.optimize import minimize

        scale = fit_module.standardise(x, mask)
        loss = fit_module.softmax_loss(x, mask, y, l2)
        opts = {"maxiter": max_iter, **options}
        fit = minimize(loss, start * scale, jac=True, method="L-BFGS-B", options=opts)
        return fit.x / scale, int(fit.nit)

    return solve


def _shipped(x, mask, y, start, l2):  # type: ignore[no-untyped-def]
    w, info = fit_module.fit_scaled(x, mask, y, start, l2)
    return w, int(info["iterations"])


SOLVERS: dict[str, Solver] = {
    "shipped": _shipped,  # to the optimum (Newton steps in a trust region)
    "lbfgs60": _lbfgs(60),  # the fit before: 60 L-BFGS iterations
    "lbfgs300": _lbfgs(300),
    "reference": _lbfgs(1000, ftol=1e-15, gtol=1e-10),
}


def problem(cache: Path, key: str, train: Callable[[], ModelBundle]) -> tuple[ModelBundle, dict]:
    """The bundle and its fit's arrays (standardised), trained once into ``cache``."""
    where = cache / key
    if not (where / "fit.npz").exists():
        kept: dict[str, np.ndarray] = {}
        shipped = fit_module.fit_scaled

        def keep(x, mask, y, start, l2, *args, **kwargs):  # type: ignore[no-untyped-def]
            kept.update(x=x.copy(), mask=mask, y=y, start=start, l2=np.float64(l2))
            return shipped(x, mask, y, start, l2, *args, **kwargs)

        fit_module.fit_scaled = keep  # type: ignore[assignment]
        try:
            t = time.perf_counter()
            bundle = train()
            print(f"  {key}: trained in {time.perf_counter() - t:.0f} s", file=sys.stderr)
        finally:
            fit_module.fit_scaled = shipped  # type: ignore[assignment]
        save_bundle(bundle, where / "bundle")
        np.savez(where / "fit.npz", **kept)
    arrays = dict(np.load(where / "fit.npz"))
    return load_bundle(where / "bundle"), arrays


def with_weights(bundle: ModelBundle, weights: np.ndarray) -> ModelBundle:
    ranker = {**bundle.manifest["ranker"], "weights": weights.tolist()}
    return replace(bundle, manifest={**bundle.manifest, "ranker": ranker})


def objective(x, mask, y, l2, w) -> tuple[float, float]:  # type: ignore[no-untyped-def]
    """The fit's objective and gradient norm at ``w``, in standardised columns."""
    value, grad = fit_module.softmax_loss(x, mask, y, l2)(w)
    return value, float(np.linalg.norm(grad))


def jobs(name: str, splits: list[str], data: str) -> list[tuple[str, Trainer, Parts]]:
    """(cache key, how to train its bundle, the sessions it ranks by split) of one set."""
    short = SETS[name]
    folder = Path(data) / name
    train, valid, categories = training_and_valid(short, data)

    def fitted(sessions: list[list[str]]) -> Trainer:
        return lambda: train_model(sessions, TrainParams(), categories=categories or None)

    parts: Parts = {"valid": [s.items for s in valid]}
    if short != "yoochoose":
        cgg = {"session_col": "session_id", "item_col": "item_id", "order_col": "position"}
        for split in splits:
            if split != "valid":
                parts[split] = _read(folder / f"{split}.csv.gz", "csv", **cgg)
        return [(name, fitted([s.items for s in train]), parts)]
    out = []
    if "valid" in splits:
        out.append((f"{name}-valid", fitted([s.items for s in train]), parts))
    if "test" in splits:
        everything = _read(folder / "yoochoose-clicks-100k_train_full.txt", "auto")
        test = _read(folder / "yoochoose-clicks-100k_test.txt", "auto")
        out.append((f"{name}-test", fitted(everything), {"test": test}))
    return out


def refit(
    a: dict[str, np.ndarray], solver: str, l2: float, extra: str, without: list[int]
) -> tuple[np.ndarray, dict[str, float]]:
    """The ranker's weights (the columns' own units) from the cached arrays ``a``, and
    the fit's objective and gradient norm (standardised columns), iterations and time."""
    x, mask, y = a["x"].copy(), a["mask"], a["y"]
    start = a["start"].copy()
    nf = x.shape[-1] // 2
    held = [*without, *(nf + c for c in without)]
    x[..., held] = 0.0
    start[held] = 0.0
    zero = bool(extra)
    if zero:  # one more feature, all zero (or noise): its raw and square-root columns
        pad = np.zeros((*x.shape[:-1], 1), dtype=x.dtype)
        if extra == "noise":
            rng = np.random.default_rng(0)
            pad[..., 0] = rng.random(x.shape[:-1], dtype=np.float32) * mask
        x = np.concatenate([x[..., :nf], pad, x[..., nf:], np.sqrt(pad)], axis=-1)
        start = np.concatenate([start[:nf], [0.0], start[nf:], [0.0]])
    t, cpu = time.perf_counter(), time.process_time()
    w, nit = SOLVERS[solver](x.copy(), mask, y, start, l2)
    took, cpu = time.perf_counter() - t, time.process_time() - cpu
    scale = fit_module.standardise(x, mask)
    value, gnorm = objective(x, mask, y, l2, w * scale)
    if zero:
        w = np.concatenate([w[:nf], w[nf + 1 : -1]])
    info = {"objective": value, "grad": gnorm, "iterations": nit, "s": took, "cpu_s": cpu}
    return w, info


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cache", type=Path, required=True)
    parser.add_argument("--sets", default=",".join(SETS))
    parser.add_argument("--splits", default="valid,test,test-novel")
    parser.add_argument("--solvers", default=",".join(SOLVERS))
    parser.add_argument(
        "--extra", default="", help="also refit with one more column: zero and/or noise"
    )
    parser.add_argument("--l2", default="", help="L2 strengths to refit with (default: trained)")
    parser.add_argument("--fit-without", default="", help="features held at 0 in the fit")
    parser.add_argument("--data", default=DATA)
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()
    splits = args.splits.split(",")
    without = [LAYOUT.column(n) for n in args.fit_without.split(",") if n]
    rows = []
    for name in args.sets.split(","):
        for key, trainer, parts in jobs(name, splits, args.data):
            bundle, a = problem(args.cache, key, trainer)
            strengths = [float(v) for v in args.l2.split(",") if v] or [float(a["l2"])]
            variants = itertools.product(
                args.solvers.split(","), strengths, ["", *[e for e in args.extra.split(",") if e]]
            )
            for solver, l2, extra in variants:
                weights, info = refit(a, solver, l2, extra, without)
                ranked = with_weights(bundle, weights)
                figures = {
                    split: score(ranked, sessions, "served")["served model, learned ranker"]
                    for split, sessions in parts.items()
                    if split in splits
                }
                label = f"{solver} l2={l2:g}" + (f" +{extra}" if extra else "")
                rows.append({"set": key, "solver": label, **info, "figures": figures})
                cells = "  ".join(
                    f"{s} {h * 100:.2f}/{m * 100:.2f}" for s, (h, m) in figures.items()
                )
                print(
                    f"{key:20} {label:26} obj {info['objective']:.7f} |g| {info['grad']:.1e} "
                    f"it {info['iterations']:4d} {info['s']:5.1f} s (CPU {info['cpu_s']:5.1f} s)"
                    f"  {cells}",
                    flush=True,
                )
    if args.json:
        args.json.write_text(json.dumps(rows, indent=1))


if __name__ == "__main__":
    main()

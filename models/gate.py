"""Retraining with a quality gate: a candidate replaces the model in service only if it
ranks the newest sessions better, by at least the gate's margin (a copy of the same
model on the same data must not be promoted again and again).

Pure: sessions and bundles in, a bundle and a decision out. The held-out slice is the
newest ``holdout`` share of sessions by start time, less those that started before the
model in service's training data ended and those whose item sequence it was trained on
verbatim, such as a replay of its training file (it may have learnt them: scoring it on
them would favour it); the candidate is trained on every other session. A candidate records
the last click it was trained on, so the next run's held-out slice was never seen by the
model it is compared against. With no such fresh session there is nothing to judge on.
"""

from __future__ import annotations

import time
from bisect import bisect_right
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, replace
from typing import Any

import numpy as np

from models.bundle import ModelBundle
from models.datasets import Session
from models.errors import InvalidSettingError
from models.evaluate import iter_cases, rank_metrics
from models.ranking import recommend_batch
from models.seen import seen_in
from models.train import Progress, TrainParams, train_model

GATE_METRICS = ("hr", "mrr")


@dataclass(frozen=True)
class GatePolicy:
    metric: str = "hr"  # which metric decides: HR@k or MRR@k
    # The candidate must beat the current one by at least this much (absolute HR or MRR);
    # negative: it may be that much worse.
    margin: float = 0.005
    k: int = 20
    holdout: float = 0.2  # newest share of sessions held out for the comparison
    min_sessions: int = 20  # fewer than this in the window: skip the tenant

    def __post_init__(self) -> None:
        if self.metric not in GATE_METRICS:
            raise InvalidSettingError(f"gate metric must be one of {', '.join(GATE_METRICS)}")
        if not 0 < self.holdout < 1:
            raise InvalidSettingError("holdout must be between 0 and 1")
        if not -1 <= self.margin <= 1:
            raise InvalidSettingError("margin must be between -1 and 1")


@dataclass(frozen=True)
class Scores:
    hr: float
    mrr: float
    cases: int


@dataclass(frozen=True)
class GateDecision:
    # "promoted", "kept" (candidate rejected), "unjudged" (no fresh sessions to compare
    # on: nothing trained), "skipped" (nothing trained) or "failed" (its clicks could not
    # be read: nothing trained)
    action: str
    reason: str
    candidate: Scores | None = None
    current: Scores | None = None
    current_version: str | None = None
    train_sessions: int = 0
    holdout_sessions: int = 0
    train_s: float = 0.0
    # The hold-out's sessions started after this (the current model's training data
    # ended there); None: no model in service, or it does not say.
    fresh_after: float | None = None
    trained_to: float | None = None  # the candidate's last training click

    def to_manifest(self, policy: GatePolicy) -> dict[str, Any]:
        return {
            "decision": self.action,
            "reason": self.reason,
            "policy": asdict(policy),
            "candidate": asdict(self.candidate) if self.candidate else None,
            "current": asdict(self.current) if self.current else None,
            "current_version": self.current_version,
            "train_sessions": self.train_sessions,
            "holdout_sessions": self.holdout_sessions,
            "fresh_after": self.fresh_after,
        }


def score_bundle(bundle: ModelBundle, sessions: Sequence[Sequence[str]], k: int) -> Scores:
    """HR@k and MRR@k of the bundle's ranking on every prefix of ``sessions``."""
    cases = list(iter_cases(sessions))
    if not cases:
        return Scores(0.0, 0.0, 0)
    ranked = recommend_batch(bundle, [c.prefix for c in cases], k)
    hr, mrr = rank_metrics([r.ids for r in ranked], [c.target for c in cases], k)
    return Scores(hr, mrr, len(cases))


def split_holdout(
    sessions: Sequence[Session], share: float, after: float | None = None
) -> tuple[list[Session], list[Session]]:
    """(train, holdout) by start time: the holdout is the newest ``share`` of sessions (at
    least one), less any that started at or before ``after`` (they join the train part)."""
    ordered = sorted(sessions, key=lambda s: s.start)
    cut = min(len(ordered) - 1, max(1, round(len(ordered) * (1 - share))))
    if after is not None:
        cut = max(cut, bisect_right([s.start for s in ordered], after))
    return ordered[:cut], ordered[cut:]


def trained_until(manifest: Mapping[str, Any]) -> float | None:
    """The time of the newest click a model may have been trained on, from its manifest:
    the trainer's last training click, else its window's end (older trainer versions),
    else the last click of the file `streamrec train` read. None: unknown."""
    window = manifest.get("data_window")
    data = manifest.get("data")
    window = window if isinstance(window, Mapping) else {}
    data = data if isinstance(data, Mapping) else {}
    for value in (window.get("trained_to"), window.get("to"), data.get("to_ts")):
        # Anything but a number of seconds within a few thousand years is not a time.
        if isinstance(value, int | float) and not isinstance(value, bool) and abs(value) < 1e11:
            return float(value)
    return None


def drop_learnt(
    train: list[Session], holdout: list[Session], learnt: np.ndarray | None
) -> tuple[list[Session], list[Session], int]:
    """(train, holdout, moved): the hold-out's sessions whose item sequence occurs verbatim
    among ``learnt`` (hashes, models.seen) move to the train part; ``learnt`` None (a model
    that does not record its sessions): nothing moves."""
    if learnt is None or not holdout:
        return train, holdout, 0
    seen = seen_in(learnt, [s.items for s in holdout])
    kept = [s for s, was in zip(holdout, seen.tolist(), strict=True) if not was]
    moved = [s for s, was in zip(holdout, seen.tolist(), strict=True) if was]
    return train + moved, kept, len(moved)


def _none_fresh(total: int, version: str | None, after: float | None, replays: int) -> str:
    head = f"none of the {total} sessions in the window"
    if after is None:
        return f"{head} is new to {version}: each repeats a session it was trained on verbatim"
    ended = time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime(after))
    if not replays:
        return f"{head} started after the last click {version} was trained on, {ended}"
    return (
        f"{head} is new to {version}: the {replays} that started after its last training "
        f"click, {ended}, repeat sessions it was trained on verbatim (a replay?)"
    )


def retrain(
    sessions: Sequence[Session],
    current: ModelBundle | None,
    params: TrainParams,
    policy: GatePolicy,
    progress: Progress | None = None,
    categories: Mapping[str, str] | None = None,
) -> tuple[ModelBundle | None, GateDecision]:
    """Train a candidate on the older sessions and gate it against ``current``
    (``categories``: item -> category where known, see ``train_model``)."""
    current_version = current.version if current is not None else None
    if len(sessions) < policy.min_sessions:
        return None, GateDecision(
            "skipped",
            f"only {len(sessions)} sessions in the window (< {policy.min_sessions})",
            current_version=current_version,
        )
    after = trained_until(current.manifest) if current is not None else None
    train, holdout = split_holdout(sessions, policy.holdout, after)
    learnt = current.session_hashes if current is not None else None
    train, holdout, replays = drop_learnt(train, holdout, learnt)
    if (after is not None or learnt is not None) and not any(len(s.items) > 1 for s in holdout):
        return None, GateDecision(
            "unjudged",
            _none_fresh(len(sessions), current_version, after, replays),
            current_version=current_version,
            fresh_after=after,
        )
    started = time.perf_counter()
    candidate = train_model([s.items for s in train], params, progress, categories)
    decision = gate(candidate, current, [s.items for s in holdout], policy)
    return candidate, replace(
        decision,
        train_sessions=len(train),
        train_s=time.perf_counter() - started,
        fresh_after=after,
        trained_to=max(s.end for s in train),
    )


def gate(
    candidate: ModelBundle,
    current: ModelBundle | None,
    holdout: Sequence[Sequence[str]],
    policy: GatePolicy,
) -> GateDecision:
    """Promote ``candidate`` if it ranks ``holdout`` better than ``current`` by at least
    the margin."""
    cand = score_bundle(candidate, holdout, policy.k)
    cur = score_bundle(current, holdout, policy.k) if current is not None else None
    common = dict(
        candidate=cand,
        current=cur,
        holdout_sessions=len(holdout),
        current_version=current.version if current is not None else None,
    )
    name = f"{policy.metric.upper()}@{policy.k}"
    if cur is None:
        return GateDecision("promoted", f"first model ({name} {_m(cand, policy):.4f})", **common)
    ok = _m(cand, policy) >= _m(cur, policy) + policy.margin
    verdict = (
        f"{name} {_m(cand, policy):.4f} vs {_m(cur, policy):.4f} in service"
        f" (margin {policy.margin:g})"
    )
    return GateDecision("promoted" if ok else "kept", verdict, **common)


def _m(scores: Scores, policy: GatePolicy) -> float:
    return float(getattr(scores, policy.metric))

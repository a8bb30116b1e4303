"""The served kernel's features computed at serve time, checked against the bundle's lists
(the rankings themselves are pinned by test_kernel_rankings.py)."""

from __future__ import annotations

import numpy as np
import pytest

from models.datasets import synthetic_sessions
from models.features import LAYOUT
from models.ranking import RankParams, encode_sessions, rank_codes
from models.train import TrainParams, train_model

PARAMS = TrainParams(epochs=2, n_clusters=4, n_neighbours=10, seed=7)


def _two_steps(bundle, last: int, width: int) -> dict[int, float]:
    """sum over i of P(i | last) * P(j | i), each list read to ``width`` entries."""
    ptr, idx, w = (bundle.arrays[f"transitions_{a}"] for a in ("ptr", "idx", "w"))
    out: dict[int, float] = {}
    for q in range(ptr[last], min(ptr[last + 1], ptr[last] + width)):
        i = int(idx[q])
        for q2 in range(ptr[i], min(ptr[i + 1], ptr[i] + width)):
            j = int(idx[q2])
            out[j] = out.get(j, 0.0) + float(w[q]) * float(w[q2])
    return out


def test_two_steps_is_the_transition_graph_squared_from_the_last_click() -> None:
    bundle = train_model(synthetic_sessions(6000, 150, seed=5), PARAMS)
    column = LAYOUT.column("transitions_2")
    sessions = synthetic_sessions(300, 150, seed=11)
    codes, ptr = encode_sessions(bundle, sessions)
    params = RankParams.of(bundle)
    feats = np.zeros((len(sessions), 20, LAYOUT.n_features))
    items, *_ = rank_codes(bundle, codes, ptr, 20, params, exclude="none", out_feats=feats)
    checked = 0
    for r in range(len(sessions)):
        known = codes[ptr[r] : ptr[r + 1]]
        known = known[known >= 0]
        if not len(known):
            continue
        want = _two_steps(bundle, int(known[-1]), params.per_source)
        for c in np.flatnonzero(items[r] >= 0):
            assert feats[r, c, column] == pytest.approx(want.get(int(items[r, c]), 0.0))
            checked += want.get(int(items[r, c]), 0.0) > 0.0
    assert checked > 500

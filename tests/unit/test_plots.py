"""The plotting helpers: labels that keep apart, and a clear error without matplotlib."""

from __future__ import annotations

import sys

import numpy as np
import pytest

from models.errors import StreamrecError
from models.plots import require_matplotlib, thin_labels


def test_labels_keep_their_distance_and_limit() -> None:
    rng = np.random.default_rng(0)
    points = rng.random((500, 2))
    gap = (0.1, 0.05)
    rows = thin_labels(points, list(range(500)), 30, gap)
    assert 0 < len(rows) <= 30
    assert rows[0] == 0  # the first in order is always labelled
    chosen = points[rows]
    for i in range(len(rows)):
        close = (np.abs(chosen - chosen[i]) < gap).all(axis=1)
        assert close.sum() == 1, "two labels closer than the gap"


def test_labels_avoid_occupied_points() -> None:
    points = np.array([[0.0, 0.0], [0.5, 0.5], [1.0, 1.0]])
    rows = thin_labels(points, [0, 1, 2], 10, (0.1, 0.1), occupied=np.array([[0.51, 0.5]]))
    assert rows == [0, 2]


def test_no_matplotlib_is_one_line_saying_what_to_install(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setitem(sys.modules, "matplotlib", None)  # import raises ImportError
    with pytest.raises(StreamrecError, match=r"pip install 'streamrec\[plots\]'"):
        require_matplotlib()

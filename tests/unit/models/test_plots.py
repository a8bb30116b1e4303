"""The plotting helpers: labels that keep apart, and a clear error without matplotlib."""

from __future__ import annotations

import sys

import numpy as np
import pytest

from models.errors import StreamrecError
from models.plots import evaluation_figure, require_matplotlib, thin_labels


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


def test_the_evaluation_chart_puts_the_best_hr_on_top_with_both_measures() -> None:
    results = {
        "pop": {"hr": 0.10, "mrr": 0.02},
        "streamrec": {"hr": 0.70, "mrr": 0.30},
        "vsknn": {"hr": 0.50, "mrr": 0.35},
    }
    ax = evaluation_figure(results, 20, "a title").axes[0]
    # Top to bottom by HR@20 (MRR@20 does not reorder them).
    height = {t.get_text(): t.get_position()[1] for t in ax.get_yticklabels()}
    assert sorted(height, key=height.__getitem__, reverse=True) == ["streamrec", "vsknn", "pop"]
    widths = sorted(round(p.get_width(), 2) for p in ax.patches)
    assert widths == [0.02, 0.1, 0.3, 0.35, 0.5, 0.7]  # one HR and one MRR bar per model
    assert [t.get_text() for t in ax.get_legend().get_texts()] == ["HR@20", "MRR@20"]

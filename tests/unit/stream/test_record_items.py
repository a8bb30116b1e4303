"""The records' item lists written in one compiled pass (``items_json``) are the bytes
the writer makes from Python objects."""

from __future__ import annotations

import random
from types import SimpleNamespace

import numpy as np
import orjson
import pytest

from stream.events import SCORE_DECIMALS, ClickEvent, RecommendationWriter, items_json

CHARS = ["a", "Z", "0", '"', "\\", "/", "é", "中", "😀", "\n", "\t", "\x01", "\x7f", "\u2028", " "]
SCORES = [
    lambda r: r.random(),
    lambda r: r.uniform(-5, 5),
    lambda r: r.uniform(-1e-4, 1e-4),  # rounds to 0.0, -0.0 or +-0.0001
    lambda r: r.uniform(-1e6, 1e6),
    lambda r: r.random() * 10 ** r.randint(-8, 12),
    lambda r: r.choice([0.0, -0.0, 1.0, 100.0, 1e9, 12345.6789, 5e-5, -5e-5]),
]


def _model(ids: list[str]) -> SimpleNamespace:
    """What ``items_json`` reads of a bundle."""
    return SimpleNamespace(items=np.array(ids), derived={})


def _write(ids: list[str], scores: list[float], items: bytes | None = None) -> bytes:
    click = ClickEvent("default", "s-é", "A1", 1.7e9, event_id="e1")
    write = RecommendationWriter()
    return write(click, "e1", ids, scores, "knn", "v1", 2.0, "v1-x-1", "v1", None, items)


@pytest.mark.parametrize("seed", range(3))
def test_the_compiled_items_are_the_writers_bytes(seed: int) -> None:
    rng = random.Random(seed)
    ids = sorted({"".join(rng.choices(CHARS, k=rng.randint(1, 12))) for _ in range(300)})
    rows, k = 600, 10
    items = np.array([rng.sample(range(len(ids)), k) for _ in range(rows)], dtype=np.int64)
    for r in range(0, rows, 7):  # rows with fewer than k items end at their first -1
        items[r, rng.randrange(k) :] = -1
    scores = np.array([[rng.choice(SCORES)(rng) for _ in range(k)] for _ in range(rows)])
    scores = scores.round(SCORE_DECIMALS)
    made = items_json(_model(ids), items, scores)
    written = 0
    for r, raw in enumerate(made):
        row = [c for c in items[r].tolist() if c >= 0]
        row_ids, row_scores = [ids[c] for c in row], scores[r, : len(row)].tolist()
        if raw is None:  # only scores beyond fixed notation's 15 digits
            assert max(map(abs, row_scores)) >= 1e11
            continue
        assert _write(row_ids, row_scores, raw) == _write(row_ids, row_scores)
        written += 1
    assert written > rows * 0.8


def test_rows_it_cannot_write_are_left_to_the_writer() -> None:
    ids = ["A", "B\ud800", "C"]  # a lone surrogate cannot be encoded
    items = np.array([[0, 2], [0, 1], [2, 0], [0, 2], [2, -1]], dtype=np.int64)
    scores = np.array([[0.5, 0.25], [0.5, 0.25], [np.nan, 0.0], [1e16, 1.0], [0.125, -np.inf]])
    made = items_json(_model(ids), items, scores.round(SCORE_DECIMALS))
    assert made[1] is None and made[2] is None and made[3] is None
    assert made[0] is not None and orjson.loads(made[0]) == [
        {"item_id": "A", "score": 0.5},
        {"item_id": "C", "score": 0.25},
    ]
    assert made[4] == b'[{"item_id":"C","score":0.125}]'
    with pytest.raises(UnicodeEncodeError):
        _write(["A", "B\ud800"], [0.5, 0.25])

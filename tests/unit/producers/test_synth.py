"""The synthetic clickstream: seeded, shaped like real shop traffic, readable by the trainer."""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np
import pytest

from models.datasets import build_sessions, read_clicks
from producers.synth import (
    MAX_SESSION_LENGTH,
    SynthParams,
    generate_clicks,
    iter_synth,
    make_catalog,
    write_yoochoose,
)
from producers.timing import DWELL_MAX_S

SMALL = SynthParams(items=2_000, sessions=20_000, seed=7)


@pytest.fixture(scope="module")
def small_stream() -> list:
    return list(iter_synth(SMALL))


def concat(chunks: list, name: str) -> np.ndarray:
    return np.concatenate([getattr(c, name) for c in chunks])


def test_same_seed_same_stream_other_seed_other_stream() -> None:
    params = SynthParams(items=300, sessions=500, seed=1)
    a, b = generate_clicks(params), generate_clicks(params)
    c = generate_clicks(SynthParams(items=300, sessions=500, seed=2))
    assert np.array_equal(a.item_ids, b.item_ids) and np.array_equal(a.ts, b.ts)
    assert not np.array_equal(a.item_ids[:200], c.item_ids[:200])


def test_popularity_follows_zipf(small_stream: list) -> None:
    items = concat(small_stream, "item_ids")
    counts = np.sort(np.unique(items, return_counts=True)[1])[::-1]
    ranks = np.arange(1, len(counts) + 1)
    slope = np.polyfit(np.log(ranks[:500]), np.log(counts[:500]), 1)[0]
    # Real data (e-shop, YOOCHOOSE): -0.82 .. -0.90.
    assert -1.0 < slope < -0.7
    # Without popularity skew only the category walk concentrates clicks a little.
    flat = generate_clicks(SynthParams(items=2_000, sessions=5_000, zipf=0.0, seed=7))
    flat_counts = np.sort(np.unique(flat.item_ids, return_counts=True)[1])[::-1]
    flat_slope = np.polyfit(np.log(ranks[:500]), np.log(flat_counts[:500]), 1)[0]
    assert flat_slope > -0.5


def test_session_lengths_look_like_real_sessions(small_stream: list) -> None:
    sessions = concat(small_stream, "session_ids")
    lengths = np.unique(sessions, return_counts=True)[1]
    assert len(lengths) == SMALL.sessions
    assert np.median(lengths) == 4  # e-shop: 4
    assert 5.0 < lengths.mean() < 8.0  # e-shop: 6.9
    assert 0.08 < np.mean(lengths == 1) < 0.25  # e-shop: 0.21
    assert lengths.max() <= MAX_SESSION_LENGTH


def test_clicks_stay_in_latent_categories(small_stream: list) -> None:
    catalog = make_catalog(SMALL)
    category_of_item = dict(zip(catalog.item_ids.tolist(), catalog.category.tolist(), strict=True))
    sessions = concat(small_stream, "session_ids")
    cats = np.array([category_of_item[i] for i in concat(small_stream, "item_ids").tolist()])
    same_session = sessions[1:] == sessions[:-1]
    same_category = np.mean((cats[1:] == cats[:-1])[same_session])
    shares = np.unique(cats, return_counts=True)[1] / len(cats)
    by_chance = float(np.sum(shares**2))
    assert same_category > 0.6 and by_chance < 0.1


def test_going_back_is_a_tunable_habit() -> None:
    def back_rate(back: float) -> float:
        chunk = next(
            iter_synth(SynthParams(items=5_000, sessions=20_000, back=back, related=0.2, seed=3))
        )
        s, i = chunk.session_ids, chunk.item_ids
        two_back = (s[2:] == s[:-2]) & (s[2:] == s[1:-1])
        return float(np.mean((i[2:] == i[:-2])[two_back]))

    # Without the habit, the walk still comes back by chance (popular items, line steps);
    # with it, 30 % of clicks come back on purpose and the rest by chance as before.
    by_chance = back_rate(0.0)
    assert by_chance < 0.15
    assert back_rate(0.3) == pytest.approx(0.3 + 0.7 * by_chance, abs=0.03)


def test_timestamps_are_ordered_within_sessions_and_span_the_days(small_stream: list) -> None:
    sessions = concat(small_stream, "session_ids")
    ts = concat(small_stream, "ts")
    same = sessions[1:] == sessions[:-1]
    gaps = np.diff(ts)[same]
    assert gaps.min() >= 0 and gaps.max() <= DWELL_MAX_S + 1e-6
    starts = ts[np.r_[True, ~same]]
    assert np.all(np.diff(starts) >= 0)  # sessions are numbered in start order
    assert starts.min() >= SMALL.start_ts
    assert starts.max() - starts.min() == pytest.approx(SMALL.days * 86400, rel=0.01)


def test_a_million_items(tmp_path: Path) -> None:
    params = SynthParams(items=1_000_000, sessions=20_000, seed=5)
    started = time.perf_counter()
    clicks = generate_clicks(params)
    assert time.perf_counter() - started < 20
    ids = clicks.item_ids.astype(np.int64)
    assert ids.min() >= 1 and ids.max() <= 1_000_000
    assert make_catalog(params).category.max() + 1 == 1000  # sqrt(items) categories


def test_file_round_trips_through_the_trainers_reader(tmp_path: Path) -> None:
    params = SynthParams(items=400, sessions=1_500, seed=11)
    path = tmp_path / "synth.tsv.gz"
    clicks_written, sessions_written = write_yoochoose(path, params)
    read = read_clicks(path, "yoochoose")
    expected = generate_clicks(params)
    assert len(read) == clicks_written == len(expected)
    assert sessions_written == 1_500
    assert np.array_equal(read.item_ids, expected.item_ids)
    assert np.array_equal(read.session_ids, expected.session_ids)
    assert np.allclose(read.ts, expected.ts, atol=1e-3)
    sessions = build_sessions(read)
    assert 1_000 < len(sessions) < 1_500  # one-click sessions are dropped by the trainer


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"items": 0}, "items"),
        ({"items": 2_000_000}, "items"),
        ({"categories": 50, "items": 10}, "categories"),
        ({"back": 0.6, "related": 0.6}, "related \\+ back"),
        ({"stay": 1.5}, "stay"),
        ({"days": 0}, "days"),
    ],
)
def test_parameters_out_of_range_are_named(change: dict, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        SynthParams(**change).check()

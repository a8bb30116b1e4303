"""The dashboard's hit-rate series: slices that fit the data, not the whole window."""

from __future__ import annotations

from state.feedback import VariantCounts
from stream.api.dashboard import POINTS, _series


def test_recent_buckets_stay_apart_in_a_long_window() -> None:
    now = 100_000.0
    buckets = [
        (now - 120, {"v1": VariantCounts(recommendations=10, hits=1)}),
        (now - 60, {"v1": VariantCounts(recommendations=10, hits=3)}),
    ]
    series = _series(buckets, now - 3600, now, bucket_s=60)
    # Two buckets a minute apart in an hour's window: two points (a line), each at
    # its bucket's middle, not one dot squeezed against the end of the hour.
    assert series == {"v1": [[now - 90, 0.1, 10], [now - 30, 0.3, 10]]}


def test_a_long_history_is_sliced_into_at_most_points() -> None:
    now = 100_000.0
    buckets = [
        (now - 60 * m, {"v1": VariantCounts(recommendations=10, hits=m % 3)}) for m in range(1, 301)
    ]
    (points,) = _series(buckets, now - 6 * 3600, now, bucket_s=60).values()
    assert POINTS - 1 <= len(points) <= POINTS
    assert sum(p[2] for p in points) == 3000
    assert points[0][0] < now - 290 * 60 and points[-1][0] > now - 10 * 60
    assert [p[0] for p in points] == sorted(p[0] for p in points)

"""Forming a Redis Cluster: the masters' slot ranges."""

from __future__ import annotations

from state.cluster import SLOTS, slot_ranges


def test_the_slots_are_split_evenly_and_all_served_once() -> None:
    for masters in (1, 3, 5):
        ranges = slot_ranges(masters)
        assert [s for r in ranges for s in r] == list(range(SLOTS))
        assert max(map(len, ranges)) - min(map(len, ranges)) <= 1

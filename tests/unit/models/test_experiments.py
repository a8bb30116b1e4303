"""The maths of experiments, by tables of cases."""

from __future__ import annotations

import pytest

from models.experiments import (
    ab_decision,
    assignment_point,
    discounted,
    is_variant,
    pick_arm,
    staged_verdict,
    thompson_shares,
    two_proportion_p,
    wilson,
)


@pytest.mark.parametrize(
    ("hits", "n", "low", "high"),
    [
        (0, 0, 0.0, 1.0),
        (0, 10, 0.0, 0.2775),
        (5, 10, 0.2366, 0.7634),
        (10, 10, 0.7225, 1.0),
        (50, 1000, 0.0381, 0.0653),
    ],
)
def test_wilson_interval_matches_published_values(
    hits: int, n: int, low: float, high: float
) -> None:
    got = wilson(hits, n)
    assert got == pytest.approx((low, high), abs=1e-4)


def test_two_proportion_p_value() -> None:
    assert two_proportion_p(50, 1000, 50, 1000) == pytest.approx(1.0)
    # 10 % vs 5 % on 1000 each: z ~ 4.2
    assert two_proportion_p(100, 1000, 50, 1000) < 1e-4
    assert two_proportion_p(0, 0, 5, 10) == 1.0


@pytest.mark.parametrize(
    ("control", "candidate", "decision"),
    [
        ((50, 1000), (100, 1000), "promote"),
        ((100, 1000), (50, 1000), "keep"),
        ((50, 1000), (55, 1000), "running"),
        ((5, 100), (10, 100), "running"),  # below the minimum of recommendations
    ],
)
def test_ab_decision(control: tuple[int, int], candidate: tuple[int, int], decision: str) -> None:
    got, p = ab_decision(control, candidate, min_recommendations=1000)
    assert got == decision and 0 <= p <= 1


@pytest.mark.parametrize(
    ("control", "candidate", "verdict"),
    [
        ((100, 1000), (50, 1000), "worse"),
        ((100, 1000), (95, 1000), "advance"),
        ((100, 1000), (150, 1000), "advance"),
        ((10, 100), (0, 100), "hold"),
    ],
)
def test_staged_verdict(control: tuple[int, int], candidate: tuple[int, int], verdict: str) -> None:
    assert staged_verdict(control, candidate, min_recommendations=1000) == verdict


def test_thompson_shares_favour_the_better_arm_and_keep_a_floor() -> None:
    shares = thompson_shares({"v1": (50, 1000), "v2": (150, 1000)}, floor=0.02)
    assert sum(shares.values()) == pytest.approx(1.0)
    assert shares["v2"] > 0.95 and shares["v1"] >= 0.0195
    # Without data both are equally likely; the same seed gives the same shares.
    even = thompson_shares({"a": (0, 0), "b": (0, 0)})
    assert even["a"] == pytest.approx(0.5, abs=0.05)
    assert even == thompson_shares({"a": (0, 0), "b": (0, 0)})


def test_discounting_forgets_old_buckets() -> None:
    buckets = [(0.0, 10, 100), (600.0, 1, 100)]
    assert discounted(buckets, 600.0, 1.0, 60) == (11, 200)
    hits, n = discounted(buckets, 600.0, 0.5, 60)  # the old bucket is 10 halvings old
    assert n == pytest.approx(100 + 100 / 1024)
    assert hits == pytest.approx(1 + 10 / 1024)


def test_assignment_is_sticky_and_even() -> None:
    shares = [("v1", 0.1), ("v2", 0.9)]
    picks = [pick_arm(assignment_point("t", f"s{i}"), shares) for i in range(20_000)]
    assert picks.count("v1") / len(picks) == pytest.approx(0.1, abs=0.01)
    assert all(pick_arm(assignment_point("t", f"s{i}"), shares) == picks[i] for i in range(100))
    # Another tenant splits its sessions independently.
    other = [pick_arm(assignment_point("u", f"s{i}"), shares) for i in range(2000)]
    assert other != picks[:2000]


@pytest.mark.parametrize(
    ("name", "ok"),
    [("v3", True), ("popular", True), ("v", False), ("x3", False), ("v3:h", False), (3, False)],
)
def test_variant_names(name: object, ok: bool) -> None:
    assert is_variant(name) is ok

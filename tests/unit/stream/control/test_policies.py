"""Feedback bookkeeping and policy status, without Redis."""

from __future__ import annotations

import pytest

from state import keys
from state.feedback import (
    FeedbackRecorder,
    VariantCounts,
    decode_list,
    encode_list,
    parse_bucket,
    totals,
)
from stream.control.policies import bandit_shares, experiment_status
from stream.control.stats import parse_since


def test_recorder_batches_counts_and_lists_and_gives_them_back_on_failure() -> None:
    fb = FeedbackRecorder(bucket_s=60, clock=lambda: 1_000_030.0)
    fb.recommended("t", "v1", 3)
    fb.hit("t", "v1", 2)
    fb.explicit("t", "v1", "purchase")
    fb.shown("t", "s1", encode_list("v1", "v1-x-1", ["a", "b"]))
    lists, commands = fb.take()
    assert not fb.pending()
    key = keys.counters("t", 1_000_020)
    assert ["HINCRBY", key, "v1:r", "3"] in commands
    assert ["HINCRBY", key, "v1:h", "1"] in commands and ["HINCRBY", key, "v1:ps", "2"] in commands
    assert ["HINCRBY", key, "v1:b", "1"] in commands and commands[-1][0] == "EXPIRE"
    assert decode_list(lists[("t", "s1")]) == ("v1", "v1-x-1", ["a", "b"])
    fb.recommended("t", "v1", 1)  # recorded while the failed round trip was out
    fb.restore((lists, commands))
    _, again = fb.take()
    assert ["HINCRBY", key, "v1:r", "4"] in again
    assert keys.parse_counters(key) == ("t", 1_000_020)


def test_a_bucket_parses_per_variant_and_ignores_unknown_fields() -> None:
    raw = {"v1:r": "10", "v1:h": "3", "popular:r": "5", "forged:r": "9", "v1:zz": "1"}
    parsed = parse_bucket(raw)
    assert set(parsed) == {"v1", "popular"}
    assert (parsed["v1"].recommendations, parsed["v1"].hits) == (10, 3)
    total = totals([(0, parsed), (60, parse_bucket({"v1:r": "5"}))])
    assert total["v1"].recommendations == 15 and total["v1"].hit_rate == pytest.approx(0.2)


def test_experiment_status_decides_from_the_counters() -> None:
    policy = {"policy": "ab", "arms": {"v1": 0.5, "v2": 0.5}, "control": "v1",
              "candidate": "v2", "min_recommendations": 100, "started": 0}  # fmt: skip
    buckets = [(0, {"v1": VariantCounts(1000, 100), "v2": VariantCounts(1000, 200)})]
    status = experiment_status("t", policy, buckets)
    assert status["decision"] == "promote" and status["p_value"] < 0.001
    assert status["arms"]["v2"]["hit_rate"] == 0.2 and status["arms"]["v1"]["share"] == 0.5
    low, high = status["arms"]["v2"]["ci"]
    assert low < 0.2 < high
    fixed = experiment_status("t", None, [], serving="v1")
    assert fixed["policy"] == "fixed" and fixed["arms"] == {"v1": {"share": 1.0}}


def test_bandit_shares_follow_the_discounted_counts() -> None:
    policy = {"policy": "bandit", "arms": {"v1": 0.5, "v2": 0.5}, "discount": 0.5}
    # v1 was better long ago, v2 is better now: forgetting lets v2 win.
    old = (0, {"v1": VariantCounts(1000, 500), "v2": VariantCounts(1000, 100)})
    new = (600, {"v1": VariantCounts(200, 20), "v2": VariantCounts(200, 60)})
    shares = bandit_shares(policy, [old, new], now=600, bucket_s=60)
    assert shares["v2"] > 0.9
    remember = bandit_shares({**policy, "discount": 1.0}, [old, new], now=600, bucket_s=60)
    assert remember["v1"] > 0.9


@pytest.mark.parametrize(("text", "seconds"), [("1h", 3600), ("30m", 1800), ("90", 90)])
def test_parse_since(text: str, seconds: float) -> None:
    assert parse_since(text) == seconds


@pytest.mark.parametrize("text", ["", "0", "soon", "-1h", "1w"])
def test_parse_since_rejects(text: str) -> None:
    with pytest.raises(ValueError):
        parse_since(text)


def test_stats_json_has_the_issues_shape_with_wilson_intervals_and_a_table() -> None:
    from models.experiments import wilson
    from stream.control.stats import stats_json, stats_table

    counts = {"v3": VariantCounts(1000, 50, 80, purchases=4), "popular": VariantCounts(10, 0)}
    report = stats_json("shop", counts, 3600)
    assert report["tenant"] == "shop" and set(report["variants"]) == {"v3", "popular"}
    v3 = report["variants"]["v3"]
    assert {"recommendations", "hits", "hit_rate", "ci", "purchases"} <= set(v3)
    assert (v3["recommendations"], v3["hits"], v3["hit_rate"], v3["purchases"]) == (
        1000, 50, 0.05, 4
    )  # fmt: skip
    assert v3["ci"] == pytest.approx(list(wilson(50, 1000)), abs=1e-6) and len(v3["ci"]) == 2
    table = stats_table(report).splitlines()
    assert table[1].split() == ["variant", "recs", "hits", "hit", "rate", "95%", "CI", "purchases"]
    assert table[3].split() == ["v3", "1000", "50", "5.00%", "3.81%", "-", "6.53%", "4"]


def test_experiment_status_json_has_the_issues_shape_for_ab_and_bandit() -> None:
    buckets = [(0, {"v1": VariantCounts(100, 10), "v2": VariantCounts(100, 20)})]
    arm_keys = {"share", "recommendations", "hits", "hit_rate", "ci"}
    ab = {"policy": "ab", "arms": {"v1": 0.9, "v2": 0.1}, "control": "v1", "candidate": "v2"}
    bandit = {"policy": "bandit", "arms": {"v1": 0.5, "v2": 0.5}}
    for policy in (ab, bandit):
        shares = bandit_shares(bandit, buckets, 0, 60) if policy is bandit else None
        status = experiment_status("t", policy, buckets, shares)
        assert {"tenant", "policy", "arms", "decision", "p_value"} <= set(status)
        assert status["policy"] == policy["policy"] and status["decision"] == "running"
        assert all(set(a) == arm_keys for a in status["arms"].values()), status
        assert sum(a["share"] for a in status["arms"].values()) == pytest.approx(1, abs=1e-3)
        # An A/B test's p-value; a bandit decides by itself and has none.
        assert status["p_value"] is None if policy is bandit else 0 <= status["p_value"] <= 1
    assert experiment_status("t", bandit, buckets, shares)["arms"]["v2"]["share"] > 0.5

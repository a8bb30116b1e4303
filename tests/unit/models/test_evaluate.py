"""The evaluation protocol on hand-made sessions whose HR/MRR are known."""

from __future__ import annotations

from collections.abc import Sequence

import pytest

from models.evaluate import Case, evaluate, iter_cases, rank_metrics


class FixedList:
    """Always recommends the same list; records what it was trained on."""

    def __init__(self, items: list[str]) -> None:
        self.items = items
        self.fitted: list[list[str]] = []
        self.prefixes: list[list[str]] = []

    def fit(self, sessions: Sequence[Sequence[str]]) -> None:
        self.fitted = [list(s) for s in sessions]

    def recommend_batch(self, prefixes: Sequence[Sequence[str]], k: int) -> list[list[str]]:
        self.prefixes += [list(p) for p in prefixes]
        return [self.items[:k] for _ in prefixes]


TRAIN = [["b", "c"], ["b", "x"], ["b", "c"]]  # popularity: b (1st), c (2nd), x (3rd)
TEST = [["a", "b"], ["a", "c"], ["a", "d"], ["q"]]  # "d" never seen in training; ["q"] has no case


def test_every_prefix_is_a_case_and_single_clicks_are_skipped() -> None:
    cases = list(iter_cases([["a", "b", "c"], ["z"], ["x", "y"]]))
    assert cases == [Case(["a"], "b"), Case(["a", "b"], "c"), Case(["x"], "y")]


@pytest.mark.parametrize(
    ("k", "hr", "mrr"),
    [
        (3, 2 / 3, (1 + 1 / 2) / 3),  # b at rank 1, c at rank 2, d missed
        (2, 2 / 3, (1 + 1 / 2) / 3),
        (1, 1 / 3, 1 / 3),
    ],
)
def test_hit_rate_and_mrr_on_known_lists(k: int, hr: float, mrr: float) -> None:
    model = FixedList(["b", "c", "x"])
    [(name, metrics)] = list(evaluate({"fixed": lambda: model}, TRAIN, TEST, k=k))
    assert name == "fixed"
    assert metrics.cases == 3
    assert metrics.hr == pytest.approx(hr)
    assert metrics.mrr == pytest.approx(mrr)
    assert model.fitted == TRAIN
    assert model.prefixes == [["a"], ["a"], ["a"]]


def test_coverage_and_popularity_rank() -> None:
    [(_, full)] = list(evaluate({"m": lambda: FixedList(["b", "c", "x"])}, TRAIN, TEST, k=3))
    assert full.coverage == pytest.approx(1.0)
    assert full.popularity_rank == pytest.approx(2.0)
    [(_, short)] = list(evaluate({"m": lambda: FixedList(["b", "c", "x"])}, TRAIN, TEST, k=2))
    assert short.coverage == pytest.approx(2 / 3)
    assert short.popularity_rank == pytest.approx(1.5)
    assert short.train_s >= 0 and short.recs_per_s > 0


def test_models_are_scored_one_after_another_on_the_same_cases() -> None:
    results = evaluate(
        {"good": lambda: FixedList(["b", "c"]), "bad": lambda: FixedList(["x"])}, TRAIN, TEST, k=2
    )
    assert next(results)[0] == "good"  # a generator: the first result comes before the second fits
    name, bad = next(results)
    assert name == "bad" and bad.hr == 0.0 and bad.mrr == 0.0 and bad.cases == 3


def test_rank_metrics_counts_only_the_top_k() -> None:
    assert rank_metrics([["x", "y", "t"]], ["t"], k=2) == (0.0, 0.0)
    assert rank_metrics([["x", "y", "t"]], ["t"], k=3) == (1.0, pytest.approx(1 / 3))
    assert rank_metrics([], [], k=5) == (0.0, 0.0)


def test_protocol_counts_n_minus_one_cases_per_session_and_keeps_repeats() -> None:
    sessions = [["a", "a", "b", "a"], ["c", "d"], ["e"]]
    cases = list(iter_cases(sessions))
    assert len(cases) == sum(len(s) - 1 for s in sessions) == 4
    assert [c.target for c in cases] == ["a", "b", "a", "d"]  # the repeat "a" is a case
    model = FixedList(["a", "b"])
    [(_, m)] = list(evaluate({"m": lambda: model}, TRAIN, sessions, k=1))
    assert m.cases == 4
    assert m.hr == pytest.approx(2 / 4)  # next-item: "a" may be recommended after "a"
    assert model.prefixes == [["a"], ["a", "a"], ["a", "a", "b"], ["c"]]


@pytest.mark.parametrize(
    ("exclude", "hr"),
    [
        ("none", 2 / 4),  # both "a" targets hit at rank 1
        ("current", 2 / 4),  # after "a" the list starts with "b": cases 2 and 3 hit
        ("seen", 1 / 4),  # only a -> b survives ("a" is always seen when it is the target)
    ],
)
def test_serving_protocol_filters_after_ranking(exclude: str, hr: float) -> None:
    sessions = [["a", "a", "b", "a"], ["c", "d"]]
    model = FixedList(["a", "b", "x"])
    [(_, m)] = list(
        evaluate({"m": lambda: model}, TRAIN, sessions, k=1, protocol="serving", exclude=exclude)
    )
    assert m.hr == pytest.approx(hr)


def test_the_serving_filter_never_lets_an_excluded_item_through() -> None:
    from models.evaluate import apply_exclude

    lists = [["a", "b", "c", "d"]] * 3
    prefixes = [["a"], ["b", "a"], ["c", "b", "a"]]
    assert apply_exclude(lists, prefixes, "current", 2) == [["b", "c"], ["b", "c"], ["b", "c"]]
    assert apply_exclude(lists, prefixes, "seen", 2) == [["b", "c"], ["c", "d"], ["d"]]
    assert apply_exclude(lists, prefixes, "none", 2) == [["a", "b"]] * 3
    with pytest.raises(ValueError):
        list(evaluate({"m": lambda: FixedList([])}, TRAIN, TEST, protocol="serving", exclude="x"))


def test_tuning_sees_the_validation_split_and_never_the_test() -> None:
    class Tuned(FixedList):
        def tune(self, train: Sequence[Sequence[str]], valid: Sequence[Sequence[str]]) -> None:
            self.tuned_on = [list(s) for s in valid]

    model = Tuned(["b"])
    valid = [["b", "c"]]
    list(evaluate({"m": lambda: model}, TRAIN, TEST, valid=valid))
    assert model.tuned_on == valid

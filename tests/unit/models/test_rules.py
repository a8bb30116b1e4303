"""Serving rules and the catalogue: an excluded item never gets through, whether the rules
are applied to a ranked list (apply_rules) or inside the ranking kernel (banned mask),
and the list is refilled to n when enough candidates exist."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from models.bundle import ModelBundle
from models.datasets import synthetic_sessions
from models.ranking import recommend_flat
from models.rules import (
    Catalogue,
    Request,
    ServingRules,
    apply_rules,
    banned_mask,
    is_allowed,
    session_excluded,
)
from models.train import TrainParams, train_model

ITEMS = [f"i{n}" for n in range(30)]
CATEGORIES = ["a", "b", "c"]

items = st.sampled_from(ITEMS)
item_sets = st.frozensets(items, max_size=8)
category_sets = st.frozensets(st.sampled_from(CATEGORIES), max_size=2)
rules_st = st.builds(
    ServingRules,
    exclude=st.sampled_from(["none", "current", "seen"]),
    blocklist=item_sets,
    include_categories=category_sets,
    exclude_categories=category_sets,
)
catalogue_st = st.builds(
    Catalogue,
    unavailable=item_sets,
    category=st.dictionaries(items, st.sampled_from(CATEGORIES), max_size=30),
)
request_st = st.one_of(
    st.none(), st.builds(Request, exclude_items=item_sets, categories=category_sets)
)


def _excluded(item: str, session: list[str], rules: ServingRules, cat: Catalogue, req) -> bool:
    """The rules written out plainly, as the reference."""
    category = cat.category.get(item)
    return (
        item in cat.unavailable
        or item in rules.blocklist
        or (bool(rules.exclude_categories) and category in rules.exclude_categories)
        or (bool(rules.include_categories) and category not in rules.include_categories)
        or (rules.exclude == "seen" and item in session)
        or (rules.exclude == "current" and bool(session) and item == session[-1])
        or (req is not None and item in req.exclude_items)
        or (req is not None and bool(req.categories) and category not in req.categories)
    )


@settings(max_examples=400, deadline=None)
@given(
    ranked=st.lists(items, max_size=30),
    session=st.lists(items, max_size=6),
    rules=rules_st,
    catalogue=catalogue_st,
    request=request_st,
    n=st.integers(1, 30),
)
def test_apply_rules_never_lets_an_excluded_item_through_and_refills(
    ranked, session, rules, catalogue, request, n
) -> None:
    scored = [(item, float(-i)) for i, item in enumerate(ranked)]
    out = [item for item, _ in apply_rules(scored, session, rules, catalogue, n, request)]
    assert not [i for i in out if _excluded(i, session, rules, catalogue, request)]
    allowed = []
    for item in ranked:
        if item not in allowed and not _excluded(item, session, rules, catalogue, request):
            allowed.append(item)
    assert out == allowed[:n]  # in rank order, as many as there are, up to n


def test_rules_round_trip_and_refuse_bad_input() -> None:
    rules = ServingRules("seen", frozenset({"x"}), frozenset({"a"}), frozenset())
    assert ServingRules.from_dict(rules.to_dict()) == rules
    assert ServingRules.from_dict({}) == ServingRules()  # default: exclude current
    for bad in ({"exclude": "all"}, {"blocklist": "x"}, {"include_categories": [1]}):
        with pytest.raises(ValueError):
            ServingRules.from_dict(bad)


def test_session_exclusion_modes() -> None:
    assert session_excluded(ServingRules("none"), ["a", "b"]) == set()
    assert session_excluded(ServingRules("current"), ["a", "b"]) == {"b"}
    assert session_excluded(ServingRules("seen"), ["a", "b"]) == {"a", "b"}


def test_catalogue_entries() -> None:
    cat = Catalogue.from_entries(
        {
            "a": {"available": False},
            "b": {"available": True, "category": "shoes"},
            "c": {"deleted": True, "available": False},
        }
    )
    assert cat.unavailable == {"a", "c"} and cat.category == {"b": "shoes"}
    assert not is_allowed("a", ServingRules(), cat)
    only_shoes = ServingRules(include_categories=frozenset({"shoes"}))
    assert is_allowed("b", only_shoes, cat) and not is_allowed("x", only_shoes, cat)


@pytest.fixture(scope="module")
def bundle() -> ModelBundle:
    sessions = synthetic_sessions(3000, 120, seed=3)
    return train_model(sessions, TrainParams(epochs=2, n_clusters=4, n_neighbours=12, seed=1))


@pytest.mark.parametrize("exclude", ["none", "current", "seen"])
def test_the_kernel_never_returns_a_banned_item_and_fills_to_k(
    bundle: ModelBundle, exclude: str
) -> None:
    rng = np.random.default_rng(7)
    names = bundle.item_list
    banned_names = set(rng.choice(names, size=40, replace=False).tolist())
    rules = ServingRules(exclude, blocklist=frozenset(banned_names))
    mask = banned_mask(names, rules, Catalogue())
    assert mask.sum() == 40
    sessions = [list(rng.choice(names, size=rng.integers(1, 8))) for _ in range(300)]
    flat = [i for s in sessions for i in s]
    k = 20
    ranked = recommend_flat(
        bundle, flat, [len(s) for s in sessions], k, banned=mask, exclude=exclude
    )
    for session, r in zip(sessions, ranked, strict=True):
        ids = r.item_ids()
        assert not set(ids) & banned_names
        assert not set(ids) & session_excluded(rules, session)
        assert len(ids) == len(set(ids)) == k  # refilled: 80 items are allowed


def test_no_rules_no_mask_cost(bundle: ModelBundle) -> None:
    assert not banned_mask(bundle.item_list, ServingRules(), Catalogue()).any()

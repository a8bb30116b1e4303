"""The item index (models.bundle.ItemIndex) gives exactly the rows a dict would."""

from __future__ import annotations

import numpy as np
import pytest

import models.bundle as bundle_module
from models.bundle import ItemIndex

IDS = ["1", "12", "123", "a", "ab", "é", "✓✓", "商品-7", "x" * 40, "", " 1", "1 "]
UNKNOWN = ["2", "1234", "12 ", "b", "e", "✓", "x" * 39, "x" * 41, "a\x00", "1" * 100, "A"]


def _expected(items: list[str], asked: list[str]) -> list[int]:
    rows = {item: row for row, item in enumerate(items)}
    return [rows.get(a, -1) for a in asked]


@pytest.mark.parametrize("seed", [0, 1])
def test_rows_are_the_dict_rows_and_minus_one_for_unknown_ids(seed: int) -> None:
    rng = np.random.default_rng(seed)
    items = [IDS[i] for i in rng.permutation(len(IDS))] + [f"item-{i}" for i in range(500)]
    index = ItemIndex(np.array(items))
    asked = [*items, *UNKNOWN, *reversed(items), *UNKNOWN]
    got = index.rows(asked)
    assert got.dtype == np.int64
    assert got.tolist() == _expected(items, asked)
    assert index.rows([]).tolist() == []


def test_a_hash_collision_never_gives_another_items_row(monkeypatch: pytest.MonkeyPatch) -> None:
    # Three hash values for everything: items collide with each other and unknown ids
    # collide with items; only comparing the strings tells them apart.
    monkeypatch.setattr(bundle_module, "hash", lambda s: len(s) % 3, raising=False)
    items = [*IDS, *(f"item-{i}" for i in range(50))]
    index = ItemIndex(np.array(items))
    asked = [*UNKNOWN, *items, *UNKNOWN, *reversed(items)]
    assert index.rows(asked).tolist() == _expected(items, asked)


def test_an_empty_index_knows_nothing() -> None:
    index = ItemIndex(np.array([], dtype="<U1"))
    assert index.rows(["a", ""]).tolist() == [-1, -1]


def test_a_bundle_looks_up_and_names_its_items() -> None:
    from models.datasets import synthetic_sessions
    from models.train import TrainParams, train_model

    bundle = train_model(
        synthetic_sessions(300, 30, seed=3), TrainParams(epochs=1, n_clusters=2, n_neighbours=4)
    )
    names = bundle.item_list
    assert all(isinstance(n, str) for n in names)
    assert bundle.rows([*names, "nope"]).tolist() == [*range(len(names)), -1]
    assert [bundle.index(n) for n in names[:5]] == list(range(5))
    assert bundle.index("nope") is None
    rows = np.array([[3, 1], [0, 2]])
    assert bundle.ids(rows) == [[names[3], names[1]], [names[0], names[2]]]
    # Decoded once and kept: the same objects, plain str (orjson serialises no np.str_).
    again = bundle.ids(np.arange(len(names)))
    assert again == names and all(type(x) is str for x in again)
    assert bundle.ids(np.array([3]))[0] is again[3]

"""The feature table (models.features) drives the kernel, the fit and the bundle: a feature
added to the table alone is computed, ranked with, fitted, saved and loaded."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import numpy as np
import pytest

from models import features
from models.bundle import load_bundle, save_bundle
from models.datasets import synthetic_sessions
from models.features import FEATURE_TABLE, Feature, TrainData, layout
from models.ranking import RankParams, encode_sessions, rank_codes
from models.train import TrainParams, train_model

PARAMS = TrainParams(epochs=2, n_clusters=4, n_neighbours=10, seed=7)


def _share_of_clicks(data: TrainData) -> np.ndarray:
    return (data.counts / max(1, int(data.counts.max()))).astype(np.float32)


DUMMY = Feature("share_of_clicks", "popular", kind="item", values=_share_of_clicks)


def test_a_feature_added_to_the_table_alone_reaches_kernel_fit_and_bundle(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    extended = layout((*FEATURE_TABLE, DUMMY))
    monkeypatch.setattr(features, "LAYOUT", extended)
    column = extended.column("share_of_clicks")
    assert column == len(FEATURE_TABLE)
    bundle = train_model(synthetic_sessions(8000, 200, seed=3), PARAMS)

    # The fit: one raw and one square-root weight, fitted away from the blend's 0.
    ranker = bundle.manifest["ranker"]
    assert ranker["features"] == list(extended.names)
    assert len(ranker["weights"]) == extended.n_weights
    weights = bundle.ranker_weights
    assert weights[column] != 0.0 or weights[extended.n_features + column] != 0.0

    # The kernel: the column of every ranked candidate holds the item's value.
    values = bundle.arrays["feature_share_of_clicks"]
    assert values.max() == pytest.approx(1.0)
    sessions = synthetic_sessions(500, 200, seed=9)
    codes, ptr = encode_sessions(bundle, sessions)
    feats = np.zeros((len(sessions), 20, extended.n_features))
    items, *_ = rank_codes(bundle, codes, ptr, 20, RankParams.of(bundle), out_feats=feats)
    ranked = items >= 0
    assert ranked.sum() > 1000
    assert np.array_equal(feats[ranked][:, column], values[items[ranked]].astype(np.float64))

    # The bundle: the values and the weights are saved and loaded by name.
    save_bundle(bundle, tmp_path / "b")
    assert (tmp_path / "b" / "feature_share_of_clicks.npy").is_file()
    loaded = load_bundle(tmp_path / "b")
    assert np.array_equal(loaded.arrays["feature_share_of_clicks"], values)
    assert np.array_equal(loaded.ranker_weights, weights)
    again = rank_codes(loaded, codes, ptr, 20, RankParams.of(loaded))
    assert np.array_equal(again[0], items)


def test_a_bundle_fitted_without_a_feature_weighs_it_zero(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    bundle = train_model(synthetic_sessions(3000, 100, seed=3), PARAMS)
    save_bundle(bundle, tmp_path / "b")
    extended = layout((*FEATURE_TABLE, DUMMY))
    monkeypatch.setattr(features, "LAYOUT", extended)
    with pytest.raises(Exception, match="feature_share_of_clicks.npy"):
        load_bundle(tmp_path / "b")  # its values are not in the bundle: retrain
    n = len(FEATURE_TABLE)
    weights = extended.weights_by_name(bundle.manifest["ranker"]["features"], bundle.ranker_weights)
    assert weights[[n, 2 * n + 1]].tolist() == [0.0, 0.0]
    assert weights[:n].tolist() == bundle.ranker_weights[:n].tolist()


@pytest.mark.parametrize(
    "table,says",
    [
        ((*FEATURE_TABLE, Feature("vsknn", "session_knn")), "used twice"),
        ((*FEATURE_TABLE, Feature("x", "nowhere")), "unknown source"),
        ((*FEATURE_TABLE, Feature("x", "popular", kind="item")), "has values"),
    ],
)
def test_a_table_that_cannot_work_is_refused(table: tuple[Feature, ...], says: str) -> None:
    with pytest.raises(ValueError, match=says):
        layout(table)


def test_the_readme_shows_the_table_as_it_is() -> None:
    readme = (Path(__file__).resolve().parents[3] / "README.md").read_text(encoding="utf-8")
    assert features.LAYOUT.markdown() in readme, "run `python -m models.features` into README"


def test_a_replaced_bundle_derives_its_own_kernel_view() -> None:
    bundle = train_model(synthetic_sessions(2000, 60, seed=3), PARAMS)
    rank_codes(bundle, *encode_sessions(bundle, [["i1"]]), 5, RankParams.of(bundle))
    assert bundle.derived
    assert dataclasses.replace(bundle, version="v9").derived == {}

"""The served kernel ranks exactly as the pinned rankings of tests/fixtures/served_v4
say, and a bundle of that fixture's format (4) is refused with a clear message.

The fixture (a small trained bundle, bundle format 4, and its rankings of 300 prefixes
under each exclude rule, fitted ranker and fixed blend) is written by a tree whose
bundles are format 4:

    PYTHONPATH=OLD_TREE OLD_TREE/.venv/bin/python tests/fixtures/make_served_rankings.py \\
        tests/fixtures/served_v4
"""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest

from models import features
from models.bundle import BASE_ARRAYS, ModelBundle, load_bundle
from models.errors import InvalidModelError
from models.ranking import STRATEGIES, RankParams, encode_sessions, rank_codes, recommend_batch

FIXTURE = Path(__file__).resolve().parents[2] / "fixtures" / "served_v4"


# Format 4's file names of arrays format 5 names otherwise (what they hold is the same).
RENAMED = {
    "sessions_items": "sessions_idx",
    "category_items": "category_idx",
    "log_popularity": "feature_popularity",
}


def _arrays_of_old_bundle() -> ModelBundle:
    """The fixture's arrays and manifest as this tree's ModelBundle (the files are read
    as they are: only the bundle's format changed, not what the arrays hold)."""
    directory = FIXTURE / "bundle"
    manifest = json.loads((directory / "manifest.json").read_text())
    arrays = {
        RENAMED.get(name, name): np.load(directory / f"{name}.npy")
        for name in manifest.pop("arrays")
    }
    base = {name: arrays.pop(name) for name in BASE_ARRAYS}
    return ModelBundle(version="fixture", manifest=manifest, arrays=arrays, **base)


@pytest.fixture(scope="module")
def expected() -> dict:
    return json.loads((FIXTURE / "rankings.json").read_text())


@pytest.mark.parametrize("ranker", ["linear", "blend"])
@pytest.mark.parametrize("exclude", ["none", "current", "seen"])
def test_rankings_equal_the_previous_kernels(expected: dict, ranker: str, exclude: str) -> None:
    bundle = _arrays_of_old_bundle()
    params = replace(RankParams.of(bundle), ranker=ranker)
    got = recommend_batch(bundle, expected["prefixes"], expected["k"], params, exclude=exclude)
    want = expected["rankings"][f"{ranker}/{exclude}"]
    assert len(got) == len(want)
    for r, (ids, scores, strategy) in zip(got, want, strict=True):
        assert r.ids == ids
        assert r.scores == pytest.approx([float(s) for s in scores], abs=1e-9, rel=0)
        assert r.strategy == strategy


@pytest.mark.parametrize("ranker", ["linear", "blend"])
@pytest.mark.parametrize("exclude", ["none", "current", "seen"])
def test_each_items_source_when_asked_the_lists_unchanged(
    expected: dict, ranker: str, exclude: str
) -> None:
    bundle = _arrays_of_old_bundle()
    params = replace(RankParams.of(bundle), ranker=ranker)
    prefixes, k = expected["prefixes"], expected["k"]
    got = recommend_batch(bundle, prefixes, k, params, exclude=exclude, sources=True)
    want = expected["rankings"][f"{ranker}/{exclude}"]
    mixed = 0
    for r, (ids, scores, strategy) in zip(got, want, strict=True):
        assert r.ids == ids
        assert r.scores == pytest.approx([float(s) for s in scores], abs=1e-9, rel=0)
        assert r.strategy == strategy
        assert r.sources is not None and len(r.sources) == len(r.ids)
        assert set(r.sources) <= set(STRATEGIES), r.sources
        assert r.sources[0] == r.strategy
        mixed += len(set(r.sources)) > 1
    assert mixed > 0, "no list mixes sources: the items' are not their own"
    assert recommend_batch(bundle, prefixes[:5], k, params, exclude=exclude)[0].sources is None


@pytest.mark.parametrize("ranker", ["linear", "blend"])
def test_an_items_source_is_the_top_items_rule_applied_to_it(ranker: str, expected: dict) -> None:
    """Each ranked item's source is the source whose features contribute most to its
    score, recomputed here from the features the kernel hands out."""
    bundle = _arrays_of_old_bundle()
    params = replace(RankParams.of(bundle), ranker=ranker)
    layout = features.LAYOUT
    codes, ptr = encode_sessions(bundle, expected["prefixes"])
    k, rows, nf = expected["k"], len(expected["prefixes"]), layout.n_features
    feats = np.zeros((rows, k, nf))
    plain = rank_codes(bundle, codes, ptr, k, params, exclude="current")
    items, scores, known, strategies, sources = rank_codes(
        bundle, codes, ptr, k, params, exclude="current", out_feats=feats, sources=True
    )
    assert plain[4] is None
    np.testing.assert_array_equal(items, plain[0])
    np.testing.assert_array_equal(scores, plain[1])
    assert strategies == plain[3]
    weights = bundle.ranker_weights if ranker == "linear" else layout.blend_weights()
    part = weights[:nf] * feats + weights[nf:] * np.sqrt(np.maximum(feats, 0.0)) * (feats > 0)
    contribution = np.zeros((rows, k, len(STRATEGIES)))
    for f, s in enumerate(layout.feature_source):
        contribution[:, :, s] += part[:, :, f]
    best = contribution.argmax(axis=2)
    listed = items >= 0
    assert listed.sum() > rows
    for r, c in zip(*np.nonzero(listed), strict=True):
        assert sources[r][c] == STRATEGIES[best[r, c]], (r, c)
    assert [len(row) for row in sources] == listed.sum(axis=1).tolist()


def test_an_old_bundle_is_refused_with_one_clear_line() -> None:
    with pytest.raises(InvalidModelError) as caught:
        load_bundle(FIXTURE / "bundle")
    message = str(caught.value)
    assert "\n" not in message
    assert "model bundle format 4 is older than this streamrec reads" in message
    assert "retrain" in message

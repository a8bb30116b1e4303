from __future__ import annotations

from pathlib import Path

import pytest


@pytest.fixture(scope="session")
def trained_model_dir(tmp_path_factory: pytest.TempPathFactory, eshop_csv: Path) -> Path:
    """A registry with one promoted version for tenant `default`, trained on the shipped data."""
    from models.datasets import read_clicks, sessionize
    from models.registry import Registry
    from models.train import TrainParams, train_model

    root = tmp_path_factory.mktemp("registry")
    bundle = train_model(sessionize(read_clicks(eshop_csv, fmt="eshop")), TrainParams(seed=7))
    registry = Registry(root)
    registry.promote("default", registry.register("default", bundle, {}))
    return root

from __future__ import annotations

from pathlib import Path

import pytest

from stream.config import Settings


def test_env_overrides_defaults_with_types() -> None:
    s = Settings.from_env(
        {
            "STREAMREC_BROKER": "k:1",
            "STREAMREC_PARTITIONS": "8",
            "STREAMREC_BATCH_WITHIN_S": "0.5",
            "STREAMREC_HOME": "/x",
        }
    )
    assert (s.broker, s.partitions, s.batch_within_s) == ("k:1", 8, 0.5)
    assert s.registry_dir == Path("/x/models") and s.run_dir == Path("/x/run")


def test_flags_win_over_env() -> None:
    s = Settings.from_env({"STREAMREC_BROKER": "k:1"}, broker="k:2", redis_url=None)
    assert s.broker == "k:2" and s.redis_url == Settings().redis_url


def test_bad_value_names_the_variable() -> None:
    with pytest.raises(ValueError, match="STREAMREC_PARTITIONS"):
        Settings.from_env({"STREAMREC_PARTITIONS": "many"})

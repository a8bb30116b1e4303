"""A worker's start: the log filters that keep it quiet, and a model warm before it serves."""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import pytest
from aiokafka.errors import GroupCoordinatorNotAvailableError, NodeNotReadyError

from models.kernels import kernel_count
from models.ranking import MIN_ROWS_PER_THREAD, recommend_flat
from models.registry import Registry
from models.train import TrainParams, train_model
from stream.pipeline.model_cache import warm
from stream.shutdown import StartingCoordinator, framework_chatter


class Kept(logging.Handler):
    def __init__(self) -> None:
        super().__init__(logging.INFO)
        self.records: list[logging.LogRecord] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.records.append(record)


@pytest.fixture
def coordinator_log() -> tuple[logging.Logger, StartingCoordinator, Kept]:
    logger = logging.getLogger("test.aiokafka.group_coordinator")
    logger.propagate = False
    kept, starting = Kept(), StartingCoordinator()
    logger.handlers[:] = [kept]
    logger.filters[:] = [starting]
    return logger, starting, kept


def test_the_coordinator_a_new_group_waits_for_is_a_debug_line_only_while_starting(
    coordinator_log: tuple[logging.Logger, StartingCoordinator, Kept],
) -> None:
    logger, starting, kept = coordinator_log
    logger.error("Group Coordinator Request failed: %s", GroupCoordinatorNotAvailableError())
    assert kept.records == []  # DEBUG now, below the handler's INFO
    # Any other failure is an error even while starting.
    logger.error("Group Coordinator Request failed: %s", NodeNotReadyError())
    assert [r.levelname for r in kept.records] == ["ERROR"]
    starting.starting = False
    logger.error("Group Coordinator Request failed: %s", GroupCoordinatorNotAvailableError())
    assert [r.levelname for r in kept.records] == ["ERROR", "ERROR"]


def record(name: str, level: int) -> logging.LogRecord:
    return logging.LogRecord(name, level, __file__, 1, "a line", None, None)


def test_framework_lines_below_warning_are_left_out() -> None:
    assert not framework_chatter(record("faust.worker", logging.INFO))
    assert not framework_chatter(record("aiokafka.consumer.subscription_state", logging.INFO))
    assert framework_chatter(record("aiokafka.conn", logging.WARNING))
    assert framework_chatter(record("streamrec.stream.worker", logging.INFO))


def test_after_warm_a_ranking_as_the_stream_makes_it_compiles_nothing(tmp_path: Path) -> None:
    sessions = [["a", "b", "c"], ["b", "c", "d"], ["c", "d", "a"], ["a", "c"]] * 5
    registry = Registry(tmp_path)
    registry.promote("t", registry.register("t", train_model(sessions, TrainParams(seed=1)), {}))
    # As the worker loads it: a private memory-mapped copy (read-only arrays).
    bundle = registry.load("t", private=True)
    warm(bundle, threads=2)
    warmed = kernel_count()
    assert warmed.signatures > 0
    rows = 2 * MIN_ROWS_PER_THREAD
    banned = np.zeros(bundle.n_items, dtype=np.bool_)
    recommend_flat(bundle, ["a", "b"] * rows, [2] * rows, 20, banned=banned, exclude="current",
                   threads=2)  # fmt: skip
    assert kernel_count() == warmed

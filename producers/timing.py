"""Time in replays: pacing the sends, and plausible gaps between a session's clicks."""

from __future__ import annotations

import math
import time
from collections.abc import Callable

import numpy as np

from models.errors import InvalidSettingError

# Seconds between two clicks of a session, fitted on the YOOCHOOSE slice in
# ../shared/data (median 56 s, 90th percentile 300 s): log-normal, capped at 30 min
# because a longer pause would end the session.
DWELL_MEDIAN_S = 55.0
DWELL_SIGMA = 1.3
DWELL_MAX_S = 1800.0

# Sleeping for less than this costs more than it saves (timer slack, syscalls).
_MIN_SLEEP_S = 0.0005


def dwell_gaps(rng: np.random.Generator, n: int) -> np.ndarray:
    """``n`` seconds-between-clicks drawn from the dwell-time distribution."""
    gaps = rng.lognormal(math.log(DWELL_MEDIAN_S), DWELL_SIGMA, size=n)
    return np.minimum(gaps, DWELL_MAX_S)


def segment_cumsum(values: np.ndarray, starts: np.ndarray) -> np.ndarray:
    """Cumulative sum restarting at every index in ``starts`` (sorted; starts[0] == 0)."""
    total = np.cumsum(values)
    lengths = np.diff(np.append(starts, len(values)))
    before = np.repeat(total[starts] - values[starts], lengths)
    return total - before


class Pacer:
    """Holds each send until it is due: open-loop, so a slow consumer never slows it.

    ``rate`` (events/s) spaces events evenly; ``speedup`` replays the original timing
    (``offset`` seconds from the first click) ``speedup`` times faster; neither means as
    fast as possible. When the sender falls behind it sends at once to catch up.
    """

    def __init__(
        self,
        rate: float | None = None,
        speedup: float | None = None,
        *,
        clock: Callable[[], float] = time.perf_counter,
        sleep: Callable[[float], None] = time.sleep,
    ) -> None:
        if rate is not None and speedup is not None:
            raise InvalidSettingError("choose either a rate or a speedup, not both")
        if (rate is not None and rate <= 0) or (speedup is not None and speedup <= 0):
            raise InvalidSettingError("rate and speedup must be positive")
        self.rate = rate
        self.speedup = speedup
        self._clock = clock
        self._sleep = sleep
        self._start: float | None = None
        self._start_wall = 0.0  # time.time() when the first event was due

    @property
    def unpaced(self) -> bool:
        return self.rate is None and self.speedup is None

    def due(self, seq: int, offset: float) -> float:
        """Seconds after the start at which event number ``seq`` should go out."""
        if self.rate is not None:
            return seq / self.rate
        if self.speedup is not None:
            return offset / self.speedup
        return 0.0

    def intended(self, seq: int, offset: float) -> float:
        """Wall-clock time (``time.time()``) at which event ``seq`` was due. A sender that
        falls behind sends late; latency measured from this time keeps that backlog in
        the figures (no coordinated omission)."""
        return self._start_wall + self.due(seq, offset)

    def wait(self, seq: int, offset: float) -> None:
        now = self._clock()
        if self._start is None:
            self._start = now
            self._start_wall = time.time()
        ahead = self._start + self.due(seq, offset) - now
        if ahead > _MIN_SLEEP_S:
            self._sleep(ahead)

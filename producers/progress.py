"""Progress of a long send: a tqdm bar with its ETA on a terminal; elsewhere (a log, a
pipe, CI) one line per tenth, since a bar redrawn with carriage returns is one long line
there."""

from __future__ import annotations

import sys
import time
from typing import Any, TextIO

from tqdm import tqdm


def progress_bar(total: int | None, *, enabled: bool = True, unit: str = "events") -> Any:
    """A tqdm bar on a terminal, else :class:`Tenths` (nothing when ``total`` is
    unknown); both take ``update(n)``, ``set_postfix(...)`` and ``close()``."""
    if enabled and not sys.stderr.isatty():
        return Tenths(total, unit) if total else tqdm(disable=True)
    return tqdm(
        total=total,
        unit=unit[:2],
        unit_scale=True,
        disable=not enabled,
        smoothing=0.1,
        mininterval=0.5,
        dynamic_ncols=True,
    )


class Tenths:
    """``progress: 30% (49,642 of 165,474 events) in 49.6 s, about 1 min 56 s left``
    each time another tenth of ``total`` is done."""

    def __init__(self, total: int, unit: str = "events", out: TextIO | None = None) -> None:
        self.total, self.unit = total, unit
        self.n = 0
        self._out = out or sys.stderr
        self._said = 0  # tenths reported
        self._started = time.perf_counter()

    def update(self, n: int) -> None:
        self.n += n
        tenths = min(10, self.n * 10 // self.total)
        if tenths > self._said:
            self._said = tenths
            elapsed = time.perf_counter() - self._started
            left = elapsed * (self.total - self.n) / self.n if self.n < self.total else 0.0
            print(
                f"progress: {tenths * 10}% ({self.n:,} of {self.total:,} {self.unit}) in "
                f"{duration(elapsed)}" + (f", about {duration(left)} left" if left else ""),
                file=self._out,
                flush=True,
            )

    def set_postfix(self, *args: Any, **kwargs: Any) -> None:
        pass  # failures are counted in the final summary

    def close(self) -> None:
        pass


def duration(seconds: float) -> str:
    """``12.5 s``, ``2 min 45 s``, ``1 h 05 min``."""
    if seconds < 60:
        return f"{seconds:.1f} s"
    minutes, secs = divmod(round(seconds), 60)
    if minutes < 60:
        return f"{minutes} min {secs:02d} s"
    hours, minutes = divmod(minutes, 60)
    return f"{hours} h {minutes:02d} min"

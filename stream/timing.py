"""Spans of time: a duration as people write it, and the pause before a retry."""

from __future__ import annotations

import random
import re

_DURATION = re.compile(r"\s*(\d+(?:\.\d+)?)\s*([smhd]?)\s*")
_UNITS = {"": 1, "s": 1, "m": 60, "h": 3600, "d": 86400}


def parse_duration(text: str) -> float:
    """``90s``, ``30m``, ``1h``, ``7d`` or plain seconds, as seconds (more than zero).
    A ``ValueError`` saying what a duration looks like otherwise."""
    match = _DURATION.fullmatch(text)
    if match is None or float(match.group(1)) <= 0:
        raise ValueError(f"{text!r} is not a duration: give a duration like 30m, 1h or 7d")
    return float(match.group(1)) * _UNITS[match.group(2)]


def backoff(attempt: int, base_s: float, cap_s: float, *, jitter: bool = False) -> float:
    """The pause before retry number ``attempt`` (1, 2, ...): ``base_s``, doubling at each
    attempt up to ``cap_s``. With ``jitter``, a random point in the upper half of that
    pause, so that many processes waiting on one failure do not return in lockstep."""
    pause = min(cap_s, base_s * 2.0 ** max(0, attempt - 1))
    return pause / 2 + random.uniform(0, pause / 2) if jitter else pause

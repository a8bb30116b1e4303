"""Columnar clicks -> ordered sessions, and time splits of them."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from models.errors import DataFormatError

DAY_S = 86400.0


@dataclass(frozen=True)
class Clicks:
    """Columnar clicks in file order; one entry per click."""

    session_ids: np.ndarray  # unicode str [n]
    item_ids: np.ndarray  # unicode str [n]
    ts: np.ndarray  # float64 unix seconds [n]; all zero when the file has no time column
    order: np.ndarray  # int64 [n]: position inside the session, or the row number
    categories: np.ndarray | None = None  # unicode str [n] when the file names a category

    def __len__(self) -> int:
        return len(self.item_ids)

    @property
    def has_time(self) -> bool:
        return bool(len(self.ts)) and bool(np.any(self.ts != self.ts[0]))


@dataclass(frozen=True)
class Session:
    """One session's items, oldest first, with its time span (for time-based splits)."""

    session_id: str
    items: list[str]
    start: float
    end: float


def build_sessions(
    clicks: Clicks, min_length: int = 2, *, collapse_repeats: bool = True
) -> list[Session]:
    """Group clicks into sessions ordered by (time, order).

    With ``collapse_repeats`` consecutive repeats of the same item are collapsed (a page
    reload is not a new signal, the worker's view); the literature protocol keeps them
    (``collapse_repeats=False``). Sessions shorter than ``min_length`` afterwards are
    dropped. Sessions come out sorted by start time, ties in order of first appearance
    in the file (files without time list sessions oldest first), so "most recent" and
    time splits are slices.
    """
    n = len(clicks)
    if n == 0:
        return []
    sess_codes = np.unique(clicks.session_ids, return_inverse=True)[1].ravel()
    # Sort by session, then time, then order; the row number keeps ties stable.
    perm = np.lexsort((np.arange(n), clicks.order, clicks.ts, sess_codes))
    codes = sess_codes[perm]
    bounds = np.flatnonzero(np.diff(codes)) + 1
    starts = np.concatenate(([0], bounds))
    ends = np.concatenate((bounds, [n]))
    item_ids = clicks.item_ids[perm]
    ts_sorted = clicks.ts[perm]
    sids = clicks.session_ids[perm]
    # The first row of each session in the file, to order sessions that start together.
    first_row = np.minimum.reduceat(perm, starts) if len(starts) else starts
    # Kept clicks: with ``collapse_repeats`` not those that repeat the session's previous
    # click (``drop_repeats``, for all sessions at once).
    keep = np.ones(n, dtype=bool)
    if collapse_repeats:
        keep[1:] = (item_ids[1:] != item_ids[:-1]) | (codes[1:] != codes[:-1])
    kept_before = np.concatenate(([0], np.cumsum(keep)))
    lo, hi = kept_before[starts].tolist(), kept_before[ends].tolist()
    items_kept = item_ids[keep].tolist()
    found: list[tuple[float, int, Session]] = []
    rows = zip(starts.tolist(), ends.tolist(), first_row.tolist(), lo, hi, strict=True)
    for s, e, row, a, b in rows:
        items = items_kept[a:b]
        if len(items) >= min_length:
            found.append(
                (
                    float(ts_sorted[s]),
                    row,
                    Session(str(sids[s]), items, float(ts_sorted[s]), float(ts_sorted[e - 1])),
                )
            )
    found.sort(key=lambda x: (x[0], x[1]))
    return [x[2] for x in found]


def item_categories(clicks: Clicks) -> dict[str, str]:
    """Item -> category (the last one the file gives), empty when the file has none."""
    if clicks.categories is None:
        return {}
    return dict(zip(clicks.item_ids.tolist(), clicks.categories.tolist(), strict=True))


def sessionize(clicks: Clicks, min_length: int = 2) -> list[list[str]]:
    """Item sequences only (see ``build_sessions``)."""
    return [s.items for s in build_sessions(clicks, min_length)]


def split_last_days(
    sessions: Sequence[Session], days: float
) -> tuple[list[Session], list[Session]]:
    """Train/test split in time: sessions starting in the last ``days`` days are the test set."""
    if not sessions:
        return [], []
    if days <= 0:
        raise DataFormatError("--split-days must be positive")
    last = max(s.end for s in sessions)
    if last == min(s.start for s in sessions):
        raise DataFormatError("the data has no timestamps; a day split needs a time column")
    cutoff = last - days * DAY_S
    train = [s for s in sessions if s.start <= cutoff]
    test = [s for s in sessions if s.start > cutoff]
    if not train or not test:
        raise DataFormatError(f"a {days:g}-day split leaves an empty train or test set")
    return train, test


def drop_repeats(items: list[str]) -> list[str]:
    """Consecutive repeats of an item as one (a page reload is not a new click)."""
    out = items[:1]
    for item in items[1:]:
        if item != out[-1]:
            out.append(item)
    return out

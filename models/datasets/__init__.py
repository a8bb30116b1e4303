"""Click logs on disk -> columnar clicks -> ordered sessions.

This is the one place in ``models`` that reads input files. Three formats:

- ``eshop``: the Kaggle / UCI #553 "clickstream data for online shopping" CSV
  (``;``-separated, CRLF, day-resolution dates plus an ``order`` column);
- ``yoochoose``: RecSys Challenge 2015 slices, tab-separated ``SessionId ItemId Time``;
- ``csv``: any delimited file with a header, columns named by the caller.

``.gz`` files are decompressed transparently.
"""

from __future__ import annotations

import calendar
import csv
import functools
import gzip
import io
import zlib
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, Literal

import numpy as np

from models.errors import DataFormatError

Format = Literal["auto", "eshop", "yoochoose", "csv"]
FORMATS: tuple[str, ...] = ("auto", "eshop", "yoochoose", "csv")

_ESHOP_COLUMNS = ("year", "month", "day", "order", "session ID", "page 2 (clothing model)")
_YOOCHOOSE_COLUMNS = ("SessionId", "ItemId", "Time")
DAY_S = 86400.0


def eshop_path() -> Path:
    """The shipped copy of the e-shop clothing 2008 clickstream (see ATTRIBUTION.md)."""
    return Path(__file__).resolve().parent / "eshop-clothing-2008.csv.gz"


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


def _naming_the_file(read: Callable[..., Clicks]) -> Callable[..., Clicks]:
    """A file that cannot be decoded (a truncated gzip, bytes that are not UTF-8) is a
    DataFormatError naming it, not an EOFError (which a CLI takes for Ctrl-D)."""

    @functools.wraps(read)
    def wrapper(path: str | Path, *args: Any, **kwargs: Any) -> Clicks:
        try:
            return read(path, *args, **kwargs)
        except (EOFError, zlib.error, gzip.BadGzipFile, UnicodeDecodeError) as exc:
            what = "is truncated" if isinstance(exc, EOFError) else "cannot be decoded"
            raise DataFormatError(f"{path}: {what} ({exc})") from None

    return wrapper


@_naming_the_file
def read_clicks(
    path: str | Path,
    fmt: Format | str = "auto",
    *,
    session_col: str | None = None,
    item_col: str | None = None,
    time_col: str | None = None,
    order_col: str | None = None,
    category_col: str | None = None,
    delimiter: str | None = None,
) -> Clicks:
    """Read a click log; raise DataFormatError with a fix-it hint when it does not fit."""
    path = Path(path)
    if not path.is_file():
        raise DataFormatError(f"{path}: no such file")
    if fmt not in FORMATS:
        raise DataFormatError(f"unknown format {fmt!r}; choose one of {', '.join(FORMATS)}")
    if fmt == "auto" and session_col:
        fmt = "csv"
    with _open_text(path) as fh:
        first = fh.readline()
        if fmt == "auto":
            fmt = _detect(first, path)
        if fmt == "eshop":
            delimiter = delimiter or ";"
            return _read_eshop(fh, _header(first, delimiter, _ESHOP_COLUMNS, path), delimiter, path)
        if fmt == "yoochoose":
            delimiter = delimiter or "\t"
            header = _header(first, delimiter, _YOOCHOOSE_COLUMNS, path)
            return _read_generic(fh, header, delimiter, path, *_YOOCHOOSE_COLUMNS, None, None)
        if not session_col or not item_col:
            raise DataFormatError("--format csv needs --session-col and --item-col")
        delimiter = delimiter or _sniff_delimiter(first)
        wanted = tuple(c for c in (session_col, item_col, time_col, order_col, category_col) if c)
        header = _header(first, delimiter, wanted, path)
        return _read_generic(
            fh, header, delimiter, path, session_col, item_col, time_col, order_col, category_col
        )


def read_yoochoose(path: str | Path) -> Clicks:
    """Read a YOOCHOOSE slice (tab-separated ``SessionId ItemId Time`` with a header)."""
    return read_clicks(path, "yoochoose")


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
    items_sorted = clicks.item_ids[perm].tolist()
    ts_sorted = clicks.ts[perm]
    sids = clicks.session_ids[perm]
    # The first row of each session in the file, to order sessions that start together.
    first_row = np.minimum.reduceat(perm, starts) if len(starts) else starts
    found: list[tuple[float, int, Session]] = []
    for s, e, row in zip(starts.tolist(), ends.tolist(), first_row.tolist(), strict=True):
        items = items_sorted[s:e]
        if collapse_repeats:
            items = _collapse_repeats(items)
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


def _collapse_repeats(items: list[str]) -> list[str]:
    out = items[:1]
    for item in items[1:]:
        if item != out[-1]:
            out.append(item)
    return out


def _open_text(path: Path) -> io.TextIOBase:
    # newline="" lets csv handle CRLF; utf-8-sig drops a BOM some exporters add.
    if path.suffix == ".gz":
        return gzip.open(path, "rt", encoding="utf-8-sig", newline="")  # type: ignore[return-value]
    return open(path, encoding="utf-8-sig", newline="")  # noqa: SIM115


def _detect(first_line: str, path: Path) -> str:
    if "page 2 (clothing model)" in first_line:
        return "eshop"
    if first_line.rstrip("\r\n").split("\t") == list(_YOOCHOOSE_COLUMNS):
        return "yoochoose"
    raise DataFormatError(
        f"{path}: cannot tell the format from its header; use --format eshop|yoochoose, or "
        "--format csv --session-col NAME --item-col NAME [--time-col NAME | --order-col NAME]"
    )


def _sniff_delimiter(first_line: str) -> str:
    counts = {d: first_line.count(d) for d in (",", ";", "\t", "|")}
    return max(counts, key=lambda d: counts[d])


def _header(first_line: str, delimiter: str, required: Sequence[str], path: Path) -> list[str]:
    header = [h.strip() for h in next(csv.reader([first_line], delimiter=delimiter), [])]
    missing = [c for c in required if c not in header]
    if missing:
        raise DataFormatError(
            f"{path}: missing column(s) {', '.join(map(repr, missing))}; the header has "
            f"{', '.join(map(repr, header[:12]))}"
        )
    return header


def _rows(fh: Iterator[str], delimiter: str, width: int, path: Path) -> Iterator[list[str]]:
    for lineno, row in enumerate(csv.reader(fh, delimiter=delimiter), start=2):
        if not row:
            continue
        if len(row) < width:
            raise DataFormatError(f"{path}:{lineno}: expected {width} fields, found {len(row)}")
        yield row


def _read_eshop(fh: Iterator[str], header: list[str], delimiter: str, path: Path) -> Clicks:
    y, m, d, o, s, i = (header.index(c) for c in _ESHOP_COLUMNS)
    day_ts: dict[tuple[str, str, str], float] = {}  # ~140 distinct days: parse each once
    sessions, items, ts, order = [], [], [], []
    try:
        for row in _rows(fh, delimiter, len(header), path):
            key = (row[y], row[m], row[d])
            t = day_ts.get(key)
            if t is None:
                t = day_ts[key] = float(
                    calendar.timegm((int(key[0]), int(key[1]), int(key[2]), 0, 0, 0))
                )
            sessions.append(row[s])
            items.append(row[i])
            ts.append(t)
            order.append(int(row[o]))
    except ValueError as exc:
        raise DataFormatError(f"{path}: bad date or order value ({exc})") from exc
    return _columns(sessions, items, ts, order)


def _read_generic(
    fh: Iterator[str],
    header: list[str],
    delimiter: str,
    path: Path,
    session_col: str,
    item_col: str,
    time_col: str | None,
    order_col: str | None,
    category_col: str | None,
) -> Clicks:
    s, i = header.index(session_col), header.index(item_col)
    t = header.index(time_col) if time_col else None
    o = header.index(order_col) if order_col else None
    c = header.index(category_col) if category_col else None
    sessions, items, ts, order, categories = [], [], [], [], []
    try:
        for n, row in enumerate(_rows(fh, delimiter, len(header), path)):
            sessions.append(row[s].strip())
            items.append(row[i].strip())
            ts.append(_parse_time(row[t]) if t is not None else 0.0)
            order.append(int(row[o]) if o is not None else n)
            if c is not None:
                categories.append(row[c].strip())
    except ValueError as exc:
        raise DataFormatError(f"{path}: bad time or order value ({exc})") from exc
    clicks = _columns(sessions, items, ts, order)
    if c is None:
        return clicks
    return replace(clicks, categories=np.asarray(categories, dtype=str))


def _parse_time(raw: str) -> float:
    try:
        return float(raw)
    except ValueError:
        # ISO 8601 (YOOCHOOSE originals use "2014-04-07T10:51:09.277Z").
        from datetime import UTC, datetime

        parsed = datetime.fromisoformat(raw.strip().replace("Z", "+00:00"))
        if parsed.tzinfo is None:
            parsed = parsed.replace(tzinfo=UTC)
        return parsed.timestamp()


def _columns(sessions: list[str], items: list[str], ts: list[float], order: list[int]) -> Clicks:
    if not items:
        raise DataFormatError("the file has a header but no clicks")
    if any(not x for x in items):
        raise DataFormatError("some rows have an empty item id")
    return Clicks(
        session_ids=np.asarray(sessions, dtype=str),
        item_ids=np.asarray(items, dtype=str),
        ts=np.asarray(ts, dtype=np.float64),
        order=np.asarray(order, dtype=np.int64),
    )


def synthetic_sessions(
    n_clicks: int,
    n_items: int,
    *,
    mean_length: float = 5.0,
    zipf: float = 1.1,
    p_follow: float = 0.7,
    n_successors: int = 8,
    locality: int = 50,
    seed: int = 0,
) -> list[list[str]]:
    """Seeded Zipf + Markov click sessions, for tests and scale benchmarks.

    Item popularity follows Zipf(``zipf``). Each item has ``n_successors`` fixed
    successors drawn from the ``locality`` items after it, so there are "topics" for
    embeddings to find; a click follows one of them with probability ``p_follow``,
    otherwise it jumps to a popular item. Lengths are 2 + geometric (mean ``mean_length``).
    """
    rng = np.random.default_rng(seed)
    popularity = 1.0 / np.arange(1, n_items + 1) ** zipf
    popularity /= popularity.sum()
    hops = rng.integers(1, max(2, locality), size=(n_items, n_successors))
    successors = (np.arange(n_items)[:, None] + hops) % n_items
    lengths = 2 + rng.geometric(1.0 / max(mean_length - 1.0, 1.0), size=int(n_clicks / 2) + 1)
    lengths = lengths[: int(np.searchsorted(np.cumsum(lengths), n_clicks)) + 1]
    clicks = np.empty((len(lengths), int(lengths.max())), dtype=np.int64)
    clicks[:, 0] = rng.choice(n_items, size=len(lengths), p=popularity)
    for step in range(1, clicks.shape[1]):
        follow = successors[clicks[:, step - 1], rng.integers(0, n_successors, size=len(lengths))]
        jump = rng.choice(n_items, size=len(lengths), p=popularity)
        clicks[:, step] = np.where(rng.random(len(lengths)) < p_follow, follow, jump)
    names = [f"i{i}" for i in range(n_items)]
    return [
        _collapse_repeats([names[i] for i in row[:n]])
        for row, n in zip(clicks.tolist(), lengths.tolist(), strict=True)
    ]

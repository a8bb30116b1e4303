"""Click logs on disk -> columnar clicks.

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
from dataclasses import replace
from pathlib import Path
from typing import Any, Literal

import numpy as np

from models.datasets.sessions import Clicks
from models.errors import DataFormatError

Format = Literal["auto", "eshop", "yoochoose", "csv"]
FORMATS: tuple[str, ...] = ("auto", "eshop", "yoochoose", "csv")

_ESHOP_COLUMNS = ("year", "month", "day", "order", "session ID", "page 2 (clothing model)")
_YOOCHOOSE_COLUMNS = ("SessionId", "ItemId", "Time")


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

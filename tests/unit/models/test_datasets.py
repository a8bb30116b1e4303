"""Reading click logs and turning them into ordered sessions."""

from __future__ import annotations

import gzip
from pathlib import Path

import numpy as np
import pytest

from models.datasets import (
    build_sessions,
    eshop_path,
    read_clicks,
    read_yoochoose,
    sessionize,
    split_last_days,
    synthetic_sessions,
)
from models.errors import DataFormatError

ESHOP_HEADER = (
    "year;month;day;order;country;session ID;page 1 (main category);"
    "page 2 (clothing model);colour;location;model photography;price;price 2;page"
)


def _eshop_row(day: int, order: int, session: str, item: str) -> str:
    return f"2008;4;{day};{order};29;{session};1;{item};1;5;1;28;2;1"


def _write(path: Path, lines: list[str], newline: str = "\n") -> Path:
    path.write_text(newline.join(lines) + newline, encoding="utf-8", newline="")
    return path


def test_shipped_eshop_file_reads_with_known_counts() -> None:
    clicks = read_clicks(eshop_path())
    assert len(clicks) == 165_474
    assert len(np.unique(clicks.session_ids)) == 24_026
    assert len(np.unique(clicks.item_ids)) == 217
    assert clicks.has_time
    first = build_sessions(clicks)[0]
    assert first.items[:4] == ["A13", "A16", "B4", "B17"]


def test_eshop_orders_by_day_then_order_with_crlf_and_shuffled_rows(tmp_path: Path) -> None:
    rows = [
        _eshop_row(2, 1, "7", "C3"),  # next day: after every click of day 1
        _eshop_row(1, 3, "7", "B2"),
        _eshop_row(1, 1, "7", "A1"),
        _eshop_row(1, 2, "7", "A1"),  # a consecutive repeat once ordered: collapsed
        _eshop_row(1, 1, "8", "A9"),  # a one-click session: dropped
    ]
    path = _write(tmp_path / "shop.csv", [ESHOP_HEADER, *rows], newline="\r\n")
    sessions = build_sessions(read_clicks(path))
    assert [s.items for s in sessions] == [["A1", "B2", "C3"]]
    assert sessions[0].session_id == "7"
    assert sessions[0].end - sessions[0].start == 86400.0


def test_sessionize_keeps_non_consecutive_repeats_and_honours_min_length(tmp_path: Path) -> None:
    lines = ["SessionId\tItemId\tTime", "1\ta\t10", "1\tb\t11", "1\ta\t12", "2\tx\t5", "2\ty\t6"]
    clicks = read_yoochoose(_write(tmp_path / "y.txt", lines))
    assert sessionize(clicks) == [["x", "y"], ["a", "b", "a"]]  # sorted by start time
    assert sessionize(clicks, min_length=3) == [["a", "b", "a"]]


def test_yoochoose_orders_by_time_not_file_order_and_reads_gzip(tmp_path: Path) -> None:
    text = "SessionId\tItemId\tTime\n1\tb\t200.5\n1\ta\t100.0\n1\tc\t300\n"
    path = tmp_path / "y.txt.gz"
    with gzip.open(path, "wt", encoding="utf-8") as fh:
        fh.write(text)
    assert sessionize(read_clicks(path)) == [["a", "b", "c"]]


def test_generic_csv_with_order_column(tmp_path: Path) -> None:
    lines = ["sid,pos,product", "s1,2,q", "s1,1,p", "s1,3,r", "s2,1,p", "s2,2,q"]
    path = _write(tmp_path / "c.csv", lines)
    clicks = read_clicks(path, "csv", session_col="sid", item_col="product", order_col="pos")
    assert sorted(sessionize(clicks)) == [["p", "q"], ["p", "q", "r"]]


def test_generic_csv_with_iso_timestamps(tmp_path: Path) -> None:
    lines = ["s;i;t", "1;b;2014-04-07T10:00:05Z", "1;a;2014-04-07T10:00:01Z"]
    path = _write(tmp_path / "c.csv", lines)
    clicks = read_clicks(path, "csv", session_col="s", item_col="i", time_col="t")
    assert sessionize(clicks) == [["a", "b"]]


@pytest.mark.parametrize(
    ("lines", "kwargs", "message"),
    [
        (["a,b,c", "1,2,3"], {}, "cannot tell the format"),
        (["SessionId\tItemId", "1\t2"], {"fmt": "yoochoose"}, "missing column"),
        (["s,i", "1,2"], {"fmt": "csv", "session_col": "s"}, "needs --session-col and --item-col"),
        (["s,i", "1,2"], {"fmt": "csv", "session_col": "s", "item_col": "item"}, "'item'"),
        (
            ["s,i,t", "1,2,notatime"],
            {"fmt": "csv", "session_col": "s", "item_col": "i", "time_col": "t"},
            "bad time",
        ),
        (["SessionId\tItemId\tTime"], {"fmt": "yoochoose"}, "no clicks"),
        (["s,i", "1"], {"fmt": "csv", "session_col": "s", "item_col": "i"}, "expected 2 fields"),
    ],
)
def test_wrong_input_raises_a_clear_data_format_error(
    tmp_path: Path, lines: list[str], kwargs: dict[str, str], message: str
) -> None:
    path = _write(tmp_path / "bad.txt", lines)
    with pytest.raises(DataFormatError, match=message):
        read_clicks(path, **kwargs)


def test_missing_file_and_unknown_format(tmp_path: Path) -> None:
    with pytest.raises(DataFormatError, match="no such file"):
        read_clicks(tmp_path / "nope.csv")
    with pytest.raises(DataFormatError, match="unknown format"):
        read_clicks(eshop_path(), "parquet")


def test_split_last_days_puts_late_sessions_in_test(tmp_path: Path) -> None:
    day = 86400
    lines = ["SessionId\tItemId\tTime"] + [
        f"{s}\t{item}\t{s * day + offset}"
        for s in range(10)
        for offset, item in ((0, "a"), (60, "b"))
    ]
    sessions = build_sessions(read_yoochoose(_write(tmp_path / "y.txt", lines)))
    train, test = split_last_days(sessions, 3)
    assert [s.session_id for s in test] == ["7", "8", "9"]
    assert len(train) == 7
    with pytest.raises(DataFormatError):
        split_last_days(sessions, 100)


def test_synthetic_sessions_are_seeded_and_sized() -> None:
    a = synthetic_sessions(5000, 300, seed=3)
    assert a == synthetic_sessions(5000, 300, seed=3)
    assert a != synthetic_sessions(5000, 300, seed=4)
    assert 4500 <= sum(map(len, a)) <= 5100
    assert all(len(s) >= 1 and all(x != y for x, y in zip(s, s[1:], strict=False)) for s in a)

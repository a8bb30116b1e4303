from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest

from models.click_archive import (
    OFFSET_BITS,
    archived_to,
    covers,
    prune,
    read_archive,
    segments,
    write_segment,
)
from models.errors import StreamrecError


def _write(root: Path, partition: int, first: int, end: int, rows: list[tuple]) -> Path:
    """rows: (offset, tenant, session, item, ts)."""
    return write_segment(
        root, partition, first, end,
        [r[1] for r in rows], [r[2] for r in rows], [r[3] for r in rows],
        [r[4] for r in rows], [r[0] for r in rows],
    )  # fmt: skip


def _rows(first: int, end: int, ts0: float = 1000.0) -> list[tuple]:
    return [(o, f"t{o % 3}", f"s-{o % 5}é", f"item {o}", ts0 + o) for o in range(first, end)]


def test_round_trip_groups_by_tenant_and_keeps_log_order(tmp_path: Path) -> None:
    rows = _rows(0, 30)
    _write(tmp_path, 2, 0, 30, rows)
    got = read_archive(tmp_path, since_ts=0)
    assert sorted(got) == ["t0", "t1", "t2"]
    for tenant, clicks in got.items():
        mine = [r for r in rows if r[1] == tenant]
        assert clicks.session_ids.tolist() == [r[2] for r in mine]
        assert clicks.item_ids.tolist() == [r[3] for r in mine]
        assert clicks.ts.tolist() == [r[4] for r in mine]
        assert clicks.order.tolist() == [2 << OFFSET_BITS | r[0] for r in mine]
    assert archived_to(tmp_path) == {2: 30}


def test_only_the_tenants_asked_for(tmp_path: Path) -> None:
    _write(tmp_path, 0, 0, 30, _rows(0, 30))
    assert sorted(read_archive(tmp_path, 0, ["t1", "nobody"])) == ["t1"]


def test_window_filter_and_end_offsets(tmp_path: Path) -> None:
    _write(tmp_path, 0, 0, 30, _rows(0, 30))
    _write(tmp_path, 1, 0, 30, _rows(0, 30))
    got = read_archive(tmp_path, since_ts=1010, ends={0: 20, 1: 30})
    offsets = np.concatenate([c.order for c in got.values()])
    p0 = sorted(int(o & ((1 << OFFSET_BITS) - 1)) for o in offsets if o >> OFFSET_BITS == 0)
    p1 = sorted(int(o & ((1 << OFFSET_BITS) - 1)) for o in offsets if o >> OFFSET_BITS == 1)
    assert p0 == list(range(10, 20)) and p1 == list(range(10, 30))


def test_overlapping_segments_do_not_duplicate_clicks(tmp_path: Path) -> None:
    # Two archivers of one partition during a rebalance: [0,20) then [10,40) and [10,25).
    _write(tmp_path, 0, 0, 20, _rows(0, 20))
    _write(tmp_path, 0, 10, 25, _rows(10, 25))
    _write(tmp_path, 0, 10, 40, _rows(10, 40))
    got = read_archive(tmp_path, 0)
    offsets = sorted(int(o) for c in got.values() for o in c.order)
    assert offsets == list(range(40))
    assert archived_to(tmp_path) == {0: 40}
    assert covers(tmp_path, {0: 40}) and not covers(tmp_path, {0: 41, 1: 0})


def test_a_write_in_progress_is_never_read(tmp_path: Path, monkeypatch) -> None:
    seen_while_writing = []

    def boom(f, **columns):
        f.write(b"PK\x03\x04 half a segment")
        f.flush()
        seen_while_writing.append(read_archive(tmp_path, 0) == {} and segments(tmp_path, 0))
        raise OSError("disk full")

    monkeypatch.setattr(np, "savez", boom)
    with pytest.raises(OSError):
        _write(tmp_path, 0, 0, 10, _rows(0, 10))
    assert seen_while_writing == [[]]
    assert os.listdir(tmp_path / "p0") == []  # the temporary file went too
    (tmp_path / "p0" / ".half.tmp").write_bytes(b"PK\x03\x04 half")
    assert segments(tmp_path, 0) == [] and read_archive(tmp_path, 0) == {}


@pytest.mark.parametrize("damage", ["truncate", "flip"])
def test_a_damaged_segment_is_an_error_naming_it(tmp_path: Path, damage: str) -> None:
    path = _write(tmp_path, 0, 0, 30, _rows(0, 30))
    data = bytearray(path.read_bytes())
    if damage == "truncate":
        data = data[: len(data) * 2 // 3]
    else:
        # a byte of the ts column's data (not a zip header): only its CRC-32 can tell
        i = data.index(np.float64(1005.0).tobytes())
        data[i] ^= 0x40
    path.write_bytes(bytes(data))
    with pytest.raises(StreamrecError, match=path.name):
        read_archive(tmp_path, 0)


def test_pruning_deletes_old_segments_but_keeps_the_newest(tmp_path: Path) -> None:
    old = _write(tmp_path, 0, 0, 10, _rows(0, 10, ts0=100))
    newer = _write(tmp_path, 0, 10, 20, _rows(10, 20, ts0=500))
    last = _write(tmp_path, 0, 20, 30, _rows(20, 30, ts0=100))  # old clicks, but newest
    assert prune(tmp_path, older_than=200) == [old]
    assert newer.exists() and last.exists()
    assert archived_to(tmp_path) == {0: 30}


def test_an_empty_segment_records_coverage(tmp_path: Path) -> None:
    _write(tmp_path, 3, 0, 7, [])
    assert archived_to(tmp_path) == {3: 7} and read_archive(tmp_path, 0) == {}


def test_a_segment_deleted_in_the_middle_is_archived_again(tmp_path: Path) -> None:
    _write(tmp_path, 0, 0, 10, _rows(0, 10))
    middle = _write(tmp_path, 0, 10, 20, _rows(10, 20))
    _write(tmp_path, 0, 20, 30, _rows(20, 30))
    middle.unlink()  # a damaged segment removed by hand
    assert archived_to(tmp_path) == {0: 10} and not covers(tmp_path, {0: 30})
    _write(tmp_path, 0, 10, 30, _rows(10, 30))  # archived again from the gap
    assert archived_to(tmp_path) == {0: 30}
    offsets = sorted(int(o) for c in read_archive(tmp_path, 0).values() for o in c.order)
    assert offsets == list(range(30))


def test_pruning_never_opens_a_gap(tmp_path: Path) -> None:
    first = _write(tmp_path, 0, 0, 10, _rows(0, 10, ts0=100))
    _write(tmp_path, 0, 10, 20, _rows(10, 20, ts0=500))
    _write(tmp_path, 0, 20, 30, _rows(20, 30, ts0=100))  # old, between newer ones
    _write(tmp_path, 0, 30, 40, _rows(30, 40, ts0=500))
    assert prune(tmp_path, older_than=200) == [first]
    assert archived_to(tmp_path) == {0: 40}

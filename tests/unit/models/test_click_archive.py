from __future__ import annotations

import os
import struct
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import pytest

from models import click_archive
from models.click_archive import (
    FORMAT_VERSION,
    HEADER_SIZE,
    OFFSET_BITS,
    SegmentName,
    archived_to,
    covers,
    old_segments,
    prune,
    read_archive,
    read_tenants,
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


def _index(path: Path) -> dict[str, tuple[int, int, int, int]]:
    """A segment's index as written: tenant -> (offset, length, rows, crc)."""
    name = SegmentName(path, *map(int, [path.parent.name[1:], *path.stem.split("-")]))
    with open(path, "rb", buffering=0) as f:
        seg = click_archive._Segment(name, f)
        return {t: tuple(seg.table[i].tolist()) for i, t in enumerate(seg.tenants)}


def _flip(path: Path, at: int) -> None:
    data = bytearray(path.read_bytes())
    data[at] ^= 0x40
    path.write_bytes(bytes(data))


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
    atomic_file = click_archive.atomic_file

    @contextmanager
    def boom(path: Path):
        with atomic_file(path) as f:
            f.write(b"SRCLICKS half a segment")
            f.flush()
            seen_while_writing.append(read_archive(tmp_path, 0) == {} and segments(tmp_path, 0))
            raise OSError("disk full")
            yield f

    monkeypatch.setattr(click_archive, "atomic_file", boom)
    with pytest.raises(OSError):
        _write(tmp_path, 0, 0, 10, _rows(0, 10))
    assert seen_while_writing == [[]]
    assert os.listdir(tmp_path / "p0") == []  # the temporary file went too
    (tmp_path / "p0" / ".half.tmp").write_bytes(b"SRCLICKS half")
    assert segments(tmp_path, 0) == [] and read_archive(tmp_path, 0) == {}


@pytest.mark.parametrize("damage", ["truncate", "flip"])
def test_a_damaged_segment_is_an_error_naming_it(tmp_path: Path, damage: str) -> None:
    path = _write(tmp_path, 0, 0, 30, _rows(0, 30))
    data = bytearray(path.read_bytes())
    if damage == "truncate":
        data = data[: len(data) * 2 // 3]
    else:
        # a byte of a ts column's data: only its CRC-32 can tell
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


def test_the_index_round_trips(tmp_path: Path) -> None:
    rows = [(o, f"shop-{o % 7}", f"s{o}", f"i{o}", 5000.0 - o) for o in range(100, 170)]
    path = _write(tmp_path, 1, 100, 200, rows)
    name = SegmentName(path, 1, 100, 200)
    with open(path, "rb", buffering=0) as f:
        seg = click_archive._Segment(name, f)
        assert seg.tenants == [f"shop-{k}" for k in range(7)]
        assert seg.find({"shop-3", "shop-0", "nobody"}) == [(0, "shop-0"), (3, "shop-3")]
        for i, tenant in enumerate(seg.tenants):
            mine = [r for r in rows if r[1] == tenant]
            assert seg.table[i][2] == len(mine)
            assert seg.span[i].tolist() == [min(r[4] for r in mine), max(r[4] for r in mine)]
    blocks = sorted(_index(path).values())
    # The blocks follow the header and the index, back to back, to the file's end.
    assert blocks[0][0] > HEADER_SIZE
    assert all(a[0] + a[1] == b[0] for a, b in zip(blocks, blocks[1:], strict=False))
    assert blocks[-1][0] + blocks[-1][1] == path.stat().st_size


def test_a_damaged_block_fails_only_its_tenant(tmp_path: Path) -> None:
    _write(tmp_path, 0, 0, 30, _rows(0, 30))
    path = _write(tmp_path, 1, 0, 30, _rows(0, 30))
    whole = read_archive(tmp_path, 0)
    offset, length, _, _ = _index(path)["t1"]
    _flip(path, offset + length // 2)
    got = read_tenants(tmp_path, 0)
    assert sorted(got.clicks) == ["t0", "t2"]  # t1 gives none, not half of its clicks
    for tenant in ("t0", "t2"):
        assert got.clicks[tenant].order.tolist() == whole[tenant].order.tolist()
    assert list(got.damaged) == ["t1"]
    why = str(got.damaged["t1"])
    assert "tenant t1" in why and str(path) in why and got.damaged["t1"].path == path
    assert list(got.damaged_segments) == [path]
    # Asked for the others only, nothing is wrong.
    assert not read_tenants(tmp_path, 0, ["t0", "t2"]).damaged
    with pytest.raises(StreamrecError, match="tenant t1"):
        read_archive(tmp_path, 0)


def test_a_damaged_index_fails_every_tenant_asked_for(tmp_path: Path) -> None:
    _write(tmp_path, 0, 0, 30, _rows(0, 30))
    path = _write(tmp_path, 1, 0, 30, _rows(0, 30))
    _flip(path, HEADER_SIZE + 3)  # the first tenant's block offset, in the index
    got = read_tenants(tmp_path, 0, ["t0", "t2"])
    assert got.clicks == {} and sorted(got.damaged) == ["t0", "t2"]
    assert "index" in str(got.damaged["t0"]) and str(path) in str(got.damaged["t0"])


def test_reading_some_tenants_reads_only_their_blocks(tmp_path: Path, monkeypatch) -> None:
    rows = [(o, f"shop-{o % 50:02d}", f"s{o % 13}", f"item-{o}", 1000.0 + o) for o in range(2000)]
    path = _write(tmp_path, 0, 0, 2000, rows)
    index = _index(path)
    wanted = ["shop-03", "shop-17", "shop-41"]
    reads: list[tuple[int, int]] = []
    read_at = click_archive._read_at

    def counted(f, offset: int, length: int) -> bytes:
        reads.append((offset, length))
        return read_at(f, offset, length)

    monkeypatch.setattr(click_archive, "_read_at", counted)
    got = read_tenants(tmp_path, 0, wanted)
    assert sorted(got.clicks) == wanted and all(len(c) == 40 for c in got.clicks.values())
    blocks = sorted(index[t][:2] for t in wanted)
    index_end = min(offset for offset, *_ in index.values())
    assert reads == [(0, HEADER_SIZE), (HEADER_SIZE, index_end - HEADER_SIZE), *blocks]
    assert sum(n for _, n in reads) < path.stat().st_size / 8  # 3 of 50 tenants
    # Every other tenant's block damaged: the three still read whole.
    for tenant, (offset, length, _, _) in index.items():
        if tenant not in wanted:
            _flip(path, offset + length - 1)
    again = read_tenants(tmp_path, 0, wanted)
    assert not again.damaged
    for t in wanted:
        assert again.clicks[t].item_ids.tolist() == got.clicks[t].item_ids.tolist()


def test_a_tenant_with_no_click_in_the_window_is_not_read(tmp_path: Path, monkeypatch) -> None:
    rows = [(o, "old", "s", "i", 100.0) for o in range(5)] + [
        (o, "new", "s", "i", 900.0) for o in range(5, 10)
    ]
    path = _write(tmp_path, 0, 0, 10, rows)
    offset, length, _, _ = _index(path)["old"]
    _flip(path, offset)  # never read, so never found damaged
    got = read_tenants(tmp_path, 500, ["old", "new"])
    assert list(got.clicks) == ["new"] and not got.damaged


def test_a_segment_of_another_format_version_is_an_error_naming_it(tmp_path: Path) -> None:
    path = _write(tmp_path, 0, 0, 30, _rows(0, 30))
    data = bytearray(path.read_bytes())
    struct.pack_into("<I", data, 8, FORMAT_VERSION + 1)
    path.write_bytes(bytes(data))
    newer = f"{path.name} is in format version {FORMAT_VERSION + 1}"
    with pytest.raises(StreamrecError, match=newer):
        read_archive(tmp_path, 0)


def test_old_npz_segments_are_listed_but_not_read(tmp_path: Path) -> None:
    old = tmp_path / "p0" / f"{0:020d}-{40:020d}.npz"
    old.parent.mkdir()
    old.write_bytes(b"PK\x03\x04 the first format")
    _write(tmp_path, 0, 40, 50, _rows(40, 50))
    assert old_segments(tmp_path) == [old]
    assert [s.first for s in segments(tmp_path, 0)] == [40]
    assert sum(len(c) for c in read_archive(tmp_path, 0).values()) == 10


def test_a_one_click_segment(tmp_path: Path) -> None:
    _write(tmp_path, 0, 0, 1, [(0, "a", "s", "i", 1.0)])
    got = read_archive(tmp_path, 0)
    assert list(got) == ["a"] and got["a"].session_ids.tolist() == ["s"]

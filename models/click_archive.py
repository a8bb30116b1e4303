"""The click archive: the ``clicks`` log decoded once, kept as files with a block per tenant.

A trainer group's members fill it together (``stream.kafka.click_archive``) so that a
pass reads only its tenants' blocks instead of every trainer decoding the whole log.

Layout: ``<root>/p<partition>/<first>-<end>.seg``. One **segment** holds the valid clicks
of one partition's offsets ``first`` (inclusive) to ``end`` (exclusive): a header, an
index, then one **block** per tenant holding that tenant's clicks in log order. A reader
reads the header and the index, then only the blocks of the tenants it asks for (byte
ranges), so its cost is its share of the archive, not the whole of it.

The bytes (little-endian, numpy arrays written raw, see ``_HEADER``):

- **header**: magic, format version, partition, first, end, tenant count, the index's
  length and CRC-32, and the header's own CRC-32.
- **index**, tenants sorted by name: per tenant its block's offset in the file, length,
  rows and CRC-32 (int64 each), its oldest and newest ts (float64), then the tenants'
  names, utf-8, each followed by a NUL.
- **block** of ``n`` clicks: ts (float64[n]), ``order`` (int64[n], partition << 40 |
  offset: the click's place in the log, as ``stream.kafka.click_log`` gives it), then the
  ``n`` session ids and the ``n`` item ids, utf-8, each followed by a NUL (ids never hold
  a control character: ``models.names``).

Every part is checked on read (CRC-32): a damaged block fails only its tenant, with an
error naming the file and the tenant; a damaged header or index fails the tenants asked
for (which of them the segment holds is unknown). Never a silently wrong read.

- **Atomic.** A segment is written under a temporary name in its directory, then renamed:
  a reader sees it whole or not at all.
- **Overlap.** During a rebalance two members may archive the same offsets. A reader
  walks a partition's segments by first offset and keeps only rows past the offsets
  already covered, so no click is read twice.
- **Coverage.** A partition is archived up to the end of its chain of segments from its
  first one, without a gap; that is also where an archiver resumes it. A segment deleted
  by hand (a damaged one) is so archived again. Offsets older than the window that were
  never archived are bridged by an empty segment.
- **Pruning.** Segments whose newest click is older than the window are deleted from the
  start of a partition's chain (never in its middle, which would open a gap), except a
  partition's last segment (it tells where archiving resumes).
- **Format version.** A segment of another version is an error naming it (delete it: it
  is archived again). The first format's ``.npz`` segments are not read at all (the
  archive is a copy of the log, filled again from Kafka, so one reader is kept, not two):
  :func:`old_segments` lists them for the trainer to report.

Why raw arrays in one file rather than a container library: at thousands of tenants a
block holds only tens of clicks, and a ``.npy`` header per array (64 bytes at least, four
arrays a block) would outweigh them; pyarrow is no dependency of streamrec.
"""

from __future__ import annotations

import os
import re
import struct
import zlib
from bisect import bisect_left
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from operator import itemgetter
from pathlib import Path

import numpy as np

from models.datasets import Clicks
from models.errors import StreamrecError
from models.registry import atomic_file

OFFSET_BITS = 40  # order = partition << OFFSET_BITS | offset
_OFFSET_MASK = (1 << OFFSET_BITS) - 1
FORMAT_VERSION = 2  # version 1: the .npz segments that old_segments() lists
_MAGIC = b"SRCLICKS"
# magic, version, partition, first, end, tenants, index length, index CRC-32; then the
# CRC-32 of those bytes.
_HEADER = struct.Struct("<8sIqqqqqI")
_HEADER_CRC = struct.Struct("<I")
HEADER_SIZE = _HEADER.size + _HEADER_CRC.size
_SEP = "\x00"
_NAME = re.compile(r"(\d+)-(\d+)\.seg")
_OLD_NAME = re.compile(r"(\d+)-(\d+)\.npz")
_PARTITION_DIR = re.compile(r"p(\d+)")


def archive_dir(registry_dir: Path) -> Path:
    """Where a registry's click archive lives (not a tenant's name, so never listed as one)."""
    return Path(registry_dir) / ".clicks"


@dataclass(frozen=True)
class SegmentName:
    path: Path
    partition: int
    first: int  # first offset covered
    end: int  # one past the last offset covered


def write_segment(
    root: Path,
    partition: int,
    first: int,
    end: int,
    tenants: Sequence[str],
    session_ids: Sequence[str],
    item_ids: Sequence[str],
    ts: Sequence[float],
    offsets: Sequence[int],
) -> Path:
    """Write one segment atomically: the clicks (one row per list position, in log
    order) of ``partition``'s offsets ``first`` to ``end`` (exclusive). Returns its path."""
    if not first <= end:
        raise ValueError(f"segment offsets {first}-{end} are not a range")
    n = len(tenants)
    if not len(session_ids) == len(item_ids) == len(ts) == len(offsets) == n:
        raise ValueError("the segment's columns differ in length")
    names = sorted(set(tenants))
    code = {t: i for i, t in enumerate(names)}
    codes = np.fromiter(map(code.__getitem__, tenants), dtype=np.int64, count=n)
    by_tenant = np.argsort(codes, kind="stable")  # stable: a tenant's rows keep log order
    rows = np.zeros(len(names) + 1, dtype=np.int64)
    np.cumsum(np.bincount(codes, minlength=len(names)), out=rows[1:])
    ts_col = np.asarray(ts, dtype=np.float64)[by_tenant]
    order = (np.asarray(offsets, dtype=np.int64) | (partition << OFFSET_BITS))[by_tenant]
    take = by_tenant.tolist()
    sessions, session_cuts = _joined(_taken(session_ids, take), rows)
    items, item_cuts = _joined(_taken(item_ids, take), rows)
    # Per tenant: offset, length, rows, CRC-32 of its block; its oldest and newest ts.
    table = np.zeros((len(names), 4), dtype=np.int64)
    span = np.zeros((len(names), 2), dtype=np.float64)
    if names:
        span[:, 0] = np.minimum.reduceat(ts_col, rows[:-1])
        span[:, 1] = np.maximum.reduceat(ts_col, rows[:-1])
    name_blob, _ = _joined(names, np.array([0, len(names)]))
    index_len = table.nbytes + span.nbytes + len(name_blob)
    table[:, 1] = 16 * np.diff(rows) + np.diff(session_cuts) + np.diff(item_cuts)
    table[:, 0] = HEADER_SIZE + index_len + np.cumsum(table[:, 1]) - table[:, 1]
    table[:, 2] = np.diff(rows)
    ts_bytes, order_bytes = memoryview(ts_col.tobytes()), memoryview(order.tobytes())
    sessions, items = memoryview(sessions), memoryview(items)
    pieces = []
    crcs = table[:, 3]
    for i, (a, b, sa, sb, ia, ib) in enumerate(
        zip(
            (8 * rows[:-1]).tolist(),
            (8 * rows[1:]).tolist(),
            session_cuts[:-1].tolist(),
            session_cuts[1:].tolist(),
            item_cuts[:-1].tolist(),
            item_cuts[1:].tolist(),
            strict=True,
        )
    ):
        block = (ts_bytes[a:b], order_bytes[a:b], sessions[sa:sb], items[ia:ib])
        crc = 0
        for piece in block:
            crc = zlib.crc32(piece, crc)
        crcs[i] = crc
        pieces += block
    index = table.tobytes() + span.tobytes() + name_blob
    header = _HEADER.pack(
        _MAGIC, FORMAT_VERSION, partition, first, end, len(names), index_len, zlib.crc32(index)
    )
    path = Path(root) / f"p{partition}" / f"{first:020d}-{end:020d}.seg"
    with atomic_file(path) as f:
        f.write(header + _HEADER_CRC.pack(zlib.crc32(header)))
        f.write(index)
        f.writelines(pieces)
    return path


def _taken(values: Sequence[str], take: list[int]) -> Sequence[str]:
    """``values`` in the order of ``take`` (itemgetter: a C loop, not a Python one)."""
    return itemgetter(*take)(values) if len(take) > 1 else [values[i] for i in take]


def _joined(strings: Sequence[str], rows: np.ndarray) -> tuple[bytes, np.ndarray]:
    """Strings as utf-8, each followed by a NUL (an error if one holds a NUL itself), and
    the byte offsets where the groups of ``rows`` (row offsets) start, and the end."""
    text = _SEP.join(strings) + _SEP if strings else ""
    if text.count(_SEP) != len(strings):
        raise ValueError("an id holds a NUL character")
    blob = text.encode()
    ends = np.zeros(len(strings) + 1, dtype=np.int64)
    ends[1:] = np.flatnonzero(np.frombuffer(blob, dtype=np.uint8) == 0) + 1
    return blob, ends[rows]


def _split(data: bytes, n: int) -> list[str] | None:
    """The ``n`` strings :func:`_joined` wrote, or None if they are not there."""
    try:
        parts = data.decode().split(_SEP)
    except UnicodeDecodeError:
        return None
    return parts[:-1] if len(parts) == n + 1 and parts[-1] == "" else None


def segments(root: Path, partition: int) -> list[SegmentName]:
    """A partition's segments by first offset (longest first on a tie); temporary files
    of writes in progress are not segments."""
    return _listed(root, partition, _NAME)


def old_segments(root: Path) -> list[Path]:
    """Segments of the first format (``.npz``), which this version does not read."""
    return [s.path for p in partitions(root) for s in _listed(root, p, _OLD_NAME)]


def _listed(root: Path, partition: int, pattern: re.Pattern[str]) -> list[SegmentName]:
    folder = Path(root) / f"p{partition}"
    if not folder.is_dir():
        return []
    out = []
    for path in folder.iterdir():
        m = pattern.fullmatch(path.name)
        if m:
            out.append(SegmentName(path, partition, int(m[1]), int(m[2])))
    return sorted(out, key=lambda s: (s.first, -s.end))


def partitions(root: Path) -> list[int]:
    root = Path(root)
    if not root.is_dir():
        return []
    found = (_PARTITION_DIR.fullmatch(p.name) for p in root.iterdir() if p.is_dir())
    return sorted(int(m[1]) for m in found if m)


def _chain_end(names: list[SegmentName]) -> int:
    covered = names[0].end
    for name in names[1:]:
        if name.first > covered:
            break  # a gap: archived again from here
        covered = max(covered, name.end)
    return covered


def archived_to(root: Path) -> dict[int, int]:
    """Per partition, the offset archiving has reached without a gap (resumes at)."""
    out = {}
    for p in partitions(root):
        names = segments(root, p)
        if names:
            out[p] = _chain_end(names)
    return out


def covers(root: Path, ends: Mapping[int, int]) -> bool:
    """Is every partition archived up to its offset in ``ends``?"""
    have = archived_to(root)
    return all(have.get(p, 0) >= end for p, end in ends.items() if end > 0)


def _read_at(f: object, offset: int, length: int) -> bytes:
    """``length`` bytes of an open file from ``offset`` (fewer at its end)."""
    return os.pread(f.fileno(), length, offset)  # type: ignore[attr-defined]


class DamagedSegment(StreamrecError):
    """A segment, or one tenant's block of it, that cannot be read as written."""

    def __init__(self, message: str, path: Path) -> None:
        super().__init__(message)
        self.path = path


class _Segment:
    """One segment's header and index, read and checked; its blocks read on demand."""

    def __init__(self, name: SegmentName, f: object) -> None:
        self.name, self._f = name, f
        head = _read_at(f, 0, HEADER_SIZE)
        if len(head) < HEADER_SIZE:
            raise self._damaged("it is shorter than its header")
        magic, version, partition, first, end, count, index_len, index_crc = _HEADER.unpack(
            head[: _HEADER.size]
        )
        if magic != _MAGIC:
            raise self._damaged("it does not start as a click archive segment")
        if version != FORMAT_VERSION:
            raise DamagedSegment(
                f"click archive segment {name.path} is in format version {version}, this "
                f"streamrec reads version {FORMAT_VERSION}; delete it and the partition is "
                "archived again from the log",
                name.path,
            )
        (crc,) = _HEADER_CRC.unpack(head[_HEADER.size :])
        if crc != zlib.crc32(head[: _HEADER.size]):
            raise self._damaged("its header's checksum does not match")
        if (partition, first, end) != (name.partition, name.first, name.end):
            raise self._damaged("its header names other offsets than its file name")
        index = _read_at(f, HEADER_SIZE, index_len)
        if len(index) < index_len or zlib.crc32(index) != index_crc:
            raise self._damaged("its index's checksum does not match")
        numbers = 4 * 8 * count + 2 * 8 * count
        if not 0 <= numbers <= index_len:
            raise self._damaged("its index is shorter than its tenant count says")
        table = np.frombuffer(index, dtype=np.int64, count=4 * count).reshape(count, 4)
        span = np.frombuffer(index, np.float64, 2 * count, 4 * 8 * count).reshape(count, 2)
        tenants = _split(index[numbers:], count)
        if tenants is None:
            raise self._damaged("its index's tenant names do not match its count")
        self.table, self.span, self.tenants = table, span, tenants

    def find(self, tenants: set[str] | None) -> list[tuple[int, str]]:
        """The tenants (every one when None) this segment holds, with their place in its
        index, in file order (its names are sorted: a binary search each, no dict of all)."""
        if tenants is None:
            return list(enumerate(self.tenants))
        out = []
        for tenant in tenants:
            i = bisect_left(self.tenants, tenant)
            if i < len(self.tenants) and self.tenants[i] == tenant:
                out.append((i, tenant))
        return sorted(out)

    def _damaged(self, why: str, tenant: str | None = None) -> DamagedSegment:
        whose = f"tenant {tenant}'s block in " if tenant else ""
        return DamagedSegment(
            f"{whose}click archive segment {self.name.path} is damaged ({why}); delete the "
            "segment and the partition is archived again from the log",
            self.name.path,
        )

    def block(self, i: int) -> tuple[list[str], list[str], np.ndarray, np.ndarray]:
        """The clicks (session ids, item ids, ts, order) of the ``i``-th tenant, checked."""
        tenant = self.tenants[i]
        offset, length, n, crc = self.table[i].tolist()
        data = _read_at(self._f, offset, length)
        if len(data) < length or zlib.crc32(data) != crc:
            raise self._damaged("its checksum does not match", tenant)
        if len(data) < 16 * n:
            raise self._damaged("it is shorter than its row count says", tenant)
        ts = np.frombuffer(data, dtype=np.float64, count=n)
        order = np.frombuffer(data, dtype=np.int64, count=n, offset=8 * n)
        ids = _split(data[16 * n :], 2 * n)
        if ids is None:
            raise self._damaged("its ids do not match its row count", tenant)
        return ids[:n], ids[n:], ts, order


@dataclass
class ArchiveRead:
    """What a read of the archive found: clicks per tenant, the tenants whose clicks could
    not all be read (a damaged block, or a segment whose index is damaged) with the
    reason, and the damaged segments."""

    clicks: dict[str, Clicks] = field(default_factory=dict)
    damaged: dict[str, DamagedSegment] = field(default_factory=dict)
    damaged_segments: dict[Path, DamagedSegment] = field(default_factory=dict)


def read_tenants(
    root: Path,
    since_ts: float,
    tenants: Iterable[str] | None = None,
    ends: Mapping[int, int] | None = None,
) -> ArchiveRead:
    """Valid clicks per tenant with ``ts >= since_ts`` (and, with ``ends``, offsets below
    each partition's end), read from the archive: only the blocks of the tenants asked
    for (every tenant when None) with a click in the window are read. Rows are in log
    order per partition, partitions in order. A tenant with a damaged block is left out
    of ``clicks`` and named in ``damaged``; so is every tenant asked for when a segment's
    index is damaged (which of them it holds is unknown)."""
    wanted = None if tenants is None else set(tenants)
    out = ArchiveRead()
    parts: dict[str, list[tuple[list[str], list[str], np.ndarray, np.ndarray]]] = {}
    unreadable: list[DamagedSegment] = []  # segments whose index is damaged
    for p in partitions(root):
        limit = None if ends is None else ends.get(p, 0)
        covered = -1  # offsets below this were read from an earlier segment
        for name in segments(root, p):
            if limit is not None and name.first >= limit:
                break
            if name.end <= covered:
                continue  # wholly inside what an earlier segment gave
            try:
                f = open(name.path, "rb", buffering=0)  # noqa: SIM115 - closed below
            except FileNotFoundError:
                continue  # pruned meanwhile: its clicks are out of every window
            skip_below = covered
            covered = max(covered, name.end)
            with f:
                try:
                    seg = _Segment(name, f)
                except DamagedSegment as exc:
                    out.damaged_segments[name.path] = exc
                    unreadable.append(exc)
                    continue
                # Every offset of the segment is wanted: only the window filters rows.
                inside = name.first >= skip_below and (limit is None or name.end <= limit)
                oldest, newest = seg.span[:, 0].tolist(), seg.span[:, 1].tolist()
                for i, tenant in seg.find(wanted):
                    if tenant in out.damaged or newest[i] < since_ts:
                        continue
                    try:
                        sids, items, ts, order = seg.block(i)
                    except DamagedSegment as exc:
                        out.damaged_segments.setdefault(name.path, exc)
                        out.damaged[tenant] = exc
                        continue
                    if not (inside and oldest[i] >= since_ts):
                        offs = order & _OFFSET_MASK
                        keep = (ts >= since_ts) & (offs >= skip_below)
                        if limit is not None:
                            keep &= offs < limit
                        if not keep.any():
                            continue
                        idx = np.flatnonzero(keep)
                        if len(idx) < len(ts):
                            sids = [sids[k] for k in idx]
                            items = [items[k] for k in idx]
                            ts, order = ts[idx], order[idx]
                    parts.setdefault(tenant, []).append((sids, items, ts, order))
    if unreadable:
        for tenant in wanted if wanted is not None else list(parts):
            out.damaged.setdefault(tenant, unreadable[0])
    for tenant in sorted(parts):
        chunks = parts.pop(tenant)
        if tenant in out.damaged:
            continue  # some of its clicks are unreadable: none of them is given
        out.clicks[tenant] = Clicks(
            np.asarray([s for c in chunks for s in c[0]], dtype=str),
            np.asarray([s for c in chunks for s in c[1]], dtype=str),
            np.concatenate([c[2] for c in chunks]),
            np.concatenate([c[3] for c in chunks]).astype(np.int64),
        )
    return out


def read_archive(
    root: Path,
    since_ts: float,
    tenants: Iterable[str] | None = None,
    ends: Mapping[int, int] | None = None,
) -> dict[str, Clicks]:
    """:func:`read_tenants`'s clicks, all or nothing: a damaged block is an error."""
    got = read_tenants(root, since_ts, tenants, ends)
    if got.damaged_segments:
        raise next(iter(got.damaged_segments.values()))
    return got.clicks


def prune(root: Path, older_than: float) -> list[Path]:
    """Delete the segments at the start of each partition's chain whose newest click is
    older than ``older_than`` (never the last: it says where archiving resumes). The
    deleted paths."""
    deleted = []
    for p in partitions(root):
        names = segments(root, p)
        last = max(names, key=lambda s: s.end, default=None)
        for name in names:
            newest_ts = _newest(name)
            if name is last or newest_ts is None or newest_ts >= older_than:
                break  # the rest of the chain stays whole
            name.path.unlink(missing_ok=True)
            deleted.append(name.path)
    return deleted


def _newest(name: SegmentName) -> float | None:
    """The newest click's ts in a segment, reading its header and index only; None when
    it is gone or damaged (left for a reader to report, not silently removed)."""
    try:
        with open(name.path, "rb", buffering=0) as f:
            span = _Segment(name, f).span
    except (OSError, DamagedSegment):
        return None
    return float(span[:, 1].max()) if len(span) else float("-inf")

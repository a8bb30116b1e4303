"""The click archive: the ``clicks`` log decoded once, kept as files grouped by tenant.

A trainer group's members fill it together (``stream.kafka.click_archive``) so that a
pass reads only its tenants' rows instead of every trainer decoding the whole log.

Layout: ``<root>/p<partition>/<first>-<end>.npz``. One **segment** holds the valid
clicks of one partition's offsets ``first`` (inclusive) to ``end`` (exclusive), sorted by
tenant (log order within a tenant), with an index tenant -> row range and min/max
timestamp. Its columns: session id, item id, ts, and ``order`` = partition << 40 | offset
(the click's place in the log, as ``stream.kafka.click_log`` gives it). Strings are one
utf-8 blob per column plus row offsets. The file is an uncompressed ``.npz`` read with
``allow_pickle=False``: zip's CRC-32 of every member is checked on read, so a damaged or
truncated segment is an error naming the file, never a silently wrong read.

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
"""

from __future__ import annotations

import re
import zipfile
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from models.datasets import Clicks
from models.errors import StreamrecError
from models.registry import atomic_file

OFFSET_BITS = 40  # order = partition << OFFSET_BITS | offset
_OFFSET_MASK = (1 << OFFSET_BITS) - 1
_NAME = re.compile(r"(\d+)-(\d+)\.npz")
_PARTITION_DIR = re.compile(r"p(\d+)")
_COLUMNS = (
    "meta", "tenant_blob", "tenant_offsets", "tenant_rows", "tenant_ts",
    "session_blob", "session_offsets", "item_blob", "item_offsets", "ts", "order",
)  # fmt: skip


def archive_dir(registry_dir: Path) -> Path:
    """Where a registry's click archive lives (not a tenant's name, so never listed as one)."""
    return Path(registry_dir) / ".clicks"


@dataclass(frozen=True)
class SegmentName:
    path: Path
    partition: int
    first: int  # first offset covered
    end: int  # one past the last offset covered


def _packed(strings: list[str], order: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
    """One utf-8 blob and row offsets; rows taken in ``order`` when given."""
    encoded = [x.encode() for x in strings]
    if order is not None:
        encoded = [encoded[i] for i in order.tolist()]
    offsets = np.zeros(len(encoded) + 1, dtype=np.int64)
    np.cumsum(np.fromiter(map(len, encoded), dtype=np.int64, count=len(encoded)), out=offsets[1:])
    return np.frombuffer(b"".join(encoded), dtype=np.uint8), offsets


def _unpacked(blob: np.ndarray, offsets: np.ndarray, start: int, stop: int) -> list[str]:
    raw = blob[offsets[start] : offsets[stop]].tobytes()
    cuts = (offsets[start : stop + 1] - offsets[start]).tolist()
    return [raw[a:b].decode() for a, b in zip(cuts, cuts[1:], strict=False)]


def write_segment(
    root: Path,
    partition: int,
    first: int,
    end: int,
    tenants: list[str],
    session_ids: list[str],
    item_ids: list[str],
    ts: list[float],
    offsets: list[int],
) -> Path:
    """Write one segment atomically: the clicks (one row per list position) of
    ``partition``'s offsets ``first`` to ``end`` (exclusive). Returns its path."""
    if not first <= end:
        raise ValueError(f"segment offsets {first}-{end} are not a range")
    names = sorted(set(tenants))
    code = {t: i for i, t in enumerate(names)}
    codes = np.fromiter(map(code.__getitem__, tenants), dtype=np.int64, count=len(tenants))
    by_tenant = np.argsort(codes, kind="stable")  # stable: a tenant's rows keep log order
    rows = np.zeros(len(names) + 1, dtype=np.int64)
    np.cumsum(np.bincount(codes, minlength=len(names)), out=rows[1:])
    ts_col = np.asarray(ts, dtype=np.float64)[by_tenant]
    span = np.zeros((len(names), 2), dtype=np.float64)
    if len(names):
        span[:, 0] = np.minimum.reduceat(ts_col, rows[:-1])
        span[:, 1] = np.maximum.reduceat(ts_col, rows[:-1])
    tenant_blob, tenant_offsets = _packed(names)
    session_blob, session_offsets = _packed(session_ids, by_tenant)
    item_blob, item_offsets = _packed(item_ids, by_tenant)
    order = (np.asarray(offsets, dtype=np.int64) | (partition << OFFSET_BITS))[by_tenant]
    path = Path(root) / f"p{partition}" / f"{first:020d}-{end:020d}.npz"
    with atomic_file(path) as f:
        np.savez(
            f,
            meta=np.array([partition, first, end], dtype=np.int64),
            tenant_blob=tenant_blob,
            tenant_offsets=tenant_offsets,
            tenant_rows=rows,
            tenant_ts=span,
            session_blob=session_blob,
            session_offsets=session_offsets,
            item_blob=item_blob,
            item_offsets=item_offsets,
            ts=ts_col,
            order=order,
        )
    return path


def segments(root: Path, partition: int) -> list[SegmentName]:
    """A partition's segments by first offset (longest first on a tie); temporary files
    of writes in progress are not segments."""
    folder = Path(root) / f"p{partition}"
    if not folder.is_dir():
        return []
    out = []
    for path in folder.iterdir():
        m = _NAME.fullmatch(path.name)
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


class _Segment:
    """One segment file loaded and checked (every member's CRC-32, the columns' shapes)."""

    def __init__(self, name: SegmentName) -> None:
        self.name = name
        try:
            with np.load(name.path, allow_pickle=False) as data:
                cols = {k: data[k] for k in _COLUMNS}
        except FileNotFoundError:
            raise
        except (OSError, ValueError, KeyError, EOFError, zipfile.BadZipFile) as exc:
            raise StreamrecError(
                f"click archive segment {name.path} is damaged ({exc}); delete it and the "
                "partition is archived again from the log"
            ) from None
        self.cols = cols
        rows = cols["tenant_rows"]
        n = len(cols["ts"])
        meta = cols["meta"].tolist()
        ok = (
            meta == [name.partition, name.first, name.end]
            and len(cols["order"]) == n
            and len(cols["session_offsets"]) == n + 1 == len(cols["item_offsets"])
            and len(rows) == len(cols["tenant_offsets"])
            and len(rows) >= 1
            and rows[0] == 0
            and rows[-1] == n
            and bool(np.all(np.diff(rows) >= 0))
            and cols["session_offsets"][-1] == len(cols["session_blob"])
            and cols["item_offsets"][-1] == len(cols["item_blob"])
            and cols["tenant_offsets"][-1] == len(cols["tenant_blob"])
        )
        if not ok:
            raise StreamrecError(
                f"click archive segment {name.path} is inconsistent (its columns do not "
                "agree); delete it and the partition is archived again from the log"
            )
        names = _unpacked(cols["tenant_blob"], cols["tenant_offsets"], 0, len(rows) - 1)
        self.index = {t: i for i, t in enumerate(names)}

    def rows(self, tenant: str) -> tuple[int, int] | None:
        i = self.index.get(tenant)
        if i is None:
            return None
        r = self.cols["tenant_rows"]
        return int(r[i]), int(r[i + 1])


def read_archive(
    root: Path,
    since_ts: float,
    tenants: Iterable[str] | None = None,
    ends: Mapping[int, int] | None = None,
) -> dict[str, Clicks]:
    """Valid clicks per tenant with ``ts >= since_ts`` (and, with ``ends``, offsets below
    each partition's end), read from the archive: only the tenants asked for are
    decoded, and a segment whose clicks are all older than ``since_ts`` is not opened.
    Rows are in log order per partition, partitions in order."""
    wanted = None if tenants is None else set(tenants)
    parts: dict[str, list[tuple[list[str], list[str], np.ndarray, np.ndarray]]] = {}
    for p in partitions(root):
        limit = None if ends is None else ends.get(p, 0)
        covered = -1  # offsets below this were read from an earlier segment
        for name in segments(root, p):
            if limit is not None and name.first >= limit:
                break
            if name.end <= covered:
                continue  # wholly inside what an earlier segment gave
            try:
                seg = _Segment(name)
            except FileNotFoundError:
                continue  # pruned meanwhile: its clicks are out of every window
            skip_below = covered
            covered = max(covered, name.end)
            for tenant in seg.index if wanted is None else wanted & seg.index.keys():
                a, b = seg.rows(tenant)  # type: ignore[misc]
                ts = seg.cols["ts"][a:b]
                offs = seg.cols["order"][a:b] & _OFFSET_MASK
                keep = (ts >= since_ts) & (offs >= skip_below)
                if limit is not None:
                    keep &= offs < limit
                if not keep.any():
                    continue
                sids = _unpacked(seg.cols["session_blob"], seg.cols["session_offsets"], a, b)
                items = _unpacked(seg.cols["item_blob"], seg.cols["item_offsets"], a, b)
                idx = np.flatnonzero(keep)
                if len(idx) < b - a:
                    sids = [sids[i] for i in idx]
                    items = [items[i] for i in idx]
                parts.setdefault(tenant, []).append(
                    (sids, items, ts[idx], seg.cols["order"][a:b][idx])
                )
    out = {}
    for tenant in sorted(parts):
        chunks = parts.pop(tenant)
        out[tenant] = Clicks(
            np.asarray([s for c in chunks for s in c[0]], dtype=str),
            np.asarray([s for c in chunks for s in c[1]], dtype=str),
            np.concatenate([c[2] for c in chunks]),
            np.concatenate([c[3] for c in chunks]).astype(np.int64),
        )
    return out


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
    """The newest click's ts in a segment, reading its index only; None when it is gone
    or damaged (left for a reader to report, not silently removed)."""
    try:
        with np.load(name.path, allow_pickle=False) as data:
            span = data["tenant_ts"]
    except (OSError, ValueError, KeyError, EOFError, zipfile.BadZipFile):
        return None
    return float(span[:, 1].max()) if span.ndim == 2 and len(span) else float("-inf")

"""The serving model: plain arrays plus a JSON manifest, validated on load.

On disk a bundle is a directory of ``.npy`` files and ``manifest.json``. Arrays are
loaded with ``allow_pickle=False`` and memory-mapped (the worker reads its small ones
into memory instead, see ``MAP_MIN_BYTES``), so loading is cheap and nothing executable
is ever deserialised. The manifest records every array's shape, dtype and
SHA-256, so a truncated, swapped or edited file is refused instead of served.
"""

from __future__ import annotations

import hashlib
import io
import itertools
import json
import mmap
import os
import tempfile
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path
from typing import Any, BinaryIO

import numpy as np

from models import features
from models.errors import InvalidModelError
from models.trees import GAP_COLUMNS, MAX_DEPTH, TREE_ARRAYS, column_codes

BUNDLE_FORMAT = "streamrec-bundle"
# 5: the arrays of the table's sources and item features stored by name
# (``models.features``), the ranker's weights read by feature name. An older bundle is
# refused with a message that says to retrain.
# 6: boosted trees over the linear ranker's best (``models.trees``: three arrays, and the
# manifest's "trees" section), where the trainer fitted them; format 5, the same without
# trees, is still read.
# 7: the manifest's "trees" section names the columns after the table's features that
# the trees were fitted with ("columns"); format 6's trees, which do not name them, read
# the linear score and its gap to the best (``models.trees.GAP_COLUMNS``) and are served
# as they were.
BUNDLE_FORMAT_VERSION = 7
READ_FORMAT_VERSIONS = (5, 6, 7)
MANIFEST = "manifest.json"
# Every bundle's arrays; the rest come from the table (``table_arrays``).
BASE_ARRAYS = (
    "items",
    "vectors",
    "clusters",
    "centroids",
    "neighbours",
    "neighbour_scores",
    "popularity",
    "item_category",
)
# The worker reads an array file smaller than this into memory instead of mapping it: a
# map holds an open file and a kernel mapping for as long as the model is loaded, which
# would cap a worker holding thousands of small models (about 25 arrays each) at the
# process's open files; a large array is mapped, so only the rows ranked with stay
# resident. Either way the array costs its bytes of the worker's model budget.
MAP_MIN_BYTES = 1 << 20
# Arrays a bundle may lack (None when absent); no reader needs them to rank.
OPTIONAL_ARRAYS = ("session_hashes",)


def table_arrays(layout: features.Layout | None = None) -> tuple[str, ...]:
    """The arrays the table's sources and item features keep in a bundle, by name."""
    layout = layout or features.LAYOUT
    return (*layout.list_arrays, *(f.array for f in layout.item_features))


@dataclass(frozen=True)
class ModelBundle:
    """Item embeddings, clusters and precomputed neighbour lists for one model version."""

    version: str
    items: np.ndarray  # unicode str [n]
    vectors: np.ndarray  # float32 [n, d], L2-normalised
    clusters: np.ndarray  # int32 [n], cluster of each item
    centroids: np.ndarray  # float32 [c, d]
    neighbours: np.ndarray  # int32 [n, m], best first
    neighbour_scores: np.ndarray  # float32 [n, m], descending per row
    popularity: np.ndarray  # int32 [n], item indices, most clicked first
    item_category: np.ndarray  # int32 [n], each item's category code, -1 when not known
    # The table's arrays by name (``table_arrays``): each source list's CSR arrays (ptr
    # int32 [rows + 1], idx int32, w float32) and each item feature's values (float32 [n]).
    arrays: dict[str, np.ndarray]
    manifest: dict[str, Any] = field(default_factory=dict, compare=False)
    # Views derived from the arrays once per bundle (the kernel's ``ServedModel``); not an
    # argument, so ``dataclasses.replace`` starts a new bundle with none.
    derived: dict[str, Any] = field(default_factory=dict, init=False, compare=False, repr=False)
    # uint64, sorted: the training sessions' item sequences (models.seen), for the gate.
    session_hashes: np.ndarray | None = field(default=None, compare=False)

    @property
    def n_items(self) -> int:
        return len(self.items)

    @property
    def item_list(self) -> list[str]:
        """The item ids as Python strings, a new list each call (tests, tools, plots; the
        request path uses ``rows``, ``index`` and ``ids``, which keep no object per item)."""
        return self.items.tolist()

    @cached_property
    def _ids(self) -> ItemIndex:
        return ItemIndex(self.items)

    def rows(self, item_ids: Sequence[str]) -> np.ndarray:
        """Row of each id (int64), -1 for an id the model has never seen."""
        return self._ids.rows(item_ids)

    def index(self, item_id: str) -> int | None:
        """Row of ``item_id``, or None when the model has never seen it."""
        row = int(self._ids.rows([item_id])[0])
        return None if row < 0 else row

    def ids(self, rows: np.ndarray) -> list:
        """The ids of ``rows`` (any shape), as nested lists of Python strings."""
        return self._ids.ids(rows)

    def named_arrays(self) -> dict[str, np.ndarray]:
        """Every array of the bundle by its file name (without ``.npy``)."""
        optional = {name: getattr(self, name) for name in OPTIONAL_ARRAYS}
        return {
            **{name: getattr(self, name) for name in BASE_ARRAYS},
            **self.arrays,
            **{name: arr for name, arr in optional.items() if arr is not None},
        }

    @cached_property
    def ranker_weights(self) -> np.ndarray:
        """The learned ranking stage's weights in the table's columns (by feature name;
        a feature the bundle was not fitted with weighs 0), or the fixed blend."""
        layout = features.LAYOUT
        ranker = self.manifest.get("ranker", {})
        weights, names = ranker.get("weights"), ranker.get("features")
        if weights is None:
            return layout.blend_weights()
        out = np.asarray(weights, dtype=np.float64)
        if (
            not isinstance(names, list)
            or out.shape != (2 * len(names),)
            or not np.isfinite(out).all()
        ):
            raise InvalidModelError(
                f"model {self.version}: ranker weights are not two finite numbers per feature"
            )
        return layout.weights_by_name(names, out)

    @property
    def ranking(self) -> dict[str, Any]:
        """Ranking parameters chosen at training time (see ``models.ranking``)."""
        return dict(self.manifest.get("ranking", {}))


class ItemIndex:
    """Item id <-> row without a Python object per item (a worker holds a model per
    tenant): the ids' ``hash()`` values sorted (int64), with the row of each. A batch is
    a ``searchsorted``; every hash match is confirmed by comparing the strings, so a
    collision can never give an id another item's row. An id is decoded from ``items``
    the first time it is needed and kept, so a model holds the strings of the items it
    has served or been asked about, not of all of them."""

    __slots__ = ("_decoded", "_items", "_keys", "_names", "_rows")

    def __init__(self, items: np.ndarray) -> None:
        hashes = np.fromiter(map(hash, items.tolist()), dtype=np.int64, count=len(items))
        order = np.argsort(hashes, kind="stable")
        self._items = items
        self._keys = hashes[order]
        self._rows = order.astype(np.int32 if len(items) < 2**31 else np.int64)
        self._names = np.full(len(items), None, dtype=object)
        self._decoded = np.zeros(len(items), dtype=np.bool_)

    def rows(self, ids: Sequence[str]) -> np.ndarray:
        """Row of each id (int64), -1 where no item has it."""
        n = len(ids)
        if not len(self._keys):
            return np.full(n, -1, dtype=np.int64)
        keys = np.fromiter(map(hash, ids), dtype=np.int64, count=n)
        pos = np.searchsorted(self._keys, keys)
        np.minimum(pos, len(self._keys) - 1, out=pos)
        hit = self._keys[pos] == keys
        out = np.where(hit, self._rows[pos], -1).astype(np.int64)
        # The ids the hashes point at must be the ids asked for (one C-level list
        # comparison in the usual case, where they all are).
        if hit.all():
            found, asked = self.ids(out), list(ids)
        else:
            found, asked = self.ids(out[hit]), list(itertools.compress(ids, hit.tolist()))
        if found != asked:
            for j, name, want in zip(np.flatnonzero(hit).tolist(), found, asked, strict=True):
                if name != want:
                    out[j] = self._scan(want, int(pos[j]))
        return out

    def ids(self, rows: np.ndarray) -> list:
        """The ids of ``rows`` (valid rows, any shape) as nested lists of Python strings."""
        rows = np.asarray(rows)
        if not self._decoded[rows].all():
            new = np.unique(rows[~self._decoded[rows]])
            self._names[new] = self._items[new].tolist()
            self._decoded[new] = True  # after the names: a thread reading sees them set
        return self._names[rows].tolist()

    def _scan(self, item_id: str, pos: int) -> int:
        """Row of ``item_id`` among the items whose hash equals the one at ``pos`` (a
        collision, or an unknown id whose hash some item has), -1 if none."""
        key = self._keys[pos]
        while pos < len(self._keys) and self._keys[pos] == key:
            row = int(self._rows[pos])
            if self._items[row] == item_id:
                return row
            pos += 1
        return -1


def save_bundle(bundle: ModelBundle, directory: str | Path, *, read_only: bool = False) -> None:
    """Write arrays and manifest into ``directory`` (created if needed), every file and the
    directory on disk when this returns; ``read_only``: the files are created so."""
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    mode = 0o444 if read_only else 0o666
    described: dict[str, Any] = {}
    written: list[int] = []
    try:
        for name, arr in bundle.named_arrays().items():
            arr = np.ascontiguousarray(arr)
            path = directory / f"{name}.npy"
            written.append(os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, mode))
            with open(written[-1], "wb", closefd=False) as fh:
                np.save(fh, arr, allow_pickle=False)
            described[name] = {
                "shape": list(arr.shape),
                "dtype": arr.dtype.str,
                "sha256": _sha256(path),
            }
        manifest = {
            **bundle.manifest,
            "format": BUNDLE_FORMAT,
            "format_version": BUNDLE_FORMAT_VERSION,
            "version": bundle.version,
            "sources": {lst.name: list(lst.arrays) for lst in features.LAYOUT.lists},
            "arrays": described,
        }
        text = json.dumps(manifest, indent=2, sort_keys=True, default=_json_default)
        written.append(os.open(directory / MANIFEST, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, mode))
        with open(written[-1], "w", encoding="utf-8", closefd=False) as fh:
            fh.write(text)
        written.append(os.open(directory, os.O_RDONLY))
        _fsync_together(written)
    finally:
        for fd in written:
            os.close(fd)


def _fsync_together(fds: list[int]) -> None:
    """fsync every file at once: flushed one after the other, each waits for a commit of
    the filesystem's journal; issued together, they share one."""
    with ThreadPoolExecutor(max_workers=min(len(fds), 32)) as pool:
        list(pool.map(os.fsync, fds))


def load_bundle(
    directory: str | Path, *, verify_checksums: bool = True, private: bool = False
) -> ModelBundle:
    """Load and validate a bundle; InvalidModelError says what is wrong.

    ``private`` (the worker): a verified copy of each file of our own instead of the
    file itself, read into memory or, from ``MAP_MIN_BYTES``, mapped (see
    ``_private_copy``)."""
    directory = Path(directory)
    where = str(directory)
    manifest = _read_manifest(directory)
    described = manifest["arrays"]
    arrays: dict[str, np.ndarray] = {}
    # The worker never gates: it leaves the optional arrays on disk.
    extra = () if private else [name for name in OPTIONAL_ARRAYS if name in described]
    # A bundle has the trees' three arrays, or none of them.
    trees = TREE_ARRAYS if any(name in described for name in TREE_ARRAYS) else ()
    for name in (*BASE_ARRAYS, *table_arrays(), *trees, *extra):
        path = directory / f"{name}.npy"
        meta = described.get(name)
        if not isinstance(meta, dict):
            raise InvalidModelError(f"model {where}: manifest does not describe {name}.npy")
        if not path.is_file():
            raise InvalidModelError(f"model {where}: {name}.npy is missing")
        if private:
            arr = _private_copy(path, meta.get("sha256"), where)
        else:
            if verify_checksums and _sha256(path) != meta.get("sha256"):
                raise InvalidModelError(f"model {where}: {name}.npy does not match its checksum")
            arr = _map(path, where, path.name)
        if list(arr.shape) != list(meta.get("shape", [])) or arr.dtype.str != meta.get("dtype"):
            raise InvalidModelError(
                f"model {where}: {name}.npy is {arr.dtype.str}{list(arr.shape)}, "
                f"manifest says {meta.get('dtype')}{meta.get('shape')}"
            )
        arrays[name] = arr
    _check_consistency(arrays, where)
    if trees:
        _check_trees(arrays, manifest, where)
    for arr in arrays.values():
        _release_pages(arr)
    # The arrays' descriptions (checksums, shapes) are checked; nothing reads them after
    # (save_bundle describes the arrays anew), and a worker holds a model per tenant.
    kept = {key: value for key, value in manifest.items() if key != "arrays"}
    base = {name: arrays.pop(name) for name in BASE_ARRAYS}
    optional = {name: arrays.pop(name, None) for name in OPTIONAL_ARRAYS}
    hashes = optional["session_hashes"]
    if hashes is not None and (hashes.dtype != np.uint64 or hashes.ndim != 1):
        raise InvalidModelError(f"model {where}: session_hashes must be uint64 [sessions]")
    return ModelBundle(
        version=str(manifest["version"]), manifest=kept, arrays=arrays, **base, **optional
    )


def served_bytes(directory: str | Path) -> int:
    """Bytes of the arrays a worker maps of the bundle (``load_bundle(private=True)``),
    from its manifest's shapes and dtypes, without reading the arrays."""
    described = _read_manifest(Path(directory))["arrays"]
    total = 0
    for name in (*BASE_ARRAYS, *table_arrays()):
        meta = described.get(name)
        if not isinstance(meta, dict):
            raise InvalidModelError(f"model {directory}: manifest does not describe {name}.npy")
        try:
            count = int(np.prod(meta.get("shape", []), dtype=np.int64))
            total += count * np.dtype(meta.get("dtype")).itemsize
        except (TypeError, ValueError) as exc:
            raise InvalidModelError(f"model {directory}: {name}.npy is misdescribed") from exc
    return total


def _map(path: Path, where: str, name: str) -> np.ndarray:
    try:
        return np.load(path, allow_pickle=False, mmap_mode="r")
    except (ValueError, OSError) as exc:
        raise InvalidModelError(f"model {where}: {name} is unreadable ({exc})") from exc


def open_files(bundle: ModelBundle) -> int:
    """Memory maps the bundle's arrays hold, each an open file (0 for arrays in memory)."""
    return sum(isinstance(arr.base, mmap.mmap) for arr in bundle.named_arrays().values())


def _private_copy(path: Path, sha256: object, where: str) -> np.ndarray:
    """A copy of ``path`` that only this process holds, checked against ``sha256``: in
    memory when the file is smaller than ``MAP_MIN_BYTES``, else mapped.

    A mapped file truncated in place kills the process that reads it (SIGBUS), and read-only
    modes do not stop root. So a large file is copied (in ``TMPDIR``) while it is hashed,
    the copy is refused unless it matches, then mapped and unlinked at once: what is mapped
    is exactly what was verified, nothing can change it, and nothing is left behind. The
    cost is one more write of the model per load and one copy per process in the page
    cache. A small file is read once, hashed and parsed from that read."""
    digest = hashlib.sha256()
    with open(path, "rb") as src:
        if os.fstat(src.fileno()).st_size < MAP_MIN_BYTES:
            data = src.read()
            if hashlib.sha256(data).hexdigest() != sha256:
                raise InvalidModelError(f"model {where}: {path.name} does not match its checksum")
            return _array(io.BytesIO(data), data, where, path.name)
    fd, copy = tempfile.mkstemp(prefix="streamrec-model-", suffix=".npy")
    try:
        with open(fd, "wb") as dst, open(path, "rb") as src:
            for chunk in iter(lambda: src.read(1 << 20), b""):
                digest.update(chunk)
                dst.write(chunk)
        if digest.hexdigest() != sha256:
            raise InvalidModelError(f"model {where}: {path.name} does not match its checksum")
        return _map_plain(copy, where, path.name)
    finally:
        os.unlink(copy)


def _map_plain(path: str, where: str, name: str) -> np.ndarray:
    """The array of a ``.npy`` file as a plain ndarray over a read-only ``mmap`` of it (an
    ``np.memmap`` keeps a dict and a Path per array: ~1 KB, 25 times per model)."""
    try:
        with open(path, "rb") as fh:
            mapping = mmap.mmap(fh.fileno(), 0, access=mmap.ACCESS_READ)
            return _array(fh, mapping, where, name)
    except (ValueError, OSError) as exc:
        raise InvalidModelError(f"model {where}: {name} is unreadable ({exc})") from exc


def _array(fh: BinaryIO, buffer: bytes | mmap.mmap, where: str, name: str) -> np.ndarray:
    """The array of the ``.npy`` file whose bytes are ``buffer`` (read-only, so the
    array is), its header read from ``fh`` (at the file's start)."""
    try:
        version = np.lib.format.read_magic(fh)
        if version not in ((1, 0), (2, 0), (3, 0)):
            raise ValueError(f"format version {version}")
        read_header = getattr(np.lib.format, f"read_array_header_{version[0]}_0")
        shape, fortran, dtype = read_header(fh, max_header_size=10_000)
        if dtype.hasobject:
            raise ValueError("object arrays are not loaded (allow_pickle=False)")
        offset = fh.tell()
        count = int(np.prod(shape, dtype=np.int64))
        if offset + count * dtype.itemsize > len(buffer):
            raise ValueError("the file is shorter than its header says")
        return np.ndarray(shape, dtype, buffer, offset, order="F" if fortran else "C")
    except (ValueError, OSError) as exc:
        raise InvalidModelError(f"model {where}: {name} is unreadable ({exc})") from exc


def _release_pages(arr: np.ndarray) -> None:
    """Validation read every page of the memory map; hand them back, so a process holding
    many models pays in resident memory only for the rows it actually ranks with (they
    fault back in from the page cache on use)."""
    mapping = getattr(arr, "_mmap", arr.base)
    if isinstance(mapping, mmap.mmap) and hasattr(mmap, "MADV_DONTNEED"):
        mapping.madvise(mmap.MADV_DONTNEED)


def _read_manifest(directory: Path) -> dict[str, Any]:
    path = directory / MANIFEST
    if not path.is_file():
        raise InvalidModelError(f"model {directory}: {MANIFEST} is missing")
    try:
        manifest = json.loads(path.read_text(encoding="utf-8"))
    except (ValueError, UnicodeDecodeError) as exc:
        raise InvalidModelError(f"model {directory}: {MANIFEST} is not valid JSON ({exc})") from exc
    if not isinstance(manifest, dict) or manifest.get("format") != BUNDLE_FORMAT:
        raise InvalidModelError(f"model {directory}: {MANIFEST} is not a streamrec bundle manifest")
    found = manifest.get("format_version")
    if found not in READ_FORMAT_VERSIONS:
        if isinstance(found, int) and found < BUNDLE_FORMAT_VERSION:
            advice = "retrain the tenant (`streamrec train`, or the trainer's next pass)"
            age = "older"
        elif isinstance(found, int):
            advice, age = "upgrade streamrec to serve it", "newer"
        else:
            advice, age = "retrain the tenant", "not one"
        raise InvalidModelError(
            f"model {directory}: model bundle format {found!r} is {age} "
            f"{'that' if age == 'not one' else 'than'} this streamrec reads "
            f"({BUNDLE_FORMAT_VERSION}): {advice}"
        )
    if not isinstance(manifest.get("version"), str) or not isinstance(manifest.get("arrays"), dict):
        raise InvalidModelError(f"model {directory}: {MANIFEST} lacks a version or array list")
    return manifest


def _check_consistency(a: dict[str, np.ndarray], where: str) -> None:
    """Shapes, dtypes and index ranges that ranking relies on to never index out of bounds."""

    def fail(msg: str) -> None:
        raise InvalidModelError(f"model {where}: {msg}")

    items, vectors, clusters, centroids = a["items"], a["vectors"], a["clusters"], a["centroids"]
    neighbours, scores, popularity = a["neighbours"], a["neighbour_scores"], a["popularity"]
    if items.ndim != 1 or items.dtype.kind != "U" or len(items) == 0:
        fail("items must be a non-empty 1-D unicode array")
    n = len(items)
    if vectors.dtype != np.float32 or vectors.ndim != 2 or vectors.shape[0] != n:
        fail(f"vectors must be float32 [{n}, d]")
    if clusters.dtype != np.int32 or clusters.shape != (n,):
        fail(f"clusters must be int32 [{n}]")
    if (
        centroids.dtype != np.float32
        or centroids.ndim != 2
        or centroids.shape[1] != vectors.shape[1]
    ):
        fail("centroids must be float32 [c, d] with the vectors' d")
    if clusters.min() < 0 or clusters.max() >= centroids.shape[0]:
        fail("cluster ids out of range")
    if neighbours.dtype != np.int32 or neighbours.ndim != 2 or neighbours.shape[0] != n:
        fail(f"neighbours must be int32 [{n}, m]")
    if scores.dtype != np.float32 or scores.shape != neighbours.shape:
        fail("neighbour_scores must be float32 with the neighbours' shape")
    if neighbours.size and (neighbours.min() < 0 or neighbours.max() >= n):
        fail("neighbour ids out of range")
    if not np.isfinite(vectors).all() or not np.isfinite(scores).all():
        fail("vectors or scores contain NaN or infinity")
    if popularity.dtype != np.int32 or popularity.shape != (n,):
        fail(f"popularity must be int32 [{n}]")
    if not np.array_equal(np.sort(popularity), np.arange(n)):
        fail("popularity is not a permutation of the items")
    if len(np.unique(items)) != n:
        fail("item ids are not unique")
    category = a["item_category"]
    if category.dtype != np.int32 or category.shape != (n,) or (n and category.min() < -1):
        fail(f"item_category must be int32 [{n}], -1 or a category code")
    for feature in features.LAYOUT.item_features:
        values = a[feature.array]
        if values.dtype != np.float32 or values.shape != (n,) or not np.isfinite(values).all():
            fail(f"{feature.array} must be finite float32 [{n}]")
    keys = a["context_keys"]
    if keys.dtype != np.uint64 or keys.ndim != 1 or (keys.size > 1 and (np.diff(keys) <= 0).any()):
        fail("context_keys must be strictly increasing uint64")
    n_sessions = len(a["sessions_ptr"]) - 1
    sizes = {
        "items": n,
        "sessions": n_sessions,
        "contexts": len(keys),
        "categories": int(category.max(initial=-1)) + 1,
    }
    for lst in features.LAYOUT.lists:
        ptr_name, idx_name = lst.arrays[:2]
        ptr, idx, rows = a[ptr_name], a[idx_name], sizes[lst.rows]
        if ptr.dtype != np.int32 or ptr.shape != (rows + 1,) or idx.dtype != np.int32:
            fail(f"{ptr_name} must be int32 [{rows + 1}] and {idx_name} int32")
        if ptr[0] != 0 or ptr[-1] != len(idx) or (np.diff(ptr) < 0).any():
            fail(f"{ptr_name} is not a valid CSR row pointer for {idx_name}")
        if idx.size and (idx.min() < 0 or idx.max() >= sizes[lst.over]):
            fail(f"{idx_name} out of range")
        if lst.weighted:
            w_name = f"{lst.name}_w"
            w = a[w_name]
            if w.dtype != np.float32 or w.shape != idx.shape or not np.isfinite(w).all():
                fail(f"{w_name} must be finite float32 with the shape of {idx_name}")


def _check_trees(a: dict[str, np.ndarray], manifest: dict[str, Any], where: str) -> None:
    """The trees' arrays (``models.trees``): complete trees whose splits read this
    table's features and the columns after them that the walk knows (the manifest names
    both; a format-6 bundle's trees, which do not name the second, are given theirs)."""
    feature, threshold, leaf = (a[name] for name in TREE_ARRAYS)
    described = manifest.get("trees")
    names = described.get("features") if isinstance(described, dict) else None
    if not isinstance(described, dict) or names != list(features.LAYOUT.names):
        raise InvalidModelError(
            f"model {where}: its trees were fitted on other features than this streamrec "
            "ranks with: retrain the tenant"
        )
    if manifest.get("format_version") == 6 and "columns" not in described:
        described["columns"] = list(GAP_COLUMNS)
    try:
        extra = column_codes(described.get("columns"))
    except ValueError as exc:
        raise InvalidModelError(f"model {where}: {exc}: retrain the tenant") from exc
    n_trees, inner = feature.shape if feature.ndim == 2 else (-1, -1)
    if (
        feature.dtype != np.int32
        or threshold.dtype != np.float64
        or leaf.dtype != np.float64
        or threshold.shape != feature.shape
        or leaf.shape != (n_trees, inner + 1)
        or inner < 1
        or (inner + 1) & inner  # 2^depth - 1 splits
        or inner + 1 > 2**MAX_DEPTH
    ):
        raise InvalidModelError(
            f"model {where}: trees must be int32 and float64 [trees, 2^depth - 1] splits "
            f"and float64 [trees, 2^depth] leaves, at most {MAX_DEPTH} levels deep"
        )
    columns = features.LAYOUT.n_features + extra.size
    if feature.size and (feature.min() < 0 or feature.max() >= columns):
        raise InvalidModelError(
            f"model {where}: a tree splits on a column out of range (the features and the "
            f"trees' {extra.size} named columns make {columns})"
        )
    if np.isnan(threshold).any() or not np.isfinite(leaf).all():
        raise InvalidModelError(f"model {where}: tree thresholds or leaves are not numbers")


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def _json_default(value: Any) -> Any:
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, Path):
        return str(value)
    raise TypeError(f"{type(value).__name__} is not JSON serialisable")

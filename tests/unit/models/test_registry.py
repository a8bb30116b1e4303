"""Registry: versions appear whole or not at all, promote is atomic, corrupt ones are refused."""

from __future__ import annotations

import json
import os
import signal
import stat
import subprocess
import sys
import threading
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest

import models.bundle as bundle_module
import models.registry as registry_module
from models.bundle import ModelBundle, load_bundle, save_bundle, served_bytes
from models.datasets import synthetic_sessions
from models.errors import InvalidModelError, NoModelError
from models.registry import Registry, UnknownVersionError
from models.train import TrainParams, train_model


@pytest.fixture(scope="module")
def bundle() -> ModelBundle:
    return train_model(
        synthetic_sessions(2000, 60, seed=2), TrainParams(epochs=2, n_clusters=4, n_neighbours=8)
    )


@pytest.fixture
def registry(tmp_path: Path) -> Registry:
    return Registry(tmp_path / "registry")


def test_served_bytes_are_what_a_worker_maps(bundle: ModelBundle, tmp_path: Path) -> None:
    save_bundle(bundle, tmp_path / "b")
    served = load_bundle(tmp_path / "b", private=True)
    mapped = sum(a.nbytes for a in served.named_arrays().values())
    assert served_bytes(tmp_path / "b") == mapped > 0
    manifest = json.loads((tmp_path / "b" / "manifest.json").read_text())
    manifest["arrays"]["vectors"]["shape"] = "many"
    (tmp_path / "b" / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(InvalidModelError, match="vectors"):
        served_bytes(tmp_path / "b")


def _open_files() -> int:
    return len(os.listdir("/proc/self/fd"))


def test_a_small_model_served_holds_no_open_file(bundle: ModelBundle, tmp_path: Path) -> None:
    save_bundle(bundle, tmp_path / "b")
    before = _open_files()
    served = load_bundle(tmp_path / "b", private=True)
    assert _open_files() == before
    assert bundle_module.open_files(served) == 0
    for name, arr in served.named_arrays().items():
        np.testing.assert_array_equal(arr, bundle.named_arrays()[name])
        assert not arr.flags.writeable  # as read-only as a map


def test_a_large_array_is_mapped_and_holds_one_open_file(
    bundle: ModelBundle, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    save_bundle(bundle, tmp_path / "b")
    threshold = (tmp_path / "b" / "vectors.npy").stat().st_size
    monkeypatch.setattr(bundle_module, "MAP_MIN_BYTES", threshold)
    names = {*bundle_module.BASE_ARRAYS, *bundle_module.table_arrays()}
    large = sum((tmp_path / "b" / f"{n}.npy").stat().st_size >= threshold for n in names)
    before = _open_files()
    served = load_bundle(tmp_path / "b", private=True)
    assert _open_files() - before == bundle_module.open_files(served) == large > 0
    np.testing.assert_array_equal(served.vectors, bundle.vectors)
    del served
    assert _open_files() == before


def test_bundle_round_trip_is_exact_and_memory_mapped(bundle: ModelBundle, tmp_path: Path) -> None:
    save_bundle(bundle, tmp_path / "b")
    loaded = load_bundle(tmp_path / "b")
    saved = bundle.named_arrays()
    assert loaded.named_arrays().keys() == saved.keys()
    for name, arr in loaded.named_arrays().items():
        assert np.array_equal(arr, saved[name]), name
    assert isinstance(loaded.vectors, np.memmap)
    assert loaded.manifest["params"] == bundle.manifest["params"]
    assert loaded.index(bundle.item_list[5]) == 5 and loaded.index("nope") is None


def test_register_numbers_versions_and_records_lineage(
    registry: Registry, bundle: ModelBundle
) -> None:
    assert registry.current_version("shop") is None
    with pytest.raises(NoModelError):
        registry.load("shop")
    v1 = registry.register("shop", bundle, {"data": {"source": "x"}})
    registry.promote("shop", v1)
    v2 = registry.register("shop", bundle, {"metrics": {"hr": 0.5}})
    assert (v1, v2) == ("v1", "v2")
    assert registry.current_version("shop") == "v1", "register alone must not promote"
    infos = registry.versions("shop")
    assert [(i.version, i.current, i.parent) for i in infos] == [
        ("v1", True, None),
        ("v2", False, "v1"),
    ]
    assert infos[1].metrics == {"hr": 0.5}
    assert registry.load("shop").version == "v1"
    assert registry.load("shop", "v1").manifest["data"] == {"source": "x"}
    assert "data" not in registry.load("shop", "v2").manifest
    assert registry.tenants() == ["shop"]
    assert registry.pointer_path("shop").read_text().strip() == "v1"


def test_a_crash_while_writing_leaves_no_version(
    registry: Registry, bundle: ModelBundle, monkeypatch: pytest.MonkeyPatch
) -> None:
    registry.promote("t", registry.register("t", bundle))

    def crash(bundle: ModelBundle, directory: Path, **options: object) -> None:
        (Path(directory) / "items.npy").write_bytes(b"half")
        raise OSError("disk full")

    monkeypatch.setattr(registry_module, "save_bundle", crash)
    with pytest.raises(OSError, match="disk full"):
        registry.register("t", bundle)
    assert [i.version for i in registry.versions("t")] == ["v1"]
    hidden = [p.name for p in (registry.root / "t").iterdir() if p.name.startswith(".")]
    assert hidden == []
    assert registry.current_version("t") == "v1"


def test_a_bundle_is_written_whole_then_flushed_in_one_go(
    bundle: ModelBundle, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # One flush a file, one after the other, waits for the disk as many times as there are
    # files; issued together, the filesystem commits them at once. Each flush here waits
    # for the others to start: flushed one by one, the first never returns.
    files = len(bundle.named_arrays()) + 1  # and manifest.json
    started = threading.Barrier(files, timeout=10)
    written: list[set[str]] = []
    real_fsync = os.fsync

    def fsync(fd: int) -> None:
        if stat.S_ISREG(os.fstat(fd).st_mode):
            written.append({p.name for p in (tmp_path / "b").iterdir()})
            started.wait()
        real_fsync(fd)

    monkeypatch.setattr(bundle_module.os, "fsync", fsync)
    save_bundle(bundle, tmp_path / "b")
    every = {p.name for p in (tmp_path / "b").iterdir()}
    assert len(written) == files == len(every)
    assert all(seen == every for seen in written), "a file flushed before the last was written"
    loaded = load_bundle(tmp_path / "b")
    for name, arr in bundle.named_arrays().items():
        np.testing.assert_array_equal(loaded.named_arrays()[name], arr)


# Registers a saved bundle and is SIGKILLed at the N-th fsync (or at the rename that
# publishes the version, N = 0), as a trainer killed while it writes.
_KILLED_WHILE_REGISTERING = """
import os, signal, sys
import models.registry
from models.bundle import load_bundle
from models.registry import Registry
bundle, at = load_bundle(sys.argv[2]), int(sys.argv[3])
calls = [0]
real_fsync, real_replace = os.fsync, os.replace
def fsync(fd):
    calls[0] += 1
    if calls[0] == at:
        os.kill(os.getpid(), signal.SIGKILL)
    real_fsync(fd)
def replace(src, dst):
    if at == 0:
        os.kill(os.getpid(), signal.SIGKILL)
    real_replace(src, dst)
os.fsync, models.registry.os.replace = fsync, replace
Registry(sys.argv[1]).register("t", bundle)
print("registered")
"""


@pytest.mark.parametrize("at", [1, 5, 20, 0])
def test_a_trainer_killed_while_registering_leaves_no_half_version(
    registry: Registry, bundle: ModelBundle, tmp_path: Path, at: int
) -> None:
    save_bundle(bundle, tmp_path / "saved")
    done = subprocess.run(
        [sys.executable, "-c", _KILLED_WHILE_REGISTERING, str(registry.root),
         str(tmp_path / "saved"), str(at)],
        capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert done.returncode == -signal.SIGKILL, (done.returncode, done.stderr[-2000:])
    assert registry.versions("t") == []
    # Killed after claiming its name (an empty v1), the next version is v2.
    version = registry.register("t", bundle)
    registry.promote("t", version)
    assert [i.version for i in registry.versions("t")] == [version]
    assert registry.load("t").version == version


def test_promote_switches_the_pointer_atomically(
    registry: Registry, bundle: ModelBundle, monkeypatch: pytest.MonkeyPatch
) -> None:
    registry.promote("t", registry.register("t", bundle))
    v2 = registry.register("t", bundle)
    real_replace = os.replace

    def replace_then_check(src: str, dst: str) -> None:
        # Until the single rename the old pointer is intact: readers see v1 or v2, never half.
        assert registry.current_version("t") == "v1"
        real_replace(src, dst)

    monkeypatch.setattr(registry_module.os, "replace", replace_then_check)
    registry.promote("t", v2)
    assert registry.current_version("t") == "v2"

    def failing_replace(src: str, dst: str) -> None:
        raise OSError("power cut")

    monkeypatch.setattr(registry_module.os, "replace", failing_replace)
    with pytest.raises(OSError):
        registry.promote("t", "v1")
    assert registry.current_version("t") == "v2"
    assert [p.name for p in (registry.root / "t").iterdir() if p.name.startswith(".CURRENT")] == []


def _corrupt_missing_file(d: Path) -> None:
    (d / "neighbours.npy").unlink()


def _corrupt_truncated(d: Path) -> None:
    data = (d / "vectors.npy").read_bytes()
    (d / "vectors.npy").write_bytes(data[: len(data) // 2])


def _corrupt_wrong_shape(d: Path) -> None:
    # A consistent-looking file and manifest entry with the wrong shape: checksums alone miss it.
    np.save(d / "clusters.npy", np.zeros(3, dtype=np.int32))
    manifest = json.loads((d / "manifest.json").read_text())
    from models.bundle import _sha256

    manifest["arrays"]["clusters"].update(shape=[3], sha256=_sha256(d / "clusters.npy"))
    (d / "manifest.json").write_text(json.dumps(manifest))


def _corrupt_bad_manifest(d: Path) -> None:
    (d / "manifest.json").write_text("{not json")


def _corrupt_flipped_byte(d: Path) -> None:
    data = bytearray((d / "neighbour_scores.npy").read_bytes())
    data[-1] ^= 0xFF
    (d / "neighbour_scores.npy").write_bytes(bytes(data))


def _corrupt_neighbour_out_of_range(d: Path) -> None:
    arr = np.load(d / "neighbours.npy")
    arr[0, 0] = 10_000
    np.save(d / "neighbours.npy", arr)
    manifest = json.loads((d / "manifest.json").read_text())
    from models.bundle import _sha256

    manifest["arrays"]["neighbours"]["sha256"] = _sha256(d / "neighbours.npy")
    (d / "manifest.json").write_text(json.dumps(manifest))


@pytest.mark.parametrize(
    ("corrupt", "message"),
    [
        (_corrupt_missing_file, "neighbours.npy is missing"),
        (_corrupt_truncated, "vectors.npy"),
        (_corrupt_wrong_shape, "clusters must be int32"),
        (_corrupt_bad_manifest, "not valid JSON"),
        (_corrupt_flipped_byte, "checksum"),
        (_corrupt_neighbour_out_of_range, "out of range"),
    ],
)
def test_corrupted_versions_are_refused_and_the_current_one_stays(
    registry: Registry,
    bundle: ModelBundle,
    corrupt: Callable[[Path], None],
    message: str,
) -> None:
    registry.promote("t", registry.register("t", bundle))
    v2 = registry.register("t", bundle)
    corrupt(registry.root / "t" / v2)
    with pytest.raises(InvalidModelError, match=message):
        registry.promote("t", v2)
    assert registry.current_version("t") == "v1"
    assert registry.load("t").version == "v1"
    with pytest.raises(InvalidModelError):
        registry.load("t", v2)
    with pytest.raises(InvalidModelError, match=message):
        registry.load("t", v2, private=True)


# Loads a version as the worker does, truncates every file of it in place, then reads
# every array: a process that mapped the files themselves dies of SIGBUS there.
_TRUNCATE_UNDER_A_READER = """
import sys
from pathlib import Path
import numpy as np
from models.registry import Registry
registry = Registry(sys.argv[1])
bundle = registry.load("t", private=sys.argv[2] == "private")
for path in (registry.root / "t" / "v1").glob("*.npy"):
    path.chmod(0o644)
    with open(path, "r+b") as fh:
        fh.truncate(128)
total = sum(
    float(np.asarray(bundle.named_arrays()[n], dtype=np.float64).sum())
    for n in ("vectors", "neighbours", "sessions_idx", "context_idx")
)
print("read", total)
"""


def test_a_private_load_survives_its_files_truncated_in_place(
    registry: Registry, bundle: ModelBundle, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    registry.promote("t", registry.register("t", bundle))
    scratch = tmp_path / "scratch"
    scratch.mkdir()
    monkeypatch.setenv("TMPDIR", str(scratch))
    done = subprocess.run(
        [sys.executable, "-c", _TRUNCATE_UNDER_A_READER, str(registry.root), "private"],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0, (done.returncode, done.stderr[-2000:])
    assert done.stdout.startswith("read")
    # The copies were unlinked as soon as they were mapped.
    assert list(scratch.iterdir()) == []


def test_a_corrupted_current_version_fails_to_load_without_moving_the_pointer(
    registry: Registry, bundle: ModelBundle
) -> None:
    registry.promote("t", registry.register("t", bundle))
    _corrupt_missing_file(registry.root / "t" / "v1")
    with pytest.raises(InvalidModelError):
        registry.load("t")
    assert registry.current_version("t") == "v1"


def test_rollback_goes_back_through_the_promotion_history(
    registry: Registry, bundle: ModelBundle
) -> None:
    for _ in range(3):
        registry.promote("t", registry.register("t", bundle))
    assert registry.current_version("t") == "v3"
    assert registry.rollback("t") == "v2"
    assert registry.rollback("t") == "v1"
    with pytest.raises(UnknownVersionError, match="no earlier promoted version"):
        registry.rollback("t")
    assert registry.rollback("t", "v3") == "v3"
    assert registry.current_version("t") == "v3"
    assert registry.rollback("t") == "v1", "v3 was re-instated from v1, so going back returns to v1"
    assert all(i.promoted for i in registry.versions("t"))


def test_unknown_versions_and_bad_tenant_names(registry: Registry, bundle: ModelBundle) -> None:
    registry.promote("t", registry.register("t", bundle))
    with pytest.raises(UnknownVersionError, match="no version v9"):
        registry.promote("t", "v9")
    with pytest.raises(UnknownVersionError):
        registry.rollback("t", "latest")
    with pytest.raises(Exception, match="not a valid name"):
        registry.register("../escape", bundle)

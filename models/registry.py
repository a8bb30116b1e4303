"""A directory of model versions per tenant with an atomic CURRENT pointer.

Layout::

    root/<tenant>/v1/{*.npy, manifest.json}
    root/<tenant>/v2/...
    root/<tenant>/CURRENT          "v2\\n", replaced atomically (temp file + os.replace)
    root/<tenant>/HISTORY.jsonl    append-only log of promotions and rollbacks

A version is written into a hidden temp directory, fsync'ed, then renamed into place,
so readers never see half of one. Promotion validates the version fully before the
pointer moves; a corrupted version is refused and the one in service stays.

Control state (MODE, KEYS.json, RULES.json, POLICY.json, CURRENT, HISTORY.jsonl) changes
under the tenant's lock (``flock`` on ``.locks/<tenant>.lock``): a read-modify-write from any
process (HTTP, CLI, trainer, rollouts) sees the previous change, and each file is replaced
atomically and fsync'ed (file and directory) before the change returns. Readers take no
lock: they see the file before or after a change, never half of one. This holds on one
machine, or on a shared filesystem whose POSIX locks work across its clients.
"""

from __future__ import annotations

import fcntl
import json
import os
import re
import shutil
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, replace
from pathlib import Path
from typing import IO, Any, TypeVar

from models.bundle import MANIFEST, ModelBundle, load_bundle, save_bundle
from models.errors import InvalidModelError, NoModelError, StreamrecError
from models.names import TenantRefusal, is_tenant, tenant_refusal
from models.rules import ServingRules

CURRENT = "CURRENT"
HISTORY = "HISTORY.jsonl"
# The tenant's on / freeze / off switch, kept here (durable) and cached in Redis: a Redis
# restart must not switch a tenant back on.
MODE = "MODE"
MODES = ("on", "freeze", "off")
# The tenant's API keys as SHA-256 digests, never the keys: {key_id: {"sha256", "created"}}.
KEYS = "KEYS.json"
# The tenant's serving rules (models.rules.ServingRules as JSON).
RULES = "RULES.json"
LOCK = ".lock"
TRAINING_LOCK = ".training"
LOCKS = ".locks"  # not a tenant name (one never starts with a dot)
# Held while a tenant is created: a name is checked against every other at once.
CREATION_LOCK = ".create"
_VERSION_RE = re.compile(r"v(\d+)")
# Locks this thread holds, by lock file: flock is per open file, so taking it again
# through a second descriptor in the same thread would wait for ourselves.
_held = threading.local()
T = TypeVar("T")


class UnknownVersionError(StreamrecError):
    """A version named by the user does not exist."""


class NothingToRollBack(UnknownVersionError):
    """A rollback asked of a tenant with no earlier promoted version."""


class TenantNameRefused(StreamrecError, ValueError):
    """A name that may not become a new tenant (``refusal`` says why)."""

    def __init__(self, refusal: TenantRefusal) -> None:
        super().__init__(refusal.reason)
        self.refusal = refusal


class DamagedFileError(StreamrecError):
    """A tenant's control file exists but cannot be read or understood: that tenant is
    disabled until it is repaired (the others are not affected)."""

    def __init__(self, tenant: str, path: Path, reason: str) -> None:
        super().__init__(f"tenant {tenant!r}: {path.name} is damaged: {reason}")
        self.tenant, self.path, self.reason = tenant, path, reason


@dataclass(frozen=True)
class VersionInfo:
    version: str
    created: str | None  # ISO 8601 UTC
    parent: str | None  # the version in service when this one was registered
    current: bool
    promoted: bool  # has ever been promoted
    metrics: dict[str, Any]
    counts: dict[str, Any]
    valid: bool  # manifest readable (a full check happens on promote/load)


class Registry:
    def __init__(self, root: str | Path) -> None:
        self.root = Path(root)

    @contextmanager
    def locked(self, tenant: str) -> Iterator[Path]:
        """Hold the tenant's lock (exclusive, across processes; re-entrant in a thread):
        every change of its control state, and every read that decides one, inside.
        The lock files live apart (``<root>/.locks``): taking a lock never creates a
        tenant."""
        tenant_dir = self._tenant_dir(tenant)
        with self._lock_file(f"{tenant}{LOCK}"):
            yield tenant_dir

    @contextmanager
    def training(self, tenant: str) -> Iterator[None]:
        """Held while a trainer retrains the tenant (across processes, released when its
        holder dies): a second trainer waits, then sees what the first registered. Apart
        from :meth:`locked`, which guards short changes of control state."""
        self._tenant_dir(tenant)  # a valid name
        with self._lock_file(f"{tenant}{TRAINING_LOCK}"):
            yield

    @contextmanager
    def _lock_file(self, name: str) -> Iterator[None]:
        locks = self.root / LOCKS
        locks.mkdir(parents=True, exist_ok=True)
        path = os.path.abspath(locks / name)
        held: dict[str, int] = _held.__dict__.setdefault("locks", {})
        if held.get(path):
            held[path] += 1
            try:
                yield
            finally:
                held[path] -= 1
            return
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            held[path] = 1
            try:
                yield
            finally:
                del held[path]
        finally:
            os.close(fd)  # releases the lock

    def each_tenant(
        self, read: Callable[[str], T]
    ) -> tuple[dict[str, T], dict[str, DamagedFileError]]:
        """``read`` of every tenant, and the tenants whose files it found damaged: one
        tenant's damaged file never stops the reading of the others."""
        found: dict[str, T] = {}
        damaged: dict[str, DamagedFileError] = {}
        for tenant in self.tenants():
            try:
                found[tenant] = read(tenant)
            except DamagedFileError as exc:
                damaged[tenant] = exc
        return found, damaged

    # -- reading ---------------------------------------------------------------------------
    def tenants(self) -> list[str]:
        if not self.root.is_dir():
            return []
        return sorted(p.name for p in self.root.iterdir() if p.is_dir() and is_tenant(p.name))

    def versions(self, tenant: str) -> list[VersionInfo]:
        """All versions of a tenant, oldest first."""
        current = self.current_version(tenant)
        promoted = {e["version"] for e in self._history(tenant)}
        infos = []
        for version in self._version_names(tenant):
            if self._claimed_only(tenant, version):
                continue
            manifest = self._manifest(tenant, version)
            infos.append(
                VersionInfo(
                    version=version,
                    created=manifest.get("created"),
                    parent=manifest.get("parent"),
                    current=version == current,
                    promoted=version in promoted or version == current,
                    metrics=dict(manifest.get("metrics") or {}),
                    counts=dict(manifest.get("counts") or {}),
                    valid=bool(manifest),
                )
            )
        return infos

    def version_dir(self, tenant: str, version: str) -> Path:
        return self._version_dir(tenant, version)

    def manifest(self, tenant: str, version: str) -> dict[str, Any]:
        """A version's manifest as stored ({} when unreadable)."""
        return self._manifest(tenant, version)

    def prune_unpromoted(
        self, tenant: str, keep: int, protect: tuple[str, ...] | set[str] = ()
    ) -> list[str]:
        """Delete the oldest versions never promoted beyond the newest ``keep`` of them;
        never the one in service, one in the promotion history (a rollback target) or
        one in ``protect`` (an experiment's arms). The names deleted."""
        with self.locked(tenant):
            promoted = set(self._promotion_stack(tenant)) | {
                e["version"] for e in self._history(tenant)
            }
            current = self.current_version(tenant)
            unpromoted = [
                v
                for v in self._version_names(tenant)
                if v not in promoted and v != current and v not in protect
            ]
            doomed = unpromoted[: max(0, len(unpromoted) - keep)]
            for version in doomed:
                path = self._version_dir(tenant, version)
                # Renamed away first, so no reader ever sees half a version.
                trash = path.with_name(f".deleted-{version}-{time.time_ns()}")
                os.replace(path, trash)
                shutil.rmtree(trash, ignore_errors=True)
        return doomed

    def promoted_versions(self, tenant: str) -> list[str]:
        """Versions promoted and not rolled back, oldest first (the last is in service)."""
        return self._promotion_stack(tenant)

    def pointer_path(self, tenant: str) -> Path:
        """The CURRENT file; workers stat it to notice a swap cheaply."""
        return self._tenant_dir(tenant) / CURRENT

    def current_version(self, tenant: str) -> str | None:
        """What CURRENT names (not checked: loading it refuses a garbled name, for this
        tenant only); ``DamagedFileError`` when it cannot be read."""
        path = self.pointer_path(tenant)
        try:
            raw = path.read_bytes()
        except FileNotFoundError:
            return None
        except OSError as exc:
            raise DamagedFileError(tenant, path, str(exc) or type(exc).__name__) from None
        return raw.decode("utf-8", "replace").strip() or None

    def load(
        self, tenant: str, version: str | None = None, *, private: bool = False
    ) -> ModelBundle:
        """Load a version (default: the current one), fully validated; ``private`` maps
        verified copies of its files (``models.bundle.load_bundle``)."""
        if version is None:
            version = self.current_version(tenant)
            if version is None:
                raise NoModelError(
                    f"tenant {tenant!r} has no promoted model; run `streamrec train`"
                )
        path = self._version_dir(tenant, version)
        if not path.is_dir():
            raise InvalidModelError(
                f"tenant {tenant!r}: version {version} does not exist in {self.root}"
            )
        bundle = load_bundle(path, private=private)
        if bundle.version != version:
            raise InvalidModelError(
                f"tenant {tenant!r}: directory {version} holds a bundle named {bundle.version}"
            )
        return bundle

    def mode(self, tenant: str) -> str | None:
        """The tenant's switch as last set with :meth:`set_mode`; None if never set.
        A MODE file naming no mode is damaged (``DamagedFileError``): guessing ``on``
        could switch on a tenant that was off."""
        text = self.control_text(tenant, MODE)
        if text is None:
            return None
        value = text.strip()
        if value not in MODES:
            raise DamagedFileError(
                tenant, self._tenant_dir(tenant) / MODE, f"{value[:40]!r} is not one of {MODES}"
            )
        return value

    def modes(self) -> dict[str, str]:
        """Every tenant whose switch was set, with its mode (tenants whose MODE is damaged
        are left out)."""
        found, _ = self.each_tenant(self.mode)
        return {t: m for t, m in found.items() if m is not None}

    # -- writing ---------------------------------------------------------------------------
    def set_mode(self, tenant: str, mode: str) -> None:
        if mode not in MODES:
            raise StreamrecError(f"mode must be one of {', '.join(MODES)}, not {mode!r}")
        with self.locked(tenant) as tenant_dir:
            _atomic_write(tenant_dir / MODE, mode + "\n")

    # -- tenants: existence, keys, serving rules (durable; Redis caches them) ------------
    def exists(self, tenant: str) -> bool:
        return is_tenant(tenant) and self._tenant_dir(tenant).is_dir()

    def create_tenant(self, tenant: str) -> bool:
        """Create the tenant (its directory and its ``on`` switch); False if it existed.
        :class:`TenantNameRefused` for a name no new tenant may have, checked against
        every tenant under one lock, so two lookalikes created at once cannot both pass."""
        tenant_dir = self._tenant_dir(tenant)
        with self._lock_file(CREATION_LOCK):
            refusal = tenant_refusal(tenant, self.tenants())
            if refusal is not None:
                raise TenantNameRefused(refusal)
            try:
                tenant_dir.mkdir(parents=True)
            except FileExistsError:
                return False
        with self.locked(tenant):
            if not (tenant_dir / MODE).exists():
                _atomic_write(tenant_dir / MODE, "on\n")
        return True

    def tenant_modes(self) -> dict[str, str]:
        """Every tenant that exists, with its mode (``on`` unless set; tenants whose MODE
        is damaged are left out)."""
        found, _ = self.each_tenant(lambda t: self.mode(t) or "on")
        return found

    def keys(self, tenant: str) -> dict[str, dict[str, Any]]:
        keys = self._read_json(tenant, KEYS)
        for key_id, entry in keys.items():
            if not isinstance(entry, dict) or not isinstance(entry.get("sha256"), str):
                raise DamagedFileError(
                    tenant, self._tenant_dir(tenant) / KEYS, f"key {key_id[:40]!r} has no digest"
                )
        return keys

    def all_keys(self) -> dict[str, tuple[str, str, bool]]:
        """Every key's digest -> (tenant, key id, active). A revoked key stays listed
        (inactive): a tenant that ever had a key never becomes open again. Tenants whose
        KEYS.json is damaged are left out (see :meth:`each_tenant` to know which)."""
        found, _ = self.each_tenant(self.keys)
        return key_entries(found)

    def add_key(self, tenant: str, key_id: str, sha256: str) -> None:
        with self.locked(tenant) as tenant_dir:
            keys = self.keys(tenant)
            keys[key_id] = {
                "sha256": sha256,
                "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
            }
            _atomic_write(tenant_dir / KEYS, json.dumps(keys, indent=1) + "\n")

    def revoke_key(self, tenant: str, key_id: str) -> str | None:
        """Mark a key revoked (on disk when this returns); its digest, or None if the
        tenant has no such active key."""
        with self.locked(tenant) as tenant_dir:
            keys = self.keys(tenant)
            entry = keys.get(key_id)
            if entry is None or entry.get("revoked"):
                return None
            entry["revoked"] = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
            _atomic_write(tenant_dir / KEYS, json.dumps(keys, indent=1) + "\n")
            return str(entry["sha256"])

    def rules(self, tenant: str) -> dict[str, Any]:
        """The tenant's serving rules as stored; ``DamagedFileError`` unless they are
        rules (serving without them could show what they ban)."""
        rules = self._read_json(tenant, RULES)
        try:
            ServingRules.from_dict(rules)
        except ValueError as exc:
            raise DamagedFileError(tenant, self._tenant_dir(tenant) / RULES, str(exc)) from None
        return rules

    def all_rules(self) -> dict[str, dict[str, Any]]:
        """Every tenant's rules that has some (tenants whose RULES.json is damaged are
        left out)."""
        found, _ = self.each_tenant(self.rules)
        return {t: r for t, r in found.items() if r}

    def set_rules(self, tenant: str, rules: dict[str, Any]) -> None:
        with self.locked(tenant) as tenant_dir:
            _atomic_write(tenant_dir / RULES, json.dumps(rules, sort_keys=True) + "\n")

    def control_text(self, tenant: str, name: str) -> str | None:
        """A control file's text; None when there is none; ``DamagedFileError`` when it
        cannot be read."""
        path = self._tenant_dir(tenant) / name
        try:
            return path.read_text(encoding="utf-8")
        except FileNotFoundError:
            return None
        except (OSError, UnicodeDecodeError) as exc:
            raise DamagedFileError(tenant, path, str(exc) or type(exc).__name__) from None

    def _read_json(self, tenant: str, name: str) -> dict[str, Any]:
        text = self.control_text(tenant, name)
        if text is None:
            return {}
        path = self._tenant_dir(tenant) / name
        try:
            value = json.loads(text)
        except (ValueError, RecursionError) as exc:
            raise DamagedFileError(tenant, path, f"not valid JSON: {exc}") from None
        if not isinstance(value, dict):
            raise DamagedFileError(tenant, path, f"a JSON {type(value).__name__}, not an object")
        return value

    def register(
        self, tenant: str, bundle: ModelBundle, extra_manifest: dict[str, Any] | None = None
    ) -> str:
        """Store ``bundle`` as the next version (not promoted) and return its name."""
        tenant_dir = self._tenant_dir(tenant)
        tenant_dir.mkdir(parents=True, exist_ok=True)
        staging = Path(tempfile.mkdtemp(prefix=".staging-", dir=tenant_dir))
        try:
            while True:
                version = f"v{self._next_number(tenant)}"
                manifest = {
                    **bundle.manifest,
                    **(extra_manifest or {}),
                    "tenant": tenant,
                    "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
                    "parent": self.current_version(tenant),
                }
                # A registered version never changes: read-only files keep a mistaken
                # write (or truncation) from reaching arrays a worker has mapped.
                save_bundle(
                    replace(bundle, version=version, manifest=manifest), staging, read_only=True
                )
                target = self._version_dir(tenant, version)
                try:
                    # mkdir claims the name (fails if a concurrent trainer took it); renaming
                    # onto our own empty directory then publishes the whole version at once.
                    target.mkdir()
                except FileExistsError:
                    continue
                os.replace(staging, target)
                _fsync_dir(tenant_dir)
                return version
        finally:
            if staging.exists():
                shutil.rmtree(staging, ignore_errors=True)

    def promote(self, tenant: str, version: str) -> None:
        """Validate ``version`` fully, then switch CURRENT to it."""
        self._require(tenant, version)
        self.load(tenant, version)  # raises InvalidModelError; the pointer is untouched then
        with self.locked(tenant):
            self._require(tenant, version)  # not pruned while it was being checked
            self._switch(tenant, version, "promote")

    def rollback(self, tenant: str, version: str | None = None) -> str:
        """Go back to ``version``, or to the version promoted before the current one."""
        with self.locked(tenant):
            if version is None:
                stack = self._promotion_stack(tenant)
                if len(stack) < 2:
                    raise NothingToRollBack(
                        f"tenant {tenant!r} has no earlier promoted version to roll back to"
                    )
                version = stack[-2]
            self._require(tenant, version)
            self.load(tenant, version)
            self._switch(tenant, version, "rollback")
        return version

    # -- internals -------------------------------------------------------------------------
    def _tenant_dir(self, tenant: str) -> Path:
        if not is_tenant(tenant):
            raise StreamrecError(
                f"tenant {tenant!r} is not a valid name "
                "(letters, digits, '_', '.', '-'; at most 64)"
            )
        return self.root / tenant

    def _version_dir(self, tenant: str, version: str) -> Path:
        if not _VERSION_RE.fullmatch(version):
            raise UnknownVersionError(f"{version!r} is not a version name (like v3)")
        return self._tenant_dir(tenant) / version

    def _version_names(self, tenant: str) -> list[str]:
        tenant_dir = self._tenant_dir(tenant)
        if not tenant_dir.is_dir():
            return []
        names = [
            p.name for p in tenant_dir.iterdir() if p.is_dir() and _VERSION_RE.fullmatch(p.name)
        ]
        return sorted(names, key=lambda v: int(v[1:]))

    def _claimed_only(self, tenant: str, version: str) -> bool:
        """An empty version directory: a name :meth:`register` claimed and has not (or, its
        process killed, never) published a version under. Not a version."""
        return next(self._version_dir(tenant, version).iterdir(), None) is None

    def _next_number(self, tenant: str) -> int:
        names = self._version_names(tenant)
        return int(names[-1][1:]) + 1 if names else 1

    def _require(self, tenant: str, version: str) -> None:
        if not self._version_dir(tenant, version).is_dir():
            known = ", ".join(self._version_names(tenant)) or "none"
            raise UnknownVersionError(
                f"tenant {tenant!r} has no version {version} (versions: {known})"
            )

    def _manifest(self, tenant: str, version: str) -> dict[str, Any]:
        try:
            data = json.loads(
                (self._version_dir(tenant, version) / MANIFEST).read_text(encoding="utf-8")
            )
        except (OSError, ValueError):
            return {}
        return data if isinstance(data, dict) else {}

    def _switch(self, tenant: str, version: str, action: str) -> None:
        """Under the tenant's lock: the pointer moves and the history says from where."""
        tenant_dir = self._tenant_dir(tenant)
        previous = self.current_version(tenant)
        _atomic_write(tenant_dir / CURRENT, version + "\n")
        entry = {"action": action, "version": version, "previous": previous, "ts": time.time()}
        self.append_history(tenant, entry)

    def append_history(self, tenant: str, entry: dict[str, Any]) -> None:
        """One entry at the end of the tenant's ``HISTORY.jsonl``, on disk when this
        returns (promotions, rollbacks and rollout steps share the file)."""
        with self.locked(tenant) as tenant_dir:
            path = tenant_dir / HISTORY
            created = not path.exists()
            with open(path, "a", encoding="utf-8") as fh:
                fh.write(json.dumps(entry) + "\n")
                fh.flush()
                os.fsync(fh.fileno())
            if created:
                _fsync_dir(tenant_dir)

    def history_entries(self, tenant: str) -> list[dict[str, Any]]:
        """Every entry of the tenant's ``HISTORY.jsonl``, oldest first."""
        path = self._tenant_dir(tenant) / HISTORY
        if not path.is_file():
            return []
        entries = []
        for line in path.read_text(encoding="utf-8").splitlines():
            try:
                entry = json.loads(line)
            except ValueError:
                continue  # a torn last line after a crash: ignore it, the pointer is the truth
            if isinstance(entry, dict):
                entries.append(entry)
        return entries

    def _history(self, tenant: str) -> list[dict[str, Any]]:
        # Promotions and rollbacks: the only entries with a version.
        return [e for e in self.history_entries(tenant) if isinstance(e.get("version"), str)]

    def _promotion_stack(self, tenant: str) -> list[str]:
        """Promotions push, rollbacks pop back to their target: the top is what is in service."""
        stack: list[str] = []
        for entry in self._history(tenant):
            version = entry["version"]
            if entry.get("action") == "rollback" and version in stack:
                del stack[stack.index(version) + 1 :]
            elif not stack or stack[-1] != version:
                stack.append(version)
        current = self.current_version(tenant)
        if current and (not stack or stack[-1] != current):
            stack.append(current)
        return stack


def key_entries(keys: dict[str, dict[str, dict[str, Any]]]) -> dict[str, tuple[str, str, bool]]:
    """Tenant -> its KEYS.json as digest -> (tenant, key id, active)."""
    return {
        entry["sha256"]: (tenant, key_id, not entry.get("revoked"))
        for tenant, entries in keys.items()
        for key_id, entry in entries.items()
    }


@contextmanager
def atomic_file(path: Path) -> Iterator[IO[bytes]]:
    """A binary file that becomes ``path`` whole, on disk, once the block ends without
    an error (written under a temporary name in the same folder, then renamed); on an
    error, nothing is left behind."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}-", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as fh:
            yield fh
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def _atomic_write(path: Path, text: str) -> None:
    with atomic_file(path) as fh:
        fh.write(text.encode("utf-8"))
    _fsync_dir(path.parent)


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)

"""A trainer group's pass, as plain data: the records that carry its work, its
description, and the bookkeeping of what a trainer consumed and finished.

No I/O here: :mod:`stream.retrain.group` moves these through Kafka and Redis.
"""

from __future__ import annotations

import json
import time
import uuid
from collections.abc import Iterable, Mapping
from dataclasses import asdict, dataclass, field, replace
from typing import Any

Offsets = dict[int, int]  # partition -> offset


def new_pass_id(now: float | None = None) -> str:
    """Ordered by time (ids compare as strings), unique across processes."""
    ns = time.time_ns() if now is None else int(now * 1e9)
    return f"{ns:020d}-{uuid.uuid4().hex[:8]}"


@dataclass(frozen=True)
class PassRecord:
    """One tenant's work in a pass: a record of the ``retrain`` topic, keyed by tenant."""

    pass_id: str
    tenant: str

    def to_json(self) -> bytes:
        return json.dumps({"pass": self.pass_id, "tenant": self.tenant}).encode()

    @classmethod
    def from_json(cls, value: bytes | None) -> PassRecord | None:
        """None for anything that is not a pass record (it is skipped, not trained)."""
        try:
            data = json.loads(value or b"")
            return cls(str(data["pass"]), str(data["tenant"]))
        except (ValueError, TypeError, KeyError):
            return None


@dataclass(frozen=True)
class PassInfo:
    """The group's current pass, as its publisher wrote it in Redis."""

    id: str
    published: float  # when publishing began (seconds since the epoch)
    now: float  # the end of the click window every trainer reads
    window_s: float
    tenants: int
    # The retrain topic's offsets where the pass's records begin, and where they end
    # (None while they are being published).
    starts: Offsets = field(default_factory=dict)
    ends: Offsets | None = None
    # The clicks topic's end offsets when the pass was published: the log it trains on
    # (a trainer group reads it from the click archive once archived up to these).
    clicks: Offsets = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        out = asdict(self)
        out["starts"] = {str(p): o for p, o in self.starts.items()}
        out["ends"] = None if self.ends is None else {str(p): o for p, o in self.ends.items()}
        out["clicks"] = {str(p): o for p, o in self.clicks.items()}
        return out

    @classmethod
    def from_dict(cls, data: Mapping[str, Any] | None) -> PassInfo | None:
        if not data:
            return None
        try:
            ends = data.get("ends")
            return cls(
                id=str(data["id"]),
                published=float(data["published"]),
                now=float(data["now"]),
                window_s=float(data["window_s"]),
                tenants=int(data["tenants"]),
                starts={int(p): int(o) for p, o in (data.get("starts") or {}).items()},
                ends=None if ends is None else {int(p): int(o) for p, o in ends.items()},
                clicks={int(p): int(o) for p, o in (data.get("clicks") or {}).items()},
            )
        except (KeyError, TypeError, ValueError, AttributeError):
            return None

    def published_at(self, ends: Offsets) -> PassInfo:
        return replace(self, ends=dict(ends))

    def left(self, committed: Mapping[int, int]) -> int | None:
        """Records of the pass the group has not committed yet (None while publishing).
        A partition the group never committed counts from the pass's start."""
        if self.ends is None:
            return None
        return sum(
            max(0, end - max(committed.get(p, -1), self.starts.get(p, 0)))
            for p, end in self.ends.items()
        )

    def done(self, committed: Mapping[int, int]) -> bool:
        """Every record of the pass finished: the group's committed offsets reached the
        pass's end offsets in every partition it wrote to."""
        return self.left(committed) == 0


class Ledger:
    """Which records a trainer consumed and which it finished, per partition, and so the
    offsets it may commit: a partition's first unfinished record (tenants finish in any
    order; a commit never passes one still being trained)."""

    def __init__(self) -> None:
        self._taken: dict[int, list[int]] = {}  # offsets consumed, ascending
        self._finished: dict[int, set[int]] = {}
        self._committed: Offsets = {}

    def take(self, partition: int, offset: int) -> None:
        self._taken.setdefault(partition, []).append(offset)
        self._finished.setdefault(partition, set())

    def finish(self, partition: int, offset: int) -> None:
        """A record's tenant is done (ignored for a partition given up meanwhile)."""
        done = self._finished.get(partition)
        if done is not None:
            done.add(offset)

    def forget(self, partitions: Iterable[int]) -> None:
        """Partitions given up to another trainer: what is still open there is theirs."""
        for p in partitions:
            self._taken.pop(p, None)
            self._finished.pop(p, None)
            self._committed.pop(p, None)

    def to_commit(self) -> Offsets:
        """Per partition, the offset to commit now (the next record to consume), for the
        partitions where it moved since the last call."""
        out: Offsets = {}
        for p, taken in self._taken.items():
            done = self._finished[p]
            while taken and taken[0] in done:
                done.discard(taken[0])
                position = taken.pop(0) + 1
                if position > self._committed.get(p, -1):
                    out[p] = self._committed[p] = position
        return out

    def open(self) -> int:
        """Records consumed and not finished."""
        return sum(len(t) for t in self._taken.values())

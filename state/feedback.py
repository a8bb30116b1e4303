"""Feedback counters per tenant x variant in Redis time buckets, written with the batch.

The hot path never waits for them: a batch's recommendations and hits are added up in
memory (:class:`FeedbackRecorder`) and written at the start of the next batch's round
trip (``SessionStore.append_clicks(before=...)``), with the lists each session was
shown, so feedback costs no round trip of its own. A worker stopping between two
batches loses at most one batch's counts (they are statistics, not records); a
re-delivered batch is not counted twice (only fresh clicks count).

Counters, one hash per tenant and time bucket (``keys.counters``), fields
``<variant>:<name>``:
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any

from redis.asyncio import Redis

from state import keys
from state.resp import text

COUNTERS = {
    "r": "recommendations",
    "h": "hits",  # implicit: a click on an item of the session's previous list
    "ps": "hit_position_sum",  # 1-based positions of the hits, summed
    "c": "clicks",  # explicit feedback of type click
    "a": "add_to_cart",
    "b": "purchases",
}
HIT_POSITIONS = 20  # a hit's position is counted in a histogram field ``p<position>``
FEEDBACK_TYPES = {"click": "c", "add_to_cart": "a", "purchase": "b"}
# Items of a list kept in the session for implicit feedback (the top of the list: a click
# further down is unlikely to come from it).
LIST_ITEMS = 20
# Variants a worker counts explicit feedback for, per tenant and bucket: a tenant serves
# a handful at once, and a forged rec_id naming version after version must not add
# fields without end. Those beyond are not counted.
MAX_VARIANTS = 32


def encode_list(variant: str, rec_id: str, items: Iterable[str]) -> str:
    """A recommendation list as kept in its session: variant, rec_id, then the items."""
    return keys.ITEM_SEP.join((variant, rec_id, *items))


def decode_list(stored: str) -> tuple[str, str, list[str]]:
    variant, rec_id, *items = stored.split(keys.ITEM_SEP)
    return variant, rec_id, items


class FeedbackRecorder:
    """Counts and lists of the current batch, until they go out with the next one."""

    def __init__(
        self,
        *,
        bucket_s: int = 60,
        retention_s: int = 7 * 24 * 3600,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.bucket_s = bucket_s
        self.retention_s = retention_s
        self._clock = clock
        self._counts: dict[tuple[str, int], dict[str, int]] = {}
        self.lists: dict[tuple[str, str], str] = {}
        # Variants counted per tenant in the current bucket (``_variants_at``), for
        # MAX_VARIANTS.
        self._variants: dict[str, set[str]] = {}
        self._variants_at = -1

    def _bucket_start(self) -> int:
        return int(self._clock()) // self.bucket_s * self.bucket_s

    def _bucket(self, tenant: str) -> dict[str, int]:
        b = self._bucket_start()
        per = self._counts.get((tenant, b))
        if per is None:
            per = self._counts[(tenant, b)] = {}
        return per

    def _admits(self, tenant: str, variant: str) -> bool:
        b = self._bucket_start()
        if b != self._variants_at:
            self._variants, self._variants_at = {}, b
        seen = self._variants.setdefault(tenant, set())
        if variant in seen:
            return True
        if len(seen) >= MAX_VARIANTS:
            return False
        seen.add(variant)
        return True

    def recommended(self, tenant: str, variant: str, n: int = 1) -> None:
        self._admits(tenant, variant)  # the variants served come first
        per = self._bucket(tenant)
        field = f"{variant}:r"
        per[field] = per.get(field, 0) + n

    def shown(self, tenant: str, session_id: str, stored_list: str) -> None:
        """The latest list shown to a session (replaces an earlier one of the batch)."""
        self.lists[(tenant, session_id)] = stored_list

    def hit(self, tenant: str, variant: str, position: int) -> None:
        """An implicit hit at ``position`` (1-based) of a list served by ``variant``."""
        per = self._bucket(tenant)
        for field, add in (
            (f"{variant}:h", 1),
            (f"{variant}:ps", position),
            (f"{variant}:p{min(position, HIT_POSITIONS)}", 1),
        ):
            per[field] = per.get(field, 0) + add

    def explicit(self, tenant: str, variant: str, kind: str) -> None:
        if not self._admits(tenant, variant):
            return
        per = self._bucket(tenant)
        field = f"{variant}:{FEEDBACK_TYPES[kind]}"
        per[field] = per.get(field, 0) + 1

    def take(self) -> tuple[dict[tuple[str, str], str], list[list[str]]]:
        """The lists and counter commands recorded so far, forgotten here: the caller
        writes them, or hands them back with :meth:`restore` when it could not."""
        commands: list[list[str]] = []
        ttl = str(self.retention_s + self.bucket_s)
        for (tenant, bucket), per in self._counts.items():
            key = keys.counters(tenant, bucket)
            commands += [["HINCRBY", key, f, str(n)] for f, n in per.items()]
            commands.append(["EXPIRE", key, ttl])
        taken = (self.lists, commands)
        self._counts, self.lists = {}, {}
        return taken

    def restore(self, taken: tuple[dict[tuple[str, str], str], list[list[str]]]) -> None:
        """Hand back what :meth:`take` gave (newer lists win; counts are added)."""
        lists, commands = taken
        self.lists = {**lists, **self.lists}
        for cmd in commands:
            if cmd[0] == "HINCRBY":
                _, key, field, n = cmd
                tenant, bucket = keys.parse_counters(key)
                per = self._counts.setdefault((tenant, bucket), {})
                per[field] = per.get(field, 0) + int(n)

    def pending(self) -> bool:
        return bool(self._counts or self.lists)


@dataclass
class VariantCounts:
    recommendations: int = 0
    hits: int = 0
    hit_position_sum: int = 0
    clicks: int = 0
    add_to_cart: int = 0
    purchases: int = 0

    @property
    def hit_rate(self) -> float:
        return self.hits / self.recommendations if self.recommendations else 0.0


# What may label a counter (``models.experiments.is_variant``: a model version or the
# cold-start fallback), passed in by the reader: the rule is the models', not the store's.
IsVariant = Callable[[str], bool]


def parse_bucket(raw: dict[str, str], is_variant: IsVariant) -> dict[str, VariantCounts]:
    """One bucket's hash as counts per variant (fields of unknown counters, or of names
    that are not variants, ignored: a forged rec_id must not show up as an arm)."""
    out: dict[str, VariantCounts] = {}
    for field, value in raw.items():
        variant, _, name = text(field).rpartition(":")
        attr = COUNTERS.get(name)
        if attr is None or not is_variant(variant):
            continue
        counts = out.get(variant)
        if counts is None:
            counts = out[variant] = VariantCounts()
        setattr(counts, attr, getattr(counts, attr) + int(value))
    return out


def bucket_starts(since_ts: float, until_ts: float, bucket_s: int) -> list[int]:
    first = int(since_ts) // bucket_s * bucket_s
    return list(range(first, int(until_ts) + 1, bucket_s))


def read_buckets_sync(
    client: object,
    tenant: str,
    since_ts: float,
    until_ts: float,
    bucket_s: int,
    is_variant: IsVariant,
) -> list[tuple[int, dict[str, VariantCounts]]]:
    """``read_buckets`` with a sync client."""
    pipe = client.pipeline(transaction=False)  # type: ignore[attr-defined]
    starts = _queue_reads(pipe, tenant, since_ts, until_ts, bucket_s)
    return _parsed(starts, pipe.execute(), is_variant)


async def read_buckets(
    client: Redis,
    tenant: str,
    since_ts: float,
    until_ts: float,
    bucket_s: int,
    is_variant: IsVariant,
) -> list[tuple[int, dict[str, VariantCounts]]]:
    """Each bucket from ``since_ts`` to ``until_ts`` that has counts, with them."""
    pipe = client.pipeline(transaction=False)
    starts = _queue_reads(pipe, tenant, since_ts, until_ts, bucket_s)
    return _parsed(starts, await pipe.execute(), is_variant)


def _queue_reads(
    pipe: Any, tenant: str, since_ts: float, until_ts: float, bucket_s: int
) -> list[int]:
    starts = bucket_starts(since_ts, until_ts, bucket_s)
    for b in starts:
        pipe.hgetall(keys.counters(tenant, b))
    return starts


def _parsed(
    starts: list[int], replies: list[dict[str, str]], is_variant: IsVariant
) -> list[tuple[int, dict[str, VariantCounts]]]:
    return [
        (b, parse_bucket(raw, is_variant)) for b, raw in zip(starts, replies, strict=True) if raw
    ]


def totals(buckets: Iterable[tuple[int, dict[str, VariantCounts]]]) -> dict[str, VariantCounts]:
    out: dict[str, VariantCounts] = {}
    for _, per in buckets:
        for variant, c in per.items():
            t = out.setdefault(variant, VariantCounts())
            for attr in COUNTERS.values():
                setattr(t, attr, getattr(t, attr) + getattr(c, attr))
    return out

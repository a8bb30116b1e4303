"""Replay a click log into the clicks topic: the Kaggle e-shop CSV, YOOCHOOSE, any CSV.

A file becomes a :class:`ReplayTable` (clicks in replay order with their original
offsets in seconds); :func:`iter_events` turns it into (tenant, session, item, offset)
tuples, looping with fresh session ids and spreading sessions over tenants;
:func:`send_events` paces them, stamps each with the wall-clock send time as ``ts`` and
a unique ``event_id``, and sends them through a :class:`ClickProducer`. Stamping the
send time is what lets the consumer side measure event -> recommendation latency.
"""

from __future__ import annotations

import itertools
import time
import uuid
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from models.datasets import Clicks, read_clicks
from models.errors import InvalidSettingError
from producers.client import ClickProducer, DeliveryStats
from producers.progress import progress_bar
from producers.timing import Pacer, dwell_gaps, segment_cumsum

DAY_S = 86400.0
# Between two loops of a timed replay (--speedup), as if the shop had a quiet minute.
LOOP_GAP_S = 60.0
# How often (in events) the progress bar is refreshed; tqdm per event would cost more
# than the send itself.
_PROGRESS_EVERY = 500

Event = tuple[str, str, str, float]  # tenant, session id, item id, offset (s)


@dataclass(frozen=True)
class ReplayTable:
    """Clicks in the order they are replayed, with seconds since the first click."""

    session_ids: np.ndarray  # str [n]
    item_ids: np.ndarray  # str [n]
    offsets: np.ndarray  # float64 [n], non-decreasing
    session_codes: np.ndarray  # int64 [n]: 0..n_sessions-1, one per distinct session
    n_sessions: int

    def __len__(self) -> int:
        return len(self.item_ids)

    @property
    def span(self) -> float:
        return float(self.offsets[-1]) if len(self) else 0.0


def load_replay(
    path: str | Path,
    fmt: str = "auto",
    *,
    seed: int = 0,
    session_col: str | None = None,
    item_col: str | None = None,
    time_col: str | None = None,
    order_col: str | None = None,
) -> ReplayTable:
    clicks = read_clicks(
        path,
        fmt,
        session_col=session_col,
        item_col=item_col,
        time_col=time_col,
        order_col=order_col,
    )
    return prepare_replay(clicks, seed=seed)


def prepare_replay(clicks: Clicks, *, seed: int = 0) -> ReplayTable:
    """Order clicks by time (then click order) so sessions interleave as they happened."""
    ts = clicks.ts
    if len(ts) and np.all(np.mod(ts, DAY_S) == 0):
        # Dates only (the e-shop file) or no time at all: invent a time of day.
        ts = spread_within_day(clicks, seed=seed)
    order = np.lexsort((np.arange(len(ts)), clicks.order, ts))
    t = ts[order]
    codes = np.unique(clicks.session_ids, return_inverse=True)[1].ravel()
    return ReplayTable(
        session_ids=clicks.session_ids[order],
        item_ids=clicks.item_ids[order],
        offsets=(t - t[0]) if len(t) else t,
        session_codes=codes[order].astype(np.int64),
        n_sessions=int(codes.max()) + 1 if len(codes) else 0,
    )


def spread_within_day(clicks: Clicks, *, seed: int = 0) -> np.ndarray:
    """Plausible click times for a file that has dates but no time of day, seeded.

    Each session starts at a uniform time on the day of its first click; its clicks
    follow in ``order`` separated by dwell-time gaps (see ``producers.timing``).
    """
    n = len(clicks)
    rng = np.random.default_rng(seed)
    codes = np.unique(clicks.session_ids, return_inverse=True)[1].ravel()
    n_sessions = int(codes.max()) + 1
    perm = np.lexsort((np.arange(n), clicks.order, codes))  # session-major, click order
    sorted_codes = codes[perm]
    starts = np.flatnonzero(np.r_[True, sorted_codes[1:] != sorted_codes[:-1]])
    day = np.full(n_sessions, np.inf)
    np.minimum.at(day, codes, clicks.ts)
    start_of_day = rng.uniform(0.0, DAY_S, size=n_sessions)
    gaps = dwell_gaps(rng, n)
    gaps[starts] = 0.0
    spread = np.empty(n)
    spread[perm] = (day + start_of_day)[sorted_codes] + segment_cumsum(gaps, starts)
    return spread


def tenant_names(count: int, name: str = "default") -> list[str]:
    """``name`` alone, or ``name-0 .. name-(count-1)`` to spread sessions over tenants."""
    if count < 1:
        raise InvalidSettingError("the number of tenants must be at least 1")
    return [name] if count == 1 else [f"{name}-{i}" for i in range(count)]


def looped_session_id(session_id: str, loop: int, prefix: str = "") -> str:
    """Loop 0 keeps the file's ids; later loops get new ones so sessions do not merge."""
    return f"{prefix}{session_id}" if loop == 0 else f"{prefix}{session_id}-r{loop}"


def iter_events(
    table: ReplayTable,
    *,
    loops: int = 1,
    tenants: Iterable[str] = ("default",),
    session_prefix: str = "",
) -> Iterator[Event]:
    """The table ``loops`` times over; a session's tenant is fixed for the whole loop."""
    names = list(tenants)
    sids = table.session_ids.tolist()
    items = table.item_ids.tolist()
    offsets = table.offsets.tolist()
    codes = table.session_codes.tolist()
    period = table.span + LOOP_GAP_S
    for loop in range(loops):
        base = loop * period
        shift = loop * table.n_sessions  # so a session changes tenant between loops
        for sid, item, offset, code in zip(sids, items, offsets, codes, strict=True):
            yield (
                names[(code + shift) % len(names)],
                looped_session_id(sid, loop, session_prefix),
                item,
                base + offset,
            )


def new_run_id(prefix: str = "r") -> str:
    return f"{prefix}{uuid.uuid4().hex[:10]}"


@dataclass(frozen=True)
class SendResult:
    sent: int
    elapsed_s: float
    stats: DeliveryStats

    @property
    def rate(self) -> float:
        return self.sent / self.elapsed_s if self.elapsed_s > 0 else 0.0

    def summary(self) -> str:
        return (
            f"sent {self.sent:,} events in {self.elapsed_s:.1f} s ({self.rate:,.0f} events/s); "
            f"delivered {self.stats.delivered:,}, failed {self.stats.failed:,}"
            + (f" (first error: {self.stats.first_error})" if self.stats.first_error else "")
        )


def send_events(
    producer: ClickProducer,
    events: Iterable[Event],
    *,
    pacer: Pacer | None = None,
    limit: int | None = None,
    run_id: str | None = None,
    progress: bool = True,
    sent_at: np.ndarray | None = None,
    intended_at: np.ndarray | None = None,
    close_timeout: float = 60.0,
) -> SendResult:
    """Send ``events`` (at most ``limit``), then close ``producer``, waiting for delivery.

    Event ``seq`` gets ``event_id = f"{run_id}-{seq}"`` and ``ts`` = its send time, which
    is also written to ``sent_at[seq]`` when given (the load test matches on both);
    ``intended_at[seq]`` gets the time the pacer meant it to go out (= the send time when
    unpaced).
    """
    run_id = run_id or new_run_id()
    pacer = pacer or Pacer()
    total = limit if limit is not None else None
    if limit is not None:
        events = itertools.islice(events, limit)
    producer.wait_ready()
    before = producer.stats  # deliveries of earlier sends (a warm-up) are not ours
    bar = progress_bar(total, enabled=progress)
    started = time.perf_counter()
    seq = -1
    unreported = 0
    try:
        for seq, (tenant, session_id, item_id, offset) in enumerate(events):
            if not pacer.unpaced:
                pacer.wait(seq, offset)
            now = time.time()
            producer.send(
                {
                    "tenant": tenant,
                    "session_id": session_id,
                    "item_id": item_id,
                    "ts": now,
                    "event_type": "view",
                    "event_id": f"{run_id}-{seq}",
                }
            )
            if sent_at is not None:
                sent_at[seq] = now
            if intended_at is not None:
                intended_at[seq] = now if pacer.unpaced else pacer.intended(seq, offset)
            unreported += 1
            if unreported >= _PROGRESS_EVERY:
                bar.update(unreported)
                unreported = 0
                failed = producer.stats.failed
                if failed:
                    bar.set_postfix(failed=failed, refresh=False)
        bar.update(unreported)
    finally:
        bar.close()
        # Delivery is part of the job: the elapsed time includes the final flush.
        stats = producer.close(close_timeout).since(before)
    return SendResult(sent=seq + 1, elapsed_s=time.perf_counter() - started, stats=stats)

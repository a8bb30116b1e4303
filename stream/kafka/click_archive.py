"""Filling the click archive (``models.click_archive``) from the ``clicks`` topic.

Every trainer of a group runs one :class:`ClickArchiver`, a thread consuming ``clicks``
in the consumer group ``<group>-archive``: Kafka splits the partitions among the
trainers, and gives a dead trainer's partitions to the others. Each click is decoded
once, by the archiver of its partition (the worker's parsing: ``click_log.click_of``).

- **Resuming.** The archive's files are the truth, not Kafka's commits (nothing is
  committed): a partition assigned resumes where its segments end without a gap, or at
  the first offset inside the window when there is none or they end before it (an
  empty segment is written up to there at once, so the coverage is known to all).
- **Settling.** Partitions assigned are read once the assignment has not changed for
  ``settle_s``: trainers started together then share the log from its first click.
- **Flushing.** A partition's buffered clicks become a segment every ``flush_clicks``
  records or ``flush_s`` seconds, as soon as they reach an offset a pass waits for
  (``wanted()``), and when the partition is taken away or the archiver stops.
- **Pruning.** Every ``PRUNE_EVERY_S``, segments whose newest click is older than the
  window are deleted.

confluent-kafka releases the GIL while it fetches, so the thread keeps archiving while
the trainer's main thread waits on its training processes.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path

from confluent_kafka import OFFSET_END, Consumer, KafkaError, KafkaException, TopicPartition

from models import click_archive
from stream.kafka.click_log import click_of
from stream.kafka.config import KafkaClientConfig

log = logging.getLogger(f"streamrec.{__name__}")

# A buffered click costs a few hundred bytes of Python objects: this bounds a partition's.
FLUSH_CLICKS = 100_000
FLUSH_S = 300.0
PRUNE_EVERY_S = 60.0
REPORT_EVERY_S = 30.0
# How long an assignment must stay unchanged before its partitions are read: trainers
# started together join within moments, and a partition read by the first one to join
# would not be shared.
SETTLE_S = 5.0


@dataclass
class _Buffer:
    """A partition's clicks read since its last segment: offsets ``first`` to ``next``."""

    first: int
    next: int
    since: float = field(default_factory=time.monotonic)
    tenants: list[str] = field(default_factory=list)
    sessions: list[str] = field(default_factory=list)
    items: list[str] = field(default_factory=list)
    ts: list[float] = field(default_factory=list)
    offsets: list[int] = field(default_factory=list)


class ClickArchiver:
    """One member of ``<group>-archive``, archiving its partitions into ``root``."""

    def __init__(
        self,
        kafka: KafkaClientConfig,
        topic: str,
        group: str,
        root: Path,
        *,
        window_s: float,
        session_timeout_s: float,
        wanted: Callable[[], Mapping[int, int]] = dict,
        flush_clicks: int = FLUSH_CLICKS,
        flush_s: float = FLUSH_S,
        settle_s: float = SETTLE_S,
    ) -> None:
        self.topic, self.root, self.window_s = topic, Path(root), window_s
        self._wanted, self._flush_clicks, self._flush_s = wanted, flush_clicks, flush_s
        self._buffers: dict[int, _Buffer] = {}
        self._settle_s = settle_s
        self._paused_until: float | None = None  # reading waits for the group to settle
        self._busy_s = 0.0  # decoding and writing, for the rate reported
        self.assigned: set[int] = set()
        self.archived_partitions: set[int] = set()  # every partition this one wrote
        self.clicks = 0  # valid clicks archived by this process
        self.error: str | None = None  # why the thread stopped, if it failed
        self._stop = threading.Event()
        self._consumer = Consumer(
            kafka.consumer(
                f"{group}-archive",
                {
                    "enable.partition.eof": True,
                    "session.timeout.ms": int(session_timeout_s * 1000),
                    "heartbeat.interval.ms": max(100, int(session_timeout_s * 1000 / 4)),
                    "fetch.wait.max.ms": 100,
                    "fetch.queue.backoff.ms": 20,
                },
            )
        )
        self._consumer.subscribe([topic], on_assign=self._assign, on_revoke=self._revoke)
        self._thread = threading.Thread(target=self._run, name="click-archive", daemon=True)
        self._thread.start()

    def close(self) -> None:
        """Flush what is buffered and leave the group (its partitions go to the others)."""
        self._stop.set()
        self._thread.join()

    def __enter__(self) -> ClickArchiver:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- the thread -------------------------------------------------------------------
    def _run(self) -> None:
        last_prune = last_report = time.monotonic()
        reported = 0
        try:
            while not self._stop.is_set():
                try:
                    messages = self._consumer.consume(10_000, timeout=0.2)
                except KafkaException as exc:
                    log.warning("%s (archive): %s", self.topic, exc)
                    time.sleep(1)
                    continue
                began = time.monotonic()
                self._take(messages)
                self._flush_due()
                now = time.monotonic()
                self._busy_s += now - began
                if self._paused_until is not None and now >= self._paused_until:
                    self._paused_until = None
                    self._consumer.resume(self._partitions())
                if now - last_report >= REPORT_EVERY_S:
                    if self.clicks > reported:
                        log.info(
                            "click archive: %d click(s) archived in the last %.0fs (%.0f/s "
                            "while reading), partition(s) %s", self.clicks - reported,
                            now - last_report, (self.clicks - reported) / max(self._busy_s, 1e-3),
                            _names(self.assigned),
                        )  # fmt: skip
                    reported, last_report, self._busy_s = self.clicks, now, 0.0
                if now - last_prune >= PRUNE_EVERY_S:
                    last_prune = now
                    self._prune()
            for p in list(self._buffers):
                self._flush(p)
        except Exception as exc:  # noqa: BLE001 - the trainer is told (``error``) and says why
            self.error = f"{type(exc).__name__}: {exc}"
            log.exception("click archive: stopped archiving")
        finally:
            try:
                self._consumer.close()
            except Exception as exc:  # noqa: BLE001 - leaving during a rebalance
                log.warning("%s (archive): %s", self.topic, exc)

    def _take(self, messages: list) -> None:
        now = time.time()
        for m in messages:
            error = m.error()
            if error is not None:
                if error.code() != KafkaError._PARTITION_EOF:
                    log.warning("%s (archive): %s", self.topic, error.str())
                continue
            buf = self._buffers.get(m.partition())
            if buf is None or m.offset() < buf.next:
                continue  # a partition given up meanwhile, or a record seen already
            buf.next = m.offset() + 1
            event = click_of(m.value(), m.timestamp()[1], now)
            if event is None:
                continue  # the worker dead-letters it
            buf.tenants.append(event.tenant)
            buf.sessions.append(event.session_id)
            buf.items.append(event.item_id)
            buf.ts.append(event.ts)
            buf.offsets.append(m.offset())

    def _flush_due(self) -> None:
        wanted = self._wanted()
        now = time.monotonic()
        for p, buf in list(self._buffers.items()):
            if buf.next <= buf.first:
                continue
            target = wanted.get(p)
            if (
                len(buf.offsets) >= self._flush_clicks
                or now - buf.since >= self._flush_s
                or (target is not None and buf.first < target <= buf.next)
            ):
                self._flush(p)

    def _flush(self, partition: int) -> None:
        buf = self._buffers[partition]
        if buf.next <= buf.first:
            return
        click_archive.write_segment(
            self.root, partition, buf.first, buf.next,
            buf.tenants, buf.sessions, buf.items, buf.ts, buf.offsets,
        )  # fmt: skip
        self.clicks += len(buf.offsets)
        self.archived_partitions.add(partition)
        self._buffers[partition] = _Buffer(buf.next, buf.next)

    def _prune(self) -> None:
        deleted = click_archive.prune(self.root, time.time() - self.window_s)
        if deleted:
            log.info(
                "click archive: pruned %d segment(s) with no click inside the window",
                len(deleted),
            )  # fmt: skip

    # -- rebalances (called inside consume(), on the thread) --------------------------
    def _assign(self, consumer: Consumer, partitions: list[TopicPartition]) -> None:
        have = click_archive.archived_to(self.root)
        starts = self._window_starts(consumer, [tp.partition for tp in partitions])
        for tp in partitions:
            p = tp.partition
            # Where the archive ends, unless the window starts later (trainers stopped
            # for longer than the window): older clicks would be pruned at once.
            tp.offset = max(have.get(p, -1), starts[p])
            if have.get(p, -1) < tp.offset:
                # An empty segment, from the archive's end (the offsets before the window
                # hold no click worth keeping) or where the partition's coverage starts:
                # every trainer sees the coverage even if no click ever comes.
                first = have.get(p, tp.offset)
                click_archive.write_segment(self.root, p, first, tp.offset, *[[]] * 5)
            self._buffers[p] = _Buffer(tp.offset, tp.offset)
        consumer.assign(partitions)
        consumer.pause(partitions)
        self._paused_until = time.monotonic() + self._settle_s
        self.assigned |= {tp.partition for tp in partitions}
        log.info(
            "%s (archive): assigned partition(s) %s, resuming at %s", self.topic,
            _names(self.assigned), ", ".join(f"{tp.partition}@{tp.offset}" for tp in partitions),
        )  # fmt: skip

    def _revoke(self, consumer: Consumer, partitions: list[TopicPartition]) -> None:
        gone = sorted(tp.partition for tp in partitions)
        try:
            for p in gone:
                if p in self._buffers:
                    self._flush(p)
        finally:
            for p in gone:
                self._buffers.pop(p, None)
            self.assigned -= set(gone)
            consumer.unassign()
            if gone:
                log.info("%s (archive): partition(s) %s given up", self.topic, _names(gone))

    def _window_starts(self, consumer: Consumer, partitions: list[int]) -> dict[int, int]:
        """The first offset at or after the window's start, per partition (its end
        when every record is older)."""
        since_ms = int((time.time() - self.window_s) * 1000)
        found = consumer.offsets_for_times(
            [TopicPartition(self.topic, p, since_ms) for p in partitions], timeout=10
        )
        out = {}
        for tp in found:
            if tp.offset == OFFSET_END or tp.offset < 0:
                _, high = consumer.get_watermark_offsets(
                    TopicPartition(self.topic, tp.partition), timeout=10
                )
                out[tp.partition] = high
            else:
                out[tp.partition] = tp.offset
        return out

    def _partitions(self) -> list[TopicPartition]:
        return [TopicPartition(self.topic, p) for p in sorted(self.assigned)]


def _names(partitions: set[int] | list[int]) -> str:
    return ",".join(map(str, sorted(partitions))) or "none"

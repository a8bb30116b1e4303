"""Trainers that share the tenants through Kafka: ``streamrec trainer --group NAME``.

A pass's work is records on the ``retrain`` topic, one per tenant, keyed by tenant. Every
trainer of the group consumes the topic in the Kafka consumer group NAME, so Kafka
assigns each tenant to one trainer and, when a trainer dies (its heartbeats stop) or
leaves, gives its partitions to the others. Kafka is the engine: no scheduler of ours.

- **Publishing.** One process publishes each pass: whoever holds the group's lease in
  Redis (``state.trainers.Lease``, a SET NX PX lock renewed by its holder while it
  lives). It writes the pass's description to Redis (:class:`PassInfo`: an id, the
  click window, and the topic's end offsets before publishing, where the pass begins),
  produces the records, then adds the offsets where the pass ends.
- **The click archive.** Every trainer also runs a ``ClickArchiver`` thread
  (``stream.kafka.click_archive``, consumer group ``NAME-archive``): the trainers share
  the ``clicks`` partitions, and each click is decoded once, into files in the
  registry directory (``models.click_archive``). The pass records the ``clicks`` end
  offsets at publish time; a trainer starts a batch once the archive (all the
  trainers' archivers together) covers them, then reads only its tenants' clicks.
- **Training.** A trainer takes the records of its partitions up to their end as one
  batch: it reads its tenants' clicks from the archive, then trains them, committing
  each record's offset once its tenant is finished
  (:class:`Ledger`: a partition's commit never passes a tenant still in training).
- **Takeover.** The next owner of a partition starts at the group's committed offset:
  the tenants not finished. A tenant is trained under the registry's training lock and
  its version records the pass id, so a record delivered again after a crash waits for
  a trainer still at work and then finds its version: never trained twice in a pass.
- **End of a pass.** The pass is done when the group's committed offsets reach its end
  offsets in every partition it wrote to. ``--once`` trainers exit then, all of them:
  one that left early could not take over the tenants of one that dies late. The
  process that takes the lease publishes a new pass; the others join the pass the
  lease names (its holder's).
- **Every D.** The lease holder publishes the next pass once the previous one is done
  and D has passed since it was published; if the holder dies, another process takes
  the lease when it expires and goes on from the pass it finds in Redis. Records of a
  pass other than the current one (superseded) are skipped.
"""

from __future__ import annotations

import logging
import os
import socket
import threading
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, replace

from tqdm import tqdm

from models.click_archive import archive_dir, archived_to, old_segments
from models.errors import StreamrecError
from models.registry import Registry
from state.connection import RedisError, sync_client
from state.tenants import list_tenants
from state.trainers import Lease, read_pass, write_pass
from stream.config import Settings
from stream.kafka.click_archive import ClickArchiver
from stream.kafka.topics import RETRAIN_PARTITIONS, ensure_topics
from stream.kafka.work_queue import GroupQueue, end_offsets, publish
from stream.retrain.job import PassReport
from stream.retrain.passes import Ledger, PassInfo, PassRecord, new_pass_id

log = logging.getLogger(f"streamrec.{__name__}")

# The publisher's lease: renewed every third of this while its holder lives; a dead
# holder's lease is taken over after at most this long.
LEASE_TTL_S = 15.0
# A trainer that does not ask Kafka for records for this long (one tenant's training, or
# reading the log for its batch, takes less) is presumed stuck and loses its tenants.
MAX_WORK_S = 1800.0
RETRY_S = 10.0
# How long the group's assignment must stay unchanged before a batch starts.
SETTLE_S = 3.0

# train(tenants, pass, progress) -> the batch's report; progress(tenant) after each one.
Train = Callable[[list[str], PassInfo, Callable[[str], None]], PassReport]


@dataclass(frozen=True)
class GroupOptions:
    group: str
    once: bool
    every: float  # seconds between passes (not --once)
    window_s: float
    tenants: tuple[str, ...] = ()  # only these (else every tenant known)
    quiet: bool = False


class GroupTrainer:
    """One process of a trainer group."""

    def __init__(self, settings: Settings, options: GroupOptions) -> None:
        self.settings, self.options = settings, options
        self.topic = settings.retrain_topic
        self.redis = sync_client(settings.redis)
        holder = f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:6]}"
        self.lease = Lease(self.redis, options.group, holder, LEASE_TTL_S)
        self.holding = False
        self.ledger = Ledger()
        self.info: PassInfo | None = None
        # tenant -> (partition, offset, pass id) of its record, until its batch starts
        self.pending: dict[str, tuple[int, int, str]] = {}
        self.trained: set[str] = set()  # tenants this process trained (or skipped)
        self.failed: set[str] = set()  # tenants whose clicks it could not read
        self._late: str | None = None  # the pass last said to be late
        ensure_topics(settings.kafka, [self.topic], RETRAIN_PARTITIONS)
        self.queue = GroupQueue(
            settings.kafka,
            self.topic,
            options.group,
            session_timeout_s=settings.broker_session_timeout_s,
            max_work_s=MAX_WORK_S,
            start_at=self._starts,
            on_revoke=self._revoked,
        )
        self._pass_clicks: dict[int, int] = {}  # the archiver's view of the current pass
        self._pass_clicks_at = 0.0
        self.archive = archive_dir(settings.registry_dir)
        old = old_segments(self.archive)
        if old:
            log.warning(
                "click archive: %d segment(s) of an older format in %s (such as %s) are not "
                "read; their clicks are archived again from the log. Delete them",
                len(old), self.archive, old[0].name,
            )  # fmt: skip
        self.archiver = ClickArchiver(
            settings.kafka,
            settings.clicks_topic,
            options.group,
            self.archive,
            window_s=options.window_s,
            session_timeout_s=settings.broker_session_timeout_s,
            wanted=self._wanted,
        )
        # The pass whose log the archive is known to hold; the one waited for, since when.
        self._covered: str | None = None
        self._waiting: str | None = None
        self._waited = 0.0
        self._archive_wait = 0.0  # seconds the next batch waited for the archive
        self._catching_up: tqdm | None = None  # the bar while the archive catches up
        self._stop = threading.Event()
        self._renewer = threading.Thread(target=self._renew, name="lease", daemon=True)
        self._renewer.start()

    # -- the loop ---------------------------------------------------------------------
    def run(self, train: Train, on_batch: Callable[[PassReport, PassInfo, float], None],
            between: Callable[[], None] = lambda: None) -> None:  # fmt: skip
        """Consume and train until the pass is done (``--once``), or for ever."""
        target = self._once_target() if self.options.once else None
        while True:
            try:
                if target is None:
                    self._schedule()
                self._consume(0.5)
                if self.pending and self._ready():
                    self._train(train, on_batch)
                self._commit()
                if target is not None and not self.pending and self._pass_over(target):
                    return
            except (StreamrecError, RedisError) as exc:
                if target is not None:
                    raise
                # The broker or Redis away for a while must not end a periodic trainer.
                log.error("group %s: %s; trying again in %.0fs",
                          self.options.group, exc, RETRY_S)  # fmt: skip
                time.sleep(RETRY_S)
                continue
            if self.holding and not self.pending:
                between()

    def close(self) -> None:
        self._stop.set()
        self._renewer.join(5)
        self._commit(wait=True)
        self.queue.close()
        self.archiver.close()
        log.info(
            "group %s: this trainer archived %d click(s) of %s partition(s) %s",
            self.options.group, self.archiver.clicks, self.settings.clicks_topic,
            ",".join(map(str, sorted(self.archiver.archived_partitions))) or "none",
        )  # fmt: skip
        if self.holding:
            self.lease.release()

    def __enter__(self) -> GroupTrainer:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- publishing -------------------------------------------------------------------
    def _once_target(self) -> str:
        """The pass this ``--once`` process works on: a new one if it takes the lease,
        else the one the lease's holder published (or is publishing)."""
        mine = new_pass_id()
        while True:
            if self.lease.acquire(mine):
                self.holding = True
                self._publish(mine)
                return mine
            named = self.lease.named_pass()
            info = self._refresh()
            if named is not None and info is not None and info.id >= named[1]:
                log.info(
                    "group %s: joining pass %s (%d tenant(s), published by %s)",
                    self.options.group, info.id, info.tenants, named[0],
                )  # fmt: skip
                return info.id
            time.sleep(0.2)  # the holder is about to describe its pass

    def _schedule(self) -> None:
        """The lease holder publishes a pass when one is due."""
        if not self.holding:
            if not self.lease.acquire(new_pass_id()):
                return
            self.holding = True
            log.info("group %s: this trainer publishes the passes now", self.options.group)
        info = self._refresh()
        now = time.time()
        if info is not None and info.ends is not None:
            if now < info.published + self.options.every:
                return
            left = info.left(self.queue.committed(info.ends))
            if left:
                if self._late != info.id:
                    self._late = info.id
                    log.warning(
                        "group %s: pass %s still has %d tenant(s) to train; the next pass "
                        "starts when it is done", self.options.group, info.id, left,
                    )  # fmt: skip
                return
        # No pass yet, one due, or one whose publisher died before it was all published.
        self._publish(new_pass_id())

    def _publish(self, pass_id: str) -> None:
        tenants = self._tenants()
        now = time.time()
        info = PassInfo(
            pass_id, now, now, self.options.window_s, len(tenants),
            starts=end_offsets(self.settings.kafka, self.topic),
            clicks=end_offsets(self.settings.kafka, self.settings.clicks_topic),
        )  # fmt: skip
        write_pass(self.redis, self.options.group, info.to_dict())
        ends = publish(
            self.settings.kafka,
            self.topic,
            ((t, PassRecord(pass_id, t).to_json()) for t in tenants),
        )
        self.info = info.published_at(ends)
        write_pass(self.redis, self.options.group, self.info.to_dict())
        log.info(
            "group %s: published pass %s: %d tenant(s) on %s",
            self.options.group, pass_id, len(tenants), self.topic,
        )  # fmt: skip

    def _tenants(self) -> list[str]:
        """Every tenant the registry or Redis knows (or the ones asked for)."""
        if self.options.tenants:
            return sorted(set(self.options.tenants))
        known = set(Registry(self.settings.registry_dir).tenants())
        known |= set(list_tenants(self.redis))
        return sorted(known)

    # -- consuming --------------------------------------------------------------------
    def _consume(self, timeout: float) -> None:
        for m in self.queue.take(timeout):
            p, o = m.partition(), m.offset()
            self.ledger.take(p, o)
            record = PassRecord.from_json(m.value())
            if record is None:
                log.warning("%s: partition %d offset %d is not a pass record: skipped",
                            self.topic, p, o)  # fmt: skip
                self.ledger.finish(p, o)
                continue
            if self.info is None or record.pass_id != self.info.id:
                self._refresh()
            if self.info is not None and record.pass_id != self.info.id:
                self.ledger.finish(p, o)  # a superseded pass: the current one has it too
                continue
            earlier = self.pending.get(record.tenant)
            if earlier is not None:
                self.ledger.finish(earlier[0], earlier[1])
            self.pending[record.tenant] = (p, o, record.pass_id)

    def _train(self, train: Train, on_batch: Callable[[PassReport, PassInfo, float], None]) -> None:
        info = self.info
        assert info is not None
        batch = {}
        for tenant, (p, o, pass_id) in self.pending.items():
            if pass_id == info.id:
                batch[tenant] = (p, o)
            else:
                self.ledger.finish(p, o)
        self.pending.clear()
        if not batch:
            return
        tenants = sorted(batch)
        more = len(tenants) - 10
        shown = ", ".join(tenants[:10]) + (f" and {more} more" if more > 0 else "")
        log.info(
            "group %s: pass %s: %d tenant(s) for this trainer (partitions %s): %s",
            self.options.group, info.id, len(tenants),
            ",".join(map(str, sorted({p for p, _ in batch.values()}))), shown,
        )  # fmt: skip
        started = time.perf_counter() - self._archive_wait  # the batch began waiting
        bar = tqdm(
            total=len(tenants), desc="retraining", unit="tenant",
            disable=True if self.options.quiet else None,
        )  # fmt: skip

        def step(tenant: str) -> None:
            bar.set_postfix_str(tenant, refresh=False)
            bar.update()
            position = batch.get(tenant)
            if position is not None:
                self.ledger.finish(*position)
            # Between tenants: the group's rebalances, records for later, commits.
            self._consume(0)
            self._commit()

        try:
            report = train(tenants, info, step)
        except StreamrecError:
            # Not finished: the records are trained again (here, or by the next owner).
            for tenant, (p, o) in batch.items():
                if p in self.queue.assigned:
                    self.pending.setdefault(tenant, (p, o, info.id))
            raise
        finally:
            bar.close()
        for p, o in batch.values():  # those with no clicks in the window too
            self.ledger.finish(p, o)
        self._commit()
        self.trained |= set(batch)
        self.failed |= {o.tenant for o in report.outcomes if o.decision.action == "failed"}
        # Reading the log, for this trainer: waiting for the archive, then reading it.
        report = replace(report, read_s=report.read_s + self._archive_wait)
        self._archive_wait = 0.0
        on_batch(report, info, time.perf_counter() - started)

    def _ready(self) -> bool:
        """A batch starts once the pass is all published, this trainer's partitions are
        read to their end, and the group has settled (trainers started together join
        within moments: a batch cut before would be split again at once)."""
        info = self.info
        return (
            info is not None
            and info.ends is not None
            and self.queue.at_end()
            and time.monotonic() - self.queue.changed >= SETTLE_S
            and self._archived(info)
        )

    def _archived(self, info: PassInfo) -> bool:
        """Does the click archive hold the pass's log (every trainer's archiver filling
        it)? A bar of the records still to archive while it catches up."""
        if self._covered == info.id:
            return True
        if self.archiver.error is not None:
            raise StreamrecError(
                f"this trainer's click archiver stopped ({self.archiver.error}): the "
                f"partitions of {self.settings.clicks_topic} it held are not archived"
            )
        have = archived_to(self.archive)
        left = {p: end - have.get(p, 0) for p, end in info.clicks.items() if have.get(p, 0) < end}
        now = time.monotonic()
        if self._waiting != info.id:
            self._waiting, self._waited = info.id, now
            if left:
                log.info(
                    "group %s: waiting for the click archive to reach the end of %s in %d "
                    "partition(s) (%d record(s) to go)", self.options.group,
                    self.settings.clicks_topic, len(left), sum(left.values()),
                )  # fmt: skip
                self._catching_up = tqdm(
                    total=sum(left.values()), desc="archiving clicks", unit="record",
                    disable=True if self.options.quiet else None,
                )  # fmt: skip
        if self._catching_up is not None:
            self._catching_up.n = self._catching_up.total - sum(left.values())
            self._catching_up.refresh()
        if left:
            return False
        if self._catching_up is not None:
            self._catching_up.close()
            self._catching_up = None
        self._covered, self._archive_wait = info.id, now - self._waited
        log.info(
            "group %s: the click archive covers pass %s (waited %.1fs for it; this trainer "
            "archived %d click(s) so far)",
            self.options.group, info.id, now - self._waited, self.archiver.clicks,
        )  # fmt: skip
        return True

    def _commit(self, wait: bool = False) -> None:
        self.queue.commit(self.ledger.to_commit(), wait=wait)

    def _revoked(self, partitions: list[int]) -> None:
        self._commit(wait=True)
        self.ledger.forget(partitions)
        gone = set(partitions)
        for tenant in [t for t, (p, _, _) in self.pending.items() if p in gone]:
            del self.pending[tenant]

    def _pass_over(self, target: str) -> bool:
        info = self._refresh()
        if info is None or info.id != target:
            log.warning(
                "group %s: pass %s was superseded by %s",
                self.options.group, target, info.id if info else "nothing (Redis emptied)",
            )  # fmt: skip
            return True
        return info.ends is not None and info.done(self.queue.committed(info.ends))

    # -- Redis ------------------------------------------------------------------------
    def _wanted(self) -> dict[int, int]:
        """The current pass's clicks end offsets, for the archiver's thread: read from
        Redis (at most once a second), as a trainer with no records of the pass never
        refreshes its own view, yet the others wait for its partitions."""
        now = time.monotonic()
        if now - self._pass_clicks_at >= 1.0:
            self._pass_clicks_at = now
            try:
                info = PassInfo.from_dict(read_pass(self.redis, self.options.group))
            except RedisError:
                return self._pass_clicks  # the last known: the pass goes on without Redis
            self._pass_clicks = info.clicks if info is not None else {}
        return self._pass_clicks

    def _refresh(self) -> PassInfo | None:
        self.info = PassInfo.from_dict(read_pass(self.redis, self.options.group))
        return self.info

    def _starts(self) -> dict[int, int]:
        info = self._refresh()
        return info.starts if info is not None else {}

    def _renew(self) -> None:
        while not self._stop.wait(LEASE_TTL_S / 3):
            if self.holding and not self.lease.renew():
                self.holding = False
                log.warning(
                    "group %s: the publisher's lease was lost (Redis slow or away); "
                    "another trainer may take it", self.options.group,
                )  # fmt: skip

"""The batch loop's overlap: fetching goes on while earlier batches wait for their commits."""

from __future__ import annotations

import asyncio
from collections.abc import Mapping
from typing import Any

from stream.config import Settings
from stream.pipeline.loop import IN_FLIGHT, BatchLoop, Delivery
from stream.pipeline.processor import BatchResult


class _Record:
    """What the loop reads of a librdkafka message."""

    def __init__(self, offset: int) -> None:
        self._offset = offset

    def error(self) -> None:
        return None

    def timestamp(self) -> tuple[int, int]:
        return (1, 1_000)

    def topic(self) -> str:
        return "clicks"

    def partition(self) -> int:
        return 0

    def offset(self) -> int:
        return self._offset

    def key(self) -> bytes:
        return b"s"

    def value(self) -> bytes:
        return b"{}"


class _Consumer:
    """One record a fetch (``limit`` in all), commits answered once ``answer`` is set."""

    def __init__(self, limit: int = 1_000_000) -> None:
        self.fetched = 0
        self.limit = limit
        self.answer = asyncio.Event()
        self.answer.set()
        self.committed: list[int] = []

    async def fetch(self, max_records: int, within_s: float) -> list[Any]:
        await asyncio.sleep(0)
        if self.fetched >= self.limit:
            return []
        self.fetched += 1
        return [_Record(self.fetched - 1)]

    async def commit(self, offsets: Mapping[tuple[str, int], int]) -> None:
        await self.answer.wait()
        self.committed.append(offsets[("clicks", 0)])

    async def close(self, timeout: float) -> None:
        return None


class _Publisher:
    """Acknowledges every record once ``answer`` is set."""

    def __init__(self) -> None:
        self.answer = asyncio.Event()
        self.answer.set()

    def send(self, result: BatchResult) -> Delivery:
        return Delivery()

    async def wait(self) -> None:
        await self.answer.wait()

    def close(self, timeout: float) -> None:
        return None


def _loop(consumer: _Consumer, publisher: _Publisher, **settings: Any) -> BatchLoop:
    async def process(batch: list[Any]) -> BatchResult:
        return BatchResult()

    loop = BatchLoop(Settings(broker="127.0.0.1:1", **settings), process, lambda n, r: None)
    loop._consumer = consumer  # type: ignore[assignment]
    loop._publisher = publisher  # type: ignore[assignment]
    return loop


async def _spin(rounds: int = 50) -> None:
    for _ in range(rounds):
        await asyncio.sleep(0)


def test_fetching_goes_on_while_earlier_batches_wait_for_their_acknowledgements() -> None:
    async def scenario() -> tuple[int, list[int]]:
        consumer, publisher = _Consumer(), _Publisher()
        publisher.answer.clear()
        loop = _loop(consumer, publisher)
        runner = asyncio.ensure_future(loop._run())
        await _spin()
        # Not one batch acknowledged yet: the loop processed more than one batch ahead,
        # and then stopped fetching (its memory stays bounded).
        ahead = consumer.fetched
        publisher.answer.set()
        await _spin()
        loop._stopping = True
        await asyncio.wait_for(runner, 5)
        return ahead, consumer.committed

    ahead, committed = asyncio.run(scenario())
    assert ahead == IN_FLIGHT + 1
    assert committed == sorted(committed) and committed[0] >= 1  # in order


def test_fetching_goes_on_while_a_commit_waits_for_the_broker() -> None:
    async def scenario() -> int:
        consumer = _Consumer(limit=50)
        consumer.answer.clear()
        loop = _loop(consumer, _Publisher())
        runner = asyncio.ensure_future(loop._run())
        await _spin(200)
        loop._stopping = True
        consumer.answer.set()
        await asyncio.wait_for(runner, 5)
        return consumer.fetched

    assert asyncio.run(scenario()) == 50


def test_commits_go_by_time_and_at_a_rebalance_and_a_stop() -> None:
    """Twenty batches done within the interval: one commit at once, then none until the
    group takes the partitions (then all of them, at once), and a stop commits what was
    done since."""

    async def scenario() -> list[list[int]]:
        consumer = _Consumer(limit=20)
        loop = _loop(consumer, _Publisher(), commit_interval_s=60)
        runner = asyncio.ensure_future(loop._run())
        await _spin(200)
        seen = [list(consumer.committed)]
        await loop._wait_for_batches()
        seen.append(list(consumer.committed))
        consumer.limit = 25
        await _spin(200)
        loop._stopping = True
        await asyncio.wait_for(runner, 5)
        loop._consumer = consumer  # type: ignore[assignment]
        await loop.on_stop()
        seen.append(list(consumer.committed))
        return seen

    first, revoked, stopped = asyncio.run(scenario())
    assert len(first) == 1
    assert revoked == [*first, 20]
    assert stopped == [*first, 20, 25]


def test_partitions_are_handed_over_only_after_the_batches_in_hand_are_done() -> None:
    """On a rebalance (and a stop) the worker writes what it kept for its sessions once
    its batches are committed, before the partitions go: their next click, at another
    worker, must find the lists (and so the arms) this one served."""

    async def scenario() -> list[str]:
        events: list[str] = []

        async def handover() -> None:
            events.append("handed over")

        async def process(batch: list[Any]) -> BatchResult:
            return BatchResult()

        loop = BatchLoop(
            Settings(broker="127.0.0.1:1"), process, lambda n, r: None, handover=handover
        )
        loop._hold()  # a batch in hand
        revoked = asyncio.ensure_future(loop._wait_for_batches())
        for _ in range(20):
            await asyncio.sleep(0)
        events.append("batch done")
        loop._release()
        await asyncio.wait_for(revoked, 5)
        loop._consumer = None
        await loop.on_stop()  # nothing in hand: a stop hands over at once
        return events

    assert asyncio.run(scenario()) == ["batch done", "handed over", "handed over"]

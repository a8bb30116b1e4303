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


class _SlowCommits:
    """A consumer with one record a fetch, whose commits wait until ``answer`` is set."""

    def __init__(self) -> None:
        self.fetched = 0
        self.answer = asyncio.Event()
        self.committed: list[int] = []

    async def fetch(self, max_records: int, within_s: float) -> list[Any]:
        self.fetched += 1
        await asyncio.sleep(0)
        return [_Record(self.fetched - 1)]

    async def commit(self, offsets: Mapping[tuple[str, int], int]) -> None:
        await self.answer.wait()
        self.committed.append(offsets[("clicks", 0)])


class _Publisher:
    def send(self, result: BatchResult) -> Delivery:
        return Delivery()

    async def wait(self) -> None:
        return None


def test_fetching_goes_on_while_earlier_batches_wait_for_their_commits() -> None:
    async def scenario() -> tuple[int, list[int]]:
        processed: list[int] = []

        async def process(batch: list[Any]) -> BatchResult:
            processed.append(batch[0].offset)
            return BatchResult()

        loop = BatchLoop(Settings(broker="127.0.0.1:1"), process, lambda n, r: None)
        consumer = _SlowCommits()
        loop._consumer = consumer  # type: ignore[assignment]
        loop._publisher = _Publisher()  # type: ignore[assignment]
        runner = asyncio.ensure_future(loop._run())
        for _ in range(50):
            await asyncio.sleep(0)
        # Not one commit answered yet: the loop processed more than one batch ahead of it,
        # and then stopped fetching (its memory stays bounded).
        ahead = len(processed)
        consumer.answer.set()
        for _ in range(50):
            await asyncio.sleep(0)
        loop._stopping = True
        await asyncio.wait_for(runner, 5)
        return ahead, consumer.committed

    ahead, committed = asyncio.run(scenario())
    assert ahead == IN_FLIGHT + 1
    assert committed == sorted(committed) and committed[0] == 1  # in order, after each batch


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

"""Validating a batch of click events: ``stream.events.parse_event`` (msgspec's typed
decoding, the hand-written checks kept for rejections) against orjson plus those checks
alone (the parser before msgspec), side by side in one process, on the same batch.

A batch is ``--batch`` Kafka message values as an app sends them (tenant, session,
item, ts, event type, event id), ``--bad`` percent of them malformed. Reports the
median of ``--runs`` timings per parser, each timing ``--repeat`` passes over the batch.

    python benchmarks/event_parse.py --batch 2000 --runs 15
"""

from __future__ import annotations

import argparse
import random
import statistics
import time
import uuid
from collections.abc import Callable

from stream.events import (
    DEFAULT_TENANT,
    ClickEvent,
    InvalidEvent,
    _decode,
    event_from_dict,
    parse_event,
)


def batch(n: int, bad_percent: float, seed: int = 1) -> list[bytes]:
    rng = random.Random(seed)
    out = []
    for i in range(n):
        if rng.random() * 100 < bad_percent:
            out.append(rng.choice([b"{not json", b'{"session_id": 5}', b"\xff\xfe"]))
            continue
        event = ClickEvent(
            DEFAULT_TENANT,
            f"s-{rng.randrange(100_000)}",
            f"P{rng.randrange(20_000)}",
            1.7e9 + i / 1000,
            rng.choice(["view", "view", "view", "add_to_cart"]),
            uuid.UUID(int=rng.getrandbits(128)).hex,
        )
        out.append(event.to_json())
    return out


def hand_written(raw: bytes | None) -> ClickEvent:
    """The parser before msgspec: orjson, then the checks that name a rejection's reason."""
    return event_from_dict(_decode(raw))


def parse_all(parse: Callable[[bytes | None], ClickEvent], values: list[bytes]) -> list[object]:
    out: list[object] = []
    for v in values:
        try:
            out.append(parse(v))
        except InvalidEvent as exc:
            out.append(exc.reason)
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batch", type=int, default=2000, help="events per batch")
    parser.add_argument("--bad", type=float, default=1.0, help="percent malformed")
    parser.add_argument("--runs", type=int, default=15)
    parser.add_argument("--repeat", type=int, default=20, help="passes per timing")
    args = parser.parse_args()
    values = batch(args.batch, args.bad)
    parsers = {"orjson + hand checks": hand_written, "msgspec (parse_event)": parse_event}
    answers = [parse_all(p, values) for p in parsers.values()]
    assert answers[0] == answers[1], "parsers disagree"
    results: dict[str, list[float]] = {name: [] for name in parsers}
    # Interleaved rounds, so drift on a shared machine hits both alike.
    for _ in range(3):
        for name, parse in parsers.items():
            for _ in range(args.runs):
                started = time.perf_counter()
                for _ in range(args.repeat):
                    parse_all(parse, values)
                results[name].append((time.perf_counter() - started) / args.repeat)
    medians = {name: statistics.median(v) for name, v in results.items()}
    for name, m in medians.items():
        print(
            f"{name:22s} median {m * 1e6:8.1f} us per batch, {m / len(values) * 1e9:6.0f} ns/event"
        )
    old, new = medians.values()  # in the order of `parsers`
    print(f"msgspec / hand-written: {new / old:.2f}")


if __name__ == "__main__":
    main()

"""One session, one partition: clicks sent over HTTP and through ClickProducer land on the
same partition of `clicks` (both use the Java client's murmur2 mapping), so the worker
sees a session's clicks in order whichever way they came."""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Callable
from pathlib import Path

import orjson

from producers import ClickProducer
from stream.dev.stack import EmbeddedStack, free_port
from stream.dev.testing import WorkerProcess, consume
from tests.integration.helpers import http_call, make_config, wait_for_ok

SESSIONS = [f"part-{i}" for i in range(40)]


def test_a_session_lands_on_one_partition_over_http_and_the_helper(
    stack: EmbeddedStack, unique_name: Callable[[str], str], tmp_path: Path, trained_model_dir: Path
) -> None:
    cfg = make_config(stack, unique_name, tmp_path, trained_model_dir)
    port = free_port()
    cfg.extra_env["STREAMREC_WEB_PORT"] = str(port)
    base = f"http://127.0.0.1:{port}"
    with WorkerProcess(cfg) as worker:
        assert wait_for_ok(f"{base}/health")[0] == 200, worker.log()[-3000:]
        body = [
            {"session_id": s, "item_id": "A13", "event_id": f"http-{s}-{k}"}
            for s in SESSIONS
            for k in range(3)
        ]
        status, answer = http_call(f"{base}/v1/default/events", body)
        assert status == 202, answer
    with ClickProducer(stack.broker, cfg.clicks) as producer:
        for s in SESSIONS:
            for k in range(3):
                producer.send({"session_id": s, "item_id": "A16", "event_id": f"cp-{s}-{k}"})
    assert producer.stats.delivered == 3 * len(SESSIONS)

    messages = consume(stack.broker, cfg.clicks, 6 * len(SESSIONS))
    assert len(messages) == 6 * len(SESSIONS)
    partitions: dict[str, set[int]] = defaultdict(set)
    sources: dict[str, set[str]] = defaultdict(set)
    for msg in messages:
        event = orjson.loads(msg.value())
        partitions[event["session_id"]].add(msg.partition())
        sources[event["session_id"]].add(event["event_id"].split("-")[0])
    assert all(sources[s] == {"http", "cp"} for s in SESSIONS)
    split = {s: sorted(p) for s, p in partitions.items() if len(p) > 1}
    assert not split, f"sessions spread over partitions: {split}"
    # 40 sessions over 4 partitions: a mapping that ignored the key would not look like this
    # either, but make sure the test covers more than one partition.
    assert len({next(iter(p)) for p in partitions.values()}) > 1

"""Producer helper, replay and load-test logic without a broker (a fake librdkafka producer)."""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import orjson
import pytest
from click.testing import CliRunner

from models.datasets import Clicks, eshop_path
from producers import ClickEvent, ClickProducer, DeliveryError, InvalidEvent
from producers.client import producer_config
from producers.loadtest.plots import bucket_percentiles, plot_run, plot_sweep
from producers.loadtest.report import latency_summary, markdown_report, markdown_sweep, summarize
from producers.loadtest.run import Matcher, RunData
from producers.replay import (
    DAY_S,
    LOOP_GAP_S,
    iter_events,
    load_replay,
    looped_session_id,
    prepare_replay,
    send_events,
    tenant_names,
)
from producers.timing import DWELL_MAX_S, Pacer, segment_cumsum
from stream.cli import cli

# -- a fake librdkafka producer -----------------------------------------------------------


class FakeError:
    def __init__(self, name: str) -> None:
        self._name = name

    def name(self) -> str:
        return self._name

    def str(self) -> str:
        return f"{self._name} (fake)"


@dataclass
class FakeMessage:
    topic_: str
    value_: bytes
    key_: str
    partition_: int = 0
    offset_: int = 0
    timestamp_ms: int | None = None

    def topic(self) -> str:
        return self.topic_

    def timestamp(self) -> tuple[int, int]:
        # librdkafka's (type, ms): type 0 = not available
        return (0, -1) if self.timestamp_ms is None else (1, self.timestamp_ms)

    def value(self) -> bytes:
        return self.value_

    def key(self) -> str:
        return self.key_

    def partition(self) -> int:
        return self.partition_

    def offset(self) -> int:
        return self.offset_

    def error(self) -> None:
        return None


class FakeProducer:
    """Queues produce() calls and reports them on poll/flush, failing the chosen ones."""

    def __init__(
        self,
        config: dict[str, Any],
        fail: Callable[[FakeMessage], str | None],
        buffer_errors: int = 0,
        stuck: bool = False,
    ) -> None:
        self.config = config
        self.callback = config["on_delivery"]
        self.fail = fail
        self.buffer_errors = buffer_errors
        self.stuck = stuck  # nothing is ever delivered: flush() times out
        self.queue: list[FakeMessage] = []
        self.produced: list[FakeMessage] = []
        self.polls = 0
        self.id_after_polls = 3  # the broker assigns a producer id after a few polls

    def produce(self, topic: str, value: bytes, key: str) -> None:
        if self.buffer_errors:
            self.buffer_errors -= 1
            raise BufferError("queue full")
        msg = FakeMessage(topic, value, key, offset_=len(self.produced))
        self.queue.append(msg)
        self.produced.append(msg)

    def poll(self, timeout: float = 0) -> int:
        self.polls += 1
        if "stats_cb" in self.config and self.polls >= self.id_after_polls:
            self.config["stats_cb"]('{"eos": {"idemp_state": "Assigned"}}')
        return self._deliver()

    def list_topics(self, timeout: float = 0) -> object:
        return object()

    def flush(self, timeout: float = 0) -> int:
        self._deliver()
        return len(self.queue)

    def purge(self, in_queue: bool, in_flight: bool, blocking: bool) -> None:
        for msg in self.queue:
            self.callback(FakeError("_PURGE_QUEUE"), msg)
        self.queue.clear()

    def _deliver(self) -> int:
        if self.stuck:
            return 0
        n = len(self.queue)
        for msg in self.queue:
            reason = self.fail(msg)
            self.callback(FakeError(reason) if reason else None, msg)
        self.queue.clear()
        return n


def make_producer(
    fail: Callable[[FakeMessage], str | None] = lambda m: None, **kwargs: Any
) -> tuple[ClickProducer, list[FakeProducer]]:
    made: list[FakeProducer] = []
    fake_args = {k: kwargs.pop(k) for k in ("buffer_errors", "stuck") if k in kwargs}

    def factory(config: dict[str, Any]) -> FakeProducer:
        made.append(FakeProducer(config, fail, **fake_args))
        return made[-1]

    return ClickProducer("broker:9092", "clicks", producer_factory=factory, **kwargs), made


# -- ClickProducer ------------------------------------------------------------------------


def test_send_keys_by_session_and_follows_the_contract() -> None:
    producer, (fake,) = make_producer()
    sent = producer.send({"session_id": "s-42", "item_id": "A13", "tenant": "shop"})
    producer.close()
    (msg,) = fake.produced
    assert msg.topic_ == "clicks" and msg.key_ == "s-42"
    body = orjson.loads(msg.value_)
    assert body["tenant"] == "shop" and body["item_id"] == "A13" and body["event_type"] == "view"
    assert body["ts"] == pytest.approx(sent.ts) and body["event_id"] == sent.event_id
    assert len(sent.event_id or "") == 32  # a fresh uuid4 hex when the app gave none


def test_send_keeps_the_apps_event_id_and_timestamp() -> None:
    producer, (fake,) = make_producer()
    producer.send(ClickEvent("default", "s1", "B4", 1700000000.5, event_id="e-1"))
    producer.close()
    body = orjson.loads(fake.produced[0].value_)
    assert body["event_id"] == "e-1" and body["ts"] == 1700000000.5


@pytest.mark.parametrize(
    ("event", "reason"),
    [
        ({"session_id": "s1"}, "missing field 'item_id'"),
        ({"session_id": "s1", "item_id": 13}, "field 'item_id' must be a string"),
        ({"session_id": "s1", "item_id": "x" * 300}, "longer than 256"),
        ({"session_id": "s1", "item_id": "A1", "ts": "yesterday"}, "field 'ts'"),
        ({"session_id": "s1", "item_id": "A1", "tenant": "no spaces"}, "field 'tenant'"),
        (ClickEvent("default", "", "A1", 1.0), "field 'session_id' is empty"),
    ],
)
def test_bad_events_raise_in_the_app_and_are_not_sent(event: Any, reason: str) -> None:
    producer, (fake,) = make_producer()
    with pytest.raises(InvalidEvent, match=reason):
        producer.send(event)
    producer.close()
    assert fake.produced == [] and producer.stats.sent == 0


def test_delivery_callbacks_count_delivered_and_failed() -> None:
    seen: list[tuple[object, FakeMessage]] = []
    producer, _ = make_producer(
        fail=lambda m: "_MSG_TIMED_OUT" if m.key_ == "bad" else None,
        on_delivery=lambda err, msg: seen.append((err, msg)),
    )
    with producer:
        for sid in ("a", "bad", "b", "bad"):
            producer.send({"session_id": sid, "item_id": "A1"})
    stats = producer.stats
    assert (stats.sent, stats.delivered, stats.failed, stats.pending) == (4, 2, 2, 0)
    assert stats.errors == {"_MSG_TIMED_OUT": 2}
    assert stats.first_error and stats.first_error.startswith("_MSG_TIMED_OUT")
    assert len(seen) == 4
    with pytest.raises(DeliveryError, match="2 of 4 events were not delivered") as raised:
        producer.raise_for_failures()
    assert raised.value.error.name() == "_MSG_TIMED_OUT"  # librdkafka's first error, kept


def test_stats_since_an_earlier_snapshot() -> None:
    producer, _ = make_producer(fail=lambda m: "_TIMED_OUT" if m.key_ == "bad" else None)
    producer.send({"session_id": "bad", "item_id": "A1"})
    producer.flush()
    before = producer.stats
    producer.send({"session_id": "ok", "item_id": "A1"})
    producer.flush()
    delta = producer.stats.since(before)
    assert (delta.sent, delta.delivered, delta.failed) == (1, 1, 0)
    assert delta.errors == {} and delta.first_error is None


def test_close_counts_undeliverable_events_as_failed() -> None:
    producer, _ = make_producer(stuck=True)
    producer.send({"session_id": "s", "item_id": "A1"})
    assert producer.stats.pending == 1
    stats = producer.close(timeout=0.01)
    assert (stats.delivered, stats.failed, stats.pending) == (0, 1, 0)
    assert stats.errors == {"_PURGE_QUEUE": 1}


def test_full_local_queue_applies_back_pressure_instead_of_failing() -> None:
    producer, (fake,) = make_producer(buffer_errors=3)
    producer.send({"session_id": "s", "item_id": "A1"})
    assert len(fake.produced) == 1 and fake.polls >= 3


def test_wait_ready_waits_for_the_producer_id() -> None:
    producer, (fake,) = make_producer()
    producer.wait_ready(timeout=5)
    assert fake.polls == 3
    never, (stuck,) = make_producer()
    stuck.id_after_polls = 10**9
    with pytest.raises(Exception, match="assigned no producer id"):
        never.wait_ready(timeout=0.1)
    plain, (fake_plain,) = make_producer(idempotent=False)
    plain.wait_ready()
    assert fake_plain.polls == 0 and "stats_cb" not in fake_plain.config


def test_a_closed_producer_refuses_to_send() -> None:
    producer, _ = make_producer()
    producer.close()
    with pytest.raises(Exception, match="closed"):
        producer.send({"session_id": "s", "item_id": "A1"})


def test_producer_config_is_tuned_and_overridable() -> None:
    conf = producer_config("b:1", linger_ms=20, extra={"acks": "1"})
    assert conf["linger.ms"] == 20 and conf["acks"] == "1"
    assert conf["partitioner"] == "murmur2_random" and conf["enable.idempotence"] is True


# -- pacing -------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("rate", "speedup", "seq", "offset", "due"),
    [
        (1000.0, None, 0, 99.0, 0.0),
        (1000.0, None, 2500, 99.0, 2.5),
        (None, 60.0, 7, 120.0, 2.0),
        (None, None, 10**6, 1e9, 0.0),
    ],
)
def test_pacer_due_times(
    rate: float | None, speedup: float | None, seq: int, offset: float, due: float
) -> None:
    assert Pacer(rate, speedup).due(seq, offset) == pytest.approx(due)


def test_pacer_sleeps_until_due_and_never_when_behind() -> None:
    now = [100.0]
    slept: list[float] = []
    pacer = Pacer(rate=10.0, clock=lambda: now[0], sleep=slept.append)
    pacer.wait(0, 0.0)  # the start
    now[0] = 100.02
    pacer.wait(1, 0.0)  # due at 100.1
    assert slept == [pytest.approx(0.08)]
    now[0] = 105.0
    pacer.wait(2, 0.0)  # long overdue: catch up at once
    assert len(slept) == 1


def test_pacer_refuses_rate_and_speedup_together() -> None:
    with pytest.raises(ValueError, match="either"):
        Pacer(rate=1.0, speedup=2.0)


def test_segment_cumsum_restarts_at_each_segment() -> None:
    values = np.array([1.0, 2.0, 3.0, 4.0, 5.0])
    assert segment_cumsum(values, np.array([0, 2, 3])).tolist() == [1, 3, 3, 4, 9]


# -- replay -------------------------------------------------------------------------------


def eshop_like_clicks() -> Clicks:
    """Two days, three sessions, date-only timestamps and an order column (like the e-shop)."""
    day1, day2 = 1207008000.0, 1207094400.0  # 2008-04-01 and -02, midnight UTC
    rows = [  # session, item, day, order (deliberately not in file order)
        ("1", "A1", day1, 2),
        ("1", "A2", day1, 1),
        ("2", "B1", day1, 1),
        ("1", "A3", day1, 3),
        ("3", "C1", day2, 1),
        ("3", "C2", day2, 2),
        ("2", "B2", day1, 2),
    ]
    s, i, t, o = zip(*rows, strict=True)
    return Clicks(np.array(s), np.array(i), np.array(t, dtype=float), np.array(o))


def test_date_only_files_get_seeded_plausible_times_in_click_order() -> None:
    table = prepare_replay(eshop_like_clicks(), seed=3)
    again = prepare_replay(eshop_like_clicks(), seed=3)
    other = prepare_replay(eshop_like_clicks(), seed=4)
    assert np.array_equal(table.offsets, again.offsets)
    assert not np.array_equal(table.offsets, other.offsets)
    assert np.all(np.diff(table.offsets) >= 0)
    per_session = {
        s: [i for s2, i in zip(table.session_ids, table.item_ids, strict=True) if s2 == s]
        for s in ("1", "2", "3")
    }
    assert per_session == {"1": ["A2", "A1", "A3"], "2": ["B1", "B2"], "3": ["C1", "C2"]}
    # Session 3 happened a day later; clicks of a session are at most a dwell cap apart.
    assert table.offsets[list(table.session_ids).index("3")] > 0
    assert table.span < 2 * DAY_S + 3 * DWELL_MAX_S
    assert table.n_sessions == 3


def test_real_timestamps_are_kept_and_ordered() -> None:
    clicks = Clicks(
        np.array(["a", "b", "a"]),
        np.array(["x", "y", "z"]),
        np.array([1000.5, 1000.0, 1010.0]),
        np.arange(3),
    )
    table = prepare_replay(clicks)
    assert table.item_ids.tolist() == ["y", "x", "z"]
    assert table.offsets.tolist() == [0.0, 0.5, 10.0]


def test_loops_remap_session_ids_and_shift_time() -> None:
    table = prepare_replay(eshop_like_clicks())
    events = list(iter_events(table, loops=3))
    assert len(events) == 3 * len(table)
    sessions_per_loop = [
        {e[1] for e in events[k * len(table) : (k + 1) * len(table)]} for k in range(3)
    ]
    assert sessions_per_loop[0] == {"1", "2", "3"}
    assert all(len(s) == 3 for s in sessions_per_loop)
    assert not (sessions_per_loop[0] & sessions_per_loop[1]) and not (
        sessions_per_loop[1] & sessions_per_loop[2]
    )
    offsets = [e[3] for e in events]
    assert offsets == sorted(offsets)
    assert offsets[len(table)] == pytest.approx(table.span + LOOP_GAP_S)
    assert looped_session_id("7", 2, "lt-") == "lt-7-r2"


def test_tenants_split_sessions_and_keep_each_session_on_one_tenant() -> None:
    table = load_replay(eshop_path())
    names = tenant_names(4, "shop")
    assert names == ["shop-0", "shop-1", "shop-2", "shop-3"]
    tenant_of: dict[str, set[str]] = {}
    for tenant, session, _, _ in iter_events(table, loops=2, tenants=names):
        tenant_of.setdefault(session, set()).add(tenant)
    assert all(len(t) == 1 for t in tenant_of.values())
    counts = np.unique([next(iter(t)) for t in tenant_of.values()], return_counts=True)[1]
    assert len(counts) == 4 and counts.min() > 0.2 * counts.sum()
    assert tenant_names(1, "shop") == ["shop"]


def test_the_shipped_eshop_file_replays_completely() -> None:
    table = load_replay(eshop_path())
    assert len(table) == 165_474 and table.n_sessions == 24_026
    assert np.all(np.diff(table.offsets) >= 0)


def test_send_events_stamps_send_time_and_unique_event_ids() -> None:
    producer, (fake,) = make_producer()
    table = prepare_replay(eshop_like_clicks())
    sent_at = np.full(10, np.nan)
    result = send_events(
        producer,
        iter_events(table, loops=2),
        limit=10,
        run_id="run1",
        progress=False,
        sent_at=sent_at,
    )
    assert result.sent == 10 and result.stats.delivered == 10
    bodies = [orjson.loads(m.value_) for m in fake.produced]
    assert [b["event_id"] for b in bodies] == [f"run1-{i}" for i in range(10)]
    assert [b["ts"] for b in bodies] == sent_at.tolist()
    assert [m.key_ for m in fake.produced] == [b["session_id"] for b in bodies]
    assert "delivered 10, failed 0" in result.summary()


def test_send_events_respects_the_rate() -> None:
    producer, _ = make_producer()
    table = prepare_replay(eshop_like_clicks())
    result = send_events(
        producer, iter_events(table, loops=10), pacer=Pacer(rate=200.0), limit=41, progress=False
    )
    assert result.elapsed_s == pytest.approx(0.2, abs=0.05)


# -- load-test report ---------------------------------------------------------------------


def test_summarize_reports_counts_latency_and_throughput() -> None:
    sent = 1000.0 + np.arange(100) * 0.01  # 100 events over 0.99 s
    latency_s = np.linspace(0.001, 0.100, 100)
    recv = sent + latency_s
    recv[[5, 50]] = np.nan  # two unanswered
    report = summarize(sent, recv, offered_rate=100.0, dead_letters=1, lag_end=0)
    assert (report["sent"], report["answered"], report["missing"]) == (100, 98, 2)
    assert report["offered_rate"] == 100.0 and report["send_rate"] == pytest.approx(100.0)
    lat = report["latency_ms"]
    assert lat["max"] == pytest.approx(100.0) and lat["p50"] == pytest.approx(50.5, abs=1.5)
    assert lat["p50"] < lat["p95"] < lat["p99"] <= lat["max"]
    assert report["last_answer_s"] == pytest.approx(1.09)
    assert report["throughput"] == pytest.approx(98 / 1.09, rel=0.01)
    for key in (
        "offered_rate",
        "sent",
        "answered",
        "missing",
        "dead_letters",
        "throughput",
        "latency_ms",
        "lag_end",
    ):
        assert key in report
    orjson.dumps(report)  # plain JSON types only


def test_latency_windows_show_drift() -> None:
    sent = 1000.0 + np.arange(300) * 0.1  # 30 s
    recv = sent + np.repeat([0.010, 0.020, 0.100], 100)
    windows = summarize(sent, recv, offered_rate=10.0)["latency_by_window"]
    assert [w["from_s"] for w in windows] == [0, 10, 20]
    assert [w["events"] for w in windows] == [100, 100, 100]
    assert [w["p50"] for w in windows] == pytest.approx([10.0, 20.0, 100.0])
    assert "| 20 | 100 | 100 | 100 |" in markdown_report(summarize(sent, recv, offered_rate=10.0))


def test_summarize_with_nothing_answered() -> None:
    report = summarize(np.array([1.0, 2.0]), np.array([np.nan, np.nan]), offered_rate=None)
    assert report["missing"] == 2 and report["throughput"] is None
    assert report["latency_ms"]["p99"] is None and report["offered_rate"] == 1.0
    assert "n/a" in markdown_report(report)


def test_latency_percentiles_on_a_known_distribution() -> None:
    lat = latency_summary(np.arange(1, 1001, dtype=float))
    assert lat["p50"] == pytest.approx(500.5) and lat["p99"] == pytest.approx(990.01)
    assert lat["max"] == 1000.0


def fake_msg(topic: str, payload: Any) -> FakeMessage:
    value = payload if isinstance(payload, bytes) else orjson.dumps(payload)
    return FakeMessage(topic, value, "k")


def test_matcher_matches_this_runs_recommendations_only() -> None:
    recv = np.full(5, np.nan)
    matcher = Matcher("lt1", "recs", "dlq", recv)
    batch = [
        fake_msg("recs", {"event_id": "lt1-0", "strategy": "embedding"}),
        fake_msg("recs", {"event_id": "lt1-3", "strategy": "popular"}),
        fake_msg("recs", {"event_id": "lt1-3", "strategy": "popular"}),  # re-delivered
        fake_msg("recs", {"event_id": "lt2-1", "strategy": "popular"}),  # another run
        fake_msg("recs", {"event_id": "lt1-99"}),  # out of range
        fake_msg("recs", b"not json"),
        fake_msg("dlq", b'{"session_id":"lt1-s","event_id":"lt1-4"'),
        fake_msg("dlq", b"someone else's garbage"),
    ]
    matcher.on_batch(batch, received=123.0)
    assert matcher.answered == 2 and matcher.duplicates == 1 and matcher.dead_letters == 1
    assert recv[0] == 123.0 and recv[3] == 123.0 and np.isnan(recv[1])
    assert matcher.strategies == {"embedding": 1, "popular": 1}


def test_matcher_signals_when_every_warm_up_probe_is_answered() -> None:
    matcher = Matcher("lt1", "recs", "dlq", np.full(3, np.nan))
    matcher.expect_probes(["lt1-warmup0", "lt1-warmup1"])
    matcher.on_batch([fake_msg("recs", {"event_id": "lt1-warmup0"})], received=1.0)
    assert not matcher.probes_answered.is_set()
    matcher.on_batch([fake_msg("recs", {"event_id": "lt1-warmup1"})], received=2.0)
    assert matcher.probes_answered.is_set() and matcher.answered == 0


def test_matcher_keeps_when_the_worker_published_each_answer() -> None:
    recv, published = np.full(3, np.nan), np.full(3, np.nan)
    matcher = Matcher("lt1", "recs", "dlq", recv, published)
    answer = fake_msg("recs", {"event_id": "lt1-1"})
    answer.timestamp_ms = 122_500
    matcher.on_batch([answer, fake_msg("recs", {"event_id": "lt1-2"})], received=123.0)
    assert published[1] == 122.5 and np.isnan(published[2]) and recv[2] == 123.0


def test_summarize_splits_latency_at_the_workers_publish() -> None:
    sent = 1000.0 + np.arange(200) * 0.1  # 20 s
    published = sent + np.repeat([0.030, 0.004], 100)  # a slow first window, then steady
    recv = published + 0.002
    report = summarize(sent, recv, published_at=published, offered_rate=10.0)
    assert report["to_publish_ms"]["p50"] == pytest.approx(17.0)
    assert report["publish_to_receipt_ms"]["p99"] == pytest.approx(2.0)
    assert [w["p99"] for w in report["to_publish_by_window"]] == pytest.approx([30.0, 4.0])
    text = markdown_report(report)
    assert "worker's publish -> received p50 / p99 | 2.0 ms / 2.0 ms" in text
    assert "to_publish_ms" not in summarize(sent, recv, offered_rate=10.0)


def run_data(n: int = 2000, seed: int = 0) -> RunData:
    rng = np.random.default_rng(seed)
    sent = 1000.0 + np.arange(n) / 500.0
    recv = sent + rng.lognormal(np.log(0.008), 0.5, n)
    report = summarize(sent, recv, offered_rate=500.0, lag_end=0)
    return RunData(report, sent, recv)


def test_bucket_percentiles() -> None:
    when = np.array([0.1, 0.5, 0.9, 1.2, 3.7])
    latency = np.array([1.0, 2.0, 3.0, 10.0, 7.0])
    starts, p50, p99 = bucket_percentiles(when, latency)
    assert starts.tolist() == [0, 1, 3] and p50.tolist() == [2.0, 10.0, 7.0]
    assert p99[0] == pytest.approx(2.98)
    starts, p50, _ = bucket_percentiles(when, latency, bucket_s=0.5)
    assert starts.tolist() == [0, 0.5, 1.0, 3.5] and p50.tolist() == [1.0, 2.5, 10.0, 7.0]


def test_plots_and_markdown_are_written(tmp_path: Path) -> None:
    data = run_data()
    png = plot_run(data, tmp_path / "run.png")
    sweep = plot_sweep([run_data(seed=1).report, data.report], tmp_path / "sweep.png")
    for path in (png, sweep):
        assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and path.stat().st_size > 20_000
    text = markdown_report(data.report, "streamrec loadtest --rate 500")
    assert "| missing | 0 |" in text and "streamrec loadtest --rate 500" in text
    assert f"{data.report['latency_ms']['p99']:,.1f} ms" in text
    assert markdown_sweep([data.report]).count("\n") == 3


# -- CLI argument checks (no broker needed) ------------------------------------------------


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["replay", "--rate", "10", "--speedup", "2"], "either --rate or --speedup"),
        (["replay", "--rate", "0"], "--rate"),
        (["replay", "--tenant", "bad name"], "not a tenant name"),
        (["replay", "/no/such/file.csv"], "does not exist"),
        (["synth"], "--out FILE or --kafka"),
        (["synth", "--out", "x.tsv", "--items", "10", "--categories", "20"], "categories"),
        (["loadtest", "--max"], "--max needs --events"),
        (["loadtest", "--events", "10"], "--events goes with --max"),
        (["loadtest", "--sweep", "1000,fast"], "comma-separated"),
        (["loadtest", "--max", "--events", "5", "--sweep", "1,2"], "do not go together"),
    ],
)
def test_bad_arguments_are_one_line_errors(args: list[str], message: str) -> None:
    result = CliRunner().invoke(cli, args)
    assert result.exit_code == 2, result.output
    assert message in result.output and "Traceback" not in result.output


@pytest.mark.parametrize(("args", "linger_ms"), [([], 1.0), (["--linger-ms", "20"], 20.0)])
def test_the_load_test_producer_does_not_hold_events_back(
    monkeypatch: pytest.MonkeyPatch, args: list[str], linger_ms: float
) -> None:
    # Its latency counts from each event's send: a linger would be measured as the worker's.
    configs = []

    def fake_run(table: Any, config: Any, echo: Any) -> RunData:
        configs.append(config)
        return run_data(n=20)

    monkeypatch.setattr("producers.loadtest.run_loadtest", fake_run)
    monkeypatch.setattr("stream.cli.producers._ensure_topics", lambda *a: None)
    result = CliRunner().invoke(
        cli, ["loadtest", "--rate", "10", "--duration", "1", "--source", "synth", *args]
    )
    assert result.exit_code == 0, result.output
    assert [c.linger_ms for c in configs] == [linger_ms]


def test_synth_cli_writes_a_trainable_file(tmp_path: Path) -> None:
    out = tmp_path / "synth.tsv.gz"
    result = CliRunner().invoke(
        cli, ["synth", "--out", str(out), "--items", "500", "--sessions", "300", "--no-progress"]
    )
    assert result.exit_code == 0, result.output
    assert "streamrec train" in result.output and "--format yoochoose" in result.output
    table = load_replay(out, "yoochoose")
    assert table.n_sessions == 300 and not math.isnan(table.span)


def test_latency_counts_from_the_intended_send_time_when_the_sender_falls_behind() -> None:
    # 100 events due every 10 ms; the sender stalled 500 ms before event 50 and then sent
    # the backlog at once. Each event is answered 5 ms after it actually went out.
    intended = 1000.0 + np.arange(100) * 0.01
    sent = intended.copy()
    sent[50:] = np.maximum(intended[50:], intended[50] + 0.5)
    recv = sent + 0.005
    report = summarize(sent, recv, intended_at=intended, offered_rate=100.0)
    assert report["latency_from_send_ms"]["p99"] == pytest.approx(5.0)
    # From the intended time the stall shows: event 50 waited 505 ms.
    assert report["latency_ms"]["max"] == pytest.approx(505.0)
    assert report["latency_ms"]["p99"] > 400
    assert report["sender_late_ms"]["max"] == pytest.approx(500.0)
    # Without intended times the same run looks perfect: that is the omission.
    assert summarize(sent, recv, offered_rate=100.0)["latency_ms"]["max"] == pytest.approx(5.0)


def test_pacer_reports_when_each_event_was_due() -> None:
    now = [0.0]
    pacer = Pacer(rate=100.0, clock=lambda: now[0], sleep=lambda s: None)
    pacer.wait(0, 0.0)
    start = pacer.intended(0, 0.0)
    now[0] = 5.0  # far behind: the pacer does not wait, the due time stays
    pacer.wait(30, 0.0)
    assert pacer.intended(30, 0.0) - start == pytest.approx(0.3)

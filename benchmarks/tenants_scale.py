"""Many tenants: one ``trainer --once`` pass over all of them, and a worker holding all
their models.

    .venv/bin/python benchmarks/tenants_scale.py --tenants 1000 --sessions 2000

On a private embedded stack: every tenant gets its own synthetic catalogue and
clickstream (``producers.synth``: Zipf popularity, category Markov walks), all of it
produced to ``clicks``. Then the real trainer pass runs (read the log from Kafka, build
sessions, train, gate, register, promote) and is timed end to end. Finally a worker
receives one click per tenant, so it loads every tenant's model, and its peak RSS is
read from /proc.

``--passes 2`` runs the trainer pass twice in a row: the second is the steady state,
where every tenant has a model in service, so the gate scores it too.

``--trainers 1,2,4`` runs, on the same click log, one pass with that many
``streamrec trainer --once --group`` processes each (``--jobs`` training processes
each), every run into a fresh registry, side by side with the one-process pass
(``--jobs``); ``--no-single`` leaves that one out. A group's trainers read the log
through their click archive (a fresh one per run, in the registry): a trainer's reading
time is its wait for the archive to hold the pass's log, then reading its tenants' clicks
from it.

    .venv/bin/python benchmarks/tenants_scale.py --tenants 200 --trainers 1,2,4 --jobs 1
"""

from __future__ import annotations

import argparse
import logging
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path

import numpy as np
import orjson
from confluent_kafka import Producer

from models.datasets import build_sessions
from models.gate import GatePolicy
from models.registry import Registry
from models.train import TrainParams
from producers.synth import SynthParams, generate_clicks
from stream.config import Settings
from stream.dev.stack import EmbeddedStack, free_port
from stream.dev.testing import WorkerConfig, WorkerProcess, consume
from stream.kafka.topics import ensure_topics
from stream.retrain.job import run_once


def produce_tenants(
    broker: str, topic: str, tenants: int, sessions: int, items: int
) -> tuple[int, int]:
    producer = Producer(
        {"bootstrap.servers": broker, "linger.ms": 20, "queue.buffering.max.messages": 2_000_000}
    )
    clicks = n_sessions = 0
    now = time.time()
    for t in range(tenants):
        c = generate_clicks(
            SynthParams(items=items, sessions=sessions, seed=t, days=6, start_ts=now - 7 * 86400)
        )
        n_sessions += len(build_sessions(c))
        tenant = f"shop-{t:04d}"
        for sid, item, ts in zip(
            c.session_ids.tolist(), c.item_ids.tolist(), c.ts.tolist(), strict=True
        ):
            key = f"{tenant}-{sid}"
            producer.produce(
                topic,
                orjson.dumps({"tenant": tenant, "session_id": key, "item_id": item, "ts": ts}),
                key,
            )
            clicks += 1
        producer.poll(0)
        if t % 50 == 49:
            print(f"  produced {t + 1} tenants, {clicks:,} clicks", flush=True)
    producer.flush(120)
    return clicks, n_sessions


_BATCH = re.compile(
    r"trainer: group .*: (\d+) tenant\(s\) in [\d.]+s \(reading \d+ clicks: ([\d.]+)s\)"
)


def group_pass(
    stack: EmbeddedStack, settings: Settings, home: Path, tenants: int, count: int, jobs: int
) -> tuple[int, float, list[float], float, int]:
    """One pass by ``count`` ``trainer --once --group`` processes into a fresh registry:
    (count, wall seconds, seconds reading the log per trainer, CPU seconds, tenants).
    A trainer's summary line counts in its reading the wait for the click archive."""
    models = home / f"models-{count}-trainers"
    registry = Registry(models)
    for t in range(tenants):
        registry.create_tenant(f"shop-{t:04d}")
    env = {
        **os.environ,
        "STREAMREC_BROKER": stack.broker,
        "STREAMREC_REDIS_URL": stack.redis_url,
        "STREAMREC_MODEL_DIR": str(models),
        "STREAMREC_HOME": str(home),
        "STREAMREC_RETRAIN_TOPIC": f"retrain-{count}",
    }
    cmd = [sys.executable, "-m", "stream", "trainer", "--once", "--group", f"bench-{count}",
           "--window", "8d", "--jobs", str(jobs), "--quiet"]  # fmt: skip
    cpu = _cpu_s()
    started = time.perf_counter()
    procs = [
        subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        for _ in range(count)
    ]
    outputs = [p.communicate()[0] for p in procs]
    pass_s = time.perf_counter() - started
    cpu = _cpu_s() - cpu
    for p, out in zip(procs, outputs, strict=True):
        if p.returncode != 0:
            raise SystemExit(f"a trainer failed ({p.returncode}):\n{out}")
    reads = [sum(float(m.group(2)) for m in _BATCH.finditer(out)) for out in outputs]
    trained = sum(int(m.group(1)) for out in outputs for m in _BATCH.finditer(out))
    print(
        f"{count} trainer(s) --once --group, --jobs {jobs} each: {trained} tenant(s) in "
        f"{pass_s:.1f}s (reading the log: {' / '.join(f'{r:.1f}' for r in reads)} s; "
        f"CPU {cpu:.1f}s)",
        flush=True,
    )
    return count, pass_s, reads, cpu, trained


def _cpu_s() -> float:
    """User + system CPU seconds of this process and its waited-for children."""
    t = os.times()
    return t.user + t.system + t.children_user + t.children_system


def _rss_mb(pid: int) -> dict[str, float]:
    """Resident memory now (VmRSS), of which anonymous and file-backed (the models'
    memory-mapped arrays), MB."""
    out = {}
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        key = line.split(":")[0]
        if key in ("VmRSS", "RssAnon", "RssFile"):
            out[key] = int(line.split()[1]) / 1024
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--tenants", type=int, default=1000)
    parser.add_argument("--sessions", type=int, default=2000, help="generated sessions per tenant")
    parser.add_argument("--items", type=int, default=2000, help="catalogue size per tenant")
    parser.add_argument("--jobs", type=int, default=2)
    parser.add_argument(
        "--passes", type=int, default=1, help="trainer passes in a row (2nd: steady state)"
    )
    parser.add_argument(
        "--trainers",
        default="",
        help="comma-separated counts of `trainer --once --group` processes to run a pass with",
    )
    parser.add_argument(
        "--no-single", action="store_true", help="no one-process pass (with --trainers)"
    )
    parser.add_argument("--no-worker", action="store_true", help="skip the worker's memory")
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING, format="%(asctime)s %(name)s: %(message)s")
    logging.getLogger("streamrec.stream.retrain.job").setLevel(logging.INFO)

    home = Path(tempfile.mkdtemp(prefix="streamrec-tenants-"))
    stack = EmbeddedStack(
        home / "run", f"127.0.0.1:{free_port()}", f"redis://127.0.0.1:{free_port()}/0"
    )
    stack.up()
    try:
        settings = Settings(home=str(home), broker=stack.broker, redis_url=stack.redis_url)
        ensure_topics(
            stack.broker, [settings.clicks_topic, settings.recs_topic, settings.dlq_topic], 4
        )
        started = time.perf_counter()
        clicks, sessions = produce_tenants(
            stack.broker, settings.clicks_topic, args.tenants, args.sessions, args.items
        )
        produce_s = time.perf_counter() - started
        print(
            f"produced {clicks:,} clicks ({sessions:,} sessions of 2+ clicks) in {produce_s:.0f}s"
        )

        passes = []  # (pass seconds, read seconds, CPU seconds, report)
        groups = []  # (trainers, pass seconds, read seconds per trainer, CPU seconds, tenants)
        for count in [int(c) for c in args.trainers.split(",") if c]:
            groups.append(group_pass(stack, settings, home, args.tenants, count, args.jobs))
        for n in range(1, 0 if args.no_single else args.passes + 1):
            started = time.perf_counter()
            cpu = _cpu_s()
            report = run_once(
                settings,
                window_s=8 * 86400,
                params=TrainParams(),
                policy=GatePolicy(),
                jobs=args.jobs,
            )
            pass_s = time.perf_counter() - started
            cpu = _cpu_s() - cpu  # this process and its (finished) training processes
            passes.append((pass_s, report.read_s, cpu, report))
            actions = Counter(o.decision.action for o in report.outcomes)
            print(
                f"trainer --once, pass {n}: {len(report.outcomes)} tenants in {pass_s:.1f}s "
                f"(reading {report.clicks:,} clicks: {report.read_s:.1f}s; CPU {cpu:.1f}s): "
                + ", ".join(f"{c} {a}" for a, c in sorted(actions.items())),
                flush=True,
            )
            for o in report.outcomes:
                if o.decision.action == "skipped":
                    print(f"  {o.tenant}: {o.decision.action}: {o.decision.reason}")

        if args.no_worker:
            rss, got, versions, now_rss = 0.0, [], set(), {}
            return report_all(args, clicks, sessions, produce_s, passes, groups, rss, got,
                              versions, now_rss)  # fmt: skip
        cfg = WorkerConfig(
            stack,
            home / "worker",
            settings.registry_dir,
            "probe-clicks",
            "probe-recs",
            "probe-dlq",
            "probe-app",
        )
        ensure_topics(stack.broker, ["probe-clicks", "probe-recs", "probe-dlq"], 4)
        producer = Producer({"bootstrap.servers": stack.broker})
        for t in range(args.tenants):
            producer.produce(
                "probe-clicks",
                orjson.dumps(
                    {
                        "tenant": f"shop-{t:04d}",
                        "session_id": "probe",
                        "item_id": "1",
                        "ts": time.time(),
                    }
                ),
                b"probe",
            )
        producer.flush(30)
        del producer
        with WorkerProcess(cfg) as worker:
            got = consume(stack.broker, "probe-recs", args.tenants, timeout=600)
            rss = worker.peak_rss_mb()
            now_rss = _rss_mb(worker.proc.pid) if worker.proc is not None else {}
        versions = {orjson.loads(m.value())["model_version"] for m in got}
    finally:
        stack.down()
        shutil.rmtree(home, ignore_errors=True)

    report_all(args, clicks, sessions, produce_s, passes, groups, rss, got, versions, now_rss)


def report_all(  # type: ignore[no-untyped-def]
    args, clicks, sessions, produce_s, passes, groups, rss, got, versions, now_rss
) -> None:
    if groups:
        print()
        print(
            "| trainer processes | jobs each | tenants trained | pass (wall) "
            "| reading the log, per trainer | CPU per tenant |"
        )
        print("| ---: | ---: | ---: | ---: | ---: | ---: |")
        for count, pass_s, reads, cpu_s, trained in groups:
            print(
                f"| {count} | {args.jobs} | {trained:,} | {pass_s:,.1f} s | "
                + " / ".join(f"{r:.1f}" for r in reads)
                + f" s | {cpu_s / max(1, args.tenants) * 1000:,.0f} ms |"
            )
    if not passes:
        return
    print()
    print(
        "| tenants | sessions/tenant | clicks | pass | trainer --once | of which reading the log "
        "| per tenant | CPU per tenant | worker RSS with all models |"
    )
    print("| ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |")
    for n, (pass_s, read_s, cpu_s, _) in enumerate(passes, 1):
        print(
            f"| {args.tenants:,} | {sessions / args.tenants:,.0f} | {clicks:,} | {n} | "
            f"{pass_s:,.1f} s | {read_s:,.1f} s | "
            f"{pass_s / max(1, args.tenants) * 1000:,.0f} ms | "
            f"{cpu_s / max(1, args.tenants) * 1000:,.0f} ms | {rss:,.0f} MB "
            f"({len(got)} answered, {len(versions - {None})} model versions) |"
        )
    print(f"\n(jobs={args.jobs}, {np.round(produce_s)} s to produce the click log, not counted)")
    print(
        "worker memory once every tenant was answered: "
        + ", ".join(f"{k} {v:,.0f} MB" for k, v in now_rss.items())
    )


if __name__ == "__main__":
    main()

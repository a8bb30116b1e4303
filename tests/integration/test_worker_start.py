"""A worker's start on the real embedded broker and Redis: quiet, honest and warm.

Quiet: no framework banner tables (unless ``--verbose``), no ERROR for the group
coordinator a fresh group waits for, no overlapping timer. Warm: the kernels are compiled
(or loaded from numba's cache) and every model ranked once before the worker is ready and
before it joins its consumer group, so no ranking after that compiles anything.
"""

from __future__ import annotations

import re
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

from stream.dev.stack import EmbeddedStack, free_port
from stream.dev.testing import WorkerConfig, WorkerProcess, consume, produce
from tests.integration.helpers import call, clicks, make_config, wait_until

# Faust's and mode's tables are drawn with box characters.
BANNER = re.compile(r"[┌┐└┘│├┤─]|\+-{5,}")
WARMED = re.compile(r"warm: (\d+) kernel")


def problems(log: str) -> list[str]:
    """The lines a healthy start must not have."""
    return [
        line
        for line in log.splitlines()
        if "ERROR" in line or "Traceback" in line or "overlapping" in line or BANNER.search(line)
    ]


def quiet_config(
    stack: EmbeddedStack, unique_name: Callable[[str], str], home: Path, model_dir: Path
) -> tuple[WorkerConfig, str]:
    cfg = make_config(stack, unique_name, home, model_dir)
    port = free_port()
    # A cache of its own: the first start compiles, as on a fresh machine.
    cfg.extra_env.update(STREAMREC_WEB_PORT=str(port), NUMBA_CACHE_DIR=str(home / "numba"))
    return cfg, f"http://127.0.0.1:{port}"


def test_a_healthy_start_is_quiet_and_warm_before_ready(
    stack: EmbeddedStack, unique_name: Callable[[str], str], tmp_path: Path, trained_model_dir: Path
) -> None:
    cfg, base = quiet_config(stack, unique_name, tmp_path, trained_model_dir)
    produce(stack.broker, cfg.clicks, clicks(50))
    with WorkerProcess(cfg) as worker:
        # Ready only once warm: the warm-up line is in the log when /health/ready first
        # says 200, and the worker joined its group only after it.
        deadline = time.monotonic() + 120
        while call(f"{base}/health/ready")[0] != 200:
            assert time.monotonic() < deadline and worker.alive(), worker.log()[-3000:]
            time.sleep(0.05)
        at_ready = worker.log()
        warmed = WARMED.search(at_ready)
        assert warmed and int(warmed.group(1)) > 0, at_ready[-3000:]
        joined = at_ready.find(f"consuming {cfg.clicks}")
        assert 0 < warmed.start() < joined, at_ready[-3000:]

        recs = consume(stack.broker, cfg.recs, 50)
        produce(stack.broker, cfg.clicks, clicks(50, start=50))
        recs = consume(stack.broker, cfg.recs, 100)
        assert len(recs) == 100, worker.log()[-3000:]
        # Nothing ranked after ready compiled a kernel.
        status, health = call(f"{base}/health/ready")
        assert status == 200, health
        assert health["kernels"]["compiled_after_ready"] == 0, health
        assert health["kernels"]["warmed"] > 0, health
        time.sleep(3)  # a few model checks (every 0.5 s here) and timer rounds
        log = worker.log()
    assert problems(log) == [], log[-5000:]

    # A second start loads the compiled kernels from the cache instead of compiling them.
    cfg2, base2 = quiet_config(stack, unique_name, tmp_path, trained_model_dir)
    with WorkerProcess(cfg2, name="second") as worker:
        assert wait_until(lambda: call(f"{base2}/health/ready")[0] == 200, 120), worker.log()[
            -3000:
        ]
        line = next(x for x in worker.log().splitlines() if WARMED.search(x))
        assert "0 compiled" in line, line


def warm(cfg: WorkerConfig, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "stream", "warm", *args],
        env=cfg.env(),
        capture_output=True,
        text=True,
        timeout=900,  # a first run compiles
    )


def test_a_worker_started_after_warm_compiles_nothing(
    stack: EmbeddedStack, unique_name: Callable[[str], str], tmp_path: Path, trained_model_dir: Path
) -> None:
    # `streamrec warm` (what scripts/setup.sh and the image's build run) fills an empty
    # cache without any model of the registry's; a worker's first start on a trained
    # model then loads every kernel it warms instead of compiling it.
    cfg, base = quiet_config(stack, unique_name, tmp_path, trained_model_dir)
    cold = warm(cfg, "--check")
    assert cold.returncode == 1 and "were compiled" in cold.stderr, cold
    last = cold.stderr.strip().splitlines()[-1]  # after the log lines, one line of error
    assert last.startswith("streamrec: error: ") and "Traceback" not in cold.stderr, cold
    again = warm(cfg, "--check")  # the cache the first run filled
    assert again.returncode == 0 and ", 0 compiled" in again.stdout, again
    with WorkerProcess(cfg) as worker:
        assert wait_until(lambda: call(f"{base}/health/ready")[0] == 200, 120), worker.log()[-3000:]
        line = next(x for x in worker.log().splitlines() if WARMED.search(x))
        warmed = int(WARMED.search(line).group(1))
        assert warmed > 0 and "(0 compiled" in line, line


def test_verbose_shows_the_framework_banner(
    stack: EmbeddedStack, unique_name: Callable[[str], str], tmp_path: Path, trained_model_dir: Path
) -> None:
    cfg, base = quiet_config(stack, unique_name, tmp_path, trained_model_dir)
    log_path = tmp_path / "verbose.log"
    with open(log_path, "wb") as logf:
        proc = subprocess.Popen(
            [sys.executable, "-m", "stream", "worker", "--verbose"],
            env=cfg.env(),
            stdout=logf,
            stderr=subprocess.STDOUT,
        )
    try:
        assert wait_until(lambda: call(f"{base}/health/ready")[0] == 200, 120), (
            log_path.read_text()[-3000:]
        )
    finally:
        proc.terminate()
        proc.wait(15)
    log = log_path.read_text()
    assert any(BANNER.search(line) for line in log.splitlines()), log[-3000:]

"""The command line against a real worker: `recs tail` prints the lists the worker
publishes, `stats` covers every tenant, `trainer` writes one line per stage off a
terminal; over HTTP a switched-off tenant and a rollback with nothing to roll back to
answer as the README says."""

from __future__ import annotations

import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import orjson
import pytest

from stream.dev.stack import EmbeddedStack, free_port
from stream.dev.testing import WorkerProcess, produce
from stream.events import ClickEvent
from tests.integration.helpers import ADMIN, call, make_config, wait_until

pytestmark = pytest.mark.broker_agnostic


def _streamrec(env: dict[str, str], *args: str) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, "-m", "stream", *args],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def _clicks_until(done: Callable[[], bool], broker: str, topic: str, session: str) -> None:
    """A click of ``session`` every 0.3 s until ``done()``: a tail that started after
    the first ones still sees the next."""
    items = ["A13", "A16", "B4", "C17"]
    n = 0
    deadline = time.monotonic() + 90
    while not done() and time.monotonic() < deadline:
        event = ClickEvent("default", session, items[n % len(items)], time.time(), f"{session}-{n}")
        produce(broker, topic, [(session.encode(), event.to_json())])
        n += 1
        time.sleep(0.3)


@pytest.mark.timeout(600)
def test_the_cli_on_a_live_worker(
    stack: EmbeddedStack, unique_name: Callable[[str], str], tmp_path: Path, trained_model_dir: Path
) -> None:
    models = tmp_path / "models"
    shutil.copytree(trained_model_dir, models)
    cfg = make_config(stack, unique_name, tmp_path, models)
    port = free_port()
    cfg.extra_env.update(STREAMREC_WEB_PORT=str(port), STREAMREC_ADMIN_TOKEN=ADMIN)
    env = cfg.env()
    base = f"http://127.0.0.1:{port}"
    session = unique_name("s")
    with WorkerProcess(cfg) as worker:
        assert wait_until(lambda: call(f"{base}/health/ready")[0] == 200, 90), worker.log()[-3000:]

        # `recs tail` from now: three lists, one line each, then it stops by itself.
        tail = _streamrec(env, "recs", "tail", "--limit", "3")
        _clicks_until(lambda: tail.poll() is not None, stack.broker, cfg.clicks, session)
        out, err = tail.communicate(timeout=30)
        assert tail.returncode == 0, err
        lines = out.splitlines()
        assert len(lines) == 3, out
        for line in lines:
            # session, the click, the top items with the source, version, latency
            assert f"default/{session}" in line and "clicked" in line, line
            assert "v1" in line and " ms " in line and "(" in line, line

        # --json --from-beginning: the records as they are on the topic.
        tail = _streamrec(env, "recs", "tail", "--from-beginning", "--json", "--limit", "2")
        out, err = tail.communicate(timeout=60)
        records = [orjson.loads(line) for line in out.splitlines()]
        assert tail.returncode == 0 and len(records) == 2, err
        assert all(r["session_id"] == session and r["items"] for r in records), records

        # --session and --tenant filter; Ctrl-C ends a tail cleanly, no traceback.
        tail = _streamrec(env, "recs", "tail", "--from-beginning", "--session", "nobody-here")
        time.sleep(8)
        tail.send_signal(signal.SIGINT)
        out, err = tail.communicate(timeout=30)
        assert tail.returncode == 0 and out == "" and "Traceback" not in err, (out, err)
        tail = _streamrec(env, "recs", "tail", "--from-beginning", "--tenant", "nobody", "--limit",
                          "1")  # fmt: skip
        time.sleep(8)
        tail.send_signal(signal.SIGINT)
        out, err = tail.communicate(timeout=30)
        assert tail.returncode == 0 and out == "", (out, err)

        # `stats` with no tenant: every tenant.
        done = subprocess.run(
            [sys.executable, "-m", "stream", "stats"], env=env, capture_output=True, text=True
        )
        assert done.returncode == 0 and "tenant default" in done.stdout, done.stderr

        # Over HTTP: rollback with nothing before v1 is a conflict, an unknown tenant 404.
        status, body = call(f"{base}/v1/admin/tenants/default/models/rollback", {}, key=ADMIN)
        assert status == 409 and "no earlier promoted version" in body["error"], body
        status, body = call(f"{base}/v1/admin/tenants/ghost/models/rollback", {}, key=ADMIN)
        assert status == 404, body

        # A switched-off tenant: 200, no items, and the reason.
        url = f"{base}/v1/default/sessions/{session}/recommendations"
        status, body = call(url, key=ADMIN)
        assert status == 200 and body["items"], body
        status, _ = call(f"{base}/v1/admin/tenants/default/mode/off", {}, key=ADMIN, method="PUT")
        assert status == 200
        status, body = call(url, key=ADMIN)
        assert status == 200 and body["items"] == [] and body["reason"] == "tenant off", body
        assert body["tenant"] == "default" and body["session_id"] == session, body

    # `trainer` off a terminal: one line per stage with its time; --quiet: the result only.
    args = [sys.executable, "-m", "stream", "trainer", "--once", "--jobs", "1"]
    done = subprocess.run(args, env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    text = done.stdout + done.stderr
    assert "\r" not in text
    assert any(" read " in line and " clicks " in line for line in text.splitlines()), text
    quiet = subprocess.run([*args, "--quiet"], env=env, capture_output=True, text=True, timeout=300)
    assert quiet.returncode == 0, quiet.stderr
    assert quiet.stderr == "" and len(quiet.stdout.splitlines()) == 1, quiet.stdout + quiet.stderr

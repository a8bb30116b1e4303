"""schemathesis against the worker's own /openapi.json: every operation, generated
requests (valid and not), no 5xx, status codes, content types and bodies as the spec
says, and every request the spec calls invalid refused. Valid requests go to random
tenants, sessions and items and to ones that exist (tenant ``default``, the session
posted at start, a known item), so the success answers are checked too. Bounded: a
fixed number of examples per operation, on a Redis of its own."""

from __future__ import annotations

import json
import shutil
import socket
import traceback
import uuid
from collections.abc import Iterator
from pathlib import Path
from types import SimpleNamespace

import pytest
import schemathesis
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from schemathesis.checks import not_a_server_error
from schemathesis.generation import GenerationMode
from schemathesis.specs.openapi.checks import (
    content_type_conformance,
    negative_data_rejection,
    response_schema_conformance,
    status_code_conformance,
)

from stream.dev.stack import EmbeddedStack, Service, free_port
from stream.dev.testing import WorkerConfig, WorkerProcess
from stream.kafka.topics import ensure_topics
from tests.integration.helpers import ADMIN, call, wait_until

pytestmark = pytest.mark.broker_agnostic

EXAMPLES = 20  # per operation (~30 operations)
# Path parameters that exist in the worker under test (the fixture posts the session).
NEGATIVE = GenerationMode.NEGATIVE
KNOWN = {"tenant": "default", "session_id": "fz", "item_id": "A13", "version": "v1"}
CHECKS = [
    not_a_server_error,
    status_code_conformance,
    content_type_conformance,
    response_schema_conformance,
    negative_data_rejection,
]


@pytest.fixture(scope="module")
def api_base(
    stack: EmbeddedStack, tmp_path_factory: pytest.TempPathFactory, trained_model_dir: Path
) -> Iterator[str]:
    home = tmp_path_factory.mktemp("fuzz-api")
    redis = Service("redis", "127.0.0.1", free_port(), home / "redis")
    redis.start()
    models = home / "models"
    shutil.copytree(trained_model_dir, models)
    tag = uuid.uuid4().hex[:6]
    cfg = WorkerConfig(
        SimpleNamespace(broker=stack.broker, redis_url=f"redis://127.0.0.1:{redis.port}/0"),  # type: ignore[arg-type]
        home,
        models,
        f"fz-clicks-{tag}",
        f"fz-recs-{tag}",
        f"fz-dlq-{tag}",
        f"fz-app-{tag}",
    )
    ensure_topics(stack.broker, [cfg.clicks, cfg.recs, cfg.dlq], partitions=2)
    port = free_port()
    cfg.extra_env.update(STREAMREC_WEB_PORT=str(port), STREAMREC_ADMIN_TOKEN=ADMIN)
    base = f"http://127.0.0.1:{port}"
    try:
        with WorkerProcess(cfg) as worker:
            assert wait_until(lambda: call(f"{base}/health/ready")[0] == 200, 180), worker.log()[
                -3000:
            ]
            call(f"{base}/v1/default/events", {"session_id": "fz", "item_id": "A13"})
            yield base
            assert worker.alive(), worker.log()[-3000:]
            assert "Traceback" not in worker.log(), worker.log()[-5000:]
    finally:
        redis.stop()


def _cases(operation: schemathesis.APIOperation) -> st.SearchStrategy[schemathesis.Case]:
    names = {p.name for p in operation.path_parameters}
    known = {k: v for k, v in KNOWN.items() if k in names}
    strategies = [
        operation.as_strategy(GenerationMode.POSITIVE),
        operation.as_strategy(GenerationMode.NEGATIVE),
    ]
    if known:
        strategies.append(operation.as_strategy(GenerationMode.POSITIVE, path_parameters=known))
    return st.one_of(strategies)


def test_the_api_keeps_to_its_spec(api_base: str) -> None:
    schema = schemathesis.openapi.from_url(f"{api_base}/openapi.json")
    failures: dict[str, str] = {}
    operations: list[str] = []
    calls: dict[int, int] = {}  # status -> answers
    succeeded: set[str] = set()  # operations answered 2xx at least once
    for result in schema.get_all_operations():
        operation = result.ok()
        operations.append(operation.label)

        @settings(
            max_examples=EXAMPLES,
            deadline=None,
            database=None,
            suppress_health_check=list(HealthCheck),
        )
        @given(_cases(operation))
        def run(case: schemathesis.Case) -> None:
            # The admin token reaches every route (keys are covered in test_api.py); but
            # not a request made invalid by leaving the token out.
            missing = "authorization" not in {h.lower() for h in case.headers or {}}
            invalid = case.meta is not None and case.meta.generation.mode is NEGATIVE
            token = {} if invalid and missing else {"Authorization": f"Bearer {ADMIN}"}
            response = case.call_and_validate(headers=token, checks=CHECKS)
            calls[response.status_code] = calls.get(response.status_code, 0) + 1
            if response.status_code < 300:
                succeeded.add(case.operation.label)

        try:
            run()
        # schemathesis raises its failures as a BaseExceptionGroup.
        except (Exception, BaseExceptionGroup) as exc:  # noqa: BLE001  (reported below)
            failures[operation.label] = "".join(traceback.format_exception(exc))[-3000:]
    print(f"{len(operations)} operations, answers by status: {dict(sorted(calls.items()))}")
    assert len(operations) >= 29, operations
    assert sum(calls.values()) >= len(operations) * 5
    assert not any(status >= 500 for status in calls)
    assert not failures, "\n\n".join(f"{k}:\n{v}" for k, v in failures.items())
    # Most routes answered with success too, so their answers' schemas were checked.
    assert len(succeeded) >= len(operations) * 2 // 3, sorted(set(operations) - succeeded)


def test_a_request_the_http_parser_refuses_gets_the_apis_json_error(api_base: str) -> None:
    host, port = api_base.removeprefix("http://").split(":")
    for head in (
        b"POST /v1/default/events HTTP/1.1\r\nHost: x\r\nContent-Length: 5s4\r\n\r\n",
        b"GET /health HTTP/1.1\r\nHost: x\r\nBad Header\r\n\r\n",
    ):
        with socket.create_connection((host, int(port)), timeout=10) as conn:
            conn.sendall(head)
            answer = b""
            while chunk := conn.recv(65536):
                answer += chunk
        status, _, rest = answer.partition(b"\r\n")
        headers, _, body = rest.partition(b"\r\n\r\n")
        assert status.startswith(b"HTTP/1.1 400"), answer
        assert b"content-type: application/json" in headers.lower(), answer
        assert json.loads(body)["error"], answer
    assert call(f"{api_base}/health/ready")[0] == 200  # the worker serves on

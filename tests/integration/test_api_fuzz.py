"""schemathesis against the worker's own /openapi.json: every operation, generated
requests (valid and not), no 5xx, status codes, content types and bodies as the spec
says. Bounded: a fixed number of examples per operation, on a Redis of its own."""

from __future__ import annotations

import shutil
import uuid
from collections.abc import Iterator
from pathlib import Path
from types import SimpleNamespace

import pytest
import schemathesis
from hypothesis import HealthCheck, given, settings
from schemathesis.checks import not_a_server_error
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

EXAMPLES = 25  # per operation (~20 operations)
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
            assert wait_until(lambda: call(f"{base}/health/ready")[0] == 200, 60), worker.log()[
                -3000:
            ]
            call(f"{base}/v1/default/events", {"session_id": "fz", "item_id": "A13"})
            yield base
            assert worker.alive(), worker.log()[-3000:]
            assert "Traceback" not in worker.log(), worker.log()[-5000:]
    finally:
        redis.stop()


def test_the_api_keeps_to_its_spec(api_base: str) -> None:
    schema = schemathesis.openapi.from_url(f"{api_base}/openapi.json")
    failures: dict[str, str] = {}
    operations = 0
    calls: dict[int, int] = {}  # status -> answers
    for result in schema.get_all_operations():
        operation = result.ok()
        operations += 1

        @settings(
            max_examples=EXAMPLES,
            deadline=None,
            database=None,
            suppress_health_check=list(HealthCheck),
        )
        @given(operation.as_strategy())
        def run(case: schemathesis.Case) -> None:
            # The admin token reaches every route (keys are covered in test_api.py).
            response = case.call_and_validate(
                headers={"Authorization": f"Bearer {ADMIN}"}, checks=CHECKS
            )
            calls[response.status_code] = calls.get(response.status_code, 0) + 1

        try:
            run()
        except Exception as exc:  # noqa: BLE001  (collected, reported together below)
            failures[operation.label] = str(exc)[:2000]
    assert operations >= 15
    print(f"{operations} operations, answers by status: {dict(sorted(calls.items()))}")
    assert sum(calls.values()) >= operations * 5
    assert not any(status >= 500 for status in calls)
    assert not failures, "\n\n".join(f"{k}:\n{v}" for k, v in failures.items())

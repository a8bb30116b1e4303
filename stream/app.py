"""The Faust app: clicks in, recommendations out, plus model hot-swap timers and HTTP.

``create_app(settings)`` declares the app around one :class:`stream.worker.Worker`
(the service that owns the worker's state), its timers and its web views; the module
attribute ``app`` (built on first access from the environment) lets
``faust -A stream.app worker`` find it too.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import faust

from stream.api import dashboard, feedback  # noqa: F401  (their routes join the API)
from stream.api.server import WebService
from stream.config import Settings
from stream.worker import REPORT_INTERVAL_S, DeadLetterLog, Worker


def create_app(settings: Settings) -> faust.App:
    app = faust.App(
        # Our own consumer (the batch loop) owns the group named app_id; Faust's consumer
        # (idle here) must not join it with its own assignor.
        f"{settings.app_id}-host",
        broker=f"kafka://{settings.broker}",
        key_serializer="raw",
        value_serializer="raw",
        topic_partitions=settings.partitions,
        broker_session_timeout=settings.broker_session_timeout_s,
        broker_heartbeat_interval=1.0,
        consumer_auto_offset_reset="earliest",
        # Security and acks from the one Kafka client configuration (stream/kafka/config.py).
        broker_credentials=settings.kafka.faust_credentials(),
        producer_acks=settings.kafka.faust_acks(),
        producer_linger=0.002,
        web_enabled=settings.web_port > 0,
        # Faust keeps its own state under datadir (default: the current directory).
        datadir=str(Path(settings.home) / "faust"),
    )
    worker = Worker(settings)
    app.service(worker)

    if settings.web_port > 0:
        web = WebService(
            settings,
            worker.stats,
            worker.models,
            worker.pull,
            worker.probe,
            backend=lambda: worker.processor,
        )
        web.ctx.metrics = worker.metrics.render
        web.ctx.live = worker.metrics.live.view
        app.web_server(web)

    app.timer(DeadLetterLog.INTERVAL_S)(worker.flush_dead_letters)
    app.timer(settings.bandit_interval_s)(worker.refresh_bandits)
    app.timer(1.0)(worker.flush_feedback)
    app.timer(settings.model_check_interval_s)(worker.check_models)
    app.task(worker.listen_for_models)
    app.timer(REPORT_INTERVAL_S)(worker.report)
    return app


def __getattr__(name: str) -> Any:
    if name == "app":
        app = create_app(Settings.from_env())
        globals()["app"] = app
        return app
    raise AttributeError(name)

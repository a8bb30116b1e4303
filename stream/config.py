"""Settings: every user-facing knob comes from a ``STREAMREC_*`` variable (or a CLI flag).

Read once at the entry point (``Settings.from_env()``) and passed down; nothing else in
the code base looks at ``os.environ``.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field, fields, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any
from urllib.parse import urlparse

from models.errors import InvalidSettingError

if TYPE_CHECKING:
    from state.connection import RedisSettings
    from stream.kafka.config import KafkaClientConfig

DEFAULT_BROKER = "127.0.0.1:19092"
DEFAULT_REDIS_URL = "redis://127.0.0.1:16379/0"


ENGINES = ("batch",)


def _home_default() -> str:
    return str(Path.cwd() / ".streamrec")


@dataclass(frozen=True)
class Settings:
    """Runtime configuration shared by the worker, the trainer and the tools."""

    # Where the embedded stack keeps pids/logs and where the model registry lives.
    home: str = field(default_factory=_home_default)
    broker: str = DEFAULT_BROKER
    # redis://[:password@]host:port/db, or rediss:// for TLS; the password is never printed
    # (see ``redis_display``).
    redis_url: str = field(default=DEFAULT_REDIS_URL, repr=False)
    # Every Redis client (state/connection.py): timeouts, retries of a command that failed
    # on the connection (jittered backoff), and with rediss:// the CA / client certificate.
    redis_connect_timeout_s: float = 3.0
    redis_timeout_s: float = 5.0
    redis_retries: int = 3
    redis_ssl_ca_file: str = ""
    redis_ssl_cert_file: str = ""
    redis_ssl_key_file: str = ""
    model_dir: str = ""  # default: <home>/models
    clicks_topic: str = "clicks"
    recs_topic: str = "recommendations"
    dlq_topic: str = "clicks.dlq"
    # Explicit feedback from apps (click / add_to_cart / purchase of a recommended item).
    feedback_topic: str = "feedback"
    partitions: int = 4
    app_id: str = "streamrec-worker"
    # Session state in Redis: the newest `session_cap` items are kept for `session_ttl_s`.
    session_cap: int = 50
    session_ttl_s: int = 24 * 3600
    # Cold-start popularity per tenant without a model: its most clicked items, kept
    # while the tenant sends clicks.
    popular_cap: int = 10_000
    popular_ttl_s: int = 30 * 24 * 3600
    top_k: int = 10
    # Feedback counting (implicit hits, explicit feedback) per tenant x variant, in Redis
    # buckets of feedback_bucket_s kept feedback_retention_h hours; off only to measure
    # what it costs.
    feedback: bool = True
    feedback_bucket_s: int = 60
    feedback_retention_h: float = 168.0
    # How often a worker recomputes its bandits' shares from the counters.
    bandit_interval_s: float = 5.0
    # /metrics labels at most this many tenants by name (the rest as "_other").
    metrics_max_tenants: int = 50
    # "batch", the batch loop, is the only engine: STREAMREC_ENGINE=batch is accepted and
    # any other value is refused in one line at start-up.
    engine: str = "batch"
    # at_least_once (default) or exactly_once: each batch's outputs and offsets in one
    # Kafka transaction (Apache Kafka only; see stream/kafka/transactions.py).
    delivery: str = "at_least_once"
    # Large batches spread the per-batch costs (round trip, ranking call, commit) over
    # more events; batches only fill up when events wait, so latency at a steady rate
    # below capacity does not depend on it. Larger still costs peak memory.
    batch_size: int = 5000
    # Threads that share the ranking of one large batch (the compiled kernel releases the
    # GIL); 1 keeps the worker on one core.
    rank_threads: int = 2
    batch_within_s: float = 0.02
    # Short group session timeout: the embedded broker's first join waits ~half of it.
    broker_session_timeout_s: float = 6.0
    model_check_interval_s: float = 2.0
    # Tenants' models kept in memory at once (LRU); arrays are memory-mapped.
    max_models: int = 1000
    web_port: int = 6066
    # HTTP listens on loopback unless told otherwise (0.0.0.0 in a container).
    web_host: str = "127.0.0.1"
    # The admin API (/v1/admin/...) is off without a token.
    admin_token: str = field(default="", repr=False)
    # Tenant routes need a key even for a tenant that has none yet (else a tenant is
    # open until its first key is created).
    require_keys: bool = False
    # A click or HTTP call for an unknown tenant creates it: for a laptop's dev stack, the
    # demo and tests only. Off (the default), tenants are created by `streamrec tenant
    # create` or the admin API; an unknown tenant's click is dead-lettered, HTTP says 404.
    auto_create_tenants: bool = False
    # /dashboard, its data, /metrics and the detailed /health without the admin token.
    public_dashboard: bool = False
    # A connection whose request line and headers have not all arrived within this many
    # seconds (of opening, or of a kept-alive connection's next request) is closed.
    web_header_timeout_s: float = 10.0
    log_level: str = "info"
    # The embedded broker `dev up`, the demo and the tests start: auto | kafka | tansu.
    # auto = Apache Kafka when a JDK >= 17 and its jars (or Maven to fetch them) are here.
    embedded_broker: str = "auto"
    # Apache Kafka's jars: KAFKA_HOME/libs if set, else fetched into
    # <cache_dir>/kafka-<version> (default: the user cache directory, ~/.cache/streamrec).
    kafka_home: str = ""
    cache_dir: str = ""
    # Kafka clients (stream/kafka/config.py): security, acks, topics streamrec creates.
    kafka_security_protocol: str = "PLAINTEXT"  # PLAINTEXT | SSL | SASL_PLAINTEXT | SASL_SSL
    kafka_sasl_mechanism: str = ""  # PLAIN | SCRAM-SHA-256 | SCRAM-SHA-512
    kafka_sasl_username: str = ""
    kafka_sasl_password: str = field(default="", repr=False)
    kafka_ssl_ca_file: str = ""
    kafka_ssl_cert_file: str = ""
    kafka_ssl_key_file: str = ""
    kafka_ssl_key_password: str = field(default="", repr=False)
    kafka_acks: str = "all"
    kafka_replication_factor: int = 1
    # Must cover the trainer's window (default 7 days): the click log is the training data.
    kafka_retention_hours: float = 336.0

    def __post_init__(self) -> None:
        # A bad port is a one-line error at start-up, not a traceback from a socket later.
        if self.engine == "agent":
            raise InvalidSettingError(
                "STREAMREC_ENGINE='agent' is retired: the batch loop is the only engine "
                "(unset STREAMREC_ENGINE or set it to 'batch')"
            )
        if self.engine not in ENGINES:
            raise InvalidSettingError(f"STREAMREC_ENGINE={self.engine!r}: choose 'batch'")
        if self.rank_threads < 1:
            raise InvalidSettingError(f"STREAMREC_RANK_THREADS={self.rank_threads}: at least 1")
        if not 0 <= self.web_port <= 65535:
            raise InvalidSettingError(f"web port {self.web_port} is not a port (0-65535; 0 = off)")
        if not self.web_header_timeout_s > 0:
            raise InvalidSettingError(
                f"STREAMREC_WEB_HEADER_TIMEOUT_S={self.web_header_timeout_s}: above 0 seconds"
            )
        for address in self.broker.split(","):
            host, _, port = address.strip().rpartition(":")
            if host and not (port.isdigit() and 0 < int(port) <= 65535):
                raise InvalidSettingError(f"broker address {address!r} has no valid port (1-65535)")
        try:
            redis_port = urlparse(self.redis_url).port
        except ValueError:
            redis_port = 0
        if redis_port == 0:
            raise InvalidSettingError(
                f"Redis URL {redact_url(self.redis_url)!r} has no valid port (1-65535)"
            )
        tls = self.redis_ssl_ca_file or self.redis_ssl_cert_file or self.redis_ssl_key_file
        if tls or self.redis_retries < 0:
            self.redis  # noqa: B018  (its checks said at start-up, not at the first connection)

    @property
    def kafka(self) -> KafkaClientConfig:
        """Every Kafka client's settings (bootstrap, security, acks, topic defaults)."""
        from stream.kafka.config import KafkaClientConfig

        return KafkaClientConfig.from_settings(self)

    @property
    def redis(self) -> RedisSettings:
        """Every Redis client's settings (URL, timeouts, TLS, retry policy)."""
        from state.connection import RedisSettings

        return RedisSettings(
            url=self.redis_url,
            connect_timeout_s=self.redis_connect_timeout_s,
            timeout_s=self.redis_timeout_s,
            ssl_ca_file=self.redis_ssl_ca_file,
            ssl_cert_file=self.redis_ssl_cert_file,
            ssl_key_file=self.redis_ssl_key_file,
            retries=self.redis_retries,
        )

    @property
    def redis_display(self) -> str:
        """The Redis URL for messages: any password replaced by ``***``."""
        return redact_url(self.redis_url)

    @property
    def run_dir(self) -> Path:
        return Path(self.home) / "run"

    @property
    def registry_dir(self) -> Path:
        return Path(self.model_dir) if self.model_dir else Path(self.home) / "models"

    @classmethod
    def from_env(cls, environ: dict[str, str] | None = None, **overrides: Any) -> Settings:
        env = os.environ if environ is None else environ
        values: dict[str, Any] = {}
        for f in fields(cls):
            raw = env.get(f"STREAMREC_{f.name.upper()}")
            if raw is None or raw == "":
                continue
            values[f.name] = _coerce(f.name, raw, type(getattr(cls(), f.name)))
        if "kafka_home" not in values and env.get("KAFKA_HOME"):
            values["kafka_home"] = env["KAFKA_HOME"]
        values.update({k: v for k, v in overrides.items() if v is not None})
        return cls(**values)

    def with_(self, **changes: Any) -> Settings:
        return replace(self, **{k: v for k, v in changes.items() if v is not None})


def redact_url(url: str) -> str:
    """``url`` with its password, if any, replaced by ``***`` (also in a URL whose port
    is invalid: it may be quoted by the error saying so)."""
    parts = urlparse(url)
    credentials, at, address = parts.netloc.rpartition("@")
    if not at or ":" not in credentials:
        return url
    user = credentials.split(":", 1)[0]
    return parts._replace(netloc=f"{user}:***@{address}").geturl()


def _coerce(name: str, raw: str, typ: type) -> Any:
    try:
        if typ is bool:
            return raw.strip().lower() in {"1", "true", "yes", "on"}
        return typ(raw)
    except ValueError as exc:
        raise InvalidSettingError(
            f"STREAMREC_{name.upper()}={raw!r} is not a valid {typ.__name__}"
        ) from exc

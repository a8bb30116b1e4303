"""Settings: every user-facing knob comes from a ``STREAMREC_*`` variable (or a CLI flag).

Read once at the entry point (``Settings.from_env()``) and passed down; nothing else in
the code base looks at ``os.environ``. ``Settings(...)`` and ``with_(...)`` take values as
given (tests, flags) and check them the same way. A bad value is one line naming its
variable (``InvalidSettingError``); secrets are ``SecretStr``, masked wherever the settings
are shown, and read with ``get_secret_value()`` where a client needs them.
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal
from urllib.parse import urlparse

from pydantic import ByteSize, Field, SecretStr, ValidationError, field_validator, model_validator
from pydantic_settings import (
    BaseSettings,
    EnvSettingsSource,
    PydanticBaseSettingsSource,
    SettingsConfigDict,
)

from models.errors import InvalidSettingError

if TYPE_CHECKING:
    from pydantic_core import ErrorDetails

    from state.connection import RedisSettings
    from stream.kafka.config import KafkaClientConfig

DEFAULT_BROKER = "127.0.0.1:19092"
DEFAULT_REDIS_URL = "redis://127.0.0.1:16379/0"


def _home_default() -> str:
    return str(Path.cwd() / ".streamrec")


class Settings(BaseSettings):
    """Runtime configuration shared by the worker, the trainer and the tools."""

    model_config = SettingsConfigDict(
        env_prefix="STREAMREC_",
        frozen=True,
        extra="forbid",
        # model_dir and model_check_interval_s are ours, not pydantic's "model_" methods.
        protected_namespaces=("settings_",),
    )

    # Where the embedded stack keeps pids/logs and where the model registry lives.
    home: str = Field(default_factory=_home_default)
    broker: str = DEFAULT_BROKER
    # redis://[:password@]host:port/db, or rediss:// for TLS: secret, as it may hold the
    # password (``redis_display`` shows it without).
    redis_url: SecretStr = Field(DEFAULT_REDIS_URL)
    # A Redis Cluster: redis_url names any one of its nodes (db 0), the others are found
    # from it. Unset: the cluster `streamrec dev up --redis cluster` recorded in the run
    # directory, if any, else a single Redis.
    redis_cluster: bool = False
    # Every Redis client (state/connection.py): timeouts, retries of a command that failed
    # on the connection (jittered backoff), and with rediss:// the CA / client certificate.
    redis_connect_timeout_s: float = 3.0
    redis_timeout_s: float = 5.0
    redis_retries: int = Field(3, ge=0)
    redis_ssl_ca_file: str = ""
    redis_ssl_cert_file: str = ""
    redis_ssl_key_file: str = ""
    model_dir: str = ""  # default: <home>/models
    clicks_topic: str = "clicks"
    recs_topic: str = "recommendations"
    dlq_topic: str = "clicks.dlq"
    # Explicit feedback from apps (click / add_to_cart / purchase of a recommended item).
    feedback_topic: str = "feedback"
    # Each pass's work for trainers sharing the tenants (`trainer --group`), keyed by tenant.
    retrain_topic: str = "retrain"
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
    engine: Literal["batch"] = "batch"
    # at_least_once (default) or exactly_once: each batch's outputs and offsets in one
    # Kafka transaction (Apache Kafka only; see stream/kafka/transactions.py).
    delivery: Literal["at_least_once", "exactly_once"] = "at_least_once"
    # Large batches spread the per-batch costs (round trip, ranking call, commit) over
    # more events; batches only fill up when events wait, so latency at a steady rate
    # below capacity does not depend on it. Larger still costs peak memory.
    batch_size: int = 5000
    # Threads that share the ranking of one large batch (the compiled kernel releases the
    # GIL); 1 keeps the worker on one core.
    rank_threads: int = Field(2, ge=1)
    batch_within_s: float = 0.02
    # Offsets of the batches done are committed at most this often (and at every
    # rebalance and stop): a worker killed re-delivers up to this long of clicks, which
    # the sessions recognise; a commit per batch cost the broker a request per batch.
    commit_interval_s: float = Field(0.5, ge=0)
    # Short group session timeout: the embedded broker's first join waits ~half of it.
    broker_session_timeout_s: float = 6.0
    model_check_interval_s: float = 2.0
    # Memory for tenants' models (their arrays): beyond it the least recently used are
    # evicted and load again on their tenant's next click. "1GiB", "500MB" or bytes.
    models_max_bytes: ByteSize = Field(ByteSize(1 << 30), gt=0)
    web_port: int = 6066  # 0 = no HTTP server
    # HTTP listens on loopback unless told otherwise (0.0.0.0 in a container).
    web_host: str = "127.0.0.1"
    # The admin API (/v1/admin/...) is off without a token.
    admin_token: SecretStr = Field("")
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
    web_header_timeout_s: float = Field(10.0, gt=0)
    log_level: str = "info"
    # The embedded broker `dev up`, the demo and the tests start: auto | kafka | tansu.
    # auto = Apache Kafka when a JDK >= 17 and its jars (or Maven to fetch them) are here.
    embedded_broker: Literal["auto", "kafka", "tansu"] = "auto"
    # Apache Kafka's jars: KAFKA_HOME/libs if set, else fetched into
    # <cache_dir>/kafka-<version> (default: the user cache directory, ~/.cache/streamrec).
    kafka_home: str = ""  # else KAFKA_HOME
    cache_dir: str = ""
    # Kafka clients (stream/kafka/config.py): security, acks, topics streamrec creates.
    kafka_security_protocol: str = "PLAINTEXT"  # PLAINTEXT | SSL | SASL_PLAINTEXT | SASL_SSL
    kafka_sasl_mechanism: str = ""  # PLAIN | SCRAM-SHA-256 | SCRAM-SHA-512
    kafka_sasl_username: str = ""
    kafka_sasl_password: SecretStr = Field("")
    kafka_ssl_ca_file: str = ""
    kafka_ssl_cert_file: str = ""
    kafka_ssl_key_file: str = ""
    kafka_ssl_key_password: SecretStr = Field("")
    kafka_acks: str = "all"
    # Compression of the records the worker publishes (recommendations, dead letters):
    # fewer bytes on the network and the broker's disk, for some of the worker's CPU.
    kafka_output_compression: Literal["none", "gzip", "snappy", "lz4", "zstd"] = "none"
    kafka_replication_factor: int = 1
    # Must cover the trainer's window (default 7 days): the click log is the training data.
    kafka_retention_hours: float = 336.0

    def __init__(self, **values: Any) -> None:
        try:
            super().__init__(**values)
        except ValidationError as exc:
            # Not chained: pydantic's error quotes the input, which may be a secret.
            raise InvalidSettingError(_one_line(exc)) from None

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        # The values given, nothing else: from_env() is where the environment comes in.
        return (init_settings,)

    @field_validator("engine", mode="before")
    @classmethod
    def _engine(cls, value: object) -> object:
        if value == "agent":
            raise InvalidSettingError(
                "STREAMREC_ENGINE='agent' is retired: the batch loop is the only engine "
                "(unset STREAMREC_ENGINE or set it to 'batch')"
            )
        return value

    @field_validator("web_port")
    @classmethod
    def _web_port(cls, port: int) -> int:
        if not 0 <= port <= 65535:
            raise InvalidSettingError(f"STREAMREC_WEB_PORT={port} is not a port (0-65535; 0 = off)")
        return port

    @field_validator("broker")
    @classmethod
    def _broker(cls, broker: str) -> str:
        for address in broker.split(","):
            host, _, port = address.strip().rpartition(":")
            if host and not (port.isdigit() and 0 < int(port) <= 65535):
                raise InvalidSettingError(
                    f"STREAMREC_BROKER: address {address!r} has no valid port (1-65535)"
                )
        return broker

    @field_validator("redis_url")
    @classmethod
    def _redis_url(cls, url: SecretStr) -> SecretStr:
        text = url.get_secret_value()
        try:
            port = urlparse(text).port
        except ValueError:
            port = 0
        if port == 0:
            raise InvalidSettingError(
                f"STREAMREC_REDIS_URL={redact_url(text)!r} has no valid port (1-65535)"
            )
        return url

    @model_validator(mode="after")
    def _redis_settings(self) -> Settings:
        self.redis  # noqa: B018  (its checks said at start-up, not at the first connection)
        return self

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
            url=self.redis_url.get_secret_value(),
            connect_timeout_s=self.redis_connect_timeout_s,
            timeout_s=self.redis_timeout_s,
            ssl_ca_file=self.redis_ssl_ca_file,
            ssl_cert_file=self.redis_ssl_cert_file,
            ssl_key_file=self.redis_ssl_key_file,
            retries=self.redis_retries,
            cluster=self.redis_cluster,
        )

    @property
    def redis_display(self) -> str:
        """The Redis URL for messages: any password replaced by ``***``."""
        return redact_url(self.redis_url.get_secret_value())

    @property
    def run_dir(self) -> Path:
        return Path(self.home) / "run"

    @property
    def registry_dir(self) -> Path:
        return Path(self.model_dir) if self.model_dir else Path(self.home) / "models"

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None, **overrides: Any) -> Settings:
        """The ``STREAMREC_*`` variables of ``environ`` (default: the process's), and
        ``overrides`` (flags; None = not given) above them."""
        environ = os.environ if environ is None else environ
        variables = _Variables(cls, environ)()
        variables.setdefault("kafka_home", environ.get("KAFKA_HOME", ""))
        given = {**variables, **{k: v for k, v in overrides.items() if v is not None}}
        if "redis_url" not in given and "redis_cluster" not in given:
            given.update(_recorded_cluster(Path(given.get("home") or _home_default()) / "run"))
        return cls(**given)

    def with_(self, **changes: Any) -> Settings:
        """A copy with ``changes`` (None = keep), checked as the variables are."""
        given = {k: v for k, v in changes.items() if v is not None}
        return type(self)(**{**dict(self), **given})


# Written by `dev up --redis cluster` in the run directory: the cluster's nodes, so that
# every later command with this STREAMREC_HOME talks to the cluster (``Settings.from_env``).
CLUSTER_RECORD = "redis-cluster.json"


def read_cluster_record(run_dir: Path) -> dict[str, list[str]] | None:
    """``{"masters": [host:port, ...], "replicas": [...]}`` of the cluster this run
    directory runs, or None."""
    try:
        found = json.loads((run_dir / CLUSTER_RECORD).read_text())
    except (OSError, ValueError):
        return None
    if not isinstance(found, dict) or not found.get("masters"):
        return None
    return {"masters": list(found["masters"]), "replicas": list(found.get("replicas", []))}


def _recorded_cluster(run_dir: Path) -> dict[str, Any]:
    """The Redis settings of the cluster ``streamrec dev up --redis cluster`` recorded in
    ``run_dir`` (its first master's URL), or nothing."""
    record = read_cluster_record(run_dir)
    if record is None:
        return {}
    return {"redis_url": f"redis://{record['masters'][0]}/0", "redis_cluster": True}


class _Variables(EnvSettingsSource):
    """pydantic-settings' reading of the environment, from a mapping given (tests pass
    their own) rather than always ``os.environ``."""

    def __init__(self, settings_cls: type[BaseSettings], environ: Mapping[str, str]) -> None:
        self._environ = environ
        super().__init__(settings_cls)

    def _load_env_vars(self) -> Mapping[str, str | None]:
        # The hook pydantic-settings' own .env source overrides. Names as it matches them
        # (case-insensitive); "" is unset.
        return {name.lower(): value for name, value in self._environ.items() if value != ""}


def _one_line(exc: ValidationError) -> str:
    return "; ".join(_describe(error) for error in exc.errors())


def _describe(error: ErrorDetails) -> str:
    """One problem: our own checks' messages as written; pydantic's with the variable
    and the value, unless the value is a secret."""
    raised = error.get("ctx", {}).get("error")
    if isinstance(raised, InvalidSettingError):
        return str(raised)
    if not error["loc"]:
        return error["msg"]
    name = str(error["loc"][0])
    field = Settings.model_fields.get(name)
    variable = f"STREAMREC_{name.upper()}"
    problem = error["msg"][:1].lower() + error["msg"][1:]
    if field is not None and field.annotation is SecretStr:
        return f"{variable}: {problem}"
    return f"{variable}={error['input']!r}: {problem}"


def redact_url(url: str) -> str:
    """``url`` with its password, if any, replaced by ``***`` (also in a URL whose port
    is invalid: it may be quoted by the error saying so)."""
    parts = urlparse(url)
    credentials, at, address = parts.netloc.rpartition("@")
    if not at or ":" not in credentials:
        return url
    user = credentials.split(":", 1)[0]
    return parts._replace(netloc=f"{user}:***@{address}").geturl()

"""Every Kafka client streamrec builds is configured here.

One :class:`KafkaClientConfig` holds the bootstrap servers, the security settings
(``STREAMREC_KAFKA_*``), the acks policy and the topic defaults, and hands out the
settings of each kind of client: confluent-kafka producers, consumers and admin clients
(the worker's one client), and Faust's credentials (Faust hosts the worker and keeps its
own aiokafka client idle). So the partitioner (``murmur2_random``, the Java client's
mapping), acks and security cannot drift between the worker, the HTTP ingest, the
trainer, the producers and the tools.

Secrets (SASL password, key password) are never part of ``repr`` or log lines.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from dataclasses import dataclass, field, fields
from typing import TYPE_CHECKING, Any

from models.errors import StreamrecError

if TYPE_CHECKING:
    import ssl

    from stream.config import Settings

RDKAFKA_LOG = logging.getLogger(f"streamrec.{__name__}.rdkafka")

SECURITY_PROTOCOLS = ("PLAINTEXT", "SSL", "SASL_PLAINTEXT", "SASL_SSL")
SASL_MECHANISMS = ("PLAIN", "SCRAM-SHA-256", "SCRAM-SHA-512")
# Same key -> partition mapping as the Java client and aiokafka: a session's clicks land
# on one partition whoever produced them (HTTP ingest, ClickProducer, a Java app).
PARTITIONER = "murmur2_random"
DAY_MS = 24 * 3600 * 1000


@dataclass(frozen=True)
class KafkaClientConfig:
    bootstrap_servers: str
    security_protocol: str = "PLAINTEXT"
    sasl_mechanism: str = ""
    sasl_username: str = ""
    sasl_password: str = field(default="", repr=False)
    ssl_ca_file: str = ""
    ssl_cert_file: str = ""
    ssl_key_file: str = ""
    ssl_key_password: str = field(default="", repr=False)
    # One policy for every producer: the leader and its in-sync replicas have the record.
    acks: str = "all"
    # The worker's output: a batch's records go out together and repeat their field names
    # and item ids, so compressed they take a few times fewer bytes to send and store.
    output_compression: str = "none"
    # Topics streamrec creates.
    replication_factor: int = 1
    retention_ms: int = 14 * DAY_MS

    def __post_init__(self) -> None:
        protocol = self.security_protocol.upper()
        if protocol not in SECURITY_PROTOCOLS:
            raise StreamrecError(
                f"STREAMREC_KAFKA_SECURITY_PROTOCOL={self.security_protocol!r}: choose one of "
                + ", ".join(SECURITY_PROTOCOLS)
            )
        object.__setattr__(self, "security_protocol", protocol)
        if protocol.startswith("SASL"):
            mechanism = (self.sasl_mechanism or "PLAIN").upper()
            if mechanism not in SASL_MECHANISMS:
                raise StreamrecError(
                    f"STREAMREC_KAFKA_SASL_MECHANISM={self.sasl_mechanism!r}: choose one of "
                    + ", ".join(SASL_MECHANISMS)
                )
            if not self.sasl_username or not self.sasl_password:
                raise StreamrecError(
                    f"security protocol {protocol} needs STREAMREC_KAFKA_SASL_USERNAME and "
                    "STREAMREC_KAFKA_SASL_PASSWORD"
                )
            object.__setattr__(self, "sasl_mechanism", mechanism)
        if self.acks not in ("all", "-1", "1", "0"):
            raise StreamrecError(f"STREAMREC_KAFKA_ACKS={self.acks!r}: choose all, 1 or 0")
        if self.replication_factor < 1 or self.retention_ms < 1:
            raise StreamrecError("topic replication factor and retention must be positive")

    @classmethod
    def from_settings(cls, settings: Settings) -> KafkaClientConfig:
        return cls(
            bootstrap_servers=settings.broker,
            security_protocol=settings.kafka_security_protocol,
            sasl_mechanism=settings.kafka_sasl_mechanism,
            sasl_username=settings.kafka_sasl_username,
            sasl_password=settings.kafka_sasl_password.get_secret_value(),
            ssl_ca_file=settings.kafka_ssl_ca_file,
            ssl_cert_file=settings.kafka_ssl_cert_file,
            ssl_key_file=settings.kafka_ssl_key_file,
            ssl_key_password=settings.kafka_ssl_key_password.get_secret_value(),
            acks=settings.kafka_acks,
            output_compression=settings.kafka_output_compression,
            replication_factor=settings.kafka_replication_factor,
            retention_ms=int(settings.kafka_retention_hours * 3600 * 1000),
        )

    def __str__(self) -> str:
        return f"{self.bootstrap_servers} ({self.security_protocol})"

    @property
    def uses_ssl(self) -> bool:
        return self.security_protocol in ("SSL", "SASL_SSL")

    # -- confluent-kafka (librdkafka) ----------------------------------------------------

    def common(self) -> dict[str, Any]:
        """Connection and security settings every librdkafka client shares."""
        conf: dict[str, Any] = {
            "bootstrap.servers": self.bootstrap_servers,
            "security.protocol": self.security_protocol.lower(),
            "logger": RDKAFKA_LOG,
        }
        if self.security_protocol.startswith("SASL"):
            conf["sasl.mechanism"] = self.sasl_mechanism
            conf["sasl.username"] = self.sasl_username
            conf["sasl.password"] = self.sasl_password
        if self.uses_ssl:
            for key, value in (
                ("ssl.ca.location", self.ssl_ca_file),
                ("ssl.certificate.location", self.ssl_cert_file),
                ("ssl.key.location", self.ssl_key_file),
                ("ssl.key.password", self.ssl_key_password),
            ):
                if value:
                    conf[key] = value
        return conf

    def producer(self, extra: Mapping[str, Any] | None = None) -> dict[str, Any]:
        """A producer's settings; ``extra`` (librdkafka's names) tunes batching and such."""
        conf = self.common()
        conf.update(
            {
                "partitioner": PARTITIONER,
                "acks": self.acks,
                "linger.ms": 1,
                # Room for bursts (replays, load tests) before produce() pushes back.
                "queue.buffering.max.messages": 1_000_000,
                "message.timeout.ms": 30_000,
            }
        )
        conf.update(extra or {})
        return conf

    def output_producer(self, extra: Mapping[str, Any] | None = None) -> dict[str, Any]:
        """The worker's producer (its records, with ``extra``), compressed as configured."""
        return self.producer({"compression.type": self.output_compression, **(extra or {})})

    def consumer(self, group_id: str, extra: Mapping[str, Any] | None = None) -> dict[str, Any]:
        conf = self.common()
        conf.update(
            {
                "group.id": group_id,
                "enable.auto.commit": False,
                "auto.offset.reset": "earliest",
            }
        )
        conf.update(extra or {})
        return conf

    def admin(self) -> dict[str, Any]:
        return self.common()

    def topic_config(self) -> dict[str, str]:
        return {"retention.ms": str(self.retention_ms)}

    # -- Faust (its aiokafka client) -----------------------------------------------------

    def ssl_context(self) -> ssl.SSLContext | None:
        if not self.uses_ssl:
            return None
        from aiokafka.helpers import create_ssl_context

        return create_ssl_context(
            cafile=self.ssl_ca_file or None,
            certfile=self.ssl_cert_file or None,
            keyfile=self.ssl_key_file or None,
            password=self.ssl_key_password or None,
        )

    def faust_credentials(self) -> Any:
        """``broker_credentials`` for ``faust.App`` (None for PLAINTEXT)."""
        import faust

        if self.security_protocol.startswith("SASL"):
            return faust.SASLCredentials(
                username=self.sasl_username,
                password=self.sasl_password,
                mechanism=self.sasl_mechanism,
                ssl_context=self.ssl_context(),
            )
        if self.uses_ssl:
            return faust.SSLCredentials(self.ssl_context())
        return None

    def faust_acks(self) -> int:
        return -1 if self.acks in ("all", "-1") else int(self.acks)


def kafka_config(target: str | KafkaClientConfig) -> KafkaClientConfig:
    """A bare bootstrap address (an app's or a test's) becomes a PLAINTEXT config."""
    return target if isinstance(target, KafkaClientConfig) else KafkaClientConfig(target)


SECRET_FIELDS = tuple(f.name for f in fields(KafkaClientConfig) if not f.repr)

"""The one Kafka client configuration: every client gets the same partitioner, acks and
security settings; secrets stay out of reprs."""

from __future__ import annotations

import pytest

from models.errors import StreamrecError
from producers.client import producer_config
from stream.config import Settings
from stream.kafka.config import KafkaClientConfig

SASL_ENV = {
    "STREAMREC_BROKER": "kafka-1:9093",
    "STREAMREC_KAFKA_SECURITY_PROTOCOL": "sasl_ssl",
    "STREAMREC_KAFKA_SASL_MECHANISM": "scram-sha-512",
    "STREAMREC_KAFKA_SASL_USERNAME": "streamrec",
    "STREAMREC_KAFKA_SASL_PASSWORD": "hunter2-secret",
    "STREAMREC_KAFKA_SSL_CA_FILE": "/etc/ca.pem",
    "STREAMREC_KAFKA_REPLICATION_FACTOR": "3",
    "STREAMREC_KAFKA_RETENTION_HOURS": "240",
}


def test_settings_build_a_secured_config_and_never_show_the_password() -> None:
    settings = Settings.from_env(SASL_ENV)
    kafka = settings.kafka
    assert (kafka.security_protocol, kafka.sasl_mechanism) == ("SASL_SSL", "SCRAM-SHA-512")
    assert (kafka.replication_factor, kafka.retention_ms) == (3, 240 * 3600 * 1000)
    for text in (repr(settings), str(settings), repr(kafka), str(kafka)):
        assert "hunter2" not in text
    conf = kafka.common()
    assert conf["sasl.password"] == "hunter2-secret" and conf["ssl.ca.location"] == "/etc/ca.pem"
    assert conf["security.protocol"] == "sasl_ssl"


def test_every_producer_gets_the_java_partitioner_and_one_acks_policy() -> None:
    kafka = KafkaClientConfig("b:1")
    web_like = kafka.producer({"linger.ms": 2})
    helper = producer_config(kafka, linger_ms=5)
    for conf in (web_like, helper):
        assert conf["partitioner"] == "murmur2_random"
        assert conf["acks"] == "all"
        assert conf["bootstrap.servers"] == "b:1"
    assert producer_config("b:1")["partitioner"] == "murmur2_random"


def test_the_workers_records_go_out_compressed(monkeypatch: pytest.MonkeyPatch) -> None:
    """Both of the worker's producers (at least once, exactly once) compress what they
    publish as configured (not by default); the other producers are left alone."""
    from stream.kafka import transactions
    from stream.pipeline import loop

    made: list[dict[str, object]] = []
    for module in (loop, transactions):
        monkeypatch.setattr(module, "Producer", lambda conf: made.append(conf))
    lz4 = Settings.from_env({"STREAMREC_KAFKA_OUTPUT_COMPRESSION": "lz4"})
    loop.RecordPublisher(lz4)
    transactions.TransactionalPublisher(lz4)
    loop.RecordPublisher(Settings.from_env({}))
    assert [conf.get("compression.type") for conf in made] == ["lz4", "lz4", "none"]
    assert "compression.type" not in KafkaClientConfig("b:1").producer()


def test_consumers_and_faust_share_the_security_settings() -> None:
    kafka = Settings.from_env(SASL_ENV).kafka
    consumer = kafka.consumer("g", {"fetch.wait.max.ms": 5})
    assert consumer["group.id"] == "g" and consumer["sasl.username"] == "streamrec"
    assert consumer["enable.auto.commit"] is False and consumer["fetch.wait.max.ms"] == 5
    assert KafkaClientConfig("b:1").faust_credentials() is None
    assert KafkaClientConfig("b:1").faust_acks() == -1


@pytest.mark.parametrize(
    ("env", "message"),
    [
        ({"STREAMREC_KAFKA_SECURITY_PROTOCOL": "tls"}, "choose one of PLAINTEXT"),
        ({"STREAMREC_KAFKA_SECURITY_PROTOCOL": "SASL_PLAINTEXT"}, "needs STREAMREC_KAFKA_SASL"),
        (
            {
                "STREAMREC_KAFKA_SECURITY_PROTOCOL": "SASL_PLAINTEXT",
                "STREAMREC_KAFKA_SASL_MECHANISM": "GSSAPI",
                "STREAMREC_KAFKA_SASL_USERNAME": "u",
                "STREAMREC_KAFKA_SASL_PASSWORD": "p",
            },
            "SASL_MECHANISM",
        ),
        ({"STREAMREC_KAFKA_ACKS": "2"}, "choose all, 1 or 0"),
        ({"STREAMREC_KAFKA_OUTPUT_COMPRESSION": "brotli"}, "'lz4' or 'zstd'"),
    ],
)
def test_bad_security_settings_are_one_line_errors(env: dict[str, str], message: str) -> None:
    with pytest.raises(StreamrecError, match=message):
        _ = Settings.from_env(env).kafka

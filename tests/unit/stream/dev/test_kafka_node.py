"""Choosing the embedded broker and the one-line errors when Apache Kafka cannot run."""

from __future__ import annotations

import stat
from pathlib import Path

import pytest

from models.errors import StreamrecError
from stream.dev.kafka_node import KafkaDist, KafkaNode, KafkaSetupError, choose_kind, java_major


def fake_jdk(root: Path, version_line: str) -> Path:
    java = root / "bin" / "java"
    java.parent.mkdir(parents=True)
    java.write_text(f"#!/bin/sh\necho '{version_line}' >&2\n")
    java.chmod(java.stat().st_mode | stat.S_IEXEC)
    return root


def fake_jars(root: Path) -> Path:
    (root / "libs").mkdir(parents=True)
    (root / "libs" / "kafka_2.13-4.1.1.jar").write_bytes(b"")
    return root


@pytest.mark.parametrize(
    ("line", "major"),
    [('openjdk version "17.0.15" 2025-04-15', 17), ('java version "1.8.0_402"', 8)],
)
def test_java_major_reads_both_version_styles(tmp_path: Path, line: str, major: int) -> None:
    assert java_major(str(fake_jdk(tmp_path, line) / "bin" / "java")) == major


def test_auto_takes_kafka_with_a_new_jdk_and_jars(tmp_path: Path) -> None:
    jdk = fake_jdk(tmp_path / "jdk", 'openjdk version "21.0.1"')
    dist = KafkaDist(
        tmp_path / "cache", kafka_home=str(fake_jars(tmp_path / "kafka")), java_home=str(jdk)
    )
    kind, why = choose_kind("auto", dist)
    assert kind == "kafka" and "Apache Kafka" in why


def test_auto_falls_back_to_tansu_and_says_why(tmp_path: Path) -> None:
    jdk = fake_jdk(tmp_path / "jdk", 'openjdk version "11.0.2"')
    dist = KafkaDist(
        tmp_path / "cache", kafka_home=str(fake_jars(tmp_path / "kafka")), java_home=str(jdk)
    )
    kind, why = choose_kind("auto", dist)
    assert kind == "tansu" and "Java 11" in why and ">= 17" in why


def test_asking_for_kafka_without_a_usable_jdk_is_one_line(tmp_path: Path) -> None:
    jdk = fake_jdk(tmp_path / "jdk", 'openjdk version "11.0.2"')
    dist = KafkaDist(
        tmp_path / "cache", kafka_home=str(fake_jars(tmp_path / "kafka")), java_home=str(jdk)
    )
    assert choose_kind("kafka", dist)[0] == "kafka"
    node = KafkaNode(dist, "127.0.0.1", 1, 0, tmp_path / "run")
    with pytest.raises(KafkaSetupError) as err:
        node.prepare()
    message = str(err.value)
    assert "\n" not in message and "--broker tansu" in message and "JDK >= 17" in message


def test_kafka_home_without_jars_is_reported(tmp_path: Path) -> None:
    jdk = fake_jdk(tmp_path / "jdk", 'openjdk version "17.0.1"')
    dist = KafkaDist(tmp_path / "cache", kafka_home=str(tmp_path / "empty"), java_home=str(jdk))
    assert "KAFKA_HOME" in (dist.problem() or "")


def test_an_unknown_broker_kind_is_refused(tmp_path: Path) -> None:
    with pytest.raises(StreamrecError, match="auto, kafka, tansu"):
        choose_kind("redpanda", KafkaDist(tmp_path))


def test_a_failed_fetch_is_one_line_pointing_at_its_log(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    tools = tmp_path / "tools"
    tools.mkdir()
    mvn = tools / "mvn"
    mvn.write_text("#!/bin/sh\necho 'Could not resolve dependencies' \nexit 1\n")
    mvn.chmod(mvn.stat().st_mode | stat.S_IEXEC)
    monkeypatch.setenv("PATH", f"{tools}:/usr/bin:/bin")
    jdk = fake_jdk(tmp_path / "jdk", 'openjdk version "17.0.1"')
    dist = KafkaDist(tmp_path / "cache", java_home=str(jdk))
    assert dist.problem() is None  # Maven is there: auto would try Kafka
    with pytest.raises(KafkaSetupError) as err:
        dist.ensure_jars()
    message = str(err.value)
    assert "\n" not in message and "fetch.log" in message and "Maven Central" in message
    assert "Could not resolve" in (dist.fetched_dir / "fetch.log").read_text()


def test_auto_falls_back_to_tansu_when_the_fetch_fails(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    tools = tmp_path / "tools"
    tools.mkdir()
    mvn = tools / "mvn"
    mvn.write_text("#!/bin/sh\nexit 1\n")
    mvn.chmod(mvn.stat().st_mode | stat.S_IEXEC)
    monkeypatch.setenv("PATH", f"{tools}:/usr/bin:/bin")
    jdk = fake_jdk(tmp_path / "jdk", 'openjdk version "17.0.1"')
    kind, why = choose_kind("auto", KafkaDist(tmp_path / "cache", java_home=str(jdk)))
    assert kind == "tansu" and "fetching Apache Kafka" in why

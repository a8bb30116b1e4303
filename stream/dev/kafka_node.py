"""Apache Kafka as the embedded broker: a single KRaft node run from its jars with the JDK.

The jars come from ``KAFKA_HOME/libs`` if set, else they are fetched once from Maven
Central with ``mvn`` (``org.apache.kafka:kafka_2.13`` and what it needs, plus a log4j
binding) into ``<cache>/kafka-<version>/libs``. Storage is formatted on first start;
config, data and logs live under the run directory.
"""

from __future__ import annotations

import base64
import contextlib
import fcntl
import logging
import re
import shutil
import socket
import subprocess
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from models.errors import StreamrecError

log = logging.getLogger(f"streamrec.{__name__}")

# aiokafka 0.14 (Faust's client) and librdkafka (the worker's) speak the protocol
# versions that Kafka 4 kept; checked against 4.1 (groups, commits, transactions).
KAFKA_VERSION = "4.1.1"
LOG4J_VERSION = "2.24.3"
MIN_JAVA = 17
BROKER_KINDS = ("auto", "kafka", "tansu")
HEAP = ["-Xms128m", "-Xmx512m"]
# The parallel collector: the node shares a few cores with the worker and Redis, and its
# young collections (about one a second at a thousand clicks a second) pause every
# request; the parallel collector's pauses are shorter than G1's there (BENCHMARKS.md).
GC = ["-XX:+UseParallelGC"]


class KafkaSetupError(StreamrecError):
    """Apache Kafka cannot be run here (no JDK, no jars, failed fetch)."""


def java_binary(java_home: str | None = None) -> str | None:
    if java_home:
        candidate = Path(java_home) / "bin" / "java"
        if candidate.is_file():
            return str(candidate)
    return shutil.which("java")


def java_major(java: str) -> int | None:
    """The JDK's major version (``17`` for 17.0.15, ``8`` for 1.8.0), None if unknown."""
    try:
        out = subprocess.run([java, "-version"], capture_output=True, text=True, timeout=30).stderr
    except (OSError, subprocess.SubprocessError):
        return None
    match = re.search(r'version "(\d+)(?:\.(\d+))?', out)
    if not match:
        return None
    major = int(match.group(1))
    return int(match.group(2) or 0) if major == 1 else major


@dataclass(frozen=True)
class KafkaDist:
    """Where Apache Kafka's jars are (or will be fetched to)."""

    cache_dir: Path
    kafka_home: str = ""
    java_home: str = ""
    version: str = KAFKA_VERSION

    @property
    def fetched_dir(self) -> Path:
        return self.cache_dir / f"kafka-{self.version}"

    @property
    def libs(self) -> Path:
        if self.kafka_home:
            return Path(self.kafka_home) / "libs"
        return self.fetched_dir / "libs"

    def has_jars(self) -> bool:
        return self.libs.is_dir() and any(self.libs.glob("kafka_2.13-*.jar"))

    def label(self) -> str:
        return (
            f"Apache Kafka {self.version}"
            if not self.kafka_home
            else f"Apache Kafka ({self.kafka_home})"
        )

    def problem(self) -> str | None:
        """Why Kafka cannot run here, or None if it can (jars present or fetchable)."""
        java = java_binary(self.java_home)
        if java is None:
            return "no JDK found (install a JDK >= 17 or set JAVA_HOME)"
        major = java_major(java)
        if major is None or major < MIN_JAVA:
            need = f"Apache Kafka {self.version} needs a JDK >= {MIN_JAVA}"
            return f"{java} is Java {major or '?'}; {need}"
        if self.kafka_home and not self.has_jars():
            return f"KAFKA_HOME={self.kafka_home} has no libs/kafka_2.13-*.jar"
        if not self.has_jars() and shutil.which("mvn") is None:
            return (
                f"Apache Kafka's jars are not in {self.libs} and Maven (mvn) is not installed "
                "to fetch them (install Maven, or set KAFKA_HOME to an unpacked Kafka)"
            )
        return None

    def ensure_jars(self) -> Path:
        """The libs directory, fetching the jars with Maven on first use."""
        if self.has_jars():
            return self.libs
        problem = self.problem()
        if problem:
            raise KafkaSetupError(f"cannot run Apache Kafka: {problem}; or use --broker tansu")
        target = self.fetched_dir
        target.mkdir(parents=True, exist_ok=True)
        with _locked(target / ".lock"):
            if self.has_jars():  # another process fetched them meanwhile
                return self.libs
            self._fetch(target)
        return self.libs

    def _fetch(self, target: Path) -> None:
        pom = target / "pom.xml"
        pom.write_text(_POM.format(kafka=self.version, log4j=LOG4J_VERSION))
        partial = target / "libs.partial"
        shutil.rmtree(partial, ignore_errors=True)
        fetch_log = target / "fetch.log"
        log.warning("fetching Apache Kafka %s jars with Maven into %s (once)", self.version, target)
        with open(fetch_log, "wb") as out:
            try:
                rc = subprocess.run(
                    [
                        "mvn", "-B", "-q", "-f", str(pom),
                        "dependency:copy-dependencies",
                        f"-DoutputDirectory={partial}",
                        "-DincludeScope=runtime",
                    ],
                    stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, timeout=600,
                ).returncode  # fmt: skip
            except (OSError, subprocess.SubprocessError) as exc:
                rc = -1
                out.write(f"\n{exc}\n".encode())
        if rc != 0 or not any(partial.glob("kafka_2.13-*.jar")):
            raise KafkaSetupError(
                f"fetching Apache Kafka {self.version} with Maven failed (see {fetch_log}): "
                "check access to Maven Central, set KAFKA_HOME to an unpacked Kafka, "
                "or use --broker tansu"
            )
        partial.rename(self.libs)


@contextlib.contextmanager
def _locked(path: Path) -> Iterator[None]:
    with open(path, "w") as fh:
        fcntl.flock(fh, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)


def _free_port(host: str) -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((host, 0))
        return int(sock.getsockname()[1])


def choose_kind(requested: str, dist: KafkaDist) -> tuple[str, str]:
    """``(kind, why)`` for ``auto|kafka|tansu``: auto takes Kafka when it can run here."""
    if requested not in BROKER_KINDS:
        raise StreamrecError(
            f"unknown broker {requested!r}: choose one of {', '.join(BROKER_KINDS)}"
        )
    if requested == "tansu":
        return "tansu", "Tansu (asked for)"
    if requested == "kafka":
        return "kafka", f"{dist.label()} (asked for)"
    problem = dist.problem()
    if problem is None and not dist.has_jars():
        try:
            dist.ensure_jars()  # once; a failed fetch falls back rather than stops
        except KafkaSetupError as exc:
            return "tansu", f"Tansu ({exc})"
    if problem is None:
        return "kafka", f"{dist.label()} (a JDK >= {MIN_JAVA} is here)"
    return "tansu", f"Tansu ({problem})"


@dataclass
class KafkaNode:
    """One KRaft node (broker + controller) with its files under ``run_dir``."""

    dist: KafkaDist
    host: str
    port: int
    controller_port: int
    run_dir: Path
    partitions: int = 4

    @property
    def config_dir(self) -> Path:
        return self.run_dir / "kafka"

    @property
    def data_dir(self) -> Path:
        return self.run_dir / "kafka-data"

    def prepare(self) -> list[str]:
        """Write the config, format storage if new; the command that runs the node."""
        problem = self.dist.problem()
        if problem:
            raise KafkaSetupError(f"cannot run Apache Kafka: {problem}; or use --broker tansu")
        java = java_binary(self.dist.java_home) or "java"
        libs = self.dist.ensure_jars()
        self.config_dir.mkdir(parents=True, exist_ok=True)
        props = self.config_dir / "server.properties"
        props.write_text(self._properties())
        log4j = self.config_dir / "log4j2.properties"
        log4j.write_text(_LOG4J)
        base = [java, *HEAP, f"-Dlog4j2.configurationFile={log4j}", "-cp", f"{libs}/*"]
        if not (self.data_dir / "meta.properties").is_file():
            cluster_id = "-"
            while cluster_id.startswith("-"):  # one in 64 would read as an option to -t
                cluster_id = base64.urlsafe_b64encode(uuid.uuid4().bytes).rstrip(b"=").decode()
            fmt = subprocess.run(
                [*base, "kafka.tools.StorageTool", "format", "-t", cluster_id, "-c", str(props),
                 "--ignore-formatted"],
                capture_output=True, text=True, timeout=120,
            )  # fmt: skip
            if fmt.returncode != 0:
                (self.run_dir / "kafka-format.log").write_text(fmt.stdout + fmt.stderr)
                raise KafkaSetupError(
                    f"formatting Kafka storage in {self.data_dir} failed; see "
                    f"{self.run_dir / 'kafka-format.log'}"
                )
        return [
            *base,
            *GC, "-XX:+ExitOnOutOfMemoryError",
            "-Djava.awt.headless=true",
            "kafka.Kafka", str(props),
        ]  # fmt: skip

    def _properties(self) -> str:
        # The controller listens on its own port, free at this start (it is not stored
        # in the metadata log of a static quorum, so it may change between starts).
        cport = self.controller_port or _free_port(self.host)
        return _SERVER.format(
            host=self.host,
            port=self.port,
            cport=cport,
            data=self.data_dir,
            partitions=self.partitions,
        )


_SERVER = """\
# Written by streamrec at each start: a single KRaft node for development and tests.
process.roles=broker,controller
node.id=1
controller.quorum.voters=1@{host}:{cport}
listeners=PLAINTEXT://{host}:{port},CONTROLLER://{host}:{cport}
advertised.listeners=PLAINTEXT://{host}:{port}
controller.listener.names=CONTROLLER
inter.broker.listener.name=PLAINTEXT
listener.security.protocol.map=PLAINTEXT:PLAINTEXT,CONTROLLER:PLAINTEXT
log.dirs={data}
num.partitions={partitions}
offsets.topic.replication.factor=1
offsets.topic.num.partitions=4
transaction.state.log.replication.factor=1
transaction.state.log.min.isr=1
transaction.state.log.num.partitions=4
# A killed worker's open transaction holds back read_committed readers until it times
# out (the worker asks for 10 s); look for such transactions every second, not every 10.
transaction.abort.timed.out.transaction.cleanup.interval.ms=1000
group.initial.rebalance.delay.ms=0
# The group coordinator batches its writes for this long (default 5 ms): every offset
# commit, and so every batch of the worker, would wait for it.
group.coordinator.append.linger.ms=0
share.coordinator.append.linger.ms=0
auto.create.topics.enable=true
num.network.threads=2
num.io.threads=4
log.retention.hours=168
"""

_LOG4J = """\
status = warn
appender.out.type = Console
appender.out.name = out
appender.out.layout.type = PatternLayout
appender.out.layout.pattern = [%d] %p %m (%c)%n
rootLogger.level = warn
rootLogger.appenderRef.out.ref = out
logger.started.name = kafka.server.KafkaRaftServer
logger.started.level = info
"""

_POM = """\
<project xmlns="http://maven.apache.org/POM/4.0.0">
  <modelVersion>4.0.0</modelVersion>
  <groupId>streamrec</groupId>
  <artifactId>embedded-kafka</artifactId>
  <version>1</version>
  <packaging>pom</packaging>
  <dependencies>
    <dependency>
      <groupId>org.apache.kafka</groupId>
      <artifactId>kafka_2.13</artifactId>
      <version>{kafka}</version>
    </dependency>
    <dependency>
      <groupId>org.apache.logging.log4j</groupId>
      <artifactId>log4j-slf4j-impl</artifactId>
      <version>{log4j}</version>
    </dependency>
  </dependencies>
</project>
"""

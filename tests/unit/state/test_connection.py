"""The one Redis connection factory: its retry policy rides out a Redis that drops the
first connections, gives up when told to, and backs off with jitter; TLS files need
rediss://."""

from __future__ import annotations

import asyncio
import socket
import threading
from collections.abc import Iterator

import pytest

from state.connection import (
    RedisError,
    RedisSettings,
    async_client,
    sync_client,
)

REPLIES = {b"PING": b"+PONG\r\n", b"HELLO": b"%1\r\n$5\r\nproto\r\n:3\r\n"}


class FlakyRedis:
    """A loopback server speaking just enough RESP (HELLO, ``+PONG`` to PING, ``+OK`` to
    anything else) that closes its first ``drop`` connections at once."""

    def __init__(self, drop: int) -> None:
        self.drop = drop
        self.connections = 0
        self._server = socket.create_server(("127.0.0.1", 0))
        self.port = self._server.getsockname()[1]
        self._thread = threading.Thread(target=self._serve, daemon=True)
        self._thread.start()

    def _serve(self) -> None:
        while True:
            try:
                conn, _ = self._server.accept()
            except OSError:
                return
            self.connections += 1
            if self.connections <= self.drop:
                conn.close()
                continue
            threading.Thread(target=self._answer, args=(conn,), daemon=True).start()

    @staticmethod
    def _answer(conn: socket.socket) -> None:
        with conn, conn.makefile("rb") as reader:
            while True:
                head = reader.readline()
                if not head.startswith(b"*"):
                    return
                args = []
                for _ in range(int(head[1:])):
                    size = int(reader.readline()[1:])
                    args.append(reader.read(size + 2)[:-2])
                conn.sendall(REPLIES.get(args[0].upper(), b"+OK\r\n"))

    def close(self) -> None:
        self._server.close()


@pytest.fixture
def flaky() -> Iterator[FlakyRedis]:
    server = FlakyRedis(drop=2)
    yield server
    server.close()


def settings_for(port: int, retries: int) -> RedisSettings:
    return RedisSettings(
        f"redis://127.0.0.1:{port}/0",
        connect_timeout_s=1.0,
        timeout_s=1.0,
        retries=retries,
        backoff_base_s=0.01,
        backoff_cap_s=0.05,
    )


def test_sync_client_retries_through_dropped_connections(flaky: FlakyRedis) -> None:
    client = sync_client(settings_for(flaky.port, retries=3))
    assert client.ping() is True
    assert flaky.connections == 3  # two dropped, the third answered
    client.close()


def test_sync_client_gives_up_without_retries(flaky: FlakyRedis) -> None:
    client = sync_client(settings_for(flaky.port, retries=0))
    with pytest.raises(RedisError):
        client.ping()
    assert flaky.connections == 1
    client.close()


def test_async_client_retries_through_dropped_connections(flaky: FlakyRedis) -> None:
    async def ping() -> bool:
        client = async_client(settings_for(flaky.port, retries=3))
        try:
            return bool(await client.ping())
        finally:
            await client.aclose()

    assert asyncio.run(ping()) is True
    assert flaky.connections == 3


def test_backoff_grows_with_jitter_under_its_cap() -> None:
    backoff = RedisSettings(backoff_base_s=0.1, backoff_cap_s=0.5).backoff()
    for failures, ceiling in [(1, 0.2), (2, 0.4), (3, 0.5), (10, 0.5)]:
        pauses = {backoff.compute(failures) for _ in range(50)}
        assert all(ceiling / 2 <= p <= ceiling for p in pauses)
        assert len(pauses) > 1  # jittered: workers do not retry in lockstep


def test_a_cluster_setting_builds_the_cluster_clients_and_refuses_a_database() -> None:
    from redis import RedisCluster
    from redis.asyncio import RedisCluster as AsyncRedisCluster

    from models.errors import InvalidSettingError

    cluster = RedisSettings("redis://127.0.0.1:7000/0", cluster=True)
    assert isinstance(async_client(cluster), AsyncRedisCluster)  # connects on first use
    # Made without a connection, like a single Redis's; nothing listening there is a Redis
    # error at the first command.
    client = sync_client(RedisSettings("redis://127.0.0.1:1", cluster=True, retries=0))
    with pytest.raises(RedisError):
        client.ping()
    with pytest.raises(InvalidSettingError, match="database 0 only"):
        RedisSettings("redis://127.0.0.1:7000/2", cluster=True)
    assert not isinstance(async_client(RedisSettings("redis://127.0.0.1:7000/2")), RedisCluster)

"""Every Redis client streamrec makes, built in one place: URL, timeouts, TLS and the
retry policy come from one ``RedisSettings`` (``stream.config.Settings.redis``), so the
worker, the trainer, the CLI and the admin API cannot drift apart.

The retry policy is redis-py's own ``Retry`` with equal-jitter exponential backoff: a
command that fails on a dropped connection or a timeout is retried a few times, each
client waiting a different, growing pause (so workers that lost Redis together do not
reconnect in lockstep). It is short on purpose: a Redis that stays away surfaces as an
error within seconds, and the worker's own hold-and-retry (``stream.timing.backoff``) takes
over there. redis-py's default (10 retries) could keep a command in the air for a minute.

With ``cluster`` set the clients are redis-py's ``RedisCluster`` (sync and asyncio), seeded
by the one node the URL names: they find the others, route each command to its slot's
master, follow MOVED/ASK and a failover, and split a pipeline into one batch per node.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlparse

import redis
from redis.asyncio import Redis as AsyncRedis
from redis.asyncio import RedisCluster as AsyncRedisCluster
from redis.asyncio.retry import Retry as AsyncRetry
from redis.backoff import EqualJitterBackoff
from redis.exceptions import (
    ClusterDownError,
    MasterDownError,
    OutOfMemoryError,
    ReadOnlyError,
    RedisClusterException,
    RedisError,
    SlotNotCoveredError,
    TryAgainError,
)
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import TimeoutError as RedisTimeoutError
from redis.retry import Retry

from models.errors import InvalidSettingError

SyncRedis = redis.Redis | redis.RedisCluster


__all__ = [
    "UNAVAILABLE",
    "AsyncRedis",
    "AsyncRedisCluster",
    "RedisError",
    "RedisSettings",
    "SyncRedis",
    "async_client",
    "sync_client",
]

# Redis cannot take commands now, whatever they are: away, loading its data, full
# (maxmemory with no eviction), a replica not yet promoted, a cluster moving slots. Worth
# retrying; unlike a command refused for what it touches (WRONGTYPE on one key).
UNAVAILABLE: tuple[type[BaseException], ...] = (
    RedisConnectionError,
    RedisTimeoutError,
    OSError,
    OutOfMemoryError,
    ReadOnlyError,
    TryAgainError,
    ClusterDownError,
    MasterDownError,
    # A cluster client that lost every node it knew, or a slot no master serves yet.
    SlotNotCoveredError,
    RedisClusterException,
)


@dataclass(frozen=True)
class RedisSettings:
    """How to reach Redis. ``url``: redis://[:password@]host:port/db, or rediss:// for
    TLS (then the ``ssl_*`` files, if given, name the CA and the client certificate)."""

    url: str = field(default="redis://127.0.0.1:16379/0", repr=False)
    connect_timeout_s: float = 3.0
    # Every command's reply; a pub/sub subscriber waits without one (see ``subscriber``).
    timeout_s: float = 5.0
    ssl_ca_file: str = ""
    ssl_cert_file: str = ""
    ssl_key_file: str = ""
    # Retries of a command that failed on the connection, with backoff between
    # ``backoff_base_s`` and ``backoff_cap_s`` (equal jitter).
    retries: int = 3
    backoff_base_s: float = 0.05
    backoff_cap_s: float = 1.0
    # A Redis Cluster, ``url`` naming any one of its nodes.
    cluster: bool = False

    def __post_init__(self) -> None:
        if self.cluster and urlparse(self.url).path.strip("/") not in ("", "0"):
            raise InvalidSettingError(
                "a Redis Cluster has database 0 only: drop the /<db> from the Redis URL"
            )
        tls_files = self.ssl_ca_file or self.ssl_cert_file or self.ssl_key_file
        if tls_files and urlparse(self.url).scheme != "rediss":
            raise InvalidSettingError("Redis TLS files are set but the Redis URL is not rediss://")
        if self.retries < 0:
            raise InvalidSettingError(f"Redis retries must be 0 or more, not {self.retries}")

    def backoff(self) -> EqualJitterBackoff:
        return EqualJitterBackoff(cap=self.backoff_cap_s, base=self.backoff_base_s)

    def client_options(self, *, subscriber: bool = False) -> dict[str, Any]:
        """Keyword arguments of ``from_url`` for either client, retry policy excepted."""
        options: dict[str, Any] = {
            "socket_connect_timeout": self.connect_timeout_s,
            "socket_timeout": None if subscriber else self.timeout_s,
        }
        for option, path in (
            ("ssl_ca_certs", self.ssl_ca_file),
            ("ssl_certfile", self.ssl_cert_file),
            ("ssl_keyfile", self.ssl_key_file),
        ):
            if path:
                options[option] = path
        return options


def async_client(
    settings: RedisSettings, *, decode_responses: bool = False, subscriber: bool = False
) -> AsyncRedis | AsyncRedisCluster:
    """An asyncio client (connects on first use). ``subscriber``: for pub/sub, whose reads
    wait for the next message without a timeout."""
    kind = AsyncRedisCluster if settings.cluster else AsyncRedis
    return kind.from_url(
        _cluster_url(settings),
        decode_responses=decode_responses,
        retry=AsyncRetry(settings.backoff(), settings.retries),
        **settings.client_options(subscriber=subscriber),
    )


def sync_client(settings: RedisSettings, *, decode_responses: bool = False) -> SyncRedis:
    """A blocking client, for the CLI, the trainer and admin calls made in a thread.
    Connects at its first command, a cluster's too."""
    kind = redis.RedisCluster if settings.cluster else redis.Redis

    def make() -> SyncRedis:
        try:
            return kind.from_url(
                _cluster_url(settings),
                decode_responses=decode_responses,
                retry=Retry(settings.backoff(), settings.retries),
                **settings.client_options(),
            )
        except RedisClusterException as exc:
            # No node answered: what callers catch for a Redis away (``RedisError``).
            raise RedisConnectionError(str(exc)) from exc

    return _Lazy(make) if settings.cluster else make()  # type: ignore[return-value]


class _Lazy:
    """redis-py's blocking cluster client finds the cluster's nodes as it is made; this
    makes it at the first command instead, as ``redis.Redis`` connects, so that a command
    that needs no Redis (or saves to the registry while Redis is away) runs without it."""

    def __init__(self, make: Callable[[], SyncRedis]) -> None:
        self._make = make
        self._client: SyncRedis | None = None

    def __getattr__(self, name: str) -> Any:
        if self._client is None:
            self._client = self._make()
        return getattr(self._client, name)

    def close(self) -> None:
        if self._client is not None:
            self._client.close()


def _cluster_url(settings: RedisSettings) -> str:
    # redis-py's cluster client refuses a db, even 0: the URL without its path.
    if not settings.cluster:
        return settings.url
    return urlparse(settings.url)._replace(path="").geturl()

"""What trainers of one group (``streamrec trainer --group``) share in Redis: the
scheduler's lease and the description of the current pass.

The lease is redis-py's ``Lock`` (SET NX PX with a token, extended and released only by
its holder, both as atomic scripts): whoever holds it publishes the passes; if its holder
dies the lease expires and another trainer takes it.
"""

from __future__ import annotations

import json
from typing import Any

from redis.exceptions import LockError

from state import keys
from state.connection import RedisError, SyncRedis
from state.resp import text


class Lease:
    """The group's scheduler lease, held by ``holder`` (a unique name of this process)."""

    def __init__(self, client: SyncRedis, group: str, holder: str, ttl_s: float) -> None:
        self.client = client
        self.holder = holder
        self._lock = client.lock(keys.trainer_lease(group), timeout=ttl_s, thread_local=False)

    def acquire(self, pass_id: str) -> bool:
        """Take the lease if nobody holds it; its value says which pass this holder is
        about to publish, so that a trainer started at the same moment joins that one."""
        return bool(self._lock.acquire(blocking=False, token=f"{self.holder} {pass_id}"))

    def renew(self) -> bool:
        """Its full TTL again; False when it was lost (expired and maybe taken)."""
        try:
            self._lock.reacquire()
        except (LockError, RedisError):
            return False
        return True

    def release(self) -> None:
        try:
            self._lock.release()
        except LockError:
            pass  # expired already: nothing of ours to delete

    def owned(self) -> bool:
        return bool(self._lock.owned())

    def named_pass(self) -> tuple[str, str] | None:
        """(holder, pass id) named by whoever holds the lease now; None if nobody does."""
        value = text(self.client.get(self._lock.name))
        holder, _, pass_id = value.partition(" ")
        return (holder, pass_id) if value else None


def read_pass(client: SyncRedis, group: str) -> dict[str, Any] | None:
    raw = client.get(keys.trainer_pass(group))
    if raw is None:
        return None
    try:
        value = json.loads(raw)
    except ValueError:
        return None  # damaged: the next pass published replaces it
    return value if isinstance(value, dict) else None


def write_pass(client: SyncRedis, group: str, description: dict[str, Any]) -> None:
    client.set(keys.trainer_pass(group), json.dumps(description, sort_keys=True))

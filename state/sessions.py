"""Session sequences in Redis: idempotent append + read, one round trip per batch."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from redis.asyncio import Redis

from state import keys

# Append the item unless this event id was applied before or the item repeats the last
# one (consecutive duplicates carry no signal); keep the newest `cap` items; refresh TTLs;
# return whether the event was new and the session's items, oldest first.
APPEND_LUA = """
local fresh = redis.call('SADD', KEYS[2], ARGV[2])
if fresh == 1 then
  local last = redis.call('LINDEX', KEYS[1], -1)
  if last ~= ARGV[1] then
    redis.call('RPUSH', KEYS[1], ARGV[1])
    redis.call('LTRIM', KEYS[1], -tonumber(ARGV[3]), -1)
  end
end
redis.call('EXPIRE', KEYS[1], ARGV[4])
redis.call('EXPIRE', KEYS[2], ARGV[4])
return {fresh, redis.call('LRANGE', KEYS[1], 0, -1)}
"""


@dataclass(frozen=True, slots=True)
class Click:
    tenant: str
    session_id: str
    item_id: str
    event_id: str


@dataclass(frozen=True, slots=True)
class SessionUpdate:
    fresh: bool  # False when the event id had been applied already (a re-delivery)
    items: list[str]  # the session after the update, oldest first


class SessionStore:
    def __init__(self, client: Redis, *, cap: int, ttl_s: int) -> None:
        self._client = client
        self._cap = cap
        self._ttl_s = ttl_s
        self._append = client.register_script(APPEND_LUA)

    async def append_clicks(self, clicks: Sequence[Click]) -> list[SessionUpdate]:
        """Apply a batch of clicks in order, in one pipeline (one round trip)."""
        if not clicks:
            return []
        pipe = self._client.pipeline(transaction=False)
        for c in clicks:
            await self._append(
                keys=[keys.session_items(c.tenant, c.session_id), keys.session_events(c.tenant, c.session_id)],
                args=[c.item_id, c.event_id, self._cap, self._ttl_s],
                client=pipe,
            )
        replies = await pipe.execute()
        return [SessionUpdate(bool(fresh), [_text(i) for i in items]) for fresh, items in replies]

    async def session_items(self, tenant: str, session_id: str) -> list[str]:
        raw = await self._client.lrange(keys.session_items(tenant, session_id), 0, -1)
        return [_text(i) for i in raw]

    async def store_last_recs(self, recs: Sequence[tuple[str, str, bytes]]) -> None:
        """Remember each session's latest recommendation JSON for HTTP pull."""
        if not recs:
            return
        pipe = self._client.pipeline(transaction=False)
        for tenant, session_id, payload in recs:
            pipe.set(keys.last_recs(tenant, session_id), payload, ex=self._ttl_s)
        await pipe.execute()


def _text(value: bytes | str) -> str:
    return value.decode() if isinstance(value, bytes) else value

"""Session sequences in Redis: idempotent append + read, one round trip per batch."""

from __future__ import annotations

from collections.abc import Collection, Sequence
from dataclasses import dataclass

from redis.asyncio import Redis, RedisCluster
from redis.asyncio.client import Pipeline
from redis.crc import key_slot

from state import keys

# For each click i (KEYS[2i-1] = item list, KEYS[2i] = applied event ids): append the
# item unless this event id was applied before or the item repeats the last one
# (consecutive duplicates carry no signal); keep the newest ARGV[1] items; refresh TTLs
# (ARGV[2]) on activity; reply with whether the event was new and the session's items,
# oldest first.
# One call carries a whole batch, so a batch costs one round trip and one command to
# encode instead of one per click.
APPEND_LUA = """
local cap, ttl = tonumber(ARGV[1]), ARGV[2]
local out = {}
for i = 1, #KEYS / 2 do
  local items, events = KEYS[2 * i - 1], KEYS[2 * i]
  local item = ARGV[2 * i + 1]
  local fresh = redis.call('SADD', events, ARGV[2 * i + 2])
  if fresh == 1 then
    if redis.call('LINDEX', items, -1) ~= item and redis.call('RPUSH', items, item) > cap then
      redis.call('LTRIM', items, -cap, -1)
    end
    redis.call('EXPIRE', items, ttl)
    redis.call('EXPIRE', events, ttl)
  end
  out[i] = {fresh, redis.call('LRANGE', items, 0, -1)}
end
return out
"""

SET_MANY_LUA = """
for i, key in ipairs(KEYS) do
  redis.call('SET', key, ARGV[i + 1], 'EX', ARGV[1])
end
return #KEYS
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
    def __init__(self, client: Redis | RedisCluster, *, cap: int, ttl_s: int) -> None:
        self._client = client
        self._cluster = isinstance(client, RedisCluster)
        self._cap = cap
        self._ttl_s = ttl_s
        self._append = client.register_script(APPEND_LUA)
        self._set_many = client.register_script(SET_MANY_LUA)

    async def append_clicks(
        self, clicks: Sequence[Click], count_for: Collection[str] = ()
    ) -> list[SessionUpdate]:
        """Apply a batch of clicks in order, in one round trip; also count item clicks of
        the tenants in ``count_for`` (those without a model, served popular items)."""
        if not clicks:
            return []
        groups = self._slot_groups(clicks)
        pipe = self._client.pipeline(transaction=False)
        for group in groups:
            keys_: list[str] = []
            args: list[str | int] = [self._cap, self._ttl_s]
            for i in group:
                c = clicks[i]
                keys_ += (
                    keys.session_items(c.tenant, c.session_id),
                    keys.session_events(c.tenant, c.session_id),
                )
                args += (c.item_id, c.event_id)
            await self._append(keys=keys_, args=args, client=pipe)
        self._count_clicks(pipe, clicks, count_for)
        replies = await pipe.execute()
        updates: list[SessionUpdate | None] = [None] * len(clicks)
        for group, reply in zip(groups, replies[: len(groups)], strict=True):
            for i, (fresh, items) in zip(group, reply, strict=True):
                updates[i] = SessionUpdate(bool(fresh), _texts(items))
        return updates  # type: ignore[return-value]

    @staticmethod
    def _count_clicks(pipe: Pipeline, clicks: Sequence[Click], count_for: Collection[str]) -> None:
        """The set of tenants, and item click counts for cold-start popularity, in the
        batch's round trip. Approximate: a re-delivered event counts again."""
        counts: dict[str, dict[str, int]] = {}
        for c in clicks:
            per = counts.setdefault(c.tenant, {})
            if c.tenant in count_for:
                per[c.item_id] = per.get(c.item_id, 0) + 1
        pipe.sadd(keys.TENANTS, *counts)
        for tenant, per in counts.items():
            for item, n in per.items():
                pipe.zincrby(keys.popularity(tenant), n, item)

    def _slot_groups(self, sessions: Sequence[tuple[str, str] | Click]) -> list[list[int]]:
        """Indexes of ``(tenant, session_id)``s grouped for one script call each: one group
        for a single Redis, one per hash slot on a cluster (a script may only touch keys of
        one slot there). Order inside a group is the batch order."""
        if not self._cluster:
            return [list(range(len(sessions)))]
        by_slot: dict[int, list[int]] = {}
        for i, s in enumerate(sessions):
            tenant, session_id = (s.tenant, s.session_id) if isinstance(s, Click) else s
            by_slot.setdefault(key_slot(keys.session_tag(tenant, session_id).encode()), []).append(
                i
            )
        return list(by_slot.values())

    async def store_last_recs(self, recs: Sequence[tuple[str, str, bytes]]) -> None:
        """Remember each session's latest recommendation JSON (for HTTP pull), one script
        call per batch: far cheaper to encode than a SET command per record."""
        if not recs:
            return
        pipe = self._client.pipeline(transaction=False)
        for group in self._slot_groups([(t, s) for t, s, _ in recs]):
            await self._set_many(
                keys=[keys.last_recs(recs[i][0], recs[i][1]) for i in group],
                args=[self._ttl_s, *(recs[i][2] for i in group)],
                client=pipe,
            )
        await pipe.execute()

    async def last_recs(self, tenant: str, session_id: str) -> bytes | str | None:
        return await self._client.get(keys.last_recs(tenant, session_id))


def _texts(values: list[bytes] | list[str]) -> list[str]:
    # A client made with decode_responses=True (the worker's) hands back str already.
    if values and isinstance(values[0], bytes):
        return [v.decode() for v in values]  # type: ignore[union-attr]
    return values  # type: ignore[return-value]

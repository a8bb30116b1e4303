"""Session sequences in Redis: idempotent append + read, one round trip per batch."""

from __future__ import annotations

from collections.abc import Collection, Sequence
from hashlib import blake2b
from typing import Any, NamedTuple

from redis.asyncio import Redis, RedisCluster
from redis.crc import key_slot
from redis.exceptions import NoScriptError, ResponseError

from state import keys, resp, scripts
from state.resp import text

# A re-delivered message is recognised by its offset (lua/append.lua), whatever the size of
# the batch re-delivered; the recent event ids only catch the same event produced again at
# another offset (a producer's retry). They are kept as fixed-size digests, the newest
# RECENT_IDS of each session, whatever the ids' length. Two different ids share a digest
# with odds of 2**-64: a fresh click is taken for a re-delivery with odds RECENT_IDS /
# 2**64 (about 1e-18) a click.
DIGEST = 8
RECENT_IDS = 16
# A tenant's cold-start popularity keeps its most clicked items (a recommendation needs a
# few dozen at most) and expires when the tenant sends no click for the TTL.
POPULAR_CAP = 10_000
POPULAR_TTL_S = 30 * 24 * 3600


class Click(NamedTuple):
    tenant: str
    session_id: str
    item_id: str
    event_id: str
    ts: float = 0.0


class SessionUpdate(NamedTuple):
    fresh: bool  # False when the event id had been applied already (a re-delivery)
    joined: str  # the session after the update, as stored: items joined by keys.ITEM_SEP
    # The previous recommendation list (as stored, see state.feedback) when this click's
    # item was in it: an implicit hit. None otherwise.
    hit: str | None = None
    # The session's arm so far: the variant of its previous list, else the arm it was
    # given (``append_clicks(arms=...)``); None without either.
    shown_by: str | None = None

    @property
    def items(self) -> list[str]:
        """The session after the update, oldest first."""
        return self.joined.split(keys.ITEM_SEP) if self.joined else []


class StoredSession(NamedTuple):
    """A session as stored, with its latest event (the one its newest recommendation
    answered)."""

    joined: str  # items joined by keys.ITEM_SEP, oldest first
    event_id: str
    ts: float
    # The variant of the session's latest stored list (None without one): its arm so far.
    shown_by: str | None = None


def digest(event_id: str) -> bytes:
    """The fixed-size digest a session keeps of a recent event id."""
    return blake2b(event_id.encode(), digest_size=DIGEST).digest()


def flatten(updates: Sequence[SessionUpdate]) -> tuple[list[str], list[int]]:
    """Many sessions' items back to back (oldest first) and each session's length: one
    join and one split for a whole batch instead of a split per session."""
    sep = keys.ITEM_SEP
    joined = [u.joined for u in updates]
    return sep.join(joined).split(sep), [j.count(sep) + 1 for j in joined]


class SessionStore:
    def __init__(
        self,
        client: Redis | RedisCluster,
        *,
        cap: int,
        ttl_s: int,
        popular_cap: int = POPULAR_CAP,
        popular_ttl_s: int = POPULAR_TTL_S,
    ) -> None:
        self._client = client
        self._cluster = isinstance(client, RedisCluster)
        self._cap = cap
        self._ttl_s = ttl_s
        self._popular_cap = popular_cap
        self._popular_ttl_s = popular_ttl_s
        append, store_lists = scripts.SCRIPTS["append"], scripts.SCRIPTS["store_lists"]
        self._scripts = {append.sha: append.text, store_lists.sha: store_lists.text}
        self._append, self._store_lists = append.sha, store_lists.sha

    async def append_clicks(
        self,
        clicks: Sequence[Click],
        count_for: Collection[str] = (),
        origins: Sequence[tuple[str, int]] | None = None,
        before: Sequence[list[str]] = (),
        arms: Sequence[str] | None = None,
    ) -> list[SessionUpdate]:
        """Apply a batch of clicks in order, in one round trip; also count item clicks of
        the tenants in ``count_for`` (those without a model, served popular items).

        ``origins`` gives each click's ("topic:partition", offset) when it was consumed
        from Kafka; a re-delivered offset is recognised without remembering its id.
        ``arms`` gives each click the arm its session takes when it has none yet ("":
        none); the update's ``shown_by`` names it then.
        ``before``: commands sent first in the same round trip (the previous batch's
        feedback writes, see ``state.feedback``); their replies are dropped."""
        if not clicks:
            if before:
                await self._run(list(before))
            return []
        groups = self._slot_groups(clicks)
        if origins is not None:
            groups = [g for group in groups for g in _by_origin(group, origins)]
        commands: list[list[str | bytes]] = list(before)  # type: ignore[arg-type]
        ring = str(RECENT_IDS * DIGEST)
        for group in groups:
            origin = origins[group[0]][0] if origins is not None else ""
            keys_: list[str] = []
            args: list[str | bytes] = [str(self._cap), str(self._ttl_s), ring, f"o:{origin}"]
            for i in group:
                c = clicks[i]
                keys_.append(keys.session(c.tenant, c.session_id))
                offset = origins[i][1] if origins is not None else -1
                arm = arms[i] if arms is not None else ""
                event = f"{c.ts!r}{keys.ITEM_SEP}{c.event_id}"
                args += (c.item_id, event, digest(c.event_id), str(offset), arm)
            commands.append(["EVALSHA", self._append, str(len(keys_)), *keys_, *args])
        commands += self._count_clicks(clicks, count_for)
        replies = (await self._run(commands))[len(before) :]
        updates: list[SessionUpdate | None] = [None] * len(clicks)
        for group, reply in zip(groups, replies[: len(groups)], strict=True):
            for j, i in enumerate(group):
                hit, shown_by = reply[4 * j + 2], reply[4 * j + 3]
                updates[i] = SessionUpdate(
                    reply[4 * j] == 1,
                    text(reply[4 * j + 1]),
                    None if hit == 0 else text(hit),
                    None if shown_by == 0 else text(shown_by),
                )
        return updates  # type: ignore[return-value]

    def store_lists_commands(self, lists: dict[tuple[str, str], str]) -> list[list[str]]:
        """Commands writing each ``(tenant, session_id)``'s latest recommendation list
        (one script call per hash slot), to send with the next batch (``before``)."""
        if not lists:
            return []
        pairs = list(lists)
        out = []
        for group in self._slot_groups(pairs):
            keys_ = [keys.session(*pairs[i]) for i in group]
            out.append(
                [
                    "EVALSHA",
                    self._store_lists,
                    str(len(keys_)),
                    *keys_,
                    *(lists[pairs[i]] for i in group),
                ]
            )
        return out

    async def run(self, commands: list[list[str]]) -> list[Any]:
        """Send ``commands`` in one round trip (scripts of this store reloaded if Redis
        forgot them); their replies."""
        return await self._run(commands) if commands else []

    async def session(self, tenant: str, session_id: str) -> StoredSession | None:
        """A session as stored; None for an unknown or expired one."""
        joined, latest, stamp, recent, older, shown, arm = await self._client.hmget(
            keys.session(tenant, session_id), ["i", "e", "lt", "r", "le", "p", "a"]
        )
        if not joined:
            return None
        # The latest event as ts SEP id; sessions stored before "e" keep its time in "lt"
        # and its id as the newest of their recent ids "r", or before those in "le".
        if latest:
            ts, _, event_id = text(latest).partition(keys.ITEM_SEP)
        else:
            ts = text(stamp)
            event_id = text(recent).rpartition(keys.ITEM_SEP)[2] if recent else text(older)
        # The latest list's variant; once a click consumed it, the arm it left behind.
        if shown:
            shown_by: str | None = text(shown).partition(keys.ITEM_SEP)[0]
        else:
            shown_by = text(arm) if arm else None
        return StoredSession(text(joined), event_id, float(ts or 0), shown_by)

    async def session_items(self, tenant: str, session_id: str) -> list[str]:
        """A session's items, oldest first (empty for an unknown or expired session)."""
        stored = await self.session(tenant, session_id)
        return [] if stored is None else SessionUpdate(False, stored.joined).items

    def _count_clicks(self, clicks: Sequence[Click], count_for: Collection[str]) -> list[list[str]]:
        """The set of tenants, and item click counts for cold-start popularity, in the
        batch's round trip. Approximate: a re-delivered event counts again. Each counted
        tenant's set is trimmed to its most clicked items and its TTL refreshed once per
        batch, in the same round trip (a trim with nothing to remove is O(log n))."""
        counts: dict[str, dict[str, int]] = {}
        for c in clicks:
            per = counts.setdefault(c.tenant, {})
            if c.tenant in count_for:
                per[c.item_id] = per.get(c.item_id, 0) + 1
        commands = [["SADD", keys.TENANTS, *counts]]
        beyond_cap, ttl = str(-self._popular_cap - 1), str(self._popular_ttl_s)
        for tenant, per in counts.items():
            if not per:
                continue
            key = keys.popularity(tenant)
            commands += [["ZINCRBY", key, str(n), item] for item, n in per.items()]
            commands.append(["ZREMRANGEBYRANK", key, "0", beyond_cap])
            commands.append(["EXPIRE", key, ttl])
        return commands

    async def _run(self, commands: list[list[Any]]) -> list[Any]:
        """Send ``commands`` in one round trip; their replies, in order."""
        if self._cluster:
            # redis-py routes each command to its slot's node; EVAL carries the script
            # itself, so no node can answer NOSCRIPT.
            pipe = self._client.pipeline(transaction=False)
            for cmd in commands:
                if cmd[0] == "EVALSHA":
                    cmd = ["EVAL", self._scripts[cmd[1]], *cmd[2:]]
                pipe.execute_command(*cmd)
            return await pipe.execute()  # type: ignore[no-any-return]
        replies = await self._roundtrip(commands)
        if any(isinstance(r, NoScriptError) for r in replies):
            # Redis restarted and forgot the scripts. Re-running the batch is safe: the
            # session updates are idempotent (the popularity counts are approximate).
            for source in self._scripts.values():
                await self._client.script_load(source)
            replies = await self._roundtrip(commands)
        for reply in replies:
            if isinstance(reply, ResponseError):
                raise reply
        return replies

    async def _roundtrip(self, commands: list[list[Any]]) -> list[Any]:
        pool = self._client.connection_pool
        conn = await pool.get_connection()
        try:
            await conn.send_packed_command(resp.pack_commands(commands), check_health=False)
            replies: list[Any] = []
            for _ in commands:
                try:
                    replies.append(await conn.read_response())
                except ResponseError as exc:
                    replies.append(exc)
            return replies
        except BaseException:
            await conn.disconnect()  # replies may be left unread: never reuse it
            raise
        finally:
            await pool.release(conn)

    def _slot_groups(self, sessions: Sequence[Sequence[str]]) -> list[list[int]]:
        """Indexes of ``(tenant, session_id)``s grouped for one script call each: one group
        for a single Redis, one per hash slot on a cluster (a script may only touch keys of
        one slot there). Order inside a group is the batch order."""
        if not self._cluster:
            return [list(range(len(sessions)))]
        by_slot: dict[int, list[int]] = {}
        for i, s in enumerate(sessions):
            tenant, session_id = s[0], s[1]  # a Click or a (tenant, session_id, ...)
            by_slot.setdefault(key_slot(keys.session_tag(tenant, session_id).encode()), []).append(
                i
            )
        return list(by_slot.values())


def _by_origin(group: list[int], origins: Sequence[tuple[str, int]]) -> list[list[int]]:
    """A group split by origin partition (one script call each), order kept inside."""
    first = origins[group[0]][0]
    if all(origins[i][0] == first for i in group):
        return [group]
    split: dict[str, list[int]] = {}
    for i in group:
        split.setdefault(origins[i][0], []).append(i)
    return list(split.values())

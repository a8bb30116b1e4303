"""Model-change notices over Redis pub/sub.

The registry's CURRENT pointer is the truth; a notice only makes workers look at it
now instead of at their next periodic check, so losing one costs seconds, not data.
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator

import orjson
import redis
from redis.asyncio import Redis

from state import keys
from state.connection import RedisError, RedisSettings, sync_client

log = logging.getLogger(f"streamrec.{__name__}")


def notify_model_change(
    target: RedisSettings | str | redis.Redis, tenant: str, version: str | None
) -> int:
    """Tell the workers that ``tenant``'s current version changed; returns how many heard.

    ``target``: a client to reuse, or the settings (or just the URL) of one made for
    this notice.
    """
    try:
        if isinstance(target, str):
            target = RedisSettings(target)
        client = sync_client(target) if isinstance(target, RedisSettings) else target
        try:
            return int(
                client.publish(
                    keys.MODEL_CHANNEL, orjson.dumps({"tenant": tenant, "version": version})
                )
            )
        finally:
            if client is not target:  # made here
                client.close()
    except RedisError as exc:
        log.warning(
            "could not notify workers over Redis (%s); they will notice within "
            "their check interval",
            exc,
        )
        return 0


async def model_changes(client: Redis) -> AsyncIterator[str]:
    """Yield the tenant of every model-change notice, until the connection fails."""
    pubsub = client.pubsub(ignore_subscribe_messages=True)
    await pubsub.subscribe(keys.MODEL_CHANNEL)
    try:
        while True:
            msg = await pubsub.get_message(timeout=5.0)
            if msg is None:
                continue
            try:
                yield str(orjson.loads(msg["data"])["tenant"])
            except (orjson.JSONDecodeError, KeyError, TypeError):
                log.warning("ignored a malformed model-change notice: %r", msg["data"])
    finally:
        await pubsub.aclose()


async def notify_change(client: Redis, tenant: str) -> int:
    """``notify_model_change`` from async code: workers drop their cached control state
    (modes, rules, keys, catalogue) for ``tenant`` and look at its model now."""
    try:
        return int(
            await client.publish(
                keys.MODEL_CHANNEL, orjson.dumps({"tenant": tenant, "version": None})
            )
        )
    except (RedisError, OSError) as exc:
        log.warning("could not notify workers over Redis (%s)", exc)
        return 0

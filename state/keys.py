"""Every Redis key name in one place.

A Lua call touches only keys of one hash slot: the session keys carry a hash tag (the
part in braces), and the batch's calls are grouped by slot on a cluster.
"""

from __future__ import annotations

import re

PREFIX = "sr"
# Characters that would make a key ambiguous or move its hash tag: the separator, the
# braces and the escape character itself. Tenant names cannot contain any of them
# (models.names); ids can, and are percent-escaped, so that no two (tenant, session)
# pairs share a key. Ids without them (nearly all) are used as they are.
_SPECIAL = re.compile(r"[%:{}]")


def _escape(char: re.Match[str]) -> str:
    return f"%{ord(char.group()):02X}"


def encode_id(value: str) -> str:
    """An id as it appears inside a key: ``%``, ``:``, ``{`` and ``}`` percent-escaped."""
    return _SPECIAL.sub(_escape, value) if _SPECIAL.search(value) else value


def session_tag(tenant: str, session_id: str) -> str:
    return f"{{{tenant}:{encode_id(session_id)}}}"


def session(tenant: str, session_id: str) -> str:
    """Hash of one session: ``i`` its items joined by ``ITEM_SEP`` (oldest first, capped),
    ``n`` how many, ``l`` the newest, ``lt`` the latest event's time, and what makes
    re-delivery idempotent in constant space: ``o:<topic>:<partition>`` the highest
    offset applied from there, ``r`` the newest event ids (the last is the latest
    event's; see ``state.sessions.APPEND_LUA``)."""
    return f"{PREFIX}:{session_tag(tenant, session_id)}:s"


# Item ids never contain control characters (the event contract rejects them), so one
# can join a session's items into a single string: one reply value per session instead
# of one per item.
ITEM_SEP = "\x1f"


def popularity(tenant: str) -> str:
    """Sorted set item -> clicks, for tenants without a model yet (cold start)."""
    return f"{PREFIX}:pop:{{{tenant}}}"


# Hash tenant -> mode (on / freeze / off); a tenant absent from it is "on". A cache of
# the modes kept in the model registry (durable): the field MODES_LOADED (never a tenant
# name, which starts with a letter or digit) says it was filled from there since Redis
# last started empty.
TENANT_MODES = f"{PREFIX}:tenant-modes"
MODES_LOADED = "_loaded"
# Set of every tenant that has sent a click.
TENANTS = f"{PREFIX}:tenants"
# Pub/sub channel for "a tenant's model or mode changed" notices.
MODEL_CHANNEL = f"{PREFIX}:models"

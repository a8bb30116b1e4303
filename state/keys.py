"""Every Redis key name in one place. Each key a producer can grow has a cap or a TTL
(README, "Limits").

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
    ``n`` how many, ``e`` the latest event (its time and id), ``p`` the latest list
    shown (``state.feedback``), ``a`` its arm, ``x`` when its TTL was last set, and what
    makes re-delivery idempotent in constant space: ``o:<topic>:<partition>`` the highest
    offset applied from there, ``d`` digests of the newest event ids (see
    ``state/lua/append.lua``)."""
    return f"{PREFIX}:{session_tag(tenant, session_id)}:s"


# Item ids never contain control characters (the event contract rejects them), so one
# can join a session's items into a single string: one reply value per session instead
# of one per item.
ITEM_SEP = "\x1f"


def popularity(tenant: str) -> str:
    """Sorted set item -> clicks, for tenants without a model yet (cold start): its most
    clicked items only, expiring after the tenant's last click (``state.sessions``)."""
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


def counters(tenant: str, bucket: int) -> str:
    """Hash of one tenant's feedback counters in one time bucket (``bucket`` = its start,
    unix seconds): fields ``<variant>:<counter>`` (see ``state.feedback.COUNTERS``).
    Expires after the retention. The tenant's buckets share a hash slot."""
    return f"{PREFIX}:fb:{{{tenant}}}:{bucket}"


def parse_counters(key: str) -> tuple[str, int]:
    """``(tenant, bucket)`` of a ``counters`` key."""
    tag, _, bucket = key.rpartition(":")
    return tag.split("{", 1)[1].rstrip("}"), int(bucket)


# Hash tenant -> the tenant's policy as JSON (fixed / ab / bandit, arms, shares): a cache
# of the POLICY files in the registry, filled like TENANT_MODES (POLICIES_LOADED).
POLICIES = f"{PREFIX}:policies"
POLICIES_LOADED = "_loaded"


# Hash key digest (SHA-256 hex) -> "<tenant> <key id>": a cache of the KEYS.json files
# in the registry, filled like TENANT_MODES (field KEYS_LOADED).
API_KEYS = f"{PREFIX}:api-keys"
KEYS_LOADED = "_loaded"
# Hash tenant -> serving rules as JSON: a cache of the RULES.json files in the registry.
TENANT_RULES = f"{PREFIX}:tenant-rules"
RULES_LOADED = "_loaded"


def catalogue(tenant: str) -> str:
    """Hash item id -> the item's catalogue entry as JSON (available, category, tags)."""
    return f"{PREFIX}:cat:{{{tenant}}}"


def catalogue_version(tenant: str) -> str:
    """Counter bumped by every catalogue change: workers reload the catalogue when it moves."""
    return f"{PREFIX}:cat:{{{tenant}}}:v"


def trainer_lease(group: str) -> str:
    """The scheduler's lease of a trainer group (``trainer --group``): held, with a TTL
    renewed while its holder lives, by the one process that publishes the passes. Its
    value names the holder and the pass it published when it took the lease."""
    return f"{PREFIX}:trainer:{{{encode_id(group)}}}:lease"


def trainer_pass(group: str) -> str:
    """The group's current pass as JSON (id, when published, window, the retrain topic's
    offsets where its records begin and end): how a trainer knows the pass is done."""
    return f"{PREFIX}:trainer:{{{encode_id(group)}}}:pass"

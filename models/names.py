"""The one naming rule for tenants and ids, shared by Kafka events, HTTP, the CLI and the
registry (which lives here, in ``models``, because the registry may not import ``stream``).

Every check is a full match (``re.fullmatch``): ``$`` also matches before a trailing
newline, which once let ``"shop\\n"`` become a tenant of its own.
"""

from __future__ import annotations

import re

MAX_ID_CHARS = 256
# Tenant names end up in Redis keys, file paths and metric labels: keep them tame.
TENANT_PATTERN = r"[A-Za-z0-9][A-Za-z0-9_.-]{0,63}"
TENANT_RULE = f"must match {TENANT_PATTERN}"
ID_RULE = f"must be 1-{MAX_ID_CHARS} characters without control characters"
_TENANT_RE = re.compile(TENANT_PATTERN)
# Ids are stored joined by a control character (state.keys.ITEM_SEP) and written to logs.
_CONTROL_RE = re.compile(r"[\x00-\x1f\x7f]")


def is_tenant(name: object) -> bool:
    return isinstance(name, str) and _TENANT_RE.fullmatch(name) is not None


def is_id(value: object) -> bool:
    """A session, item, event or user id: 1-256 characters, no control characters."""
    return (
        isinstance(value, str)
        and 0 < len(value) <= MAX_ID_CHARS
        and _CONTROL_RE.search(value) is None
    )


def has_control(value: str) -> bool:
    return _CONTROL_RE.search(value) is not None

"""The one naming rule for tenants and ids, shared by Kafka events, HTTP, the CLI and the
registry (which lives here, in ``models``, because the registry may not import ``stream``).

Every check is a full match (``re.fullmatch``): ``$`` also matches before a trailing
newline, which once let ``"shop\\n"`` become a tenant of its own.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from dataclasses import dataclass

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


# -- new tenants -------------------------------------------------------------------------
# Windows device names: a file or directory so named (with any extension) is the device.
# COM0 and LPT0 too: newer Windows reserves them, and refusing them costs nothing.
_RESERVED_RE = re.compile(r"(?:con|prn|aux|nul|com[0-9]|lpt[0-9])(?:\..*)?", re.IGNORECASE)


def canonical_tenant(name: str) -> str:
    """The form two tenant names are compared in: lower case, no dots, no trailing
    ``-`` or ``_``. Names with the same form look alike in a URL, a log line or a
    case-insensitive file system (``Default``, ``de.fault``, ``default-``)."""
    return name.lower().replace(".", "").rstrip("-_")


def is_reserved(name: str) -> bool:
    """A device name on Windows (CON, PRN, AUX, NUL, COM0-9, LPT0-9), any case, with or
    without an extension: not a directory the registry could hold there."""
    return _RESERVED_RE.fullmatch(name) is not None


@dataclass(frozen=True)
class TenantRefusal:
    """Why a name cannot become a new tenant: ``conflict`` when it is too like an
    existing tenant's (HTTP 409), else the name itself is unfit (HTTP 400)."""

    reason: str
    conflict: bool = False


def tenant_refusal(name: str, existing: Iterable[str]) -> TenantRefusal | None:
    """None when ``name`` may be created (or exists already, exactly so); else why not."""
    if not is_tenant(name):
        return TenantRefusal(f"tenant {TENANT_RULE}")
    names = set(existing)
    if name in names:
        return None
    if ".." in name or name.endswith("."):
        return TenantRefusal(f"tenant name {name!r}: no two dots in a row, no dot at the end")
    if is_reserved(name):
        return TenantRefusal(
            f"tenant name {name!r} is a reserved device name (CON, PRN, AUX, NUL, COM0-9, "
            "LPT0-9, with or without an extension)"
        )
    form = canonical_tenant(name)
    twin = next((t for t in sorted(names) if canonical_tenant(t) == form), None)
    if twin is not None:
        return TenantRefusal(
            f"tenant name {name!r} is too like the existing tenant {twin!r} (names that "
            "differ only by case, dots or trailing punctuation are refused)",
            conflict=True,
        )
    return None

"""Serving rules and the catalogue, applied after ranking: pure functions, no I/O.

A tenant's rules (``exclude`` none | current | seen, a blocklist, category include /
exclude) and its catalogue (items marked unavailable or deleted, item categories) decide
which items may ever be recommended; a request may narrow that further (its own
exclusions and categories). The worker turns the banned set into a boolean mask over a
model's items, which the ranking kernel skips, so the list is refilled from the next
candidates and ``n`` items come back whenever enough candidates exist.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from models.errors import InvalidSettingError

EXCLUDE_MODES = ("none", "current", "seen")


@dataclass(frozen=True)
class ServingRules:
    exclude: str = "current"  # none: repeats allowed; current: not the item being viewed
    blocklist: frozenset[str] = frozenset()
    include_categories: frozenset[str] = frozenset()  # empty: every category
    exclude_categories: frozenset[str] = frozenset()

    def __post_init__(self) -> None:
        if self.exclude not in EXCLUDE_MODES:
            raise InvalidSettingError(f"exclude must be one of {', '.join(EXCLUDE_MODES)}")

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> ServingRules:
        def names(key: str) -> frozenset[str]:
            value = data.get(key) or []
            if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
                raise InvalidSettingError(f"{key} must be a list of strings")
            return frozenset(value)

        exclude = data.get("exclude", "current")
        if not isinstance(exclude, str):
            raise InvalidSettingError("exclude must be a string")
        return cls(
            exclude,
            names("blocklist"),
            names("include_categories"),
            names("exclude_categories"),
        )

    def with_exclude(self, exclude: str) -> ServingRules:
        return ServingRules(
            exclude, self.blocklist, self.include_categories, self.exclude_categories
        )

    def to_dict(self) -> dict[str, Any]:
        return {
            "exclude": self.exclude,
            "blocklist": sorted(self.blocklist),
            "include_categories": sorted(self.include_categories),
            "exclude_categories": sorted(self.exclude_categories),
        }


@dataclass(frozen=True)
class Catalogue:
    """What the serving rules need of a tenant's catalogue."""

    unavailable: frozenset[str] = frozenset()  # marked unavailable, or deleted
    category: Mapping[str, str] = field(default_factory=dict)

    @classmethod
    def from_entries(cls, entries: Mapping[str, Mapping[str, Any]]) -> Catalogue:
        unavailable = frozenset(
            item for item, e in entries.items() if e.get("deleted") or not e.get("available", True)
        )
        category = {item: str(e["category"]) for item, e in entries.items() if e.get("category")}
        return cls(unavailable, category)


@dataclass(frozen=True)
class Request:
    """What one request adds: more items to exclude, categories to keep."""

    exclude_items: frozenset[str] = frozenset()
    categories: frozenset[str] = frozenset()  # empty: every category


def is_allowed(
    item: str,
    rules: ServingRules,
    catalogue: Catalogue,
    request: Request | None = None,
) -> bool:
    """May ``item`` be recommended at all (whatever the session)?"""
    if item in catalogue.unavailable or item in rules.blocklist:
        return False
    category = catalogue.category.get(item)
    if rules.exclude_categories and category in rules.exclude_categories:
        return False
    if rules.include_categories and category not in rules.include_categories:
        return False
    if request is not None:
        if item in request.exclude_items:
            return False
        if request.categories and category not in request.categories:
            return False
    return True


def session_excluded(rules: ServingRules, session: Sequence[str]) -> set[str]:
    """The session's items the ``exclude`` rule keeps out of its list."""
    if not session or rules.exclude == "none":
        return set()
    if rules.exclude == "current":
        return {session[-1]}
    return set(session)


def apply_rules(
    ranked: Iterable[tuple[str, float]],
    session: Sequence[str],
    rules: ServingRules,
    catalogue: Catalogue,
    n: int,
    request: Request | None = None,
) -> list[tuple[str, float]]:
    """The first ``n`` allowed items of a ranked list (rank more than ``n`` candidates
    so the list can be refilled)."""
    skip = session_excluded(rules, session)
    out: list[tuple[str, float]] = []
    seen: set[str] = set()
    for item, score in ranked:
        if item in skip or item in seen or not is_allowed(item, rules, catalogue, request):
            continue
        seen.add(item)
        out.append((item, score))
        if len(out) == n:
            break
    return out


def banned_mask(
    items: Sequence[str] | np.ndarray,
    rules: ServingRules,
    catalogue: Catalogue,
    request: Request | None = None,
) -> np.ndarray:
    """A boolean per model item: True where the item may never be recommended (the
    session-independent part of the rules), for the ranking kernel to skip."""
    mask = np.zeros(len(items), dtype=np.bool_)
    if not (
        catalogue.unavailable
        or rules.blocklist
        or rules.include_categories
        or rules.exclude_categories
        or (request is not None and (request.exclude_items or request.categories))
    ):
        return mask
    for i, item in enumerate(items.tolist() if isinstance(items, np.ndarray) else items):
        if not is_allowed(item, rules, catalogue, request):
            mask[i] = True
    return mask

"""What the batch processor calls on its collaborators, as narrow protocols.

The worker passes the Redis-backed classes (``state.sessions.SessionStore``,
``state.tenants.TenantDirectory``, ``stream.pipeline.model_cache.ModelCache``,
``stream.control.policies.PolicyDirectory``, ``state.feedback.FeedbackRecorder``); a unit
test passes in-memory implementations of the same few methods.

``Commands`` are opaque to the processor: the feedback log produces them, the session
log's ``before`` and ``run`` send them in its round trip.
"""

from __future__ import annotations

from collections.abc import Collection, Sequence
from typing import Any, Protocol

import numpy as np

from models.bundle import ModelBundle
from models.rules import Catalogue, ServingRules
from state.sessions import Click, SessionUpdate, StoredSession

Commands = list[list[str]]
# (tenant, session_id) -> the list the session was shown last (state.feedback.encode_list)
Lists = dict[tuple[str, str], str]
Policy = dict[str, Any]


class SessionLog(Protocol):
    async def append_clicks(
        self,
        clicks: Sequence[Click],
        count_for: Collection[str] = (),
        origins: Sequence[tuple[str, int]] | None = None,
        before: Sequence[list[str]] = (),
        arms: Sequence[str] | None = None,
    ) -> list[SessionUpdate]:
        """Apply clicks in order, idempotently (an event id applied before is not
        ``fresh``); ``before`` goes out first in the same round trip. A session without
        an arm takes its click's in ``arms`` ("": none), stored with the click."""
        ...

    def store_lists_commands(self, lists: Lists) -> Commands: ...

    async def run(self, commands: Commands) -> list[Any]: ...

    async def session(self, tenant: str, session_id: str) -> StoredSession | None: ...


class TenantLookup(Protocol):
    async def exists(self, tenant: str) -> bool: ...

    async def create(self, tenant: str) -> None: ...

    async def mode(self, tenant: str) -> str:
        """on, freeze or off."""
        ...

    async def serving(
        self, tenant: str, bundle: ModelBundle | None
    ) -> tuple[ServingRules, Catalogue, np.ndarray | None]:
        """The tenant's rules, its catalogue and, with a model, the mask of its items the
        rules ban (``models.rules.banned_mask``)."""
        ...

    async def popular(self, tenant: str) -> list[tuple[str, float]]:
        """Its most clicked items, most first (cold start, without a model)."""
        ...


class ModelSource(Protocol):
    async def get(self, tenant: str) -> ModelBundle | None:
        """The version in service; None without one."""
        ...

    async def get_version(self, tenant: str, version: str) -> ModelBundle | None:
        """A given version (an experiment's arm); None if it cannot be loaded."""
        ...

    async def without_model(self, tenants: Collection[str]) -> list[str]:
        """Those of ``tenants`` that have no model (served popular items), told
        without loading any."""
        ...


class ArmPolicies(Protocol):
    async def get(self, tenant: str) -> Policy | None:
        """The tenant's experiment policy; None for a fixed one."""
        ...

    def shares(self, tenant: str, policy: Policy) -> list[tuple[str, float]]:
        """Each arm's share now, in a fixed order."""
        ...

    def assign(self, tenant: str, session_id: str, shares: list[tuple[str, float]]) -> str:
        """The arm a session without one lands on."""
        ...


class FeedbackLog(Protocol):
    """Counts and lists of the batch in hand, until they go out with the next one."""

    def recommended(self, tenant: str, variant: str, n: int = 1) -> None: ...

    def shown(self, tenant: str, session_id: str, stored_list: str) -> None: ...

    def hit(self, tenant: str, variant: str, position: int) -> None: ...

    def explicit(self, tenant: str, variant: str, kind: str) -> None: ...

    def take(self) -> tuple[Lists, Commands]: ...

    def restore(self, taken: tuple[Lists, Commands]) -> None: ...

    def pending(self) -> bool: ...

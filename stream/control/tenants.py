"""Tenant administration shared by the CLI and the admin API: create, mode, serving
rules, keys, model promotion. Each change is written to the registry (durable) first,
then to the Redis cache, both under the tenant's lock (two changes reach both in the same
order), then announced so workers drop their cached copy at once. A change is on disk
before it is answered: if Redis is away, the workers' caches catch up from the registry."""

from __future__ import annotations

import hashlib
import secrets
from typing import Any

from models.errors import StreamrecError
from models.registry import Registry
from models.rules import ServingRules
from state.connection import SyncRedis, sync_client
from state.control import add_key_sync, cache_tenant_sync, revoke_key_sync, set_rules_sync
from state.notify import notify_model_change
from state.tenants import set_mode as cache_mode
from stream.config import Settings

KEY_PREFIX = "srk_"


def key_digest(key: str) -> str:
    """How a tenant key is stored and looked up: its SHA-256, hex."""
    return hashlib.sha256(key.encode()).hexdigest()


class UnknownTenantError(StreamrecError):
    """An operation named a tenant that was never created."""


class TenantControl:
    def __init__(self, settings: Settings) -> None:
        self._settings = settings
        self.registry = Registry(settings.registry_dir)

    def _redis(self) -> SyncRedis:
        return sync_client(self._settings.redis)

    def _notify(self, tenant: str, version: str | None = None) -> int:
        return notify_model_change(self._settings.redis, tenant, version)

    def require(self, tenant: str) -> None:
        if not self.registry.exists(tenant):
            raise UnknownTenantError(
                f"unknown tenant {tenant!r}: create it first (`streamrec tenant create {tenant}`)"
            )

    def create(self, tenant: str) -> bool:
        created = self.registry.create_tenant(tenant)
        cache_tenant_sync(self._redis(), tenant)
        self._notify(tenant)
        return created

    def set_mode(self, tenant: str, mode: str) -> int:
        self.require(tenant)
        with self.registry.locked(tenant):
            self.registry.set_mode(tenant, mode)
            cache_mode(self._redis(), tenant, mode)
        return self._notify(tenant)

    def rules(self, tenant: str) -> dict[str, Any]:
        self.require(tenant)
        return ServingRules.from_dict(self.registry.rules(tenant)).to_dict()

    def set_rules(self, tenant: str, rules: ServingRules) -> dict[str, Any]:
        self.require(tenant)
        data = rules.to_dict()
        with self.registry.locked(tenant):
            self.registry.set_rules(tenant, data)
            set_rules_sync(self._redis(), tenant, data)
        self._notify(tenant)
        return data

    def create_key(self, tenant: str) -> tuple[str, str]:
        """A new key (key id, key): the key is returned once and stored as a digest."""
        self.require(tenant)
        key_id = secrets.token_hex(4)
        key = f"{KEY_PREFIX}{key_id}_{secrets.token_urlsafe(32)}"
        sha = key_digest(key)
        with self.registry.locked(tenant):
            self.registry.add_key(tenant, key_id, sha)
            add_key_sync(self._redis(), sha, tenant, key_id)
        self._notify(tenant)
        return key_id, key

    def revoke_key(self, tenant: str, key_id: str) -> None:
        self.require(tenant)
        if key_id.startswith(KEY_PREFIX):  # the whole key given: its id is inside
            key_id = key_id[len(KEY_PREFIX) :].split("_", 1)[0]
        with self.registry.locked(tenant):
            sha = self.registry.revoke_key(tenant, key_id)
            if sha is None:
                raise UnknownTenantError(f"tenant {tenant!r} has no active key {key_id!r}")
            revoke_key_sync(self._redis(), sha, tenant, key_id)
        self._notify(tenant)

    def promote(self, tenant: str, version: str) -> None:
        self.require(tenant)
        self.registry.promote(tenant, version)
        self._notify(tenant, version)

    def rollback(self, tenant: str) -> str:
        self.require(tenant)
        version = self.registry.rollback(tenant)
        self._notify(tenant, version)
        return version

"""What /health says about tenants: each one that is disabled (a damaged control file)
or degraded (its version in service refused), with the file and the reason. A tenant's
trouble is its own: it does not make the worker degraded or not ready."""

from __future__ import annotations

from typing import Any


def tenant_health(directory: Any, models: Any) -> dict[str, dict[str, Any]]:
    """Tenant -> ``{"status": "disabled" | "degraded", "file", "reason", ...}``, only for
    tenants with a problem. ``directory``: the worker's ``TenantDirectory`` (None while
    it starts); ``models``: its ``ModelCache``."""
    out: dict[str, dict[str, Any]] = dict(models.tenant_problems())
    if directory is not None:
        for tenant, exc in directory.disabled_tenants().items():
            out[tenant] = {"status": "disabled", "file": str(exc.path), "reason": exc.reason}
    return dict(sorted(out.items()))

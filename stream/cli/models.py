"""``streamrec models list|promote|rollback``: the model registry, per tenant.

No broker here; promote and rollback tell the workers through Redis.
"""

from __future__ import annotations

import time

import click

from models.registry import Registry
from stream.cli.params import EXISTING_TENANT, uses
from stream.config import Settings
from stream.control.service import Control


@click.group("models", epilog=uses("registry", "redis"))
def models_group() -> None:
    """List, promote and roll back model versions per tenant."""


def gate_line(manifest: dict) -> str:
    """The trainer's gate decision for a version: both scores and the hold-out."""
    gate = manifest.get("gate")
    if not isinstance(gate, dict):
        return ""
    metric = (gate.get("policy") or {}).get("metric", "hr")
    k = (gate.get("policy") or {}).get("k", "")
    cand, cur = gate.get("candidate") or {}, gate.get("current") or {}

    def score(s: dict) -> str:
        return f"{s[metric]:.4f}" if isinstance(s.get(metric), float | int) else "-"

    window = manifest.get("data_window") or {}
    when = ""
    if isinstance(window.get("from"), float | int) and isinstance(window.get("to"), float | int):
        fmt = "%Y-%m-%d %H:%M"
        when = (
            f" of the window {time.strftime(fmt, time.gmtime(window['from']))} - "
            f"{time.strftime(fmt, time.gmtime(window['to']))} UTC"
        )
    return (
        f"gate: {gate.get('decision', '?')}, {metric.upper()}@{k} {score(cand)} vs "
        f"{score(cur)} ({gate.get('current_version') or 'none'} in service), on the newest "
        f"{gate.get('holdout_sessions', '?')} sessions{when} held out"
    )


@models_group.command("list")
@click.argument("tenant", required=False, type=EXISTING_TENANT)
@click.pass_obj
def models_list(settings: Settings, tenant: str | None) -> None:
    """Versions of TENANT (default: every tenant); `*` marks the one in service."""
    registry = Registry(settings.registry_dir)
    tenants = [tenant] if tenant else registry.tenants()
    if not tenants:
        click.echo(f"no models in {registry.root}; run `streamrec train`")
        return
    for name in tenants:
        click.echo(f"{name}:")
        infos = registry.versions(name)
        if not infos:
            click.echo("  (no versions)")
        for info in infos:
            mark = "*" if info.current else " "
            metrics = " ".join(
                f"{k}={v:.4f}" if isinstance(v, float) else f"{k}={v}"
                for k, v in sorted(info.metrics.items())
            )
            parent = info.parent or "-"
            items = info.counts.get("items", "?") if info.valid else "?"
            note = "" if info.valid else "  (unreadable manifest)"
            click.echo(
                f" {mark} {info.version:<6} {info.created or '-':<21} parent={parent:<6} "
                f"items={items} {metrics}{note}".rstrip()
            )
            gate = gate_line(registry.manifest(name, info.version))
            if gate:
                click.echo(f"          {gate}")


@models_group.command("promote")
@click.argument("tenant", type=EXISTING_TENANT)
@click.argument("version")
@click.pass_obj
def models_promote(settings: Settings, tenant: str, version: str) -> None:
    """Validate VERSION and put it in service for TENANT."""
    with Control(settings) as control:
        heard = control.promote(tenant, version)
    click.echo(f"{tenant}: {version} is now in service ({heard} worker(s) notified)")


@models_group.command("rollback")
@click.argument("tenant", type=EXISTING_TENANT)
@click.argument("version", required=False)
@click.pass_obj
def models_rollback(settings: Settings, tenant: str, version: str | None) -> None:
    """Put VERSION (default: the previously promoted one) back in service for TENANT."""
    with Control(settings) as control:
        before = control.registry.current_version(tenant)
        after, heard = control.rollback(tenant, version)
    click.echo(f"{tenant}: rolled back {before} -> {after} ({heard} worker(s) notified)")

"""The retraining job: the click log -> sessions per tenant -> gated retrain ->
register, promote, notify.

The click log is read by :mod:`stream.kafka.click_log`; with ``jobs`` > 1 it is read in that
many processes, then that many tenants are trained at a time. A trainer group's pass reads
its tenants' clicks from the click archive instead (:mod:`models.click_archive`).
"""

from __future__ import annotations

import gc
import logging
import signal
import sys
import time
from collections.abc import Callable, Iterable, Mapping
from concurrent.futures import ProcessPoolExecutor, as_completed
from dataclasses import dataclass, replace
from multiprocessing import get_context

from models.bundle import ModelBundle
from models.click_archive import archive_dir, read_tenants
from models.datasets import Clicks, build_sessions
from models.errors import InvalidModelError, InvalidSettingError, NoModelError, StreamrecError
from models.gate import GateDecision, GatePolicy, retrain
from models.policy_file import read_policy
from models.registry import Registry
from models.train import TrainParams
from state.connection import RedisError, RedisSettings, SyncRedis, sync_client
from state.control import catalogue_categories
from state.tenants import list_tenants
from stream.config import Settings
from stream.control.service import Control
from stream.kafka.click_log import has_new_clicks, log_positions, read_click_log
from stream.retrain.rollout import RolloutSettings, start_rollout

log = logging.getLogger(f"streamrec.{__name__}")


@dataclass(frozen=True)
class TenantOutcome:
    tenant: str
    decision: GateDecision
    version: str | None  # the registered candidate, promoted or not

    def describe(self) -> str:
        """The decision as one line an operator reads: what happened, then why."""
        d, head = self.decision, f"tenant {self.tenant}"
        if d.action == "promoted":
            return f"{head}: PROMOTED {self.version}: {d.reason}"
        if d.action == "rollout":
            return f"{head}: ROLLOUT of {self.version} started: {d.reason}"
        serving = d.current_version or "the version in service"
        if d.action == "kept":
            return f"{head}: KEPT {serving} ({self.version} registered, not promoted): {d.reason}"
        if d.action == "failed":
            return f"{head}: FAILED, {serving} stays in service: {d.reason}"
        if d.action == "unjudged":
            return (
                f"{head}: NOT JUDGED, {serving} stays in service: no fresh sessions to judge "
                f"({d.reason})"
            )
        return f"{head}: SKIPPED: {d.reason}"


@dataclass(frozen=True)
class PassReport:
    outcomes: list[TenantOutcome]  # one per tenant with clicks in the window, by name
    clicks: int  # valid clicks read from the log
    read_s: float  # reading and validating the log
    train_s: float  # training, gating, registering and promoting every tenant


def run_once(
    settings: Settings,
    *,
    window_s: float,
    params: TrainParams,
    policy: GatePolicy,
    tenants: Iterable[str] | None = None,
    progress: Callable[[str], None] | None = None,
    now: float | None = None,
    jobs: int = 1,
    keep_unpromoted: int = 5,
    rollout: RolloutSettings | None = None,
    pass_id: str | None = None,
    archived: Mapping[int, int] | None = None,
) -> PassReport:
    """One pass over every tenant with clicks in the window; ``jobs`` processes read the
    log, then as many train the tenants. ``rollout``: staged rollouts (else a candidate
    that passes the gate is promoted at once). ``pass_id``: a trainer group's pass
    (``stream.retrain.group``); a tenant that has a version of that pass already is not
    trained again. ``archived``: read the clicks from the click archive (which covers
    these end offsets of the clicks topic) instead of from Kafka."""
    if keep_unpromoted < 1:
        # The newest candidate holds the log positions it was trained on: deleted, the
        # next pass would retrain on unchanged data (churn).
        raise InvalidSettingError(
            f"keep_unpromoted must be at least 1 (the newest candidate), not {keep_unpromoted}"
        )
    now = time.time() if now is None else now
    _quiet_training_libraries()
    started = time.perf_counter()
    unreadable: dict[str, StreamrecError] = {}  # tenant -> why its clicks cannot be read
    if archived is None:
        source = settings.clicks_topic
        logs = read_click_log(
            settings.kafka, settings.clicks_topic, now - window_s, tenants, jobs=jobs
        )
    else:
        source = "the click archive"
        # Every archived click in the window: the pass's end offsets at least (the
        # archivers may have gone on past them).
        got = read_tenants(archive_dir(settings.registry_dir), now - window_s, tenants)
        logs, unreadable = got.clicks, got.damaged
        for path in sorted(got.damaged_segments):
            whose = sorted(t for t, exc in unreadable.items() if exc.path == path)
            log.error(
                "%s. Tenant(s) failing this pass for it: %s", got.damaged_segments[path],
                ", ".join(whose) or "none",
            )  # fmt: skip
    clicks = sum(len(v) for v in logs.values())
    read_s = time.perf_counter() - started
    log.info("read %d clicks of %d tenants from %s in %.1fs", clicks, len(logs), source, read_s)
    started = time.perf_counter()
    modes = _modes(settings)
    window = (now - window_s, now)
    outcomes: list[TenantOutcome] = []

    def done(outcome: TenantOutcome) -> None:
        outcomes.append(outcome)
        if progress:
            progress(outcome.tenant)
        log.info("%s", outcome.describe())

    for tenant in sorted(unreadable):
        # Not trained on part of its clicks: the version in service stays.
        done(TenantOutcome(tenant, GateDecision("failed", str(unreadable[tenant])), None))
    for tenant in sorted(t for t in logs if modes.get(t, "on") != "on"):
        del logs[tenant]
        done(TenantOutcome(tenant, GateDecision("skipped", f"tenant is {modes[tenant]}"), None))
    # Tenants are independent: train them in parallel processes (training holds the GIL
    # for much of its time). Each process is single-threaded so they do not oversubscribe.
    # Biggest tenant first, so that the processes finish together rather than one of
    # them training a big tenant alone at the end.
    queue = sorted(logs, key=lambda t: (-len(logs[t]), t))
    categories = _categories(settings, queue)
    if queue:
        with ProcessPoolExecutor(
            max_workers=max(1, min(jobs, len(queue))),
            mp_context=get_context("fork"),
            initializer=_training_process,
        ) as pool:
            futures = [
                pool.submit(
                    _retrain_tenant,
                    settings,
                    t,
                    logs.pop(t),
                    params,
                    policy,
                    window,
                    keep_unpromoted,
                    rollout,
                    categories.get(t),
                    pass_id,
                )  # fmt: skip
                for t in queue
            ]
            for future in as_completed(futures):
                done(future.result())
    outcomes.sort(key=lambda o: o.tenant)
    return PassReport(outcomes, clicks, read_s, time.perf_counter() - started)


def _quiet_training_libraries() -> None:
    # gensim logs every epoch at INFO: a pass over many tenants would bury the decisions.
    # Set before the training processes fork, so they inherit it.
    if not log.isEnabledFor(logging.DEBUG):
        logging.getLogger("gensim").setLevel(logging.WARNING)


def _training_process() -> None:
    """A training process's start: single-threaded, so the processes do not oversubscribe
    the cores, ending with the trainer, and with the heap it inherits (the read log among
    it) left out of garbage collection: a full collection would scan it again and again
    for each tenant, and touching it would copy its pages."""
    from threadpoolctl import threadpool_limits

    threadpool_limits(1)
    _die_with_parent()
    gc.freeze()


def _die_with_parent() -> None:
    """A training process ends with the trainer (even SIGKILLed), rather than finish its
    tenant and wait for work forever; the tenant's training lock goes with it."""
    if sys.platform.startswith("linux"):
        import ctypes

        pr_set_pdeathsig = 1
        ctypes.CDLL(None, use_errno=True).prctl(pr_set_pdeathsig, signal.SIGKILL)


def _retrain_tenant(
    settings: Settings,
    tenant: str,
    clicks: Clicks,
    params: TrainParams,
    policy: GatePolicy,
    window: tuple[float, float],
    keep_unpromoted: int = 5,
    rollout: RolloutSettings | None = None,
    categories: dict[str, str] | None = None,
    pass_id: str | None = None,
) -> TenantOutcome:
    registry = Registry(settings.registry_dir)
    # One trainer at a time per tenant, whatever started them (two trainers, a group's
    # record delivered again after a crash): the second waits, then finds the first's
    # version and its log positions.
    with registry.training(tenant):
        return _retrain_locked(
            settings, registry, tenant, clicks, params, policy, window,
            keep_unpromoted, rollout, categories, pass_id,
        )  # fmt: skip


def _retrain_locked(
    settings: Settings,
    registry: Registry,
    tenant: str,
    clicks: Clicks,
    params: TrainParams,
    policy: GatePolicy,
    window: tuple[float, float],
    keep_unpromoted: int,
    rollout: RolloutSettings | None,
    categories: dict[str, str] | None,
    pass_id: str | None,
) -> TenantOutcome:
    try:
        current = registry.load(tenant)
    except NoModelError:
        current = None
    except InvalidModelError as exc:
        log.warning(
            "tenant %s: the version in service cannot be loaded (%s); gating against nothing",
            tenant,
            exc,
        )
        current = None
    try:
        running = read_policy(registry, tenant)
    except StreamrecError as exc:  # damaged: nothing is trained over what it may decide
        return TenantOutcome(tenant, GateDecision("skipped", str(exc)), None)
    if running is not None:
        # An experiment, bandit or rollout decides this tenant's versions for now.
        decision = GateDecision("skipped", f"a {running['policy']} policy is running")
        return TenantOutcome(tenant, decision, None)
    if pass_id is not None:
        done = _trained_in_pass(settings, registry, tenant, pass_id, current, rollout)
        if done is not None:
            return done
    offsets = log_positions(clicks)
    last = _last_trained(registry, tenant)
    if last is not None and not has_new_clicks(offsets, last[1]):
        decision = GateDecision(
            "skipped",
            f"no new clicks since {last[0]} was trained",
            current_version=current.version if current is not None else None,
        )
        return TenantOutcome(tenant, decision, None)
    sessions = build_sessions(clicks)
    bundle, decision = retrain(sessions, current, params, policy, categories=categories)
    if bundle is None:
        return TenantOutcome(tenant, decision, None)
    version = registry.register(
        tenant,
        bundle,
        {
            "gate": decision.to_manifest(policy),
            "data_window": {
                "from": window[0],
                "to": window[1],
                "clicks": len(clicks),
                "sessions": len(sessions),
                # The next pass judges this version on sessions after its last click only.
                "trained_to": decision.trained_to,
                # The newest offset read per partition: the next pass skips the tenant
                # unless one of them moved.
                "offsets": {str(p): o for p, o in offsets.items()},
                **({"pass": pass_id} if pass_id is not None else {}),
            },
            "metrics": {
                f"hr@{policy.k}": decision.candidate.hr if decision.candidate else None,
                f"mrr@{policy.k}": decision.candidate.mrr if decision.candidate else None,
            },
        },
    )
    if decision.action == "promoted":
        serving = current.version if current is not None else None
        decision = _put_in_service(settings, tenant, version, serving, decision, rollout)
    _prune(registry, tenant, keep_unpromoted)
    return TenantOutcome(tenant, decision, version)


def _put_in_service(
    settings: Settings,
    tenant: str,
    version: str,
    serving: str | None,
    decision: GateDecision,
    rollout: RolloutSettings | None,
) -> GateDecision:
    """Promote the candidate that passed the gate, or start its staged rollout (it earns
    its traffic online: stream.retrain.rollout). Kept instead when, while it trained, the
    tenant was switched off or frozen or an experiment started."""
    try:
        if rollout is not None and serving is not None:
            start_rollout(settings, tenant, version, serving, rollout)
            return replace(
                decision, action="rollout", reason=f"{decision.reason}; staged rollout started"
            )
        with Control(settings) as control:
            control.promote_candidate(tenant, version)
        return decision
    except StreamrecError as exc:
        return replace(decision, action="kept", reason=f"changed while it trained: {exc}")


def _trained_in_pass(
    settings: Settings,
    registry: Registry,
    tenant: str,
    pass_id: str,
    current: ModelBundle | None,
    rollout: RolloutSettings | None,
) -> TenantOutcome | None:
    """The outcome of a version this pass registered already (a trainer that died after
    registering it; its record came again): put in service if it passed the gate and
    its trainer died before doing so. None when the pass registered none."""
    names = registry.versions(tenant)
    if not names:
        return None
    version = names[-1].version
    manifest = registry.manifest(tenant, version)
    if (manifest.get("data_window") or {}).get("pass") != pass_id:
        return None
    serving = current.version if current is not None else None
    gate = manifest.get("gate") or {}
    reason = f"registered by this pass already ({version})"
    if gate.get("decision") == "promoted" and version not in registry.promoted_versions(tenant):
        decision = GateDecision("promoted", reason, current_version=serving)
        return TenantOutcome(
            tenant, _put_in_service(settings, tenant, version, serving, decision, rollout), version
        )
    return TenantOutcome(tenant, GateDecision("skipped", reason, current_version=serving), None)


def _last_trained(registry: Registry, tenant: str) -> tuple[str, dict[int, int]] | None:
    """The newest registered version with the log positions it was trained up to."""
    for info in reversed(registry.versions(tenant)):
        window = registry.manifest(tenant, info.version).get("data_window") or {}
        offsets = window.get("offsets")
        if isinstance(offsets, dict):
            try:
                return info.version, {int(p): int(o) for p, o in offsets.items()}
            except (TypeError, ValueError):
                return None
        return None  # trained elsewhere (streamrec train): no positions to compare
    return None


def _prune(registry: Registry, tenant: str, keep: int) -> None:
    """At most ``keep`` unpromoted versions (never an experiment's arms)."""
    try:
        policy = read_policy(registry, tenant)
    except StreamrecError:
        return  # damaged: its arms are unknown, so nothing is deleted
    protect = set((policy or {}).get("arms") or ())
    deleted = registry.prune_unpromoted(tenant, keep, protect)
    if deleted:
        log.info("tenant %s: deleted unpromoted version(s) %s", tenant, ", ".join(deleted))


_clients: dict[RedisSettings, SyncRedis] = {}


def _redis(settings: RedisSettings) -> SyncRedis:
    """One client per training process, reused for every tenant's notice."""
    client = _clients.get(settings)
    if client is None:
        client = _clients[settings] = sync_client(settings)
    return client


def _categories(settings: Settings, tenants: list[str]) -> dict[str, dict[str, str]]:
    """Each tenant's item categories from its catalogue: the ranker's category features.
    Without Redis the pass trains without them rather than not at all."""
    if not tenants:
        return {}
    try:
        return catalogue_categories(_redis(settings.redis), tenants)
    except RedisError as exc:
        log.warning(
            "training without item categories: Redis at %s is unreachable (%s)",
            settings.redis_display,
            exc,
        )
        return {}


def _modes(settings: Settings) -> dict[str, str]:
    # The registry's modes are the durable ones (every switch is written there first) and
    # win over Redis's cache, which a restart may empty. So with Redis away a frozen
    # tenant is still known, and the pass goes on from the registry alone.
    registry = Registry(settings.registry_dir)
    found, damaged = registry.each_tenant(registry.mode)
    # A tenant whose MODE is damaged is skipped, not guessed to be on.
    durable = {t: m for t, m in found.items() if m is not None}
    durable.update({t: f"disabled ({exc.reason})" for t, exc in damaged.items()})
    try:
        cached = list_tenants(_redis(settings.redis))
    except RedisError as exc:
        log.warning(
            "tenant modes from the registry only: Redis at %s is unreachable (%s)",
            settings.redis_display,
            exc,
        )
        return durable
    return {**cached, **durable}

"""The maths of online experiments, pure: intervals, tests, bandit shares, assignment.

Nothing here reads Redis or Kafka; the worker and the CLI pass counts in and get
numbers out, so every formula is tested by a table of cases.
"""

from __future__ import annotations

import hashlib
import math
from collections.abc import Mapping, Sequence

import numpy as np

POLICIES = ("fixed", "ab", "bandit")
# A variant is a model version (v3) or the cold-start fallback.
POPULAR = "popular"


def is_variant(name: object) -> bool:
    """A model version name (``v`` and digits) or ``popular``: what may label a counter
    (a forged rec_id must not create counters of its own)."""
    return isinstance(name, str) and (
        name == POPULAR or (1 < len(name) <= 12 and name[0] == "v" and name[1:].isdigit())
    )


def wilson(hits: float, n: float, z: float = 1.96) -> tuple[float, float]:
    """Wilson score interval of a proportion (95 % by default); (0, 1) with no trials.

    Better than the normal approximation near 0 (hit rates are a few per cent) and
    never outside [0, 1]. Accepts discounted (non-integer) counts."""
    if n <= 0:
        return (0.0, 1.0)
    p = min(max(hits / n, 0.0), 1.0)
    z2 = z * z
    centre = (p + z2 / (2 * n)) / (1 + z2 / n)
    half = z * math.sqrt(p * (1 - p) / n + z2 / (4 * n * n)) / (1 + z2 / n)
    return (max(0.0, centre - half), min(1.0, centre + half))


def two_proportion_p(h1: float, n1: float, h2: float, n2: float) -> float:
    """Two-sided p-value of the pooled two-proportion z-test (H0: equal rates)."""
    if n1 <= 0 or n2 <= 0:
        return 1.0
    pooled = (h1 + h2) / (n1 + n2)
    se = math.sqrt(pooled * (1 - pooled) * (1 / n1 + 1 / n2))
    if se == 0:
        return 1.0
    z = (h1 / n1 - h2 / n2) / se
    return math.erfc(abs(z) / math.sqrt(2))  # two-sided: 2 * P(Z > |z|)


def ab_decision(
    control: tuple[float, float],
    candidate: tuple[float, float],
    *,
    alpha: float = 0.05,
    min_recommendations: int = 1000,
) -> tuple[str, float]:
    """``(decision, p_value)`` of an A/B test from ``(hits, recommendations)`` per arm:
    ``promote`` when the candidate is significantly better, ``keep`` when significantly
    worse, else ``running`` (also until each arm has ``min_recommendations``)."""
    (hc, nc), (hx, nx) = control, candidate
    p = two_proportion_p(hx, nx, hc, nc)
    if min(nc, nx) < min_recommendations or p >= alpha:
        return "running", p
    return ("promote" if hx / nx > hc / nc else "keep"), p


def staged_verdict(
    control: tuple[float, float],
    candidate: tuple[float, float],
    *,
    alpha: float = 0.05,
    min_recommendations: int = 1000,
) -> str:
    """One step of a staged rollout: ``worse`` (roll back) when the candidate is
    significantly worse, ``hold`` until both arms have ``min_recommendations``, else
    ``advance`` (not worse). One-sided at ``alpha``: a bad candidate must be caught,
    a merely equal one may go on."""
    (hc, nc), (hx, nx) = control, candidate
    if min(nc, nx) < min_recommendations:
        return "hold"
    pooled = (hc + hx) / (nc + nx)
    se = math.sqrt(pooled * (1 - pooled) * (1 / nc + 1 / nx))
    if se == 0:
        return "advance"
    z = (hx / nx - hc / nc) / se
    return "worse" if 0.5 * math.erfc(-z / math.sqrt(2)) < alpha else "advance"  # P(Z <= z)


def thompson_shares(
    arms: Mapping[str, tuple[float, float]],
    *,
    draws: int = 4000,
    seed: int = 0,
    floor: float = 0.01,
) -> dict[str, float]:
    """Each arm's share of traffic under Thompson sampling: the probability that its
    Beta(1 + hits, 1 + misses) draw is the largest, estimated by ``draws`` joint draws.

    Computed from (discounted) counts every few seconds, not per event: the worker then
    assigns sessions by those shares. ``floor`` keeps every arm explored a little (a
    version may become the best later; the counts forget, see ``discount``)."""
    names = sorted(arms)
    if not names:
        return {}
    rng = np.random.default_rng(seed)
    samples = np.empty((draws, len(names)))
    for j, name in enumerate(names):
        hits, n = arms[name]
        hits = min(max(hits, 0.0), max(n, 0.0))
        samples[:, j] = rng.beta(1 + hits, 1 + max(n, 0.0) - hits, size=draws)
    wins = np.bincount(samples.argmax(axis=1), minlength=len(names)) / draws
    floor = min(floor, 1 / len(names))
    shares = np.maximum(wins, floor)
    shares /= shares.sum()
    return {name: float(s) for name, s in zip(names, shares, strict=True)}


def posterior_mean(hits: float, n: float) -> float:
    """Mean of the Beta(1 + hits, 1 + misses) posterior that ``thompson_shares`` draws from."""
    return (1.0 + hits) / (2.0 + n)


def discounted(
    buckets: Sequence[tuple[float, float, float]], now: float, discount: float, unit_s: float
) -> tuple[float, float]:
    """``(hits, recommendations)`` summed over time buckets ``(start_ts, hits, n)`` with
    exponential forgetting: a bucket ``t`` seconds old weighs ``discount ** (t / unit_s)``
    (``discount`` per bucket of ``unit_s``)."""
    hits = n = 0.0
    for ts, h, m in buckets:
        w = discount ** (max(0.0, now - ts) / unit_s)
        hits += w * h
        n += w * m
    return hits, n


def assignment_point(tenant: str, session_id: str, salt: str = "") -> float:
    """A session's fixed point in [0, 1): the same session always lands on the same arm
    for the same shares (sticky), and sessions spread evenly."""
    digest = hashlib.blake2b(f"{salt}\x1f{tenant}\x1f{session_id}".encode(), digest_size=8)
    return int.from_bytes(digest.digest(), "big") / 2**64


def pick_arm(point: float, shares: Sequence[tuple[str, float]]) -> str:
    """The arm whose slice of [0, 1) holds ``point`` (shares in a fixed order, summing
    to about 1; the last arm takes any rounding remainder)."""
    total = 0.0
    for name, share in shares:
        total += share
        if point < total:
            return name
    return shares[-1][0]

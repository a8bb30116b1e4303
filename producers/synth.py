"""A seeded synthetic clickstream that looks like shop traffic, up to a million items.

The shopper model, from coarse to fine:

- items belong to latent categories (a product line each); popularity is Zipf over all
  items. The Kaggle e-shop file and the YOOCHOOSE slice have rank/frequency slopes of
  -0.82 and -0.90 over their top items; the default exponent 1.05 gives about -0.84
  once the session walk (which flattens popularity a little) is applied;
- a session's first click is drawn by popularity; each next click either goes back to
  the item before (``back``), moves to a neighbour in the same product line
  (``related``: the local structure Word2Vec can learn), or takes a Markov step between
  categories (stay with probability ``stay``, else move to one of a few related
  categories) and picks an item there by popularity;
- session lengths are 1 + floor(log-normal) (median 4, mean about 6, 15 % single clicks,
  close to the e-shop file); click gaps are the dwell times of ``producers.timing``;
  sessions start uniformly over ``days`` days.

Everything is vectorised over sessions with numpy, chunk by chunk, so millions of
events take seconds. Output: a YOOCHOOSE-format TSV (``SessionId ItemId Time``, which
``streamrec train --format yoochoose`` reads) or :class:`models.datasets.Clicks` for a
replay straight into Kafka.
"""

from __future__ import annotations

import gzip
import math
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TextIO

import numpy as np

from models.datasets import Clicks
from models.errors import InvalidSettingError
from producers.timing import dwell_gaps, segment_cumsum

MAX_ITEMS = 1_000_000
MAX_SESSION_LENGTH = 200
DAY_S = 86400.0
# Sessions generated per vectorised step; bounds memory, not the result's size.
CHUNK_SESSIONS = 50_000
# Related categories per category: a shopper in "shirts" drifts to a few lines, not all.
CATEGORY_NEIGHBOURS = 4
# How far along the product line a "related" click moves (positions, either way).
LINE_STEP_MAX = 3


@dataclass(frozen=True)
class SynthParams:
    items: int = 10_000
    sessions: int = 20_000
    categories: int | None = None  # default: about sqrt(items)
    zipf: float = 1.05
    stay: float = 0.7
    related: float = 0.25
    back: float = 0.08
    length_mu: float = 1.15
    length_sigma: float = 1.1
    days: float = 30.0
    start_ts: float = 1_700_000_000.0
    seed: int = 0

    @property
    def n_categories(self) -> int:
        if self.categories is not None:
            return self.categories
        return max(1, round(math.sqrt(self.items)))

    def check(self) -> None:
        """Raise ValueError naming the first parameter out of range."""
        if not 1 <= self.items <= MAX_ITEMS:
            raise InvalidSettingError(f"items must be between 1 and {MAX_ITEMS:,}")
        if self.sessions < 1:
            raise InvalidSettingError("sessions must be at least 1")
        if not 1 <= self.n_categories <= self.items:
            raise InvalidSettingError("categories must be between 1 and the number of items")
        if self.zipf < 0:
            raise InvalidSettingError("the Zipf exponent must not be negative")
        for name in ("stay", "related", "back"):
            if not 0.0 <= getattr(self, name) <= 1.0:
                raise InvalidSettingError(f"{name} is a probability: between 0 and 1")
        if self.related + self.back > 1.0:
            raise InvalidSettingError("related + back must not exceed 1")
        if self.days <= 0:
            raise InvalidSettingError("days must be positive")


@dataclass(frozen=True)
class Catalog:
    """Items laid out by category: position p is item ``item_ids[p]`` of ``category[p]``."""

    item_ids: np.ndarray  # int64 [items]
    category: np.ndarray  # int64 [items], non-decreasing
    cum_weight: np.ndarray  # float64 [items]: popularity summed over positions
    cat_start: np.ndarray  # int64 [categories]
    cat_end: np.ndarray  # int64 [categories], exclusive
    neighbours: np.ndarray  # int64 [categories, k]
    neighbour_cum: np.ndarray  # float64 [categories, k]: cumulative transition probability


def build_catalog(params: SynthParams, rng: np.random.Generator) -> Catalog:
    n, c = params.items, params.n_categories
    # Every category gets one item, the rest are spread with uneven category sizes.
    size_weight = rng.lognormal(0.0, 0.75, size=c)
    category = np.concatenate(
        [np.arange(c), rng.choice(c, size=n - c, p=size_weight / size_weight.sum())]
    )
    category.sort()
    cat_start = np.searchsorted(category, np.arange(c), side="left")
    cat_end = np.searchsorted(category, np.arange(c), side="right")
    # Popularity rank is independent of the category and of the item id.
    weight = np.arange(1, n + 1, dtype=np.float64) ** -params.zipf
    weight = weight[rng.permutation(n)]
    item_ids = rng.permutation(n).astype(np.int64) + 1
    k = min(CATEGORY_NEIGHBOURS, max(c - 1, 1))
    # Offsets 1..c-1 never map a category onto itself.
    step = rng.integers(1, c, size=(c, k)) if c > 1 else np.zeros((c, k), dtype=np.int64)
    neighbours = (np.arange(c)[:, None] + step) % c
    neighbour_cum = np.cumsum(rng.dirichlet(np.ones(k), size=c), axis=1)
    neighbour_cum[:, -1] = 1.0
    return Catalog(
        item_ids,
        category.astype(np.int64),
        np.cumsum(weight),
        cat_start,
        cat_end,
        neighbours.astype(np.int64),
        neighbour_cum,
    )


def _draw_popular(cat: Catalog, rng: np.random.Generator, size: int) -> np.ndarray:
    x = rng.random(size) * cat.cum_weight[-1]
    return np.minimum(np.searchsorted(cat.cum_weight, x, side="right"), len(cat.cum_weight) - 1)


def _draw_in_category(cat: Catalog, rng: np.random.Generator, cats: np.ndarray) -> np.ndarray:
    """By popularity, restricted to each category: a slice of the cumulative weights."""
    start, end = cat.cat_start[cats], cat.cat_end[cats]
    lo = np.where(start > 0, cat.cum_weight[np.maximum(start - 1, 0)], 0.0)
    hi = cat.cum_weight[end - 1]
    pos = np.searchsorted(cat.cum_weight, lo + rng.random(len(cats)) * (hi - lo), side="right")
    return np.clip(pos, start, end - 1)


def _step_category(
    cat: Catalog, rng: np.random.Generator, cats: np.ndarray, stay: float
) -> np.ndarray:
    moving = rng.random(len(cats)) >= stay
    moved = cats.copy()
    if moving.any():
        rows = cats[moving]
        choice = (cat.neighbour_cum[rows] < rng.random(len(rows))[:, None]).sum(axis=1)
        moved[moving] = cat.neighbours[rows, np.minimum(choice, cat.neighbours.shape[1] - 1)]
    return moved


def _step_in_line(cat: Catalog, rng: np.random.Generator, pos: np.ndarray) -> np.ndarray:
    """A nearby item of the same product line (reflected at the line's ends)."""
    cats = cat.category[pos]
    start, end = cat.cat_start[cats], cat.cat_end[cats]
    step = rng.integers(1, LINE_STEP_MAX + 1, size=len(pos)) * rng.choice([-1, 1], size=len(pos))
    moved = pos + step
    moved = np.where((moved < start) | (moved >= end), pos - step, moved)
    return np.clip(moved, start, end - 1)


def session_lengths(params: SynthParams, rng: np.random.Generator, size: int) -> np.ndarray:
    raw = rng.lognormal(params.length_mu, params.length_sigma, size=size)
    return np.minimum(1 + np.floor(raw), MAX_SESSION_LENGTH).astype(np.int64)


@dataclass(frozen=True)
class SynthChunk:
    """Clicks of consecutive sessions, session-major and in click order."""

    session_ids: np.ndarray  # int64
    item_ids: np.ndarray  # int64
    ts: np.ndarray  # float64 unix seconds

    def __len__(self) -> int:
        return len(self.item_ids)


def _walk_sessions(
    cat: Catalog, params: SynthParams, rng: np.random.Generator, lengths: np.ndarray
) -> np.ndarray:
    """Catalog positions of every click, session-major; one vectorised step per click index."""
    first = np.r_[0, np.cumsum(lengths)[:-1]]
    out = np.empty(int(lengths.sum()), dtype=np.int64)
    cur = _draw_popular(cat, rng, len(lengths))
    prev = cur.copy()
    out[first] = cur
    active = np.arange(len(lengths))
    for j in range(1, int(lengths.max())):
        active = active[lengths[active] > j]
        here, before = cur[active], prev[active]
        u = rng.random(len(active))
        back = (u < params.back) & (j >= 2)
        related = ~back & (u < params.back + params.related)
        jump = ~(back | related)
        nxt = np.empty(len(active), dtype=np.int64)
        nxt[back] = before[back]
        nxt[related] = _step_in_line(cat, rng, here[related])
        next_cats = _step_category(cat, rng, cat.category[here[jump]], params.stay)
        nxt[jump] = _draw_in_category(cat, rng, next_cats)
        prev[active], cur[active] = here, nxt
        out[first[active] + j] = nxt
    return out


def _seeds(params: SynthParams) -> list[np.random.SeedSequence]:
    # Independent streams for the catalogue, the session starts and the sessions, so
    # that changing e.g. the number of sessions leaves the catalogue as it was.
    return np.random.SeedSequence(params.seed).spawn(3)


def make_catalog(params: SynthParams) -> Catalog:
    """The catalogue ``iter_synth`` uses for these parameters."""
    params.check()
    return build_catalog(params, np.random.default_rng(_seeds(params)[0]))


def iter_synth(params: SynthParams, chunk_sessions: int = CHUNK_SESSIONS) -> Iterator[SynthChunk]:
    """The whole stream, ``chunk_sessions`` sessions at a time (ids 1..sessions)."""
    params.check()
    catalog_seq, starts_seq, chunks_seq = _seeds(params)
    cat = build_catalog(params, np.random.default_rng(catalog_seq))
    starts = np.sort(
        np.random.default_rng(starts_seq).uniform(0.0, params.days * DAY_S, size=params.sessions)
    )
    n_chunks = math.ceil(params.sessions / chunk_sessions)
    for index, seq in enumerate(chunks_seq.spawn(n_chunks)):
        rng = np.random.default_rng(seq)
        lo = index * chunk_sessions
        chunk_starts = starts[lo : lo + chunk_sessions]
        lengths = session_lengths(params, rng, len(chunk_starts))
        pos = _walk_sessions(cat, params, rng, lengths)
        first = np.r_[0, np.cumsum(lengths)[:-1]]
        gaps = dwell_gaps(rng, len(pos))
        gaps[first] = 0.0
        ts = params.start_ts + np.repeat(chunk_starts, lengths) + segment_cumsum(gaps, first)
        session_ids = np.repeat(np.arange(lo + 1, lo + 1 + len(chunk_starts)), lengths)
        yield SynthChunk(session_ids, cat.item_ids[pos], ts)


def generate_clicks(params: SynthParams) -> Clicks:
    """The whole stream in memory, in the columnar form the dataset readers return."""
    chunks = list(iter_synth(params))
    session_ids = np.concatenate([c.session_ids for c in chunks])
    return Clicks(
        session_ids=session_ids.astype(str),
        item_ids=np.concatenate([c.item_ids for c in chunks]).astype(str),
        ts=np.concatenate([c.ts for c in chunks]),
        order=_order_in_session(session_ids),
    )


def _order_in_session(session_ids: np.ndarray) -> np.ndarray:
    starts = np.flatnonzero(np.r_[True, session_ids[1:] != session_ids[:-1]])
    return segment_cumsum(np.ones(len(session_ids), dtype=np.int64), starts)


def write_yoochoose(
    path: str | Path,
    params: SynthParams,
    *,
    on_chunk: Callable[[SynthChunk], None] | None = None,
) -> tuple[int, int]:
    """Write ``SessionId<TAB>ItemId<TAB>Time`` (gzip if the name ends in .gz).

    Returns (clicks, sessions).
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    clicks = 0
    with _open_for_text(path) as fh:
        fh.write("SessionId\tItemId\tTime\n")
        for chunk in iter_synth(params):
            fh.writelines(
                f"{s}\t{i}\t{t:.3f}\n"
                for s, i, t in zip(
                    chunk.session_ids.tolist(),
                    chunk.item_ids.tolist(),
                    chunk.ts.tolist(),
                    strict=True,
                )
            )
            clicks += len(chunk)
            if on_chunk is not None:
                on_chunk(chunk)
    return clicks, params.sessions


def _open_for_text(path: Path) -> TextIO:
    if path.suffix == ".gz":
        return gzip.open(path, "wt", encoding="utf-8", newline="")  # type: ignore[return-value]
    return open(path, "w", encoding="utf-8", newline="")  # noqa: SIM115

"""Seeded synthetic sessions, for tests and scale benchmarks."""

from __future__ import annotations

import numpy as np

from models.datasets.sessions import drop_repeats


def synthetic_sessions(
    n_clicks: int,
    n_items: int,
    *,
    mean_length: float = 5.0,
    zipf: float = 1.1,
    p_follow: float = 0.7,
    n_successors: int = 8,
    locality: int = 50,
    seed: int = 0,
) -> list[list[str]]:
    """Seeded Zipf + Markov click sessions, for tests and scale benchmarks.

    Item popularity follows Zipf(``zipf``). Each item has ``n_successors`` fixed
    successors drawn from the ``locality`` items after it, so there are "topics" for
    embeddings to find; a click follows one of them with probability ``p_follow``,
    otherwise it jumps to a popular item. Lengths are 2 + geometric (mean ``mean_length``).
    """
    rng = np.random.default_rng(seed)
    popularity = 1.0 / np.arange(1, n_items + 1) ** zipf
    popularity /= popularity.sum()
    hops = rng.integers(1, max(2, locality), size=(n_items, n_successors))
    successors = (np.arange(n_items)[:, None] + hops) % n_items
    lengths = 2 + rng.geometric(1.0 / max(mean_length - 1.0, 1.0), size=int(n_clicks / 2) + 1)
    lengths = lengths[: int(np.searchsorted(np.cumsum(lengths), n_clicks)) + 1]
    clicks = np.empty((len(lengths), int(lengths.max())), dtype=np.int64)
    clicks[:, 0] = rng.choice(n_items, size=len(lengths), p=popularity)
    for step in range(1, clicks.shape[1]):
        follow = successors[clicks[:, step - 1], rng.integers(0, n_successors, size=len(lengths))]
        jump = rng.choice(n_items, size=len(lengths), p=popularity)
        clicks[:, step] = np.where(rng.random(len(lengths)) < p_follow, follow, jump)
    names = [f"i{i}" for i in range(n_items)]
    return [
        drop_repeats([names[i] for i in row[:n]])
        for row, n in zip(clicks.tolist(), lengths.tolist(), strict=True)
    ]

"""Selection in compiled code, shared by the serving kernel's stages: the k-th largest of
an array and the positions of its k largest, in time linear in its length."""

from __future__ import annotations

from numba import njit


@njit(cache=True, nogil=True)
def kth_largest(values, rank, bufs):  # pragma: no cover - compiled
    """The ``rank``-th largest (0 = the largest) of ``values``: quickselect whose passes
    have no data-dependent branch (each value is written to both ends of the next
    buffer, and only one end's count moves), so it costs the same on any input order.
    ``bufs``: [2, >= len(values)] scratch."""
    n = values.size
    src = values
    which = 0
    while True:
        pivot = src[n >> 1]
        dst = bufs[which]
        above = 0
        below = 0
        for i in range(n):
            x = src[i]
            dst[above] = x
            dst[n - 1 - below] = x
            above += x > pivot
            below += x < pivot
        if rank < above:
            n = above
            src = dst[:n]
        elif rank < n - below:
            return pivot
        else:
            rank -= n - below
            src = dst[n - below : n]
            n = below
        which = 1 - which


@njit(cache=True, nogil=True)
def select_top(values, limit, out, bufs):  # pragma: no cover - compiled
    """Write into ``out`` the positions of the ``limit`` largest ``values``, ties going to
    the earlier position; returns how many. O(len) expected; ``bufs`` is [2, len] scratch
    at least."""
    m = values.size
    if m <= limit:
        for q in range(m):
            out[q] = q
        return m
    threshold = kth_largest(values, limit - 1, bufs)
    above = 0
    for q in range(m):
        above += values[q] > threshold
    ties = limit - above
    count = 0
    q = 0
    while count < limit:
        x = values[q]
        take = (x > threshold) | ((x == threshold) & (ties > 0))
        out[count] = q
        count += take
        ties -= (x == threshold) & take
        q += 1
    return count

"""Ranked rows serialised as JSON in one compiled pass: from each item's bytes encoded
once per model, without a Python object per item (the worker's records carry a
session's list so)."""

from __future__ import annotations

import numpy as np
from numba import njit


@njit(cache=True, nogil=True)
def json_rows(heads, starts, items, scores, scale, decimals):  # pragma: no cover - compiled
    """Each row of ``items`` (int64 [rows, k], ending at its first -1) as one JSON array
    of objects, all rows back to back in one buffer: item c's object is its ``heads``
    bytes (``heads[starts[c]:starts[c + 1]]``, up to and with the key of its score), the
    item's score written as Python's and msgspec's shortest decimal in fixed notation
    (``scores`` rounded to ``decimals``; ``scale`` is 10**decimals), and ``}``.
    (buffer, each row's end, whether it was written): a row is left empty and marked
    not written when an item has no head or a score cannot be written so."""
    rows, k = items.shape
    # A score is written from its whole count of 10^-decimals below this: then it has at
    # most 15 significant digits, and the shortest decimal reading back as the same float
    # (msgspec's, in fixed notation) is that count's.
    limit = 10.0 ** (15 - decimals)
    size = 2 * rows
    for r in range(rows):
        for j in range(k):
            c = items[r, j]
            if c < 0:
                break
            size += starts[c + 1] - starts[c] + 20 + decimals
    out = np.empty(size, dtype=np.uint8)
    ends = np.empty(rows, dtype=np.int64)
    done = np.ones(rows, dtype=np.bool_)
    digits = np.empty(24, dtype=np.uint8)
    at = 0
    for r in range(rows):
        begin = at
        out[at] = 91  # [
        at += 1
        for j in range(k):
            c = items[r, j]
            if c < 0:
                break
            a, b = starts[c], starts[c + 1]
            x = scores[r, j]
            if a == b or not abs(x) < limit:
                done[r] = False
                break
            m = np.int64(np.rint(x * scale))
            if m / scale != x:
                done[r] = False
                break
            if j:
                out[at] = 44  # ,
                at += 1
            # A loop, not a slice assignment: numba compiles a slice's shape check with
            # its error message, seconds of a first start's compiling.
            for q in range(a, b):
                out[at] = heads[q]
                at += 1
            if m < 0 or (m == 0 and np.signbit(x)):
                out[at] = 45  # -
                at += 1
                m = -m
            whole, frac = m // scale, m % scale
            n = 0
            while True:
                digits[n] = 48 + whole % 10
                whole //= 10
                n += 1
                if whole == 0:
                    break
            for i in range(n):
                out[at + i] = digits[n - 1 - i]
            at += n
            out[at] = 46  # .
            at += 1
            if frac == 0:
                out[at] = 48
                at += 1
            else:
                n = decimals
                while frac % 10 == 0:
                    frac //= 10
                    n -= 1
                for i in range(n - 1, -1, -1):
                    out[at + i] = 48 + frac % 10
                    frac //= 10
                at += n
            out[at] = 125  # }
            at += 1
        if not done[r]:
            at = begin
        else:
            out[at] = 93  # ]
            at += 1
        ends[r] = at
    return out[:at], ends, done

"""The sessions a model was trained on, as a sorted array of 64-bit hashes of their item
sequences: enough to tell whether a session occurs verbatim among them (a replay of its
training file, say), at 8 bytes a session.

The hash is BLAKE2b of the item ids joined by the ASCII unit separator, so it is the
same in every process and version (Python's ``hash()`` of a string is not).
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable, Sequence

import numpy as np

_SEP = "\x1f"


def session_hashes(sessions: Iterable[Sequence[str]]) -> np.ndarray:
    """The sorted distinct hashes (uint64) of ``sessions``' item sequences."""
    return np.unique(_keys(sessions)).astype(np.uint64)


def seen_in(hashes: np.ndarray, sessions: Sequence[Sequence[str]]) -> np.ndarray:
    """For each of ``sessions``, whether its item sequence is among ``hashes`` (bool)."""
    if not len(sessions) or not len(hashes):
        return np.zeros(len(sessions), dtype=bool)
    keys = _keys(sessions)
    at = np.minimum(np.searchsorted(hashes, keys), len(hashes) - 1)
    return np.asarray(hashes)[at] == keys


def _keys(sessions: Iterable[Sequence[str]]) -> np.ndarray:
    blake = hashlib.blake2b  # one lookup: this runs once per training session
    digests = [blake(_SEP.join(items).encode(), digest_size=8).digest() for items in sessions]
    return np.frombuffer(b"".join(digests), dtype="<u8")

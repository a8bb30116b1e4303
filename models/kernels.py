"""What numba has compiled so far in this process: the models' kernels (``@njit``
functions of the ``models`` modules imported), each signature either compiled here or
loaded from numba's on-disk cache (``NUMBA_CACHE_DIR``).

A server warms its kernels before it takes traffic; comparing two counts tells whether
anything was compiled since (a first call with argument types not seen before).
``sample_bundle`` is a model small enough to train in a moment that takes the same
compiled paths as any trained model: ranking with it fills the cache ahead of a server's
first start (``streamrec warm``)."""

from __future__ import annotations

import sys
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from numba.core import config
from numba.core.registry import CPUDispatcher

if TYPE_CHECKING:
    from models.bundle import ModelBundle


@dataclass(frozen=True)
class KernelCount:
    signatures: int  # compiled or loaded, in all
    from_cache: int  # of which loaded from the on-disk cache

    @property
    def compiled(self) -> int:
        return self.signatures - self.from_cache


def kernel_count(prefix: str = "models") -> KernelCount:
    """The signatures held by every numba kernel of the modules named ``prefix[.*]``."""
    seen: dict[int, CPUDispatcher] = {}
    for name, module in list(sys.modules.items()):
        if name == prefix or name.startswith(prefix + "."):
            for value in list(vars(module).values()):
                if isinstance(value, CPUDispatcher):
                    seen[id(value)] = value
    signatures = sum(len(d.signatures) for d in seen.values())
    from_cache = sum(sum(d.stats.cache_hits.values()) for d in seen.values())
    return KernelCount(signatures, min(from_cache, signatures))


def kernel_cache() -> str:
    """Where numba caches the kernels: NUMBA_CACHE_DIR, else beside the sources."""
    return config.CACHE_DIR or str(Path(__file__).parent / "__pycache__")


def sample_bundle() -> ModelBundle:
    """A model trained on a few thousand seeded synthetic clicks, with a fitted ranker:
    its arrays have the dtypes and shapes' ranks of every trained model, so it compiles
    the kernels for the same argument types (registered and loaded as a worker loads it,
    its arrays are read-only like theirs)."""
    from models.datasets import synthetic_sessions
    from models.train import TrainParams, train_model

    # Small enough to train in a moment, large enough for the ranker's fit.
    sessions = synthetic_sessions(4000, 120, seed=7)
    return train_model(sessions, TrainParams(epochs=3, n_clusters=6, n_neighbours=20, seed=11))

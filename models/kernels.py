"""What numba has compiled so far in this process: the models' kernels (``@njit``
functions of the ``models`` modules imported), each signature either compiled here or
loaded from numba's on-disk cache (``NUMBA_CACHE_DIR``).

A server warms its kernels before it takes traffic; comparing two counts tells whether
anything was compiled since (a first call with argument types not seen before)."""

from __future__ import annotations

import sys
from dataclasses import dataclass

from numba.core.registry import CPUDispatcher


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

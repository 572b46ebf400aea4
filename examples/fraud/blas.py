"""Limiting the BLAS threads of this process, for a training loop that shares its cores.

The demo trains in the main process while worker processes augment batches. OpenBLAS threads
spin while they wait for work: on a small machine they fight the workers for the cores and a run
can take ten times longer. ``threadpoolctl`` does this properly when installed; without it the
OpenBLAS library numpy loaded is found in ``/proc/self/maps`` and told directly.

The number of BLAS threads can change results: a matrix product split over more threads adds
its terms in another order, so the low bits of the weights differ. The demo therefore always
trains with one thread, whatever its worker count, and a ``replay --full`` in a fresh process
reproduces a run recorded in a process that had other BLAS settings.
"""

from __future__ import annotations

import ctypes

from ledger.environment import loaded_openblas_libraries

_SETTERS = ("scipy_openblas_set_num_threads64_", "scipy_openblas_set_num_threads",
            "openblas_set_num_threads64_", "openblas_set_num_threads")


def limit_blas_threads(threads: int = 1) -> bool:
    """Ask the BLAS numpy uses to run ``threads`` threads; True when it could be told."""
    try:
        from threadpoolctl import threadpool_limits  # optional

        threadpool_limits(threads, user_api="blas")
        return True
    except ImportError:
        pass
    told = False
    for _path, library in loaded_openblas_libraries():
        for name in _SETTERS:
            setter = getattr(library, name, None)
            if setter is not None:
                setter(ctypes.c_int(threads))
                told = True
                break
    return told

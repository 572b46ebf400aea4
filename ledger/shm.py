"""numpy arrays in shared memory: created by the main process, attached by workers by name.

Batches and the dataset travel between processes through these blocks — never pickled. A block
is described to another process by a small map ``{"name", "shape", "dtype"}``.
"""

from __future__ import annotations

import contextlib
import errno
import os
import secrets
from multiprocessing import shared_memory
from typing import Any

import numpy as np

from ledger.errors import ResourceError


class SharedArray:
    """One numpy array backed by a ``multiprocessing.shared_memory`` block.

    The creating process owns the block and unlinks it in :meth:`close`; attaching processes
    only close their mapping. Views handed out by :attr:`array` must not outlive :meth:`close`.
    """

    def __init__(self, block: shared_memory.SharedMemory, shape: tuple[int, ...],
                 dtype: np.dtype, owner: bool) -> None:
        self._block: shared_memory.SharedMemory | None = block
        self.shape = shape
        self.dtype = dtype
        self.owner = owner
        self._unlinked = False
        self.array: np.ndarray | None = np.ndarray(shape, dtype=dtype, buffer=block.buf)

    @classmethod
    def create(cls, shape: tuple[int, ...], dtype: np.dtype | str) -> "SharedArray":
        """A new zeroed block large enough for ``shape`` x ``dtype``, its pages reserved, named
        ``ledger_<pid>_<random>`` in ``/dev/shm``.

        ResourceError when the shared memory cannot be had. Reserving matters: a block is only
        sized at creation, and writing past what ``/dev/shm`` holds (64 MB in a default Docker
        container) would kill the process with SIGBUS instead of raising.
        """
        dtype = np.dtype(dtype)
        size = max(int(np.prod(shape, dtype=np.int64)) * dtype.itemsize, 1)
        # The maker's pid names a block a kill during start-up left behind; 28 characters at
        # most with the leading "/", under macOS's limit of 31.
        name = f"ledger_{os.getpid()}_{secrets.token_hex(6)}"
        try:
            block = shared_memory.SharedMemory(name=name, create=True, size=size)
        except OSError as error:
            # made, then failed (out of descriptors for the resource tracker): not left behind
            with contextlib.suppress(OSError):
                os.unlink(f"/dev/shm/{name}")
            raise _no_shared_memory(size, error) from None
        try:
            reserve = getattr(os, "posix_fallocate", None)  # not on macOS: no reservation there
            if reserve is not None:
                # the block's descriptor (private: the stdlib offers no way to reserve pages)
                reserve(block._fd, 0, size)  # type: ignore[attr-defined]
        except OSError as error:
            block.close()
            with contextlib.suppress(FileNotFoundError):
                block.unlink()
            raise _no_shared_memory(size, error) from None
        return cls(block, tuple(shape), dtype, True)

    @classmethod
    def copy_of(cls, array: np.ndarray) -> "SharedArray":
        """A new block holding a copy of ``array``; none is left behind if the copy is
        interrupted (Ctrl-C while a large dataset is copied)."""
        shared = cls.create(array.shape, array.dtype)
        assert shared.array is not None
        try:
            np.copyto(shared.array, array)
        except BaseException:
            shared.close()
            raise
        return shared

    @classmethod
    def attach(cls, descriptor: dict[str, Any]) -> "SharedArray":
        """Map a block another process created, from its :meth:`descriptor`."""
        block = shared_memory.SharedMemory(name=descriptor["name"])
        return cls(block, tuple(descriptor["shape"]), np.dtype(descriptor["dtype"]), False)

    def descriptor(self) -> dict[str, Any]:
        """The small map another process attaches with (name, shape, dtype)."""
        assert self._block is not None
        return {"name": self._block.name, "shape": list(self.shape), "dtype": self.dtype.str}

    def unlink(self) -> None:
        """Remove the block's name (owner only; the mappings stay valid). Safe to call twice.

        Done as soon as every worker has attached, so that not even a SIGKILL of the whole
        process group can leave the block behind in ``/dev/shm``.
        """
        if self.owner and self._block is not None and not self._unlinked:
            self._unlinked = True
            with contextlib.suppress(FileNotFoundError):
                self._block.unlink()

    def close(self) -> None:
        """Unmap the block (and unlink it, in the owner). Safe to call twice."""
        self.unlink()
        block, self._block, self.array = self._block, None, None
        if block is None:
            return
        with contextlib.suppress(BufferError):  # a view still alive: the mapping goes with it
            block.close()


def _no_shared_memory(size: int, error: OSError) -> ResourceError:
    if error.errno in (errno.EMFILE, errno.ENFILE):
        remedy = "raise the limit on open files (ulimit -n) or use num_workers=0"
    elif error.errno == errno.EROFS:
        remedy = "/dev/shm is read-only here: use num_workers=0"
    else:
        remedy = ("make /dev/shm larger (docker run --shm-size) or use num_workers=0 (a "
                  "smaller batch_size or prefetch needs less)")
    return ResourceError(f"cannot have {size / 1e6:,.1f} MB of shared memory for worker "
                         f"processes ({error.strerror or error}): {remedy}")

"""Shared memory for the same-node weight-sync transport (actors.weight_sync, `sync.transport: shm`).

`SharedSlot`: one file in /dev/shm, mapped by learner rank 0 and by every member on its node, sized to the largest
bucket and reused for every bucket of every sync of one group generation. Rank 0 unlinks the file as soon as every
member has mapped it (or the rendezvous failed): the mappings live on, and nothing is left in /dev/shm when a process
exits or is killed. A random token in the file's header proves that a member maps *this* file, i.e. shares rank 0's
/dev/shm (same node, same container), before the group relies on it.

`BufferPool`: a member's private buffers for buckets copied out of the slot, reused between buckets and syncs so the
copy runs at memcpy speed instead of page-faulting fresh memory (fresh pages cost ~6x a copy on this machine kind).
"""

from __future__ import annotations

import mmap
import os
import secrets
import weakref
from pathlib import Path

import numpy as np
import torch

from rlpt.weights import Bucket

SHM_DIR = Path("/dev/shm")
SHM_PREFIX = "rlpt-weights-"
_HEADER = 4096  # one page: the token lives here and the data starts page-aligned


class SharedSlot:
    """A shared-memory buffer of `nbytes` bytes (`data`, uint8) mapped by every process of a same-node group."""

    def __init__(self, path: Path, mm: mmap.mmap, nbytes: int, token: str) -> None:
        self.path, self.nbytes, self.token = path, nbytes, token
        # The tensor keeps the mapping alive; it is unmapped when the last view of it is gone.
        self.data = torch.frombuffer(mm, dtype=torch.uint8, offset=_HEADER, count=nbytes)

    @classmethod
    def create(cls, nbytes: int, directory: Path = SHM_DIR) -> SharedSlot | None:
        """Rank 0: a new slot, or None when this machine has no shared-memory directory."""
        if not directory.is_dir():
            return None
        token = secrets.token_hex(16)
        path = directory / f"{SHM_PREFIX}{os.getpid()}-{token[:12]}"
        fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_EXCL, 0o600)
        try:
            os.ftruncate(fd, _HEADER + nbytes)  # sparse: pages exist only once a bucket is written
            mm = mmap.mmap(fd, _HEADER + nbytes)
        except BaseException:
            os.unlink(path)
            raise
        finally:
            os.close(fd)
        mm[:len(token)] = token.encode()
        return cls(path, mm, nbytes, token)

    def describe(self) -> str:
        """What a member needs to map the slot (sent through the group's store)."""
        return f"{self.path}|{self.nbytes}|{self.token}"

    @classmethod
    def attach(cls, described: str) -> SharedSlot | None:
        """A member: the slot `describe()` names, or None when this process cannot map it (another node or
        another /dev/shm): the group then uses the broadcast transport."""
        path, size, token = described.split("|")
        nbytes = int(size)
        try:
            fd = os.open(path, os.O_RDWR)
        except OSError:
            return None
        try:
            if os.fstat(fd).st_size != _HEADER + nbytes:
                return None
            mm = mmap.mmap(fd, _HEADER + nbytes)
        finally:
            os.close(fd)
        if mm[:len(token)] != token.encode():
            return None
        return cls(Path(path), mm, nbytes, token)

    def view(self, bucket: Bucket) -> torch.Tensor:
        """The slot's first `bucket.nbytes` bytes as a flat tensor of the bucket's dtype."""
        if bucket.nbytes > self.nbytes:
            raise ValueError(f"a bucket of {bucket.nbytes} bytes does not fit the shared slot of {self.nbytes} bytes "
                             f"(the sync plan changed after the group formed: re-form the group)")
        return self.data[:bucket.nbytes].view(bucket.torch_dtype)

    def unlink(self) -> None:
        """Remove the file (idempotent); mappings stay valid."""
        try:
            os.unlink(self.path)
        except FileNotFoundError:
            pass


class BufferPool:
    """Reusable private buffers of `nbytes` bytes each, for buckets copied out of the shared slot.

    vLLM's in-place reload keeps the tensors it is given past the next bucket (it buffers a layer until every piece
    of it arrived, and a padded layer such as the embedding until the end of the reload), so a buffer is reused only
    once no tensor of it is alive. `torch.from_numpy` keeps the numpy view it wraps alive, and a weak reference to
    that view tells when the last tensor made from it went away. The pool grows to the number of buckets the loader
    holds at once (measured: 2-3) and stays that size.
    """

    def __init__(self, nbytes: int) -> None:
        self.nbytes = nbytes
        self._buffers: list[np.ndarray] = []
        self._lent: list[weakref.ref[np.ndarray] | None] = []

    def __len__(self) -> int:
        return len(self._buffers)

    def take(self, bucket: Bucket) -> torch.Tensor:
        """A flat tensor of the bucket's dtype and size, in a buffer no live tensor uses."""
        if bucket.nbytes > self.nbytes:
            raise ValueError(f"a bucket of {bucket.nbytes} bytes exceeds the pool's buffers of {self.nbytes} bytes")
        free = next((k for k, ref in enumerate(self._lent) if ref is None or ref() is None), None)
        if free is None:
            self._buffers.append(np.empty(self.nbytes, dtype=np.uint8))
            self._lent.append(None)
            free = len(self._buffers) - 1
        view = self._buffers[free][:bucket.nbytes]
        self._lent[free] = weakref.ref(view)
        return torch.from_numpy(view).view(bucket.torch_dtype)

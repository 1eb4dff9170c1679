"""The allocation as an agent reads it: :class:`AllocationReader` is the role,
:class:`FileAllocationReader` its standalone implementation (the controller's
``allocation.json`` in a status directory, watched by its stat) and
``sdn_egress.kube.store.ConfigMapAllocationReader`` the Kubernetes one (the
ConfigMap, watched by an informer)."""
from __future__ import annotations

import os
from typing import Protocol

from sdn_egress.allocation import Allocation, AllocationStore


class AllocationReader(Protocol):
    @property
    def synced(self) -> bool:
        """False until a first answer (an agent changes nothing before)."""

    def load(self) -> Allocation | None: ...

    def changed(self) -> bool:
        """True when the allocation may have changed since the last call."""


class FileAllocationReader:
    def __init__(self, store: AllocationStore):
        self.store = store
        self.path = os.path.join(store.path, "allocation.json")
        self._stamp: tuple | None = None
        self.synced = True  # a file is there or not: nothing to wait for

    def load(self) -> Allocation | None:
        return self.store.load()

    def changed(self) -> bool:
        try:
            st = os.stat(self.path)
            stamp = (st.st_mtime_ns, st.st_size, st.st_ino)
        except FileNotFoundError:
            stamp = None
        if stamp != self._stamp:
            self._stamp = stamp
            return True
        return False

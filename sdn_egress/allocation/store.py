"""Where the allocation lives: one protocol, two implementations side by side.

:class:`AllocationStore` is the controller's (it writes); :class:`AllocationReader`
the agents' (they only read, and are told of a change).  Standalone mode:
:class:`~.store_file.FileAllocationStore` (``allocation.json`` in a status
directory) is both.  Kubernetes: :class:`~.store_kube.KubeAllocationStore`
and :class:`~.store_kube.KubeAllocationReader` (one ConfigMap per EIP and per
object, see docs/kubernetes.md).
"""
from __future__ import annotations

from typing import Protocol, runtime_checkable

from sdn_egress.allocation.types import Allocation


@runtime_checkable
class AllocationReader(Protocol):
    """What an agent reads the controller's allocation through."""

    @property
    def where(self) -> str:
        """Where it is kept, as log lines name it."""

    @property
    def synced(self) -> bool:
        """False until the first answer (an agent changes nothing before)."""

    def load(self) -> Allocation | None:
        """The allocation; None when there is none yet.  Raises ValueError
        naming where and the field when it cannot be read."""

    def changed(self) -> bool:
        """True once after every change of the stored allocation."""


@runtime_checkable
class AllocationStore(Protocol):
    """What the controller keeps its allocation (and the planned moves) in."""

    @property
    def where(self) -> str: ...

    @property
    def status_dir(self) -> str | None:
        """A status directory it also writes (the agents' reports are read from it), or None."""

    def load(self) -> Allocation | None:
        """As :meth:`AllocationReader.load`; the truth a new controller starts from."""

    def save(self, alloc: Allocation) -> bool:
        """Write what changed; True when anything did."""

    def set_aside(self) -> str:
        """Keep an unreadable allocation aside (allocation starts afresh); returns where it went."""

    def read_moves(self) -> dict[str, str]:
        """Planned moves asked for (``sdn-egress move``): EIP -> node."""

    def request_move(self, eip: str, node: str) -> None: ...

    def finish_moves(self, done: set[str]) -> None:
        """Forget the planned moves of these EIPs (done)."""

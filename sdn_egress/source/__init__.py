"""Where the cluster state comes from: the first step of the data flow
(source -> model -> allocation -> view -> flows -> agent).

A :class:`StateSource` hands out consistent :class:`~sdn_egress.model.ClusterState`
snapshots and says when a new one is worth taking.  Two implementations side
by side: :class:`~.files.ManifestDirSource` reads a directory of manifests
(standalone use: the lab, the demo, tests) and :class:`~.kube.KubeSource`
watches the Kubernetes API.  Both turn what they read into a state through
the same :class:`~.assemble.Assembler` (keep the last valid version,
incumbency) and the same cross-object checks (:mod:`.checks`).
"""
from __future__ import annotations

from typing import Mapping, Protocol

from sdn_egress.model import Accepted, ClusterState
from sdn_egress.source.assemble import Assembler, Pass, relevant_items
from sdn_egress.source.checks import KEPT_NOTE, check_gateways, check_policies, check_update
from sdn_egress.source.files import (
    MAX_ALIAS_NODES,
    MAX_DEPTH,
    MAX_DOCUMENTS,
    MAX_FILE_BYTES,
    SUFFIXES,
    FileError,
    ManifestDirSource,
    load_documents,
    read_manifest,
)

__all__ = [
    "KEPT_NOTE", "MAX_ALIAS_NODES", "MAX_DEPTH", "MAX_DOCUMENTS", "MAX_FILE_BYTES", "SUFFIXES",
    "Assembler", "FileError", "ManifestDirSource", "Pass", "StateSource",
    "check_gateways", "check_policies", "check_update", "load_documents", "read_manifest", "relevant_items",
]


class StateSource(Protocol):
    def snapshot(self) -> ClusterState:
        """The current state, consistent in itself."""

    def wait_for_change(self, timeout: float) -> bool:
        """Block up to ``timeout`` seconds; True as soon as something changed
        since the last :meth:`snapshot` (or no snapshot was taken yet)."""

    def remember(self, accepted: Mapping[str, Accepted]) -> None:
        """Incumbency from the stored allocation (the controller's, not this process's memory)."""

    @property
    def synced(self) -> bool:
        """False until the source has a first answer (a Kubernetes API list)."""

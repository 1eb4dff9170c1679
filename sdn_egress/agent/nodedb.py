"""What the agent reads from and writes to its node's OVSDB, behind one small
interface: :class:`NodeDb` is what the core asks, :class:`OvsdbNode` the real
one (``ovs_setup.ovsdb`` over an ovsdbapp connection, opened at first use);
the unit tests hold a node's ports, MACs and BFD states in memory."""
from __future__ import annotations

from typing import Protocol

from ovs_setup import ovsdb


class NodeDb(Protocol):
    def bridge_dpid(self, bridge: str) -> int:
        """The bridge's datapath id (raises when the bridge is absent)."""

    def ofports(self, bridge: str) -> dict[str, int]:
        """Port name -> OpenFlow port number (raises when the bridge is absent)."""

    def iface_mac(self, name: str) -> str: ...

    def iface_mtu(self, name: str) -> int | None: ...

    def bfd_status(self, bridge: str) -> dict[str, dict]:
        """Interface name -> its ``bfd_status`` (interfaces with BFD only)."""

    def sync_tunnels(self, bridge: str, peers: dict[str, str], bfd: dict | None) -> None:
        """One Geneve port per peer (name -> underlay address), named by
        ``ovs_setup.ovsdb.tunnel_port_names``, plus the flow-based port; no other."""


class OvsdbNode:
    """:class:`NodeDb` on the node's Open vSwitch at ``target``."""

    def __init__(self, target: str):
        self.target = target
        self._api = None
        self._reads: dict[tuple[str, str], tuple[int, dict]] = {}

    @property
    def api(self):
        if self._api is None:
            self._api = ovsdb.connect(self.target)
        return self._api

    def bridge_dpid(self, bridge: str) -> int:
        return ovsdb.bridge_dpid(self.api, bridge)

    def ofports(self, bridge: str) -> dict[str, int]:
        return self._read("ofports", bridge, ovsdb.ofports)

    def iface_mac(self, name: str) -> str:
        return ovsdb.iface_mac(self.api, name)

    def iface_mtu(self, name: str) -> int | None:
        return ovsdb.iface_mtu(self.api, name)

    def bfd_status(self, bridge: str) -> dict[str, dict]:
        return self._read("bfd_status", bridge, ovsdb.bfd_status)

    def _read(self, what: str, bridge: str, read) -> dict:
        """A read of every interface of a bridge, again only when the IDL's
        replica changed since (its ``change_seqno``): the liveness poll asks
        for the BFD states every 50 ms, and a gateway has a port to every
        node that sends to it.  The number is taken before the read, so a change that lands
        during it makes the next call read again.  The same dict is handed
        out while nothing changed (the callers tell "unchanged" by identity):
        it is not to be changed."""
        seqno = getattr(self.api.idl, "change_seqno", None)
        hit = self._reads.get((what, bridge))
        if hit is not None and seqno is not None and hit[0] == seqno:
            return hit[1]
        value = read(self.api, bridge)
        if seqno is not None:
            self._reads[(what, bridge)] = (seqno, value)
        return value

    def sync_tunnels(self, bridge: str, peers: dict[str, str], bfd: dict | None) -> None:
        ovsdb.sync_tunnels(self.api, bridge, peers, bfd=bfd)

"""OVSDB provisioning as ovsdbapp commands: one transaction per logical step,
idempotent (``may_exist``/``if_exists``), so running a step twice changes
nothing and a retried commit is harmless."""
from __future__ import annotations

import functools
import hashlib
import time

TUNNEL_PREFIX = "gnv-"
FLOW_PORT = "gnv-flow"
IFNAMSIZ = 15


class OvsdbError(RuntimeError):
    pass


# Columns no reader here uses that ovs-vswitchd keeps rewriting (every
# interface's statistics, every 5 s): left out of the replica, which then
# changes only when something the agent reads does.  (One connection serves
# a whole process, ovsdbapp's way: the first connect's columns are the ones.)
UNWATCHED = {"Interface": ("statistics",)}


def connect(db_target: str, timeout: float = 10, unwatched: dict[str, tuple[str, ...]] | None = UNWATCHED):
    """An ovsdbapp Open_vSwitch API bound to ``db_target`` (e.g. ``unix:/run/ovs/db.sock``).

    ``unwatched``: table -> columns its replica leaves out (every other
    column of every table is replicated): the agent leaves out what
    ovs-vswitchd rewrites on its own, such as every interface's statistics
    every 5 s, which a gateway with thousands of ports would otherwise parse
    forever."""
    from ovsdbapp.backend.ovs_idl import connection, idlutils
    from ovsdbapp.schema.open_vswitch import impl_idl

    try:
        helper = idlutils.get_schema_helper(db_target, "Open_vSwitch")
        if unwatched:
            for table, spec in helper.schema_json["tables"].items():
                skip = set(unwatched.get(table, ()))
                if skip:
                    helper.register_columns(table, [c for c in spec["columns"] if c not in skip])
                else:
                    helper.register_table(table)
        else:
            helper.register_all()
        idl = connection.OvsdbIdl(db_target, helper)
        conn = connection.Connection(idl=idl, timeout=timeout)
        return impl_idl.OvsdbIdl(conn)
    except Exception as exc:  # noqa: BLE001 - one clear line for the user
        raise OvsdbError(f"cannot reach OVSDB at {db_target}: {exc}") from exc


def datapath_id(bridge: str) -> str:
    """A fixed datapath-id per bridge name, so a controller tells bridges apart."""
    return hashlib.sha256(bridge.encode()).hexdigest()[:16]


# Packet-ins per second (and burst) a bridge may send its agent, per reason
# class: OVS queues the rest per port and drops what overflows.  The agent
# takes packet-ins only for packets to an EIP too big for the tunnel (TCP
# never: its MSS is clamped); the limit keeps a flood of them from starving
# the OpenFlow channel the agent programs the switch over.
PACKET_IN_RATE, PACKET_IN_BURST = 1000, 250


def ensure_bridge(api, name: str, *, datapath_type: str = "netdev",
                  controller: str | None = None,
                  protocols=("OpenFlow13", "OpenFlow14"), fail_mode: str = "secure",
                  datapath_id: str | None = None, external_ids: dict | None = None) -> None:
    dpid = datapath_id or globals()["datapath_id"](name)
    with api.transaction(check_error=True) as txn:
        txn.add(api.add_br(name, may_exist=True, datapath_type=datapath_type))
        txn.add(api.db_set("Bridge", name, ("fail_mode", fail_mode), ("protocols", list(protocols)),
                           ("datapath_type", datapath_type),
                           ("other_config", {"datapath-id": dpid, "disable-in-band": "true"}),
                           ("external_ids", dict(external_ids or {}))))
        if controller:
            txn.add(api.set_controller(name, [controller]))
        else:
            txn.add(api.del_controller(name))
    if controller:
        rows = api.db_find("Controller", ("target", "=", controller)).execute(check_error=True)
        with api.transaction(check_error=True) as txn:
            for row in rows:
                txn.add(api.db_set("Controller", row["_uuid"], ("controller_rate_limit", PACKET_IN_RATE),
                                   ("controller_burst_limit", PACKET_IN_BURST)))


def ensure_internal_port(api, bridge: str, name: str, ofport_request: int | None = None) -> None:
    attrs = {"type": "internal"}
    if ofport_request:
        attrs["ofport_request"] = ofport_request
    with api.transaction(check_error=True) as txn:
        txn.add(api.add_port(bridge, name, may_exist=True))
        txn.add(api.db_set("Interface", name, *attrs.items()))


def ensure_patch(api, br_a: str, port_a: str, br_b: str, port_b: str,
                 ofport_a: int | None = None, ofport_b: int | None = None) -> None:
    with api.transaction(check_error=True) as txn:
        for br, port, peer, req in ((br_a, port_a, port_b, ofport_a), (br_b, port_b, port_a, ofport_b)):
            txn.add(api.add_port(br, port, may_exist=True))
            attrs = [("type", "patch"), ("options", {"peer": peer})]
            if req:
                attrs.append(("ofport_request", req))
            txn.add(api.db_set("Interface", port, *attrs))


def ensure_uplink_port(api, bridge: str, nic: str, ofport_request: int | None = None) -> None:
    with api.transaction(check_error=True) as txn:
        txn.add(api.add_port(bridge, nic, may_exist=True))
        if ofport_request:
            txn.add(api.db_set("Interface", nic, ("ofport_request", ofport_request)))


def tunnel_port_name(peer: str, prefix: str = TUNNEL_PREFIX) -> str:
    """The port of one peer; see :func:`tunnel_port_names` (which also settles
    a collision between two hashed names)."""
    return tunnel_port_names([peer], prefix)[peer]


_HASH_ALPHABET = "ABCDEFGHIJKLMNOPQRSTUVWXYZ"


def _hashed_name(peer: str, prefix: str, salt: int) -> str:
    """``prefix`` + 11 capital letters (about 52 bits) from a hash of the peer
    name.  Node names are lowercase, so no hashed name is ever another
    peer's readable one, nor the flow port's."""
    n = int.from_bytes(hashlib.sha256(f"{salt}:{peer}".encode()).digest()[:8], "big")
    letters = []
    for _ in range(IFNAMSIZ - len(prefix)):
        n, r = divmod(n, len(_HASH_ALPHABET))
        letters.append(_HASH_ALPHABET[r])
    return prefix + "".join(letters)


def tunnel_port_names(peers, prefix: str = TUNNEL_PREFIX, flow_port: str = FLOW_PORT) -> dict[str, str]:
    """Peer -> tunnel port name, unique by construction within ``peers`` and
    never the flow port's name.

    ``gnv-<peer>`` when that fits an interface name (15 bytes), is not the flow
    port (a node named ``flow``) and the peer name is lowercase, as node names
    are; otherwise ``gnv-`` and 11 capital letters from a hash of the name.
    Readable and hashed names cannot meet (lowercase vs capitals); two hashed
    names that collide (about 2^-52 per pair) are told apart by the peer order:
    the first by name keeps its hash, the next takes the hash of a salted name.
    """
    out: dict[str, str] = {}
    hashed = []
    for peer in sorted(set(peers)):
        readable = f"{prefix}{peer}"
        if len(readable.encode()) <= IFNAMSIZ and readable != flow_port and peer == peer.lower() \
                and "/" not in peer and peer.isprintable() and " " not in peer:
            out[peer] = readable
        else:
            hashed.append(peer)
    taken = set(out.values()) | {flow_port}
    for peer in hashed:
        salt = 0
        while (name := _hashed_name(peer, prefix, salt)) in taken:
            salt += 1
        out[peer] = name
        taken.add(name)
    return out


def sync_tunnels(api, bridge: str, peers: dict[str, str], *, prefix: str = TUNNEL_PREFIX,
                 flow_port: str = FLOW_PORT, bfd: dict | None = None,
                 flow_ofport_request: int | None = None) -> dict[str, str]:
    """One Geneve port per peer (fixed ``remote_ip``, ``key=flow``), one
    flow-based port, nothing else with ``prefix``.  Returns peer -> port name."""
    names = tunnel_port_names(peers, prefix, flow_port)
    wanted = {names[peer]: (peer, ip) for peer, ip in peers.items()}
    have = iface_columns(api, bridge, ("type", "options", "bfd", "external_ids", "ofport_request"))
    existing = {p for p in have if p.startswith(prefix)}
    cmds = []
    flow_attrs = [("type", "geneve"), ("options", {"remote_ip": "flow", "key": "flow"})]
    if flow_ofport_request:
        flow_attrs.append(("ofport_request", flow_ofport_request))
    if not _holds(have.get(flow_port), flow_attrs):
        cmds += [api.add_port(bridge, flow_port, may_exist=True), api.db_set("Interface", flow_port, *flow_attrs)]
    for port, (peer, ip) in sorted(wanted.items()):
        attrs = [("type", "geneve"), ("options", {"remote_ip": ip, "key": "flow"}),
                 ("external_ids", {"sdn-egress-peer": peer})]
        cur = have.get(port)
        if _holds(cur, attrs) and dict(cur["bfd"]) == dict(bfd or {}):
            continue  # as wanted: not written again (a gateway has thousands of ports)
        cmds.append(api.add_port(bridge, port, may_exist=True))
        # db_set merges a map into what the column has: without the clear
        # a key dropped from ``bfd`` (cpath_down after a rejoin) stayed.
        if cur is not None:  # (a port new in this transaction has no column to clear)
            cmds.append(api.db_clear("Interface", port, "bfd"))
        cmds.append(api.db_set("Interface", port, *attrs, ("bfd", dict(bfd or {}))))
    for port in sorted(existing - set(wanted) - {flow_port}):
        cmds.append(api.del_port(port, bridge=bridge, if_exists=True))
    if cmds:
        with api.transaction(check_error=True) as txn:
            for c in cmds:
                txn.add(c)
    return {peer: port for port, (peer, _) in wanted.items()}


def _holds(row: dict | None, attrs) -> bool:
    """Whether an interface's columns already hold ``attrs`` as db_set would
    leave them (a map column: those keys with those values)."""
    if row is None:
        return False
    for column, value in attrs:
        cur = row[column]
        if isinstance(value, dict):
            if any(dict(cur).get(k) != v for k, v in value.items()):
                return False
        elif (cur[0] if isinstance(cur, list) and cur else cur) != value:
            return False
    return True


@functools.lru_cache(maxsize=None)
def _iface_column_command():
    from ovsdbapp.backend.ovs_idl import command, idlutils

    class IfaceColumn(command.ReadOnlyCommand):
        def __init__(self, api, bridge: str, columns: tuple[str, ...]):
            super().__init__(api)
            self.bridge, self.columns = bridge, columns

        def run_idl(self, txn):
            br = idlutils.row_by_value(self.api.idl, "Bridge", "name", self.bridge)
            self.result = {i.name: {c: getattr(i, c) for c in self.columns}
                           for p in br.ports if p.name != self.bridge for i in p.interfaces}
    return IfaceColumn


def iface_columns(api, bridge: str, columns: tuple[str, ...]) -> dict[str, dict]:
    """Interface name -> {column: value}, for every interface of ``bridge``
    but the bridge's own: one read of the IDL's replica, in its thread (one
    command, not one per interface: at 1,000 tunnel ports one command each
    cost ~120 ms a read)."""
    return _iface_column_command()(api, bridge, tuple(columns)).execute(check_error=True)


def iface_column(api, bridge: str, column: str) -> dict:
    """Interface name -> the value of one of its columns (:func:`iface_columns`)."""
    return {name: row[column] for name, row in iface_columns(api, bridge, (column,)).items()}


def ofports(api, bridge: str, timeout: float = 10.0) -> dict[str, int]:
    """Port name -> OpenFlow port number, once vswitchd has assigned them all."""
    deadline = time.monotonic() + timeout
    while True:
        result, missing = {}, []
        for name, ofport in iface_column(api, bridge, "ofport").items():
            if isinstance(ofport, list):
                ofport = ofport[0] if ofport else None
            if ofport is None or ofport < 0:
                missing.append(name)
            else:
                result[name] = ofport
        if not missing:
            return result
        if time.monotonic() > deadline:
            raise OvsdbError(f"{bridge}: ports without an OpenFlow number after {timeout:.0f}s: "
                             f"{', '.join(missing)}")
        time.sleep(0.05)


def iface_mtu(api, name: str) -> int | None:
    """The MTU Open vSwitch reports for an interface (None: not known)."""
    mtu = api.db_get("Interface", name, "mtu").execute(check_error=True)
    if isinstance(mtu, list):
        mtu = mtu[0] if mtu else None
    return int(mtu) if mtu else None


def iface_mac(api, name: str, timeout: float = 10.0) -> str:
    deadline = time.monotonic() + timeout
    while True:
        mac = api.db_get("Interface", name, "mac_in_use").execute(check_error=True)
        if isinstance(mac, list):
            mac = mac[0] if mac else None
        if mac:
            return mac
        if time.monotonic() > deadline:
            raise OvsdbError(f"interface {name} has no MAC after {timeout:.0f}s")
        time.sleep(0.05)


def bridge_dpid(api, bridge: str) -> int:
    dpid = api.db_get("Bridge", bridge, "datapath_id").execute(check_error=True)
    if isinstance(dpid, list):
        dpid = dpid[0] if dpid else None
    if not dpid:
        raise OvsdbError(f"bridge {bridge} has no datapath_id yet")
    return int(dpid, 16)


def bfd_status(api, bridge: str) -> dict[str, dict]:
    """Interface name -> its ``bfd_status``, for the interfaces that have one."""
    return {name: dict(status) for name, status in iface_column(api, bridge, "bfd_status").items() if status}


def teardown(api, bridges) -> None:
    with api.transaction(check_error=True) as txn:
        for br in bridges:
            txn.add(api.del_br(br, if_exists=True))

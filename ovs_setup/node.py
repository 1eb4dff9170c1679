"""A whole node's bridges in one call: ``br-int`` (egw0, Geneve, patch) and,
with an uplink, ``br-ex`` (the NIC, patch, the node IP moved onto it)."""
from __future__ import annotations

import os
from dataclasses import dataclass, field

from ovs_setup import ovsdb, uplink as uplink_mod

EGW_OFPORT, FLOW_TUNNEL_OFPORT, INT_PATCH_OFPORT = 1, 2, 3
UPLINK_OFPORT, EX_PATCH_OFPORT = 1, 2

AGENT_SOCKET = "sdn-egress.sock"


def agent_socket(db_target: str) -> str:
    """Where the agent listens for OpenFlow: ``sdn-egress.sock`` beside the
    OVSDB socket, i.e. in the OVS run directory, the only directory whose
    ``unix:`` controller targets ovs-vswitchd connects to.  A Unix socket,
    not TCP: no process without the right to that file can pose as a switch
    or as the controller."""
    kind, _, path = db_target.partition(":")
    if kind != "unix" or not path:
        raise ValueError(f"OVSDB target {db_target!r} is not unix:PATH: name the agent's socket "
                         "explicitly (--controller unix:PATH / --listen punix:PATH)")
    return os.path.join(os.path.dirname(os.path.abspath(path)), AGENT_SOCKET)


@dataclass
class NodeBridges:
    db_target: str
    datapath_type: str = "netdev"
    controller: str | None = field(default=None)  # default: unix:<agent_socket(db_target)>
    uplink: str | None = None
    br_int: str = "br-int"
    br_ex: str = "br-ex"
    egw: str = "egw0"

    def __post_init__(self):
        if self.controller is None and self.db_target.startswith("unix:"):
            self.controller = f"unix:{agent_socket(self.db_target)}"


@dataclass
class NodeSetup:
    ofports_int: dict
    ofports_ex: dict
    egw_mac: str
    brex_mac: str | None


def setup_node(cfg: NodeBridges, api=None) -> NodeSetup:
    """Idempotent: a second run changes nothing."""
    from pyroute2 import IPRoute

    if not cfg.controller:
        agent_socket(cfg.db_target)  # raises: says how to name the socket

    if cfg.uplink:
        with IPRoute() as ipr:  # refuse before changing anything
            if not ipr.link_lookup(ifname=cfg.uplink):
                raise uplink_mod.UplinkError(
                    f"uplink: interface {cfg.uplink} does not exist in this network namespace")
    api = api or ovsdb.connect(cfg.db_target)
    ovsdb.ensure_bridge(api, cfg.br_int, datapath_type=cfg.datapath_type, controller=cfg.controller,
                        external_ids={"sdn-egress-role": "int"})
    ovsdb.ensure_internal_port(api, cfg.br_int, cfg.egw, EGW_OFPORT)
    if not _has_tunnels(api, cfg.br_int):  # the agent owns the per-peer ports from then on
        ovsdb.sync_tunnels(api, cfg.br_int, {}, flow_ofport_request=FLOW_TUNNEL_OFPORT)
    if cfg.uplink:
        ovsdb.ensure_bridge(api, cfg.br_ex, datapath_type=cfg.datapath_type, controller=cfg.controller,
                            external_ids={"sdn-egress-role": "ex"})
        ovsdb.ensure_uplink_port(api, cfg.br_ex, cfg.uplink, UPLINK_OFPORT)
        ovsdb.ensure_patch(api, cfg.br_int, "patch-int-ex", cfg.br_ex, "patch-ex-int",
                           INT_PATCH_OFPORT, EX_PATCH_OFPORT)
    ports_int = ovsdb.ofports(api, cfg.br_int)
    ports_ex = ovsdb.ofports(api, cfg.br_ex) if cfg.uplink else {}
    with IPRoute() as ipr:
        idx = ipr.link_lookup(ifname=cfg.egw)
        if idx:
            ipr.link("set", index=idx[0], state="up")
    if cfg.uplink:
        uplink_mod.move_uplink(api, cfg.uplink, cfg.br_ex)
    uplink_mod.tx_offload_off(cfg.egw)
    return NodeSetup(ports_int, ports_ex, ovsdb.iface_mac(api, cfg.egw),
                     ovsdb.iface_mac(api, cfg.br_ex) if cfg.uplink else None)


def _has_tunnels(api, bridge: str) -> bool:
    return ovsdb.FLOW_PORT in api.list_ports(bridge).execute(check_error=True)


def teardown_node(cfg: NodeBridges, api=None) -> None:
    api = api or ovsdb.connect(cfg.db_target)
    if cfg.uplink and api.br_exists(cfg.br_ex).execute(check_error=True):
        uplink_mod.restore_uplink(api, cfg.uplink, cfg.br_ex)
    ovsdb.teardown(api, [cfg.br_int, cfg.br_ex])

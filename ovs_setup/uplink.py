"""Move a NIC's addresses and routes onto an OVS bridge's internal port and
back (pyroute2, in the current network namespace).

The userspace datapath's native tunnelling needs the underlay address on an
OVS bridge: the node IP moves from the NIC to ``br-ex``.  What was moved is
recorded in the bridge's ``external_ids`` so teardown can put it back.
"""
from __future__ import annotations

import json
import socket
import subprocess

RECORD_KEY = "sdn-egress-uplink"


class UplinkError(RuntimeError):
    pass


def _addresses(ipr, idx: int) -> list[tuple[str, int, int]]:
    out = []
    for family in (socket.AF_INET, socket.AF_INET6):
        for a in ipr.get_addr(family=family, index=idx):
            if family == socket.AF_INET6 and a["scope"] != 0:
                continue  # link-local stays with its link
            out.append((a.get_attr("IFA_ADDRESS"), a["prefixlen"], family))
    return out


def _routes(ipr, idx: int) -> list[dict]:
    out = []
    for family in (socket.AF_INET, socket.AF_INET6):
        for r in ipr.get_routes(family=family, table=254, oif=idx):
            if r["proto"] == 2:  # kernel: comes back with the address
                continue
            if family == socket.AF_INET6 and (r.get_attr("RTA_DST") or "").startswith("fe80"):
                continue
            out.append({"family": family, "dst": r.get_attr("RTA_DST"), "dst_len": r["dst_len"],
                        "gateway": r.get_attr("RTA_GATEWAY"), "priority": r.get_attr("RTA_PRIORITY")})
    return out


def _index(ipr, name: str) -> int:
    idx = ipr.link_lookup(ifname=name)
    if not idx:
        raise UplinkError(f"interface {name} does not exist in this network namespace")
    return idx[0]


def _move(ipr, src: int, dst: int, addrs, routes) -> None:
    ipr.link("set", index=dst, state="up")
    for addr, plen, _family in addrs:
        ipr.addr("del", index=src, address=addr, prefixlen=plen)
        try:
            ipr.addr("add", index=dst, address=addr, prefixlen=plen)
        except Exception as exc:  # noqa: BLE001 - already there is fine
            if "File exists" not in str(exc):
                raise
    for r in routes:
        kw = {"family": r["family"], "oif": dst, "dst_len": r["dst_len"]}
        if r["dst"]:
            kw["dst"] = r["dst"]
        if r["gateway"]:
            kw["gateway"] = r["gateway"]
        if r["priority"] is not None:
            kw["priority"] = r["priority"]
        ipr.route("replace", **kw)


def tx_offload_off(nic: str) -> None:
    """The userspace datapath mishandles partial checksums: TCP breaks after NAT."""
    subprocess.run(["ethtool", "-K", nic, "tx", "off"], capture_output=True)


def _recorded(api, bridge: str) -> str | None:
    ids = api.db_get("Bridge", bridge, "external_ids").execute(check_error=True) or {}
    return ids.get(RECORD_KEY)


def move_uplink(api, nic: str, bridge: str) -> dict:
    """Move ``nic``'s global addresses and routes to ``bridge``; idempotent."""
    from pyroute2 import IPRoute

    recorded = _recorded(api, bridge)
    with IPRoute() as ipr:
        src, dst = _index(ipr, nic), _index(ipr, bridge)
        ipr.link("set", index=src, state="up")
        addrs, routes = _addresses(ipr, src), _routes(ipr, src)
        if not addrs and recorded:
            return json.loads(recorded)  # moved before
        _move(ipr, src, dst, addrs, routes)
    record = {"nic": nic, "addresses": addrs, "routes": routes}
    api.br_set_external_id(bridge, RECORD_KEY, json.dumps(record)).execute(check_error=True)
    tx_offload_off(nic)
    return record


def restore_uplink(api, nic: str, bridge: str) -> None:
    from pyroute2 import IPRoute

    recorded = _recorded(api, bridge)
    if not recorded:
        return
    record = json.loads(recorded)
    with IPRoute() as ipr:
        src = _index(ipr, nic)
        dsts = ipr.link_lookup(ifname=bridge)
        if dsts:
            _move(ipr, dsts[0], src, [tuple(a) for a in record["addresses"]], [])
        else:
            ipr.link("set", index=src, state="up")
            for addr, plen, _family in record["addresses"]:
                ipr.addr("replace", index=src, address=addr, prefixlen=plen)
        for r in record["routes"]:
            kw = {k: v for k, v in r.items() if v is not None}
            kw["oif"] = src
            ipr.route("replace", **kw)

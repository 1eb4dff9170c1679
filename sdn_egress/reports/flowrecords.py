"""The agent's record of the flows it wants (``STATUS/nodes/NODE.flows.json``)
and the parsing of live ``ovs-ofctl dump-flows`` output, so the two can be
compared flow by flow: same table, priority and match fields, in any order."""
from __future__ import annotations

import json
import os
import re

from flows import cookie as C
from sdn_egress.fileio import write_json_atomic
from flows.render import describe, to_ofctl
from flows.tables import table_names

_SKIP = ("cookie=", "duration=", "n_packets=", "n_bytes=", "idle_age=", "hard_age=", "idle_timeout=",
         "hard_timeout=", "reset_counts", "send_flow_rem", "importance=")


# ovs-ofctl prints "udp" for "ip,nw_proto=17", "tp_dst" for udp_dst and
# tcp_dst, "icmp_type" for icmpv6_type: both sides are read in the long form.
_PROTOCOLS = {"tcp": ("ip", 6), "udp": ("ip", 17), "icmp": ("ip", 1), "sctp": ("ip", 132),
              "tcp6": ("ipv6", 6), "udp6": ("ipv6", 17), "icmp6": ("ipv6", 58), "sctp6": ("ipv6", 132)}
_NAMES = {"tcp_dst": "tp_dst", "udp_dst": "tp_dst", "sctp_dst": "tp_dst", "tcp_src": "tp_src",
          "udp_src": "tp_src", "sctp_src": "tp_src", "icmpv6_type": "icmp_type", "icmpv6_code": "icmp_code",
          "ip_proto": "nw_proto"}


def flow_key(table_id: int, priority: int, match_tokens) -> tuple:
    return (int(table_id), int(priority), frozenset(match_tokens))


def parse_ofctl(text: str) -> dict:
    """One flow in ovs-ofctl syntax (a dump line or ``to_ofctl`` output) ->
    ``{table, priority, cookie, match (tokens), actions, n_packets, n_bytes}``."""
    line = text.strip()
    head, _, actions = line.partition("actions=")
    out = {"table": 0, "priority": 32768, "cookie": 0, "match": [], "actions": actions.strip(),
           "n_packets": None, "n_bytes": None}
    for tok in re.split(r"[,\s]+", head):
        if not tok:
            continue
        if tok.startswith("table="):
            out["table"] = int(tok[6:])
        elif tok.startswith("priority="):
            out["priority"] = int(tok[9:])
        elif tok.startswith("cookie="):
            out["cookie"] = int(tok[7:], 16)
        elif tok.startswith("n_packets="):
            out["n_packets"] = int(tok[10:])
        elif tok.startswith("n_bytes="):
            out["n_bytes"] = int(tok[8:])
        elif tok.startswith(_SKIP):
            continue
        elif tok in _PROTOCOLS:
            eth, proto = _PROTOCOLS[tok]
            out["match"] += [eth, f"nw_proto={proto}"]
        else:
            out["match"].append(_normal(tok))
    return out


def _normal(tok: str) -> str:
    """``tun_id=0`` and ``tun_id=0x0`` are the same match: numbers compare as
    numbers; a field ovs-ofctl prints by another name goes by that name."""
    name, eq, value = tok.partition("=")
    name = _NAMES.get(name, name)
    tok = f"{name}{eq}{value}"
    if eq and "/" not in value:
        try:
            return f"{name}={int(value, 0)}"
        except ValueError:
            pass
    return tok


def parse_dump(text: str) -> list[dict]:
    return [parse_ofctl(line) for line in text.splitlines() if "actions=" in line]


def record_desired(status_dir: str, node: str, desired: dict, view) -> None:
    """Write what the agent wants on each bridge, with the names behind every
    cookie, for ``sdn-egress flows`` to compare against the switch."""
    legend = C.legend(view)
    bridges = {}
    for bridge, flows in desired.items():
        entries = []
        for f in sorted(flows, key=lambda f: (f.table, -f.priority, str(f.match))):
            ck = C.decode(f.cookie)
            entries.append({
                "table": f.table, "priority": f.priority, "cookie": f"{f.cookie:#x}",
                "feature": ck.feature.name if isinstance(ck.feature, C.Feature) else str(ck.feature),
                "owner": legend.explain(ck), "ofctl": to_ofctl(f), "describe": describe(f, legend)})
        bridges[bridge] = {"tables": table_names(bridge), "flows": entries}
    owners = {}
    for b in bridges.values():
        for e in b["flows"]:
            owners[e["cookie"]] = e["owner"]
    write_json_atomic(os.path.join(status_dir, "nodes", f"{node}.flows.json"),
                      {"node": node, "bridges": bridges, "owners": owners})


def load_desired(status_dir: str, node: str) -> dict:
    with open(os.path.join(status_dir, "nodes", f"{node}.flows.json")) as fh:
        return json.load(fh)

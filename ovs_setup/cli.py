"""``sdn-egress ovs setup | teardown | show``: deploy, remove or inspect a
node's bridges through OVSDB."""
from __future__ import annotations

import argparse
import json
import sys


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--db", default="unix:/var/run/openvswitch/db.sock", help="OVSDB target")
    sub = parser.add_subparsers(dest="ovs_command", metavar="ACTION")
    sub.required = True
    for name, help_ in (("setup", "create or verify br-int (and br-ex with --uplink); idempotent"),
                        ("teardown", "move the uplink back and delete the bridges"),
                        ("show", "bridges, ports, tunnels, controller state")):
        p = sub.add_parser(name, help=help_, description=help_)
        if name != "show":
            p.add_argument("--uplink", metavar="NIC", help="the uplink NIC to put on br-ex")
        if name == "setup":
            p.add_argument("--datapath-type", choices=("netdev", "system"), default="netdev")
            p.add_argument("--controller", metavar="unix:PATH",
                           help="OpenFlow controller target, the agent's socket (default: "
                                "unix:DIR/sdn-egress.sock, DIR the --db socket's directory, the OVS run "
                                "directory: ovs-vswitchd connects unix: targets only there)")
        if name == "show":
            p.add_argument("--json", action="store_true")


def show(api) -> dict:
    out = {}
    for br in sorted(api.list_br().execute(check_error=True)):
        bridge = {"datapath_type": api.db_get("Bridge", br, "datapath_type").execute(check_error=True),
                  "fail_mode": api.db_get("Bridge", br, "fail_mode").execute(check_error=True),
                  "controllers": [], "ports": {}}
        ctrl = api.get_controller(br).execute(check_error=True)
        conns = {c["target"]: c["is_connected"]
                 for c in api.db_find("Controller", columns=["target", "is_connected"]).execute(check_error=True)}
        bridge["controllers"] = [{"target": t, "connected": bool(conns.get(t))} for t in ctrl]
        for iface in sorted(api.list_ifaces(br).execute(check_error=True)):
            row = api.db_find("Interface", ("name", "=", iface),
                              columns=["type", "ofport", "options", "bfd_status"]).execute(check_error=True)[0]
            ofport = row["ofport"][0] if isinstance(row["ofport"], list) and row["ofport"] else row["ofport"]
            bridge["ports"][iface] = {"type": row["type"] or "system", "ofport": ofport,
                                      "options": dict(row["options"]), "bfd": dict(row["bfd_status"])}
        out[br] = bridge
    return out


def run(args: argparse.Namespace) -> int:
    from ovs_setup import ovsdb
    from ovs_setup.node import NodeBridges, setup_node, teardown_node
    from ovs_setup.uplink import UplinkError

    try:
        if args.ovs_command == "setup":
            cfg = NodeBridges(db_target=args.db, datapath_type=args.datapath_type,
                              controller=args.controller, uplink=args.uplink)
            result = setup_node(cfg)
            print(f"br-int ports: {result.ofports_int}")
            if args.uplink:
                print(f"br-ex ports: {result.ofports_ex} (uplink {args.uplink}, node address moved to br-ex)")
        elif args.ovs_command == "teardown":
            teardown_node(NodeBridges(db_target=args.db, uplink=args.uplink))
            print("bridges removed" + (f", addresses moved back to {args.uplink}" if args.uplink else ""))
        else:
            data = show(ovsdb.connect(args.db))
            if args.json:
                json.dump(data, sys.stdout, indent=2, sort_keys=True)
                print()
            else:
                for br, b in data.items():
                    ctrl = ", ".join(f"{c['target']} ({'connected' if c['connected'] else 'not connected'})"
                                     for c in b["controllers"]) or "none"
                    print(f"{br}: datapath {b['datapath_type'] or 'system'}, fail_mode {b['fail_mode'] or '-'}, "
                          f"controller {ctrl}")
                    for name, p in b["ports"].items():
                        opts = ",".join(f"{k}={v}" for k, v in sorted(p["options"].items()))
                        bfd = f" bfd={p['bfd'].get('state')}" if p["bfd"] else ""
                        print(f"  {p['ofport']:>5} {name:<15} {p['type']:<8} {opts}{bfd}")
        return 0
    except (ovsdb.OvsdbError, UplinkError) as exc:
        print(f"sdn-egress ovs {args.ovs_command}: {exc}", file=sys.stderr)
        return 1
    except (RuntimeError, ValueError) as exc:
        print(f"sdn-egress ovs {args.ovs_command}: {exc}", file=sys.stderr)
        return 1

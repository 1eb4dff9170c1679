"""The ``sdn-egress`` command.

Each sub-command lives in its own module, which provides ``add_arguments(parser)``
and ``run(args) -> int``; this file only wires them up, importing a module only
when its command runs (so ``sdn-egress lab`` never imports os-ken).
"""
from __future__ import annotations

import argparse
import importlib
import logging
import sys
import warnings

COMMANDS = {
    # name: (module, help)
    "ovs": ("ovs_setup.cli", "deploy, inspect or remove a node's OVS bridges"),
    "lab": ("sdn_egress.lab.cli", "a multi-node cluster in network namespaces"),
    "agent": ("sdn_egress.agent.main", "run the per-node agent (os-ken)"),
    "controller": ("sdn_egress.controller", "run the controller (allocation, gateway election)"),
    "validate": ("sdn_egress.commands.validate", "check manifests offline against the CRDs and the controller's rules"),
    "demo": ("sdn_egress.commands.demo", "lab up, apply the example policy, show what the external host saw"),
    "flows": ("sdn_egress.debug.flows", "a node's flows by table, owner and counters, with drift"),
    "status": ("sdn_egress.debug.status", "policies, gateways, BFD, agents, errors"),
    "trace": ("sdn_egress.debug.trace", "why a pod's packet leaves with the address it does"),
    "move": ("sdn_egress.commands.move", "planned move of an egress IP to another of its gateway nodes"),
}


def build_parser(selected: str | None = None) -> argparse.ArgumentParser:
    """The full parser, or (``selected``) one where only that command's module
    is imported: a command never depends on another command's imports."""
    parser = argparse.ArgumentParser(prog="sdn-egress", description=__doc__.splitlines()[0])
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    sub.required = True
    for name, (module, help_) in COMMANDS.items():
        p = sub.add_parser(name, help=help_, description=help_)
        p.set_defaults(_module=module)
        if selected is None or selected == name:
            importlib.import_module(module).add_arguments(p)
    return parser


def main(argv: list[str] | None = None) -> int:
    # The ovs library imports eventlet when it is installed (os-ken depends on
    # it) and eventlet warns on import; nothing here uses eventlet.
    warnings.filterwarnings("ignore", message=r"\s*Eventlet is deprecated")
    argv = sys.argv[1:] if argv is None else argv
    selected = next((a for a in argv if not a.startswith("-")), None)
    args = build_parser(selected if selected in COMMANDS else None).parse_args(argv)
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.INFO,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    try:
        return int(importlib.import_module(args._module).run(args) or 0)
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())

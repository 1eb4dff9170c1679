"""The iptables (ip6tables) side of steering: the NAT bypass that keeps the
primary CNI's masquerade off packets leaving through ``egw0``, and the clamp of
steered TCP's MSS to the tunnel MTU.  Both are idempotent: a pass that finds
them in place changes nothing."""
from __future__ import annotations

import logging
import subprocess

# Logged under routing's name, as before these moved here from routing.py.
LOG = logging.getLogger("sdn_egress.agent.routing")

NAT_CHAIN = "SDN-EGRESS-POSTROUTING"
MSS_CHAIN = "SDN-EGRESS-MSS"
MSS_COMMENT = "sdn-egress: clamp the MSS of steered TCP to the tunnel MTU"
TCP_IP_HEADERS = {4: 40, 6: 60}  # IP + TCP headers without options: MSS = MTU - this


def ensure_nat_bypass(egw: str, command: str = "iptables") -> None:
    """Packets leaving through ``egw`` must keep the pod's source address: the
    gateway SNATs them to the EIP.  Our chain, jumped to first from nat
    POSTROUTING, ACCEPTs them: that ends nat processing before the CNI's
    masquerade rules (a RETURN would fall through to them)."""
    def ipt(*args: str, check: bool = True) -> subprocess.CompletedProcess:
        return subprocess.run([command, "-w", "-t", "nat", *args], capture_output=True,
                              text=True, check=check)

    if ipt("-nL", NAT_CHAIN, check=False).returncode != 0:
        ipt("-N", NAT_CHAIN)
    if ipt("-C", NAT_CHAIN, "-o", egw, "-j", "ACCEPT", check=False).returncode != 0:
        ipt("-A", NAT_CHAIN, "-o", egw, "-j", "ACCEPT")
    jump = ["POSTROUTING", "-m", "comment", "--comment", "sdn-egress: keep pod source for egw0",
            "-j", NAT_CHAIN]
    if ipt("-C", *jump, check=False).returncode != 0:
        ipt("-I", *jump)


def ensure_mss_clamp(egw: str, mss: int, command: str = "iptables") -> None:
    """TCP SYNs leaving through ``egw`` (a pod's) and arriving from it (the
    SYN-ACK of an outside server) announce at most ``mss``: neither end
    then sends a segment the tunnel cannot carry.  Our chain in mangle
    FORWARD holds exactly the two rules for the current MSS."""
    def ipt(*args: str, check: bool = True) -> subprocess.CompletedProcess:
        return subprocess.run([command, "-w", "-t", "mangle", *args], capture_output=True,
                              text=True, check=check)

    want = [[direction, egw, "-p", "tcp", "--tcp-flags", "SYN,RST", "SYN",
             "-j", "TCPMSS", "--set-mss", str(mss)] for direction in ("-o", "-i")]
    if ipt("-nL", MSS_CHAIN, check=False).returncode != 0:
        ipt("-N", MSS_CHAIN)
    listed = ipt("-S", MSS_CHAIN).stdout.splitlines()
    have = [line.split()[2:] for line in listed if line.startswith(f"-A {MSS_CHAIN} ")]
    if [_mss_rule_key(h) for h in have] != [_mss_rule_key(w) for w in want]:
        ipt("-F", MSS_CHAIN)
        for rule in want:
            ipt("-A", MSS_CHAIN, *rule)
        LOG.info("routing: TCP MSS through %s clamped to %d (%s)", egw, mss, command)
    jump = ["FORWARD", "-m", "comment", "--comment", MSS_COMMENT, "-j", MSS_CHAIN]
    if ipt("-C", *jump, check=False).returncode != 0:
        ipt("-I", *jump)


def _mss_rule_key(words: list[str]) -> tuple:
    """What decides a clamp rule, as ``iptables -S`` prints it or we write it:
    direction, interface and the MSS value."""
    try:
        return (words[0], words[1], words[words.index("--set-mss") + 1])
    except (ValueError, IndexError):
        return tuple(words)

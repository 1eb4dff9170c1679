"""The host side of steering: policy-routing rules that send selected pods'
packets into ``egw0`` (pyroute2), and the NAT bypass that keeps the primary
CNI's masquerade off them (iptables).

Only what a :class:`flows.view.Steer` asks for is installed; everything else in
our table and at our rule priority is removed, so a deleted policy leaves no
rule behind.  Cluster traffic never matches a rule: the view builder has already
taken pod, node and service CIDRs out of every destination.
"""
from __future__ import annotations

import logging
import socket
import subprocess
from dataclasses import dataclass

import netaddr

from flows.view import GW_MAC, GW_NEXTHOP_V4, Steer

LOG = logging.getLogger(__name__)

STEER_TABLE = 7100  # routing table holding the route into egw0
STEER_PRIORITY = 7100  # rule priority: before main (32766), after local (0)
NAT_CHAIN = "SDN-EGRESS-POSTROUTING"
MSS_CHAIN = "SDN-EGRESS-MSS"
MSS_COMMENT = "sdn-egress: clamp the MSS of steered TCP to the tunnel MTU"
TCP_IP_HEADERS = {4: 40, 6: 60}  # IP + TCP headers without options: MSS = MTU - this
RTNH_F_ONLINK = 4


@dataclass(frozen=True, order=True)
class Rule:
    src: netaddr.IPNetwork
    dst: netaddr.IPNetwork

    def __str__(self) -> str:
        return f"from {self.src} to {self.dst} lookup {STEER_TABLE}"


def desired_rules(steers: tuple[Steer, ...]) -> set[Rule]:
    return {Rule(netaddr.IPNetwork(f"{s.pod_ip}/32"), s.dest)
            for s in steers if s.pod_ip.version == 4}


def current_rules(ipr) -> set[Rule]:
    rules = set()
    for msg in ipr.get_rules(family=socket.AF_INET):
        if msg.get_attr("FRA_TABLE") != STEER_TABLE or msg.get_attr("FRA_PRIORITY") != STEER_PRIORITY:
            continue
        src = msg.get_attr("FRA_SRC") or "0.0.0.0"
        dst = msg.get_attr("FRA_DST") or "0.0.0.0"
        rules.add(Rule(netaddr.IPNetwork(f"{src}/{msg['src_len']}"),
                       netaddr.IPNetwork(f"{dst}/{msg['dst_len']}")))
    return rules


def _rule(ipr, cmd: str, rule: Rule) -> None:
    ipr.rule(cmd, family=socket.AF_INET, table=STEER_TABLE, priority=STEER_PRIORITY,
             src=str(rule.src.ip), src_len=rule.src.prefixlen,
             dst=str(rule.dst.network), dst_len=rule.dst.prefixlen)


PROC_SYS_NET = "/proc/sys/net"
RESERVED_PORTS = PROC_SYS_NET + "/ipv4/ip_local_reserved_ports"


class SysctlError(RuntimeError):
    pass


def write_sysctl(path: str, value: str) -> None:
    """One sysctl write; a refusal names the file, the reason and the way
    out (in a container /proc/sys is read-only unless the host's
    /proc/sys/net is mounted writable, see docs/kubernetes.md)."""
    try:
        with open(path, "w") as f:
            f.write(value)
    except OSError as exc:
        raise SysctlError(f"cannot write {value} to {path} ({exc.strerror}): the host's /proc/sys/net must be "
                          "writable for the agent (--proc-sys-net names where it is mounted)") from None


class HostRouting:
    """Keeps the node's kernel steering in line with the view.  ``proc_sys_net``:
    where the host's ``/proc/sys/net`` is (in the DaemonSet a writable hostPath
    mount, the container's own being read-only)."""

    def __init__(self, egw: str = "egw0", proc_sys_net: str = PROC_SYS_NET):
        self.egw = egw
        self.proc_sys_net = proc_sys_net

    def sync(self, steers: tuple[Steer, ...], tunnel_mtu: int) -> tuple[int, int]:
        """Make the rules exactly those the steers ask for; returns (added,
        removed).  The steering route carries ``tunnel_mtu``: the kernel
        answers a DF packet that does not fit with ICMP "fragmentation
        needed" to the pod and fragments the others; the MSS of TCP SYNs in
        both directions through egw0 is clamped to fit."""
        from pyroute2 import IPRoute

        want = desired_rules(steers)
        with IPRoute() as ipr:
            self._ensure_link(ipr, tunnel_mtu)
            have = current_rules(ipr)
            for rule in sorted(have - want):
                _rule(ipr, "del", rule)
                LOG.info("routing: removed rule %s", rule)
            for rule in sorted(want - have):
                _rule(ipr, "add", rule)
                LOG.info("routing: added rule %s", rule)
        self._ensure_nat_bypass()
        self._ensure_mss_clamp(tunnel_mtu - TCP_IP_HEADERS[4])
        return len(want - have), len(have - want)

    def reserve_ports(self, lo: int, hi: int, path: str | None = None) -> bool:
        """Add ``lo-hi`` to the kernel's reserved local ports (never handed
        out as ephemeral ports: the useNodeIP SNAT owns them on this node's
        address).  Keeps what is reserved already; True when it changed."""
        path = path or f"{self.proc_sys_net}/ipv4/ip_local_reserved_ports"
        try:
            with open(path) as f:
                current = f.read().strip()
        except OSError as exc:
            LOG.warning("routing: cannot read %s (%s); ports %d-%d not reserved", path, exc, lo, hi)
            return False
        covered = set()
        for part in filter(None, current.split(",")):
            a, _, b = part.partition("-")
            covered.update(range(int(a), int(b or a) + 1))
        if all(p in covered for p in (lo, hi)) and len(covered & set(range(lo, hi + 1))) == hi - lo + 1:
            return False
        write_sysctl(path, ",".join(filter(None, (current, f"{lo}-{hi}"))))
        LOG.info("routing: reserved local ports %d-%d for the SNAT to this node's address", lo, hi)
        return True

    def _ensure_link(self, ipr, tunnel_mtu: int) -> None:
        idx = ipr.link_lookup(ifname=self.egw)
        if not idx:
            raise RuntimeError(f"interface {self.egw} does not exist (is br-int set up?)")
        idx = idx[0]
        ipr.link("set", index=idx, state="up")
        ipr.neigh("replace", dst=str(GW_NEXTHOP_V4), lladdr=GW_MAC, ifindex=idx,
                  state=0x80)  # NUD_PERMANENT
        # The route's MTU, not egw0's: the host stack holds steered packets to
        # it (ICMP frag-needed to the pod, or fragments), while egw0 itself
        # still takes replies of any size from br-int.
        ipr.route("replace", dst="0.0.0.0/0", gateway=str(GW_NEXTHOP_V4), oif=idx,
                  table=STEER_TABLE, flags=RTNH_F_ONLINK, metrics={"mtu": tunnel_mtu})
        # Replies come back in on egw0 from addresses routed via the uplink:
        # strict reverse-path filtering would drop them.
        for name in (self.egw, "all"):
            path = f"{self.proc_sys_net}/ipv4/conf/{name}/rp_filter"
            with open(path) as f:
                current = f.read().strip()
            # Written only when it differs: a node whose sysctls are already
            # right needs no write (nor a writable /proc/sys).
            if current != "2" and (name == self.egw or current == "1"):
                write_sysctl(path, "2")

    def _ensure_nat_bypass(self) -> None:
        """Packets leaving through egw0 must keep the pod's source address: the
        gateway SNATs them to the EIP.  Our chain, jumped to first from nat
        POSTROUTING, ACCEPTs them: that ends nat processing before the CNI's
        masquerade rules (a RETURN would fall through to them)."""
        def ipt(*args: str, check: bool = True) -> subprocess.CompletedProcess:
            return subprocess.run(["iptables", "-w", "-t", "nat", *args], capture_output=True,
                                  text=True, check=check)

        if ipt("-nL", NAT_CHAIN, check=False).returncode != 0:
            ipt("-N", NAT_CHAIN)
        if ipt("-C", NAT_CHAIN, "-o", self.egw, "-j", "ACCEPT", check=False).returncode != 0:
            ipt("-A", NAT_CHAIN, "-o", self.egw, "-j", "ACCEPT")
        jump = ["POSTROUTING", "-m", "comment", "--comment", "sdn-egress: keep pod source for egw0",
                "-j", NAT_CHAIN]
        if ipt("-C", *jump, check=False).returncode != 0:
            ipt("-I", *jump)

    def _ensure_mss_clamp(self, mss: int) -> None:
        """TCP SYNs leaving through egw0 (a pod's) and arriving from it (the
        SYN-ACK of an outside server) announce at most ``mss``: neither end
        then sends a segment the tunnel cannot carry.  Our chain in mangle
        FORWARD holds exactly the two rules for the current MSS."""
        def ipt(*args: str, check: bool = True) -> subprocess.CompletedProcess:
            return subprocess.run(["iptables", "-w", "-t", "mangle", *args], capture_output=True,
                                  text=True, check=check)

        want = [[direction, self.egw, "-p", "tcp", "--tcp-flags", "SYN,RST", "SYN",
                 "-j", "TCPMSS", "--set-mss", str(mss)] for direction in ("-o", "-i")]
        if ipt("-nL", MSS_CHAIN, check=False).returncode != 0:
            ipt("-N", MSS_CHAIN)
        listed = ipt("-S", MSS_CHAIN).stdout.splitlines()
        have = [line.split()[2:] for line in listed if line.startswith(f"-A {MSS_CHAIN} ")]
        if [_mss_rule_key(h) for h in have] != [_mss_rule_key(w) for w in want]:
            ipt("-F", MSS_CHAIN)
            for rule in want:
                ipt("-A", MSS_CHAIN, *rule)
            LOG.info("routing: TCP MSS through %s clamped to %d", self.egw, mss)
        jump = ["FORWARD", "-m", "comment", "--comment", MSS_COMMENT, "-j", MSS_CHAIN]
        if ipt("-C", *jump, check=False).returncode != 0:
            ipt("-I", *jump)

    def remove_all(self) -> None:
        """Remove every rule, route and NAT bypass the agent made (teardown)."""
        from pyroute2 import IPRoute

        with IPRoute() as ipr:
            for rule in current_rules(ipr):
                _rule(ipr, "del", rule)
            try:
                ipr.route("del", dst="0.0.0.0/0", table=STEER_TABLE)
            except Exception:  # noqa: BLE001 - already gone
                pass
        subprocess.run(["iptables", "-w", "-t", "nat", "-D", "POSTROUTING", "-m", "comment",
                        "--comment", "sdn-egress: keep pod source for egw0", "-j", NAT_CHAIN],
                       capture_output=True)
        subprocess.run(["iptables", "-w", "-t", "nat", "-F", NAT_CHAIN], capture_output=True)
        subprocess.run(["iptables", "-w", "-t", "nat", "-X", NAT_CHAIN], capture_output=True)


def _mss_rule_key(words: list[str]) -> tuple:
    """What decides a clamp rule, as ``iptables -S`` prints it or we write it:
    direction, interface and the MSS value."""
    try:
        return (words[0], words[1], words[words.index("--set-mss") + 1])
    except (ValueError, IndexError):
        return tuple(words)


def address_mtu(ip: str) -> int | None:
    """The MTU of the interface that holds address ``ip`` on this host (None:
    no interface has it)."""
    from pyroute2 import IPRoute

    family = socket.AF_INET6 if ":" in ip else socket.AF_INET
    with IPRoute() as ipr:
        for addr in ipr.get_addr(family=family):
            if addr.get_attr("IFA_ADDRESS") == ip or addr.get_attr("IFA_LOCAL") == ip:
                links = ipr.get_links(addr["index"])
                if links:
                    return links[0].get_attr("IFLA_MTU")
    return None


def resolve_next_hop_mac(dest: str | None, timeout: float = 1.0) -> str | None:
    """The MAC of the next hop the node's routing uses towards ``dest`` (None:
    the default route): the route's gateway, or ``dest`` itself when on-link.
    Triggers ARP resolution when the neighbour is not known yet."""
    from pyroute2 import IPRoute

    with IPRoute() as ipr:
        if dest is None:
            routes = [r for r in ipr.get_routes(family=socket.AF_INET, table=254)
                      if r["dst_len"] == 0 and r.get_attr("RTA_GATEWAY")]
        else:
            routes = ipr.route("get", dst=dest)
        if not routes:
            return None
        route = routes[0]
        hop = route.get_attr("RTA_GATEWAY") or dest
        if hop is None:
            return None
        oif = route.get_attr("RTA_OIF")
        mac = _neigh_mac(ipr, hop, oif)
        if mac:
            return mac
    # Kick ARP: a datagram to the discard port makes the kernel resolve the hop.
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        try:
            s.sendto(b"", (hop, 9))
        except OSError:
            pass
    import time
    deadline = time.monotonic() + timeout
    with IPRoute() as ipr:
        while time.monotonic() < deadline:
            mac = _neigh_mac(ipr, hop, oif)
            if mac:
                return mac
            time.sleep(0.05)
    return None


def _neigh_mac(ipr, ip: str, oif: int | None) -> str | None:
    for n in ipr.get_neighbours(family=socket.AF_INET, dst=ip):
        if oif is not None and n["ifindex"] != oif:
            continue
        # NUD_INCOMPLETE (1) and NUD_FAILED (0x20) carry no usable address.
        if n["state"] & (0x01 | 0x20):
            continue
        mac = n.get_attr("NDA_LLADDR")
        if mac:
            return mac
    return None

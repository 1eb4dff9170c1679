"""The host side of steering: policy-routing rules that send selected pods'
packets into ``egw0`` (pyroute2), the route into it with the tunnel MTU, and
the new-pod hold.  What the rules are (as data) is :mod:`sdn_egress.agent.rules`;
the NAT bypass and the MSS clamp (iptables) are :mod:`sdn_egress.agent.iptables`.

Only what a :class:`flows.view.Steer` asks for is installed; everything else in
our table and at our rule priority is removed, so a deleted policy leaves no
rule behind.  Cluster traffic never matches a rule: the view builder has already
taken pod, node and service CIDRs out of every destination.
"""
from __future__ import annotations

import logging
import socket

import netaddr

from flows.view import GW_MAC, GW_NEXTHOP_V4, GW_NEXTHOP_V6, Steer
from sdn_egress.agent.iptables import TCP_IP_HEADERS, ensure_mss_clamp, ensure_nat_bypass
from sdn_egress.agent.rules import (HOST_PREFIX, MAIN_TABLE, PRIORITIES, STEER_TABLE, Hold, Rule, address_key,
                                    desired_rules, hold_rules)
# Importable from here too, as the tests import them:
from sdn_egress.agent.rules import ANY, EXEMPT_PRIORITY, HOLD_PRIORITY, RELEASE_PRIORITY, STEER_PRIORITY  # noqa: F401

LOG = logging.getLogger(__name__)

IPV6_MIN_MTU = 1280
RTNH_F_ONLINK = 4
AF = {4: socket.AF_INET, 6: socket.AF_INET6}
DEFAULT_REBIND = 5.0  # seconds, without the hold: see HostRouting.bind


def current_rules(ipr, versions=(4, 6)) -> set[Rule]:
    rules = set()
    for version in versions:
        rules |= _current_rules(ipr, version)
    return rules


def _current_rules(ipr, version: int) -> set[Rule]:
    rules = set()
    zero = "0.0.0.0" if version == 4 else "::"
    for msg in ipr.get_rules(family=AF[version]):
        prio = msg.get_attr("FRA_PRIORITY")
        if prio not in PRIORITIES:
            continue
        table = 0 if msg["action"] == 6 else (msg.get_attr("FRA_TABLE") or msg["table"])
        if table != PRIORITIES[prio]:
            continue
        src = msg.get_attr("FRA_SRC") or zero
        dst = msg.get_attr("FRA_DST") or zero
        rules.add(Rule(prio, netaddr.IPNetwork(f"{src}/{msg['src_len']}"),
                       netaddr.IPNetwork(f"{dst}/{msg['dst_len']}"), msg.get_attr("FRA_IIFNAME") or "", table))
    return rules


def _rule(ipr, cmd: str, rule: Rule) -> None:
    kw = dict(family=AF[rule.src.version], priority=rule.priority, src=str(rule.src.ip), src_len=rule.src.prefixlen)
    if rule.dst.prefixlen:
        # As ADDRESS/LEN: pyroute2 drops a bare "::" or "0.0.0.0" (taken for the
        # default), and the kernel refuses a dst_len without its address (EINVAL).
        kw["dst"] = f"{rule.dst.network}/{rule.dst.prefixlen}"
    if rule.iif:
        kw["iifname"] = rule.iif
    if rule.table == 0:
        kw["action"] = "FR_ACT_BLACKHOLE"
    else:
        kw["table"] = rule.table
    ipr.rule(cmd, **kw)


def pod_interfaces(ipr, cidrs) -> dict[str, str]:
    """Address -> host interface of every /32 (/128) route of the main table
    inside ``cidrs``: the local pods' routes a routed CNI (Calico style) makes."""
    out = {}
    names = None
    for version in (4, 6):
        nets = [c for c in cidrs if c.version == version]
        if not nets:
            continue
        if names is None:
            names = {link["index"]: link.get_attr("IFLA_IFNAME") for link in ipr.get_links()}
        for r in ipr.get_routes(family=AF[version], table=MAIN_TABLE):
            dst = r.get_attr("RTA_DST")
            if r["dst_len"] != HOST_PREFIX[version] or dst is None or r.get_attr("RTA_GATEWAY"):
                continue
            if any(netaddr.IPAddress(dst) in c for c in nets):
                name = names.get(r.get_attr("RTA_OIF"))
                if name:
                    out[str(netaddr.IPAddress(dst))] = name
    return out


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

    def __init__(self, egw: str = "egw0", proc_sys_net: str = PROC_SYS_NET, clock=None):
        import time

        self.egw = egw
        self.proc_sys_net = proc_sys_net
        self.clock = clock or time.monotonic
        self.first_seen: dict[tuple[str, str], float] = {}  # (pod address, interface) -> its route appeared
        self.expired: set[tuple[str, str]] = set()  # held longer than the bound: released unclassified
        self.bindings: dict[str, tuple[str, str]] = {}  # pod -> (address, interface) it was classified with
        self._released_pairs: set[tuple[str, str]] = set()
        self.hold_state: dict = {}

    def sync(self, steers: tuple[Steer, ...], tunnel_mtu: int, local_pods: dict[str, str] | None = None,
             hold: Hold | None = None, pod_cidrs: tuple = ()) -> tuple[int, int]:
        """Make the rules exactly those the steers ask for (and, with
        ``hold``, the new-pod hold for the node's pod CIDRs, ``local_pods``
        being the local pods the agent has classified: pod -> IPv4 address);
        returns (added, removed).  The steering route carries ``tunnel_mtu``:
        the kernel answers a DF packet that does not fit with ICMP
        "fragmentation needed" to the pod and fragments the others; the MSS
        of TCP SYNs in both directions through egw0 is clamped to fit."""
        from pyroute2 import IPRoute

        local_pods = local_pods or {}
        v6 = any(s.pod_ip.version == 6 for s in steers) or any(
            c.version == 6 for c in tuple(pod_cidrs) + (hold.pod_cidrs if hold else ()))
        with IPRoute() as ipr:
            self._ensure_link(ipr, tunnel_mtu)
            if v6:
                self._ensure_link_v6(ipr, tunnel_mtu)
            # The node's pod CIDRs, and every steered address (a CNI's IPAM
            # may give pods addresses outside the Node's podCIDR).
            interfaces = pod_interfaces(ipr, tuple(pod_cidrs) + (hold.pod_cidrs if hold else ()) + tuple(
                netaddr.IPNetwork(f"{s.pod_ip}/{HOST_PREFIX[s.pod_ip.version]}") for s in steers))
            bound = self.bind(interfaces, {**{address_key(s.pod, s.pod_ip): str(s.pod_ip) for s in steers},
                                           **local_pods}, hold.bound if hold else DEFAULT_REBIND)
            want = desired_rules(steers, interfaces, bound)
            if hold is not None:
                want |= hold_rules(hold, self._released(hold, interfaces, local_pods, bound))
            else:
                self.expired.clear()
            have = current_rules(ipr)
            # Adds first (the hold last of them), then deletes: no packet of a
            # classified pod meets the hold while rules change.
            # One refused rule must not leave the others out (the hold and the
            # other family's steers among them): the pass fails after the rest.
            refused = []
            for rule in sorted(want - have):
                try:
                    _rule(ipr, "add", rule)
                except Exception as exc:  # noqa: BLE001 - reported below, after the others
                    refused.append(f"{rule}: {exc}")
                    continue
                LOG.info("routing: added rule %s", rule)
            if refused:
                raise RuntimeError(f"routing: {len(refused)} rules refused by the kernel: {'; '.join(refused[:3])}")
            for rule in sorted(have - want, reverse=True):
                _rule(ipr, "del", rule)
                LOG.info("routing: removed rule %s", rule)
        self._ensure_nat_bypass()
        self._ensure_mss_clamp(tunnel_mtu - TCP_IP_HEADERS[4])
        if v6:
            try:
                self._ensure_nat_bypass("ip6tables")
                self._ensure_mss_clamp(ipv6_route_mtu(tunnel_mtu) - TCP_IP_HEADERS[6], "ip6tables")
            except FileNotFoundError:
                LOG.warning("routing: no ip6tables on this node: no NAT bypass nor MSS clamp for IPv6 "
                            "(nothing masquerades IPv6 here either)")
        return len(want - have), len(have - want)

    def _seen(self, interfaces: dict[str, str], now: float) -> None:
        """Note when each (address, interface) route first appeared; forget those gone."""
        present = set(interfaces.items())
        for key in list(self.first_seen):
            if key not in present:
                del self.first_seen[key]
                self.expired.discard(key)
        for key in present:
            self.first_seen.setdefault(key, now)

    def bind(self, interfaces: dict[str, str], pods: dict[str, str], rebind_after: float) -> dict[str, str]:
        """pod -> the interface its rules name.  A pod is bound to the
        interface its address's route had when the agent first classified
        it.  Its address on another interface later is another pod's (the
        old one's object still there, its network gone): the pod is then
        neither steered nor released (the new one is held) until that route
        is ``rebind_after`` seconds old, when it is taken as the pod's own
        (a pod recreated under the same name the agent never saw go)."""
        now = self.clock()
        self._seen(interfaces, now)
        for key in list(self.bindings):
            if key not in pods:
                del self.bindings[key]
        out = {}
        for key, ip in pods.items():
            cur = interfaces.get(ip)
            if cur is None:
                continue
            old = self.bindings.get(key)
            if old is None or old[0] != ip or old[1] == cur:
                self.bindings[key] = (ip, cur)
                out[key] = cur
            elif now - self.first_seen[(ip, cur)] >= rebind_after:
                LOG.warning("routing: %s's address %s is on %s now (was %s) for %.1f s; taken as its own",
                            key, ip, cur, old[1], rebind_after)
                self.bindings[key] = (ip, cur)
                out[key] = cur
        return out

    def _released(self, hold: Hold, interfaces: dict[str, str], local_pods: dict[str, str],
                  bound: dict[str, str] | None = None) -> set[tuple[str, str]]:
        """(address, interface) pairs whose other traffic the main table
        routes: every classified pod's, on the interface it is bound to, and
        every address whose route appeared longer than ``hold.bound`` ago
        without the agent classifying it (released with a warning)."""
        now = self.clock()
        self._seen(interfaces, now)
        if bound is None:
            bound = {k: interfaces[ip] for k, ip in local_pods.items() if ip in interfaces}
        if not interfaces:  # no per-pod routes (a bridge CNI): the addresses alone
            return {(ip, "") for ip in local_pods.values()
                    if any(netaddr.IPAddress(ip) in c for c in hold.pod_cidrs)}
        released = {(local_pods[k], iif) for k, iif in bound.items() if k in local_pods}
        for pair in interfaces.items():
            if pair in released:
                continue
            if pair in self.expired or now - self.first_seen[pair] >= hold.bound:
                if pair not in self.expired:
                    LOG.warning("hold: %s (interface %s) not classified within %.1f s; its traffic now "
                                "leaves the CNI's way (the node address)", pair[0], pair[1], hold.bound)
                    self.expired.add(pair)
                released.add(pair)
        self._released_pairs = released
        self.hold_state = {"held": sorted(ip for ip, iif in interfaces.items() if (ip, iif) not in released),
                           "released_unclassified": sorted(ip for ip, _ in self.expired)}
        return released

    def hold_due(self, hold: Hold | None, local_pods: dict[str, str]) -> bool:
        """True when a held address (or one waiting to be bound anew) has
        passed the bound since its route appeared: the next pass releases
        or binds it.  Records routes it sees for the first time, so the
        bound counts from about when they appeared."""
        if hold is None or not hold.pod_cidrs:
            return False
        from pyroute2 import IPRoute

        with IPRoute() as ipr:
            interfaces = pod_interfaces(ipr, hold.pod_cidrs)
        now = self.clock()
        self._seen(interfaces, now)
        return any(pair not in self._released_pairs and pair not in self.expired
                   and now - self.first_seen[pair] >= hold.bound for pair in interfaces.items())

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

    def _ensure_link_v6(self, ipr, tunnel_mtu: int) -> None:
        """The IPv6 twin of the route into egw0: ``::/0 via fe80::a9fe:1 dev
        egw0 table 7100`` with a permanent neighbour at GW_MAC.  Its MTU is
        the same tunnel MTU (the tunnel carries inner IP packets of either
        family up to it; only the underlay's family sets the overhead), but
        never below IPv6's minimum of 1280."""
        idx = ipr.link_lookup(ifname=self.egw)[0]
        disable = f"{self.proc_sys_net}/ipv6/conf/{self.egw}/disable_ipv6"
        try:
            with open(disable) as f:
                if f.read().strip() != "0":
                    write_sysctl(disable, "0")
        except FileNotFoundError:
            raise RuntimeError(f"IPv6 is not available on {self.egw} ({disable} missing): "
                               "IPv6 pods cannot be steered") from None
        mtu = ipv6_route_mtu(tunnel_mtu)
        if mtu != tunnel_mtu:
            LOG.warning("routing: tunnel MTU %d is below IPv6's minimum; the IPv6 route into %s "
                        "takes %d (IPv6 packets between the two are lost in the tunnel)",
                        tunnel_mtu, self.egw, mtu)
        ipr.neigh("replace", dst=str(GW_NEXTHOP_V6), lladdr=GW_MAC, ifindex=idx, family=socket.AF_INET6,
                  state=0x80)  # NUD_PERMANENT
        ipr.route("replace", dst="::/0", gateway=str(GW_NEXTHOP_V6), oif=idx, family=socket.AF_INET6,
                  table=STEER_TABLE, metrics={"mtu": mtu})

    def _ensure_nat_bypass(self, command: str = "iptables") -> None:
        ensure_nat_bypass(self.egw, command)

    def _ensure_mss_clamp(self, mss: int, command: str = "iptables") -> None:
        ensure_mss_clamp(self.egw, mss, command)


def ipv6_route_mtu(tunnel_mtu: int) -> int:
    """The MTU of the IPv6 route into egw0: the tunnel MTU, at least 1280."""
    return max(tunnel_mtu, IPV6_MIN_MTU)


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


def resolve_next_hop_mac(dest: str | None, timeout: float = 1.0, family: int = 4) -> str | None:
    """The MAC of the next hop the node's routing uses towards ``dest`` (None:
    the default route of ``family``): the route's gateway, or ``dest`` itself
    when on-link.  Triggers ARP (neighbour discovery) when the neighbour is
    not known yet."""
    from pyroute2 import IPRoute

    if dest is not None:
        family = netaddr.IPAddress(dest).version
    with IPRoute() as ipr:
        if dest is None:
            routes = [r for r in ipr.get_routes(family=AF[family], table=254)
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
        mac = _neigh_mac(ipr, hop, oif, family)
        if mac:
            return mac
    # Kick ARP / ND: a datagram to the discard port makes the kernel resolve the hop.
    with socket.socket(AF[family], socket.SOCK_DGRAM) as s:
        try:
            if family == 6 and hop.startswith("fe80:") and oif:
                s.sendto(b"", (hop, 9, 0, oif))  # a link-local hop needs its interface
            else:
                s.sendto(b"", (hop, 9))
        except OSError:
            pass
    import time
    deadline = time.monotonic() + timeout
    with IPRoute() as ipr:
        while time.monotonic() < deadline:
            mac = _neigh_mac(ipr, hop, oif, family)
            if mac:
                return mac
            time.sleep(0.05)
    return None


def _neigh_mac(ipr, ip: str, oif: int | None, family: int = 4) -> str | None:
    for n in ipr.get_neighbours(family=AF[family], dst=ip):
        if oif is not None and n["ifindex"] != oif:
            continue
        # NUD_INCOMPLETE (1) and NUD_FAILED (0x20) carry no usable address.
        if n["state"] & (0x01 | 0x20):
            continue
        mac = n.get_attr("NDA_LLADDR")
        if mac:
            return mac
    return None

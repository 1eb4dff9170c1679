"""The lab's network: namespaces, veths and sysctls; the fabric's bridges,
the router, the external hosts (each running the echo service), the nodes (an
OVS each, the CNI's masquerade) and the pods' Calico-style routed links, in
the families of the topology; and the router's ARP and neighbour-discovery
probes of the underlay.  A mixin of :class:`sdn_egress.lab.lab.Lab`, whose
state (``_state``, ``_save``) and names (``ns_*``) it uses."""
from __future__ import annotations

import os
import sys
import time

from sdn_egress.lab import topology as topo_mod
from sdn_egress.lab.shell import LabError, nsx, sh, venv_bin
from sdn_egress.lab.topology import Topology

POD_GATEWAY6 = "fe80::1"  # the node's end of every pod's veth (a link-local gateway, Calico style)


# Broadcast one ARP request for argv[2] out of interface argv[1] (raw socket,
# no arping needed) and print the sender MAC of every reply for it that
# arrives within argv[3] seconds, one per line.
ARP_PROBE = r"""
import fcntl, socket, struct, sys, time
ifname, target, wait = sys.argv[1], sys.argv[2], float(sys.argv[3])
s = socket.socket(socket.AF_PACKET, socket.SOCK_RAW, socket.htons(0x0806))
s.bind((ifname, 0))
mac = s.getsockname()[4]
info = fcntl.ioctl(s.fileno(), 0x8915, struct.pack("256s", ifname.encode()))  # SIOCGIFADDR
spa, tpa = info[20:24], socket.inet_aton(target)
s.send(b"\xff" * 6 + mac + b"\x08\x06"
       + struct.pack("!HHBBH", 1, 0x0800, 6, 4, 1) + mac + spa + b"\x00" * 6 + tpa)
deadline = time.monotonic() + wait
while (left := deadline - time.monotonic()) > 0:
    s.settimeout(left)
    try:
        frame = s.recv(128)
    except socket.timeout:
        break
    op, sha, sender = struct.unpack("!H", frame[20:22])[0], frame[22:28], frame[28:32]
    if op == 2 and sender == tpa:
        print(sha.hex(":"), flush=True)
"""


# Send one neighbour solicitation for argv[3] out of interface argv[1] from
# argv[2] (to the target's solicited-node multicast address, with our
# link-layer address) and print the target link-layer address of every
# solicited advertisement for it that arrives within argv[4] seconds, one per
# line (unsolicited ones, a takeover's announcements, answer nobody's question).
NS_PROBE = r"""
import socket, struct, sys, time
ifname, src, target, wait = sys.argv[1], sys.argv[2], sys.argv[3], float(sys.argv[4])
mac = bytes.fromhex(open(f"/sys/class/net/{ifname}/address").read().strip().replace(":", ""))
tgt = socket.inet_pton(socket.AF_INET6, target)
s = socket.socket(socket.AF_INET6, socket.SOCK_RAW, socket.IPPROTO_ICMPV6)
s.bind((src, 0))
idx = socket.if_nametoindex(ifname)
for opt in (socket.IPV6_MULTICAST_HOPS, socket.IPV6_UNICAST_HOPS):
    s.setsockopt(socket.IPPROTO_IPV6, opt, 255)  # RFC 4861: 255 or it is dropped
s.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_MULTICAST_IF, idx)
group = socket.inet_ntop(socket.AF_INET6, bytes.fromhex("ff0200000000000000000001ff") + tgt[13:])
s.sendto(struct.pack("!BBHI", 135, 0, 0, 0) + tgt + bytes([1, 1]) + mac, (group, 0, 0, idx))
deadline = time.monotonic() + wait
while (left := deadline - time.monotonic()) > 0:
    s.settimeout(left)
    try:
        msg, peer = s.recvfrom(1500)
    except socket.timeout:
        break
    if msg[0] != 136 or msg[8:24] != tgt or not msg[4] & 0x40:
        continue  # only solicited advertisements (S flag): not a takeover's unsolicited burst
    opts, lla = msg[24:], None
    while len(opts) >= 8 and opts[1]:
        if opts[0] == 2:
            lla = opts[2:8].hex(":")
        opts = opts[opts[1] * 8:]
    print(lla or peer[0], flush=True)
"""


class Network:
    def _netns(self, name: str) -> str:
        sh("ip", "netns", "add", name)
        self._state["namespaces"].append(name)
        self._save()
        nsx(name, "ip", "link", "set", "lo", "up")
        if topo_mod.IPV6 in self.topology().families:
            # Addresses usable at once: no duplicate address detection (1 s
            # of "tentative" per address otherwise, br-ex's too).
            self._sysctl(name, "net.ipv6.conf.all.accept_dad=0", "net.ipv6.conf.default.accept_dad=0")
        return name

    def _veth(self, ns_a: str, name_a: str, ns_b: str, name_b: str) -> None:
        sh("ip", "link", "add", name_a, "netns", ns_a, "type", "veth", "peer", "name", name_b, "netns", ns_b)
        for ns, name in ((ns_a, name_a), (ns_b, name_b)):
            # The userspace datapath needs full checksums: TCP breaks after NAT otherwise.
            nsx(ns, "ethtool", "-K", name, "tx", "off", check=False)
            nsx(ns, "ip", "link", "set", name, "up")

    def _sysctl(self, ns: str, *settings: str) -> None:
        nsx(ns, "sysctl", "-qw", *settings)

    def _build(self, topo: Topology, agents: bool) -> None:
        fab = self._netns(self.ns_fabric())
        for br in ("underlay", "extlan"):
            nsx(fab, "ip", "link", "add", br, "type", "bridge")
            nsx(fab, "ip", "link", "set", br, "up")

        rtr = self._netns(self.ns_router())
        self._veth(rtr, "u0", fab, "r-u")
        self._veth(rtr, "x0", fab, "r-x")
        nsx(fab, "ip", "link", "set", "r-u", "master", "underlay")
        nsx(fab, "ip", "link", "set", "r-x", "master", "extlan")
        # The router has both families whatever the cluster's: the API
        # server listens on its IPv4 underlay address.
        nsx(rtr, "ip", "addr", "add", f"{topo_mod.ROUTER_UNDERLAY_IP}/24", "dev", "u0")
        nsx(rtr, "ip", "addr", "add", f"{topo_mod.ROUTER_EXTERNAL_IP}/24", "dev", "x0")
        self._sysctl(rtr, "net.ipv4.ip_forward=1")
        if topo_mod.IPV6 in topo.families:
            nsx(rtr, "ip", "-6", "addr", "add", f"{topo_mod.ROUTER_UNDERLAY_IP6}/64", "dev", "u0", "nodad")
            nsx(rtr, "ip", "-6", "addr", "add", f"{topo_mod.ROUTER_EXTERNAL_IP6}/64", "dev", "x0", "nodad")
            self._sysctl(rtr, "net.ipv6.conf.all.forwarding=1")
        self._objects_start()

        for x in topo.externals:
            self._build_external(x, fab, rtr)

        for node in topo.nodes:
            self._build_node(topo, node, fab, agents)
        self._write_cluster_manifests(topo)
        if agents:
            self._start_controller()
            for node in topo.nodes:
                self.start_agent(node.name)
        self._wait_for_echo(topo)

    def _build_external(self, x, fab: str, rtr: str) -> None:
        ns = self._netns(self.ns_external(x.index))
        if x.mtu is None:
            self._veth(ns, "eth0", fab, f"x{x.index}")
            nsx(fab, "ip", "link", "set", f"x{x.index}", "master", "extlan")
            for fam in x.families:
                plen = "64" if fam == topo_mod.IPV6 else "24"
                nsx(ns, "ip", "addr", "add", f"{x.ip_of(fam)}/{plen}", "dev", "eth0",
                    *(["nodad"] if fam == topo_mod.IPV6 else []))
        else:
            # A link of its own to the router, narrow at both ends: the
            # router answers ICMP frag-needed (IPv6: Packet Too Big) for what
            # does not fit.
            self._veth(ns, "eth0", rtr, f"h{x.index}")
            for where, dev in ((ns, "eth0"), (rtr, f"h{x.index}")):
                nsx(where, "ip", "link", "set", dev, "mtu", str(x.mtu))
            for fam in x.families:
                if fam == topo_mod.IPV6:  # the router's end is fe80::1 (a link-local gateway)
                    nsx(rtr, "ip", "-6", "addr", "add", f"{POD_GATEWAY6}/64", "dev", f"h{x.index}", "nodad")
                    nsx(ns, "ip", "-6", "addr", "add", f"{x.ip_of(fam)}/128", "dev", "eth0", "nodad")
                    nsx(rtr, "ip", "-6", "route", "add", f"{x.ip_of(fam)}/128", "dev", f"h{x.index}")
                    continue
                nsx(ns, "ip", "addr", "add", f"{x.ip}/32", "dev", "eth0")
                nsx(ns, "ip", "route", "add", topo_mod.ROUTER_EXTERNAL_IP, "dev", "eth0", "scope", "link")
                nsx(rtr, "ip", "route", "add", f"{x.ip}/32", "dev", f"h{x.index}", "src",
                    topo_mod.ROUTER_EXTERNAL_IP)
        for fam in x.families:
            gw = POD_GATEWAY6 if fam == topo_mod.IPV6 and x.mtu else topo_mod.router_external_ip(fam)
            nsx(ns, "ip", "-6" if fam == topo_mod.IPV6 else "-4", "route", "add", "default", "via", gw,
                "dev", "eth0")
        self._start_echo(x)

    def _build_node(self, topo: Topology, node, fab: str, agents: bool) -> None:
        ns = self._netns(self.ns_node(node.name))
        self._veth(ns, "eth0", fab, f"n{node.index}")
        nsx(fab, "ip", "link", "set", f"n{node.index}", "master", "underlay")
        for fam in node.families:
            v6 = fam == topo_mod.IPV6
            opt = "-6" if v6 else "-4"
            nsx(ns, "ip", opt, "addr", "add", f"{node.ip_of(fam)}/{64 if v6 else 24}", "dev", "eth0",
                *(["nodad"] if v6 else []))
            nsx(ns, "ip", opt, "route", "add", "default", "via", topo_mod.router_underlay_ip(fam))
            for other in topo.nodes:
                if other.name != node.name:
                    nsx(ns, "ip", opt, "route", "add", other.pod_cidr_of(fam), "via", other.ip_of(fam))
            cidr = topo_mod.cluster_pod_cidr(fam)
            # The CNI's natOutgoing, Calico style: no out-interface match.
            nsx(ns, "ip6tables" if v6 else "iptables", "-w", "-t", "nat", "-A", "POSTROUTING", "-s", cidr,
                "!", "-d", cidr, "-j", "MASQUERADE")
        self._sysctl(ns, "net.ipv4.ip_forward=1", "net.ipv4.conf.all.rp_filter=2",
                     "net.ipv4.conf.default.rp_filter=2")
        if topo_mod.IPV6 in node.families:
            self._sysctl(ns, "net.ipv6.conf.all.forwarding=1")
        for pod in topo.pods:
            if pod.node == node.name:
                self._build_pod(pod, ns)
        ovs = self.ovs(node.name)
        ovs.start()
        sh("ip", "netns", "exec", ns, venv_bin("sdn-egress"), "ovs", "--db", ovs.db_target, "setup",
           "--uplink", "eth0")
        if not agents:
            # No agent will program br-ex (fail_mode=secure): let it switch
            # plainly so the node keeps its underlay connectivity.
            ovs.ofctl("add-flow", "br-ex", "priority=0,actions=NORMAL")

    def _build_pod(self, pod, node_ns: str) -> None:
        """The pod's network as the lab's CNI (Calico style) sets it up: its
        namespace, a veth with the /32 (IPv6: the /128) on the pod's end;
        on the node's end proxy ARP (IPv6: the link-local gateway fe80::1)
        and the /32 (/128) route."""
        ns = self._netns(self.ns_pod(pod.index))
        host_if = f"cali{pod.index}"
        self._veth(ns, "eth0", node_ns, host_if)
        for ip in pod.addresses:
            if ":" in ip:
                nsx(node_ns, "ip", "-6", "addr", "add", f"{POD_GATEWAY6}/64", "dev", host_if, "nodad")
                nsx(ns, "ip", "-6", "addr", "add", f"{ip}/128", "dev", "eth0", "nodad")
                nsx(ns, "ip", "-6", "route", "add", "default", "via", POD_GATEWAY6, "dev", "eth0")
                nsx(node_ns, "ip", "-6", "route", "add", f"{ip}/128", "dev", host_if)
                continue
            nsx(ns, "ip", "addr", "add", f"{ip}/32", "dev", "eth0")
            nsx(ns, "ip", "route", "add", "169.254.1.1", "dev", "eth0", "scope", "link")
            nsx(ns, "ip", "route", "add", "default", "via", "169.254.1.1", "dev", "eth0")
            # Calico's settings: proxy ARP for the pod's gateway, answered at once
            # (the kernel's default proxy_delay holds answers up to 0.8 s).
            self._sysctl(node_ns, f"net.ipv4.conf.{host_if}.proxy_arp=1",
                         f"net.ipv4.neigh.{host_if}.proxy_delay=0")
            nsx(node_ns, "ip", "route", "add", f"{ip}/32", "dev", host_if)

    def _start_echo(self, x) -> None:
        d = os.path.join(self.state_dir, "externals", x.name)
        os.makedirs(d, exist_ok=True)
        for f in ("seen.jsonl", "ready"):
            if os.path.exists(os.path.join(d, f)):
                os.unlink(os.path.join(d, f))
        open(os.path.join(d, "seen.jsonl"), "w").close()
        self._spawn(f"echo:{x.name}", self.ns_external(x.index),
                    [sys.executable, "-m", "sdn_egress.lab.echo", "--log", os.path.join(d, "seen.jsonl"),
                     "--ready", os.path.join(d, "ready")], os.path.join(d, "echo.log"))

    def _wait_for_echo(self, topo: Topology, timeout: float = 15.0) -> None:
        deadline = time.monotonic() + timeout
        for x in topo.externals:
            ready = os.path.join(self.state_dir, "externals", x.name, "ready")
            while not os.path.exists(ready):
                if time.monotonic() > deadline:
                    raise LabError(f"echo service on {x.name} did not start (see its echo.log)")
                time.sleep(0.05)

    def arp_answers(self, ip: str, wait: float = 1.0) -> list[str]:
        """The router broadcasts one ARP request for ``ip`` on the underlay;
        the MAC of every reply, in order of arrival (exactly one for an EIP
        served correctly, none for an address nobody claims)."""
        out = self.exec("router", [sys.executable, "-c", ARP_PROBE, "u0", ip, str(wait)],
                        timeout=wait + 30).stdout
        return out.split()

    def nd_answers(self, ip: str, wait: float = 1.0) -> list[str]:
        """IPv6's :meth:`arp_answers`: the router sends one neighbour
        solicitation for ``ip`` on the underlay; the link-layer address of
        every advertisement for it, in order of arrival."""
        out = self.exec("router", [sys.executable, "-c", NS_PROBE, "u0", topo_mod.ROUTER_UNDERLAY_IP6, ip,
                                   str(wait)], timeout=wait + 30).stdout
        return out.split()

"""Issue 11, item 8: tunnel port names are unique by construction."""
from __future__ import annotations

import random

from ovs_setup import ovsdb
from ovs_setup.ovsdb import FLOW_PORT, IFNAMSIZ, tunnel_port_names


def ec2_names(n: int, seed: int = 11) -> list[str]:
    rnd = random.Random(seed)
    names = set()
    while len(names) < n:
        names.add(f"ip-10-{rnd.randrange(256)}-{rnd.randrange(256)}-{rnd.randrange(256)}"
                  f".eu-west-1.compute.internal")
    return sorted(names)


def test_a_node_named_flow_never_takes_the_flow_ports_name():
    names = tunnel_port_names(["flow", "alpha"])
    assert names["alpha"] == "gnv-alpha"
    assert names["flow"] != FLOW_PORT and names["flow"].startswith("gnv-")
    assert len(names["flow"]) <= IFNAMSIZ


def test_five_thousand_long_names_get_distinct_short_stable_ports():
    peers = ec2_names(5000)
    names = tunnel_port_names(peers)
    assert len(set(names.values())) == 5000 and FLOW_PORT not in names.values()
    assert all(len(n.encode()) <= IFNAMSIZ for n in names.values())
    # The same peer keeps its port whoever else is a peer, across restarts.
    assert tunnel_port_names(peers[:10]) == {p: names[p] for p in peers[:10]}
    assert ovsdb.tunnel_port_name(peers[0]) == names[peers[0]]


def test_short_names_stay_readable_and_cannot_meet_hashed_ones():
    long = "a-very-long-node-name-indeed"
    names = tunnel_port_names(["alpha", "bravo", long, "x" * 11, "x" * 12])
    assert names["alpha"] == "gnv-alpha" and names["x" * 11] == "gnv-" + "x" * 11
    assert names[long][4:].isupper() and names["x" * 12][4:].isupper()


def test_two_peers_whose_hashes_collide_still_get_two_ports(monkeypatch):
    real = ovsdb._hashed_name

    def colliding(peer, prefix, salt):
        return real("same", prefix, 0) if salt == 0 else real(peer, prefix, salt)

    monkeypatch.setattr(ovsdb, "_hashed_name", colliding)
    a, b = "first-very-long-node-name", "second-very-long-node-name"
    names = tunnel_port_names([b, a])
    assert names[a] == real("same", "gnv-", 0)  # the first by name keeps the hash
    assert names[b] != names[a] and len(names[b]) <= IFNAMSIZ

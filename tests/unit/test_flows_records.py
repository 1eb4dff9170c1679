"""Flow records, the table registry and the cookie scheme."""
from __future__ import annotations

import netaddr
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from flows import cookie as C
from flows import fields as F
from flows import tables
from flows.records import CT, Drop, Flow, Goto, Load, Move, Nat, Output, SetField


# -- records: canonical form ------------------------------------------------------

def test_match_is_canonical_whatever_the_spelling():
    a = Flow("br-int", "classify", 5, {"ipv4_dst": netaddr.IPNetwork("198.51.100.7/24"),
                                       "eth_type": 0x0800, "in_port": 3})
    b = Flow("br-int", "classify", 5, [("in_port", 3), ("eth_type", 0x0800),
                                       ("ipv4_dst", "198.51.100.0", "255.255.255.0")])
    assert a == b and a.key == b.key and hash(a) == hash(b)
    assert a.match == (("eth_type", 0x0800), ("in_port", 3),
                       ("ipv4_dst", "198.51.100.0", "255.255.255.0"))


def test_full_masks_vanish_and_empty_masks_drop_the_field():
    f = Flow("br-int", "classify", 1, {"ipv4_dst": netaddr.IPNetwork("0.0.0.0/0"),
                                       "ipv4_src": netaddr.IPNetwork("203.0.113.2/32"),
                                       "eth_type": 0x0800, "ct_state": (0x22, 0x22),
                                       "reg0": (7, 0xFFFFFFFF)})
    assert f.match_dict() == {"eth_type": (0x0800, None), "ipv4_src": ("203.0.113.2", None),
                              "ct_state": (0x22, 0x22), "reg0": (7, None)}


def test_macs_are_lower_case_and_values_are_masked():
    f = Flow("br-int", "classify", 1, {"eth_src": "0A:58:A9:FE:00:01",
                                       "reg1": (0xFF, 0x0F)}, (SetField("eth_dst", "AA-BB-CC-DD-EE-FF"),))
    assert f.match_dict() == {"eth_src": ("0a:58:a9:fe:00:01", None), "reg1": (0x0F, 0x0F)}
    assert f.actions == (SetField("eth_dst", "aa:bb:cc:dd:ee:ff"),)


@pytest.mark.parametrize("match,error", [
    ({"ipv4_dst": "2001:db8::1"}, "not an IPv4 address"),
    ({"in_port": "3"}, "expected an integer"),
    ({"reg0": 2**32}, "does not fit in 32 bits"),
    ({"eth_src": "not-a-mac"}, "field eth_src"),
])
def test_bad_match_values_are_refused(match, error):
    with pytest.raises(ValueError, match=error):
        Flow("br-int", "classify", 1, match)


def test_action_rules():
    assert Flow("br-int", "eip_out", 1, {}, ()).actions == (Drop(),)
    with pytest.raises(ValueError, match="drop cannot be combined"):
        Flow("br-int", "eip_out", 1, {}, (Drop(), Output(3)))
    with pytest.raises(ValueError, match="goto must be the single last action"):
        Flow("br-int", "classify", 1, {}, (Goto("eip_out"), Output(3)))
    with pytest.raises(ValueError, match="use Load"):
        SetField("reg0", 1)
    with pytest.raises(ValueError, match="not a register"):
        Load("tunnel_id", 1)
    with pytest.raises(ValueError, match="widths differ"):
        Move("eth_src", "arp_spa")
    with pytest.raises(ValueError, match="exec actions need commit"):
        CT(zone=1, actions=(SetField("ct_mark", 1),))
    with pytest.raises(ValueError, match="needs an address"):
        Nat("src")
    with pytest.raises(ValueError, match="bad port"):
        Output(0xFFFFFFF8)


# -- the table registry ---------------------------------------------------------------

def test_table_ids_follow_declaration_order():
    assert tables.table_names("br-int") == {
        0: "classify", 1: "eip_out", 2: "snat", 3: "snat_out", 4: "from_uplink",
        5: "uplink_mtu", 6: "reply_route", 7: "to_host"}
    assert tables.table_names("br-ex") == {0: "classify"}
    assert tables.table_id("br-int", "to_host") == 7
    assert tables.table_id("br-int", "table42") == 42  # a stale table seen on a switch
    assert tables.bridge("br-int").name(42) == "table42"


def test_registry_refuses_an_undeclared_table():
    with pytest.raises(ValueError, match="undeclared table 'nat'"):
        tables.flow("br-int", "nat", 1, {}, (Drop(),), 0)
    with pytest.raises(ValueError, match="unknown bridge"):
        tables.flow("br-tun", "classify", 1, {}, (Drop(),), 0)


def test_registry_refuses_a_goto_to_a_table_not_declared_next():
    with pytest.raises(ValueError, match="may not continue in 'to_host'"):
        tables.flow("br-int", "eip_out", 1, {"reg0": 1}, (Goto("to_host"),), 0)
    with pytest.raises(ValueError, match="may not continue in 'eip_out'"):
        tables.flow("br-int", "snat", 1, {"reg0": 1},
                    (CT(commit=True, zone=F.CT_ZONE_SNAT, table="eip_out"),), 0)


def test_registry_refuses_an_undeclared_field():
    with pytest.raises(ValueError, match="field tunnel_id is not declared for this table"):
        tables.flow("br-int", "to_host", 1, {"tunnel_id": 5}, (Drop(),), 0)


def test_registry_refuses_a_field_without_its_eth_type():
    with pytest.raises(ValueError, match="ipv4_dst needs eth_type=0x0800"):
        tables.flow("br-int", "to_host", 1, {"ipv4_dst": "203.0.113.1"}, (Drop(),), 0)
    with pytest.raises(ValueError, match="ipv4_dst needs eth_type=0x0800"):
        tables.flow("br-int", "to_host", 1, {"eth_type": F.ETH_IPV6, "ipv4_dst": "203.0.113.1"},
                    (Drop(),), 0)


def test_registry_declaration_is_checked():
    t = tables.Table
    with pytest.raises(ValueError, match="must come later"):
        tables.BridgeTables("br-x", (t("a", "", frozenset()), t("b", "", frozenset(), ("a",))))
    with pytest.raises(ValueError, match="is not declared"):
        tables.BridgeTables("br-x", (t("a", "", frozenset(), ("zz",)),))
    with pytest.raises(ValueError, match="unknown match fields"):
        tables.BridgeTables("br-x", (t("a", "", frozenset({"vlan_vid"})),))
    with pytest.raises(ValueError, match="reserved"):
        tables.BridgeTables("br-x", (t("table3", "", frozenset()),))


def test_every_table_has_a_miss_flow():
    for bridge in tables.PIPELINE:
        got = tables.miss_flows(bridge, lambda b, t: C.encode(C.Feature.PIPELINE))
        assert [f.table for f in got] == list(tables.table_names(bridge).values())
        assert all(f.priority == 0 and f.match == () for f in got)


# -- cookies ---------------------------------------------------------------------------

def test_cookie_round_trip():
    value = C.encode(C.Feature.STEER, C.steer_object("default/web", "default/a"))
    ck = C.decode(value)
    assert ck.generation == C.GENERATION
    assert ck.feature is C.Feature.STEER
    assert ck.policy_hash == C.stable_hash("default/web", 24)
    assert ck.pod_hash == C.stable_hash("default/a", 24)
    assert value >> 56 == C.GENERATION and (value >> 48) & 0xFF == C.Feature.STEER


def test_cookie_object_ids_are_stable_across_processes():
    # A restarted agent must recognise the flows its predecessor installed:
    # object ids are BLAKE2b, never Python's salted hash().
    assert C.object_id("eip:192.0.2.200") == int.from_bytes(
        __import__("hashlib").blake2b(b"eip:192.0.2.200", digest_size=8).digest(), "big") & (2**48 - 1)
    assert C.object_id("") == 0


def test_cookie_refuses_overflow_and_decodes_unknown_features():
    with pytest.raises(ValueError):
        C.encode(C.Feature.STEER, 1 << 48)
    with pytest.raises(ValueError):
        C.encode(C.Feature.STEER, 0, generation=256)
    ck = C.decode(0x02FE000000000001)
    assert (ck.generation, ck.feature, ck.object) == (2, 0xFE, 1)
    assert str(ck) == "g2/feature254/000000000001"


def test_legend_names_policy_and_pod(lab):
    legend = C.legend(lab.view_n1())
    ck = C.decode(C.encode(C.Feature.STEER, C.steer_object("default/web", "default/a")))
    assert legend.explain(ck) == "policy default/web, pod default/a"
    ck = C.decode(C.encode(C.Feature.EIP_OUT, C.object_id(C.eip_key(lab.EIP))))
    assert legend.explain(ck) == "EIP 192.0.2.200 (default/web)"
    unknown = C.decode(C.encode(C.Feature.STEER, C.steer_object("x/y", "default/a")))
    assert legend.explain(unknown).endswith("pod default/a") and "#" in legend.explain(unknown)


def test_only_the_translation_module_knows_os_ken():
    import pathlib
    import subprocess
    import sys

    import flows as pkg
    root = pathlib.Path(pkg.__file__).parent
    speaking = sorted(p.name for p in root.glob("*.py") if "os_ken" in p.read_text())
    assert speaking == ["ofp.py"]
    code = ("import sys, flows, flows.render, flows.cookie, flows.tables, flows.records;"
            "sys.exit(any(m.startswith('os_ken') for m in sys.modules))")
    assert subprocess.run([sys.executable, "-c", code], cwd=root.parent).returncode == 0


@settings(max_examples=500, deadline=None)
@given(st.sampled_from((4, 6)), st.data())
def test_a_cidr_entry_from_its_integers_is_the_entry_canonicalised_the_long_way(version, data):
    from flows import records as R

    bits = 32 if version == 4 else 128
    first = data.draw(st.integers(0, 2 ** bits - 1))
    prefixlen = data.draw(st.integers(0, bits))
    name = data.draw(st.sampled_from(("ipv4_dst", "ipv6_src", "arp_spa", "ipv6_nd_target")))
    net = netaddr.IPNetwork(f"{netaddr.IPAddress(first, version)}/{prefixlen}")

    def entry(make):
        try:
            return make()
        except ValueError:
            return "refused"
    assert (entry(lambda: R._network_entry.__wrapped__(name, version, first, prefixlen))
            == entry(lambda: R._canonical_entry(name, net, None)))

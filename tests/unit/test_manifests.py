"""Manifest parsing (sdn_egress.model.manifests) and the manifest directory source (sdn_egress.source)."""
from __future__ import annotations

import copy
import json
import os

import netaddr
import pytest
import yaml

from sdn_egress.model.manifests import parse_object
from sdn_egress.model import InvalidObject, ObjectRef
from sdn_egress.source import ManifestDirSource
from tests.support.objects import node, set_path as edited, write

EXAMPLES = os.path.join(os.path.dirname(__file__), "..", "..", "k8s", "examples")

GATEWAY = {
    "apiVersion": "sdn-egress.io/v1alpha1",
    "kind": "EgressGateway",
    "metadata": {"name": "edge"},
    "spec": {"nodeSelector": {"matchLabels": {"egress": "true"}},
             "ippools": {"ipv4": ["192.0.2.200-192.0.2.210"], "ipv6": []}},
}
POLICY = {
    "apiVersion": "sdn-egress.io/v1alpha1",
    "kind": "EgressPolicy",
    "metadata": {"name": "cart", "namespace": "shop"},
    "spec": {"egressGatewayName": "edge",
             "appliedTo": {"podSelector": {"matchLabels": {"app": "cart"}}},
             "destSubnet": ["198.51.100.0/24"]},
}
NODE = {
    "apiVersion": "v1",
    "kind": "Node",
    "metadata": {"name": "alpha", "labels": {"egress": "true"}},
    "spec": {"podCIDR": "203.0.113.0/27", "podCIDRs": ["203.0.113.0/27", "2001:db8:1::/64"]},
    "status": {"addresses": [{"type": "Hostname", "address": "alpha"},
                             {"type": "ExternalIP", "address": "198.51.100.77"},
                             {"type": "InternalIP", "address": "192.0.2.11"}]},
}
POD = {
    "apiVersion": "v1",
    "kind": "Pod",
    "metadata": {"name": "cart-1", "namespace": "shop", "labels": {"app": "cart"},
                 "annotations": {"example.com/owner": "team-a"}},
    "spec": {"nodeName": "alpha", "containers": [{"name": "c", "image": "x"}]},
    "status": {"phase": "Running", "podIP": "203.0.113.2", "podIPs": [{"ip": "203.0.113.2"}]},
}


def refusal(doc: dict) -> str:
    with pytest.raises(InvalidObject) as info:
        parse_object(doc, "f.yaml")
    return str(info.value.error)


# -- parsing ------------------------------------------------------------------------------------------

def test_examples_parse_to_the_documented_objects():
    with open(os.path.join(EXAMPLES, "egressgateway.yaml")) as f:
        gw = parse_object(yaml.safe_load(f))
    with open(os.path.join(EXAMPLES, "egresspolicy.yaml")) as f:
        policy = parse_object(yaml.safe_load(f))
    assert gw.name == "edge"
    assert gw.pool_v4 == (netaddr.IPRange("192.0.2.200", "192.0.2.210"),)
    assert gw.node_selector.matches({"egress": "true"}) and not gw.node_selector.matches({"egress": "false"})
    assert (policy.namespace, policy.name, policy.gateway) == ("shop", "cart", "edge")
    assert policy.pod_selector.matches({"app": "cart"}) and not policy.pod_selector.matches({"app": "web"})
    assert policy.dest_subnets == (netaddr.IPNetwork("198.51.100.0/24"),)
    assert policy.eip_v4 is None and policy.priority == 0


def test_node_addresses_internal_first_cidrs_and_readiness():
    node = parse_object(NODE)
    assert node.addresses == (netaddr.IPAddress("192.0.2.11"), netaddr.IPAddress("198.51.100.77"))
    assert node.pod_cidrs == (netaddr.IPNetwork("203.0.113.0/27"), netaddr.IPNetwork("2001:db8:1::/64"))
    assert node.ready and node.labels == (("egress", "true"),)
    down = edited(NODE, "status.conditions", [{"type": "Ready", "status": "Unknown"}])
    assert parse_object(down).ready is False


def test_pod_fields_and_pods_without_a_part_in_egress_are_skipped():
    pod = parse_object(POD)
    assert (pod.key, pod.node, pod.ips) == ("shop/cart-1", "alpha", (netaddr.IPAddress("203.0.113.2"),))
    assert dict(pod.annotations) == {"example.com/owner": "team-a"}
    assert parse_object(edited(POD, "spec.nodeName", ...)) is None
    no_ip = edited(edited(POD, "status.podIP", ...), "status.podIPs", ...)
    assert parse_object(no_ip) is None
    assert parse_object(edited(POD, "status.phase", "Succeeded")) is None
    assert parse_object(edited(POD, "spec.hostNetwork", True)) is None


def test_pool_entries_single_range_and_cidr():
    gw = parse_object(edited(GATEWAY, "spec.ippools",
                             {"ipv4": ["192.0.2.250", "192.0.2.200-192.0.2.210", "192.0.2.240/30"],
                              "ipv6": ["2001:db8::10-2001:db8::1f"]}))
    assert gw.pool_v4 == (netaddr.IPRange("192.0.2.200", "192.0.2.210"),
                          netaddr.IPRange("192.0.2.240", "192.0.2.243"),
                          netaddr.IPRange("192.0.2.250", "192.0.2.250"))
    assert gw.pool_v6 == (netaddr.IPRange("2001:db8::10", "2001:db8::1f"),)


def test_selector_expressions():
    sel = {"matchExpressions": [{"key": "tier", "operator": "In", "values": ["a", "b"]},
                                {"key": "legacy", "operator": "DoesNotExist"}]}
    policy = parse_object(edited(POLICY, "spec.appliedTo.podSelector", sel))
    assert policy.pod_selector.matches({"tier": "b"})
    assert not policy.pod_selector.matches({"tier": "c"})
    assert not policy.pod_selector.matches({"tier": "a", "legacy": "yes"})


@pytest.mark.parametrize("doc, expected", [
    (edited(POLICY, "spec.destSubnet", ["198.51.100.0/24", "10.0.0.0/33"]),
     'EgressPolicy shop/cart: spec.destSubnet[1]: "10.0.0.0/33" is not a CIDR (f.yaml)'),
    (edited(POLICY, "spec.excludeSubnet", ["198.51.100.7/24"]),
     'EgressPolicy shop/cart: spec.excludeSubnet[0]: "198.51.100.7/24" is not a CIDR: host bits are set '
     '(the network is 198.51.100.0/24) (f.yaml)'),
    (edited(POLICY, "spec.destSubnets", ["198.51.100.0/24"]),
     'EgressPolicy shop/cart: spec.destSubnets: unknown key "destSubnets"; allowed: appliedTo, destSubnet, '
     'egressGatewayName, egressIP, excludeSubnet, priority (f.yaml)'),
    (edited(POLICY, "spec.priority", "high"),
     "EgressPolicy shop/cart: spec.priority: must be an integer, not a string (f.yaml)"),
    (edited(POLICY, "spec.destSubnet", "198.51.100.0/24"),
     "EgressPolicy shop/cart: spec.destSubnet: must be a list of CIDR strings, not a string (f.yaml)"),
    (edited(POLICY, "spec.appliedTo.podSelector",
            {"matchExpressions": [{"key": "app", "operator": "Matches", "values": ["cart"]}]}),
     'EgressPolicy shop/cart: spec.appliedTo.podSelector.matchExpressions[0].operator: "Matches" is not an '
     "operator; allowed: In, NotIn, Exists, DoesNotExist (f.yaml)"),
    (edited(POLICY, "spec.appliedTo.podSelector", {"matchLabels": {"app cart": "x"}}),
     'EgressPolicy shop/cart: spec.appliedTo.podSelector.matchLabels: "app cart" is not a valid label key: '
     'an optional DNS subdomain prefix and "/", then a name of at most 63 letters, digits, "-", "_" or ".", '
     "starting and ending with a letter or digit (f.yaml)"),
    (edited(POLICY, "spec.appliedTo.podSelector", {"matchExpressions": [{"key": "app", "operator": "In"}]}),
     "EgressPolicy shop/cart: spec.appliedTo.podSelector.matchExpressions[0].values: must list at least one "
     "value for operator In (f.yaml)"),
    (edited(POLICY, "spec.appliedTo.podSelector", "app=cart"),
     "EgressPolicy shop/cart: spec.appliedTo.podSelector: must be a label selector (a mapping with "
     "matchLabels and/or matchExpressions), not a string (f.yaml)"),
    (edited(POLICY, "spec.egressIP", {"ipv4": "2001:db8::1"}),
     'EgressPolicy shop/cart: spec.egressIP.ipv4: "2001:db8::1" is not an IPv4 address (f.yaml)'),
    (edited(POLICY, "spec.egressGatewayName", 7),
     "EgressPolicy shop/cart: spec.egressGatewayName: must be the name of an EgressGateway, not a number "
     '(quote it: "7") (f.yaml)'),
    (edited(POLICY, "spec.priority", 5000),
     "EgressPolicy shop/cart: spec.priority: 5000 is out of range 0..1000 (f.yaml)"),
    (edited(POLICY, "apiVersion", "sdn-egress.io/v1"),
     'EgressPolicy shop/cart: apiVersion: "sdn-egress.io/v1" is not served for EgressPolicy; use '
     "sdn-egress.io/v1alpha1 (f.yaml)"),
    (edited(POLICY, "kind", "EgressPolcy"),
     'EgressPolcy cart: kind: "EgressPolcy" is not a kind of sdn-egress.io; known kinds: '
     "EgressClusterPolicy, EgressGateway, EgressPolicy (f.yaml)"),
    (edited(POLICY, "metadata.name", ...),
     "EgressPolicy shop/(unnamed): metadata.name: is required (f.yaml)"),
    (edited(POLICY, "metadata.name", "Cart"),
     'EgressPolicy shop/Cart: metadata.name: "Cart" is not a valid name: lowercase letters, digits, "-" and '
     '".", starting and ending with a letter or digit, at most 253 characters (f.yaml)'),
    (edited(GATEWAY, "spec.nodeSelector.matchLabels.egress", True),
     'EgressGateway edge: spec.nodeSelector.matchLabels.egress: must be a string, not a boolean '
     '(quote it: "true") (f.yaml)'),
    (edited(GATEWAY, "spec.ippools.ipv4", ["192.0.2.210-192.0.2.200"]),
     'EgressGateway edge: spec.ippools.ipv4[0]: "192.0.2.210-192.0.2.200" is not a range: 192.0.2.200 '
     "comes before 192.0.2.210 (f.yaml)"),
    (edited(GATEWAY, "spec.ippools.ipv4", ["192.0.2.200-192.0.2.210", "192.0.2.208/29"]),
     'EgressGateway edge: spec.ippools.ipv4[1]: "192.0.2.208/29" overlaps "192.0.2.200-192.0.2.210" '
     "(spec.ippools.ipv4[0]) (f.yaml)"),
    (edited(GATEWAY, "spec.ippools.ipv4", ["2001:db8::1"]),
     'EgressGateway edge: spec.ippools.ipv4[0]: "2001:db8::1" is not an IPv4 address, range (first-last) '
     "or CIDR (f.yaml)"),
    (edited(GATEWAY, "spec.ippools", {"ipv4": [], "ipv6": []}),
     "EgressGateway edge: spec.ippools: must hold at least one address in ipv4 or ipv6 (f.yaml)"),
    (edited(GATEWAY, "spec.ippool", {}),
     'EgressGateway edge: spec.ippool: unknown key "ippool"; allowed: clusterDefault, ippools, namespaceSelector, nodeSelector '
     "(f.yaml)"),
    (edited(NODE, "spec.podCIDR", "203.0.113.0/99"),
     'Node alpha: spec.podCIDR: "203.0.113.0/99" is not a CIDR (f.yaml)'),
    (edited(NODE, "status.addresses", [{"type": "InternalIP", "address": "192.0.2.300"}]),
     'Node alpha: status.addresses[0].address: "192.0.2.300" is not an IP address (f.yaml)'),
    (edited(POD, "status.podIP", "203.0.113"),
     'Pod shop/cart-1: status.podIP: "203.0.113" is not an IP address (f.yaml)'),
])
def test_refusals_name_object_field_and_what_is_allowed(doc, expected):
    assert refusal(doc) == expected


def test_other_kinds_are_not_ours():
    assert parse_object({"apiVersion": "apps/v1", "kind": "Deployment", "metadata": {"name": "x"}}) is None


# -- the manifest directory ---------------------------------------------------------------------------

NODES_YAML = yaml.safe_dump_all([node("alpha", 0, ready=None), node("beta", 1, egress=False, ready=None)],
                               sort_keys=False)


@pytest.fixture
def mdir(tmp_path):
    write(tmp_path, "nodes.yaml", NODES_YAML)
    write(tmp_path, "egress/gateway.yaml", [GATEWAY])
    write(tmp_path, "egress/policy.yaml", [POLICY])
    return tmp_path


def messages(state) -> list[str]:
    return [str(e) for e in state.errors]


def test_directory_snapshot(mdir):
    write(mdir, "pods.json", json.dumps({"kind": "List", "apiVersion": "v1", "items": [POD]}))
    write(mdir, ".hidden.yaml", "not: [valid")
    write(mdir, "README.txt", "not a manifest")
    state = ManifestDirSource(str(mdir), extra_cluster_cidrs=["10.96.0.0/12"]).snapshot()
    assert state.errors == ()
    assert sorted(state.nodes) == ["alpha", "beta"]
    assert list(state.gateways) == ["edge"] and list(state.policies) == ["shop/cart"]
    assert list(state.pods) == ["shop/cart-1"]
    assert netaddr.IPNetwork("10.96.0.0/12") in state.cluster_cidrs(4)


def test_bad_objects_beside_good_ones_leave_them_intact(mdir):
    bad_cidr = edited(edited(POLICY, "metadata.name", "web"), "spec.destSubnet", ["10.0.0.0/33"])
    far_eip = edited(edited(POLICY, "metadata.name", "far"), "spec.egressIP", {"ipv4": "192.0.2.50"})
    lost = edited(edited(POLICY, "metadata.name", "lost"), "spec.egressGatewayName", "nowhere")
    write(mdir, "more.yaml", [bad_cidr, far_eip, lost, {"kind": "EgressPolicy"}])
    write(mdir, "zz-broken.yaml", "apiVersion: v1\nkind: Node\nmetadata: {name: [gamma\n")
    state = ManifestDirSource(str(mdir)).snapshot()
    more = os.path.join(str(mdir), "more.yaml")
    found = messages(state)
    # The YAML parser's own wording (libyaml or pure Python) follows the position.
    assert found[2].startswith(f"File {os.path.join(str(mdir), 'zz-broken.yaml')}: line 4, column 1: "
                               "not valid YAML: ")
    assert found[:2] + found[3:] == [
        f'EgressPolicy shop/web: spec.destSubnet[0]: "10.0.0.0/33" is not a CIDR ({more}, document 1)',
        f"EgressPolicy default/(unnamed): apiVersion: is required ({more}, document 4)",
        f'EgressPolicy shop/far: spec.egressIP.ipv4: "192.0.2.50" is not in the pool of EgressGateway edge '
        f"(192.0.2.200-192.0.2.210) ({more}, document 2)",
        f'EgressPolicy shop/lost: spec.egressGatewayName: no EgressGateway named "nowhere" ({more}, document 3)',
    ]
    assert list(state.policies) == ["shop/cart"]
    assert state.policies["shop/cart"].dest_subnets == (netaddr.IPNetwork("198.51.100.0/24"),)
    assert sorted(state.nodes) == ["alpha", "beta"] and list(state.gateways) == ["edge"]


def test_duplicate_is_refused_in_the_later_file(mdir):
    write(mdir, "zz-copy.yaml", [edited(POLICY, "spec.destSubnet", ["203.0.113.0/24"])])
    state = ManifestDirSource(str(mdir)).snapshot()
    first = os.path.join(str(mdir), "egress", "policy.yaml")
    assert messages(state) == [
        f"EgressPolicy shop/cart: metadata.name: duplicate: EgressPolicy shop/cart is already defined in "
        f"{first} ({os.path.join(str(mdir), 'zz-copy.yaml')})"]
    assert state.policies["shop/cart"].dest_subnets == (netaddr.IPNetwork("198.51.100.0/24"),)


def test_explicit_eip_claimed_twice_goes_to_the_first_and_stays_with_its_holder(mdir):
    write(mdir, "egress/policy.yaml", [edited(POLICY, "spec.egressIP", {"ipv4": "192.0.2.205"})])
    src = ManifestDirSource(str(mdir))
    assert src.snapshot().policies["shop/cart"].eip_v4 == netaddr.IPAddress("192.0.2.205")
    # A newcomer that sorts first asks for the same EIP: the holder keeps it.
    newcomer = edited(edited(POLICY, "metadata.name", "aaa"), "spec.egressIP", {"ipv4": "192.0.2.205"})
    write(mdir, "aaa.yaml", [newcomer])
    state = src.snapshot()
    assert list(state.policies) == ["shop/cart"]
    assert messages(state) == [
        'EgressPolicy shop/aaa: spec.egressIP.ipv4: "192.0.2.205" is already the egress IP of EgressPolicy '
        f"shop/cart ({os.path.join(str(mdir), 'aaa.yaml')})"]
    # A fresh source has no history: the first by namespace/name wins.
    assert list(ManifestDirSource(str(mdir)).snapshot().policies) == ["shop/aaa"]


def test_an_invalid_edit_keeps_the_last_valid_version(mdir):
    src = ManifestDirSource(str(mdir))
    src.snapshot()
    path = write(mdir, "egress/policy.yaml", [edited(POLICY, "spec.destSubnet", ["198.51.100.0/33"])])
    state = src.snapshot()
    assert state.policies["shop/cart"].dest_subnets == (netaddr.IPNetwork("198.51.100.0/24"),)
    assert messages(state) == [
        f'EgressPolicy shop/cart: spec.destSubnet[0]: "198.51.100.0/33" is not a CIDR; its last valid '
        f"version stays in force ({path})"]
    write(mdir, "egress/policy.yaml", "kind: EgressPolicy\nspec: [unclosed\n")
    state = src.snapshot()
    assert list(state.policies) == ["shop/cart"]
    assert messages(state)[0].endswith("; the last valid objects it held stay in force")
    os.unlink(path)
    assert src.snapshot().policies == {}


def test_change_detection_on_add_modify_delete(mdir):
    src = ManifestDirSource(str(mdir))
    assert src.wait_for_change(0)  # nothing read yet
    src.snapshot()
    assert not src.wait_for_change(0)
    assert not src.wait_for_change(0.3)

    write(mdir, "egress/second.yaml", [edited(POLICY, "metadata.name", "second")])
    assert src.wait_for_change(5)
    assert sorted(src.snapshot().policies) == ["shop/cart", "shop/second"]
    assert not src.wait_for_change(0)

    # Same size, rewritten at once: the mtime may not move; the content does.
    write(mdir, "egress/second.yaml", [edited(POLICY, "metadata.name", "secxnd")])
    assert src.wait_for_change(5)
    assert sorted(src.snapshot().policies) == ["shop/cart", "shop/secxnd"]

    os.unlink(os.path.join(mdir, "egress", "second.yaml"))
    assert src.wait_for_change(5)
    assert sorted(src.snapshot().policies) == ["shop/cart"]
    assert not src.wait_for_change(0)


def test_missing_directory_is_an_error_not_a_crash(tmp_path):
    state = ManifestDirSource(str(tmp_path / "absent")).snapshot()
    assert state.policies == {}
    assert [e.ref for e in state.errors] == [ObjectRef("Directory", "", str(tmp_path / "absent"))]


def test_rewrite_that_keeps_size_and_mtime_is_still_seen(mdir):
    path = os.path.join(mdir, "egress", "policy.yaml")
    src = ManifestDirSource(str(mdir))
    src.snapshot()
    st = os.stat(path)
    with open(path) as f:
        text = f.read()
    with open(path, "w") as f:
        f.write(text.replace("name: cart", "name: cbrt"))
    os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns))  # as if within one timestamp tick
    assert os.stat(path).st_size == st.st_size
    assert src.wait_for_change(0)
    assert list(src.snapshot().policies) == ["shop/cbrt"]


def test_a_key_given_twice_is_an_error_not_an_overwrite(mdir):
    path = write(mdir, "egress/policy.yaml", yaml.safe_dump(POLICY) + "kind: EgressGateway\n")
    state = ManifestDirSource(str(mdir)).snapshot()
    assert state.policies == {}
    assert [str(e) for e in state.errors][0].startswith(f"File {path}: line ")
    assert 'found duplicate key "kind"' in str(state.errors[0])


# -- the new fields ------------------------------------------------------------------------------------

CLUSTER_POLICY = {
    "apiVersion": "sdn-egress.io/v1alpha1",
    "kind": "EgressClusterPolicy",
    "metadata": {"name": "prod"},
    "spec": {"appliedTo": {"namespaceSelector": {"matchLabels": {"env": "prod"}},
                           "podSelector": {"matchLabels": {"tier": "web"}}},
             "egressIP": {"allocatorPolicy": "rr"}},
}


def test_cluster_policy_pod_subnet_and_egress_ip_options():
    cp = parse_object(CLUSTER_POLICY)
    assert (cp.ref, cp.key, cp.cluster, cp.gateway, cp.allocator) == (
        ObjectRef("EgressClusterPolicy", "", "prod"), "prod", True, "", "rr")
    assert cp.namespace_selector.matches({"env": "prod"})
    by_subnet = parse_object(edited(POLICY, "spec.appliedTo", {"podSubnet": ["203.0.113.0/27"]}))
    assert by_subnet.pod_selector is None and by_subnet.pod_subnets == (netaddr.IPNetwork("203.0.113.0/27"),)
    node_ip = parse_object(edited(POLICY, "spec.egressIP", {"useNodeIP": True}))
    assert node_ip.use_node_ip and node_ip.eip_v4 is None
    gw = parse_object(edited(edited(GATEWAY, "spec.clusterDefault", True), "metadata.deletionTimestamp",
                             "2024-01-01T00:00:00Z"))
    assert gw.cluster_default and gw.deleting


@pytest.mark.parametrize("doc, expected", [
    (edited(POLICY, "spec.appliedTo", {"podSubnet": []}),
     "EgressPolicy shop/cart: spec.appliedTo.podSubnet: must list at least one CIDR"),
    (edited(POLICY, "spec.egressIP", {"useNodeIP": "yes"}),
     "EgressPolicy shop/cart: spec.egressIP.useNodeIP: must be a boolean, not a string (write true or false, "
     "unquoted)"),
    (edited(POLICY, "spec.egressIP", {"useNodeIP": True, "ipv6": "2001:db8::1"}),
     "EgressPolicy shop/cart: spec.egressIP.useNodeIP: cannot be combined with an explicit egress IP "
     "(spec.egressIP.ipv6): give one or the other"),
    (edited(GATEWAY, "spec.nodeSelector", ...),
     "EgressGateway edge: spec.nodeSelector: is required: a label selector of the nodes that may hold the EIPs "
     "({} selects every node)"),
    (edited(GATEWAY, "spec.ippools", {"ipv4": ["192.0.2.200-192.0.2.201"], "ipv6": ["2001:db8::/127", "2001:db8::9"]}),
     "EgressGateway edge: spec.ippools: IPv4 and IPv6 addresses must pair up: 2 IPv4 and 3 IPv6 addresses (in a "
     "dual-stack gateway the n-th IPv4 address pairs with the n-th IPv6 address: give as many of each)"),
])
def test_refusals_of_the_new_fields(doc, expected):
    assert refusal(doc) == expected + " (f.yaml)"


def test_dual_stack_pairs_by_position():
    gw = parse_object(edited(GATEWAY, "spec.ippools", {"ipv4": ["192.0.2.250", "192.0.2.200-192.0.2.201"],
                                                       "ipv6": ["2001:db8::8-2001:db8::a"]}))
    pairs = {str(ip): str(gw.pair_of(netaddr.IPAddress(ip))) for ip in ("192.0.2.200", "192.0.2.201", "192.0.2.250")}
    assert pairs == {"192.0.2.200": "2001:db8::8", "192.0.2.201": "2001:db8::9", "192.0.2.250": "2001:db8::a"}
    assert str(gw.pair_of(netaddr.IPAddress("2001:db8::a"))) == "192.0.2.250"


def test_eip_and_gateway_name_are_immutable_once_set(mdir):
    path = write(mdir, "egress/policy.yaml", [edited(POLICY, "spec.egressIP", {"ipv4": "192.0.2.205"})])
    src = ManifestDirSource(str(mdir))
    assert src.snapshot().policies["shop/cart"].eip_v4 == netaddr.IPAddress("192.0.2.205")
    write(mdir, "egress/policy.yaml", [edited(POLICY, "spec.egressIP", {"ipv4": "192.0.2.206"})])
    state = src.snapshot()
    assert state.policies["shop/cart"].eip_v4 == netaddr.IPAddress("192.0.2.205")
    assert messages(state) == [
        'EgressPolicy shop/cart: spec.egressIP.ipv4: is immutable once set (it is "192.0.2.205"): delete the '
        f"EgressPolicy and create it anew to change it; its last valid version stays in force ({path})"]
    write(mdir, "egress/policy.yaml", [edited(edited(POLICY, "spec.egressIP", {"ipv4": "192.0.2.205"}),
                                              "spec.egressGatewayName", "west")])
    assert messages(src.snapshot())[0].startswith(
        'EgressPolicy shop/cart: spec.egressGatewayName: is immutable once set (it is "edge")')
    # Other fields change freely; deleting and re-creating allows a new EIP.
    write(mdir, "egress/policy.yaml", [edited(edited(POLICY, "spec.egressIP", {"ipv4": "192.0.2.205"}),
                                              "spec.priority", 7)])
    assert src.snapshot().policies["shop/cart"].priority == 7
    os.unlink(path)
    src.snapshot()
    write(mdir, "egress/policy.yaml", [edited(POLICY, "spec.egressIP", {"ipv4": "192.0.2.206"})])
    assert src.snapshot().policies["shop/cart"].eip_v4 == netaddr.IPAddress("192.0.2.206")


# -- which pods a policy selects (EgressPolicy.selects, sdn_egress.view.selected_policies) -----------------

def _pod(ns, name, ip, labels=None, annotations=None):
    from sdn_egress.model import Pod, frozen_labels
    return Pod(namespace=ns, name=name, node="alpha", labels=frozen_labels(labels),
               ips=(netaddr.IPAddress(ip),), annotations=frozen_labels(annotations))


def test_a_namespaced_policy_selects_pods_of_its_namespace_only():
    cart = parse_object(POLICY)
    assert cart.selects(_pod("shop", "a", "203.0.113.2", {"app": "cart"}))
    assert not cart.selects(_pod("other", "a", "203.0.113.3", {"app": "cart"}))
    by_subnet = parse_object(edited(POLICY, "spec.appliedTo", {"podSubnet": ["203.0.113.0/28"]}))
    assert by_subnet.selects(_pod("shop", "a", "203.0.113.2"))
    assert not by_subnet.selects(_pod("shop", "b", "203.0.113.20"))
    assert not by_subnet.selects(_pod("other", "c", "203.0.113.2"))


def test_the_pod_annotation_joins_a_policy_of_the_pods_namespace():
    cart = parse_object(POLICY)
    note = {"sdn-egress.io/egress-policy": "cart"}
    assert cart.selects(_pod("shop", "x", "203.0.113.9", {"app": "other"}, note))
    assert not cart.selects(_pod("other", "x", "203.0.113.9", {}, note))
    assert not cart.selects(_pod("shop", "y", "203.0.113.9", {}, {"sdn-egress.io/egress-policy": "web"}))


def test_cluster_policy_selects_by_namespace_selector():
    from sdn_egress.model import ClusterState, Namespace

    cp = parse_object(CLUSTER_POLICY)
    st = ClusterState(namespaces={"a": Namespace("a", (("env", "prod"),)), "b": Namespace("b")})
    web = {"tier": "web"}
    assert cp.selects(_pod("a", "p", "203.0.113.2", web), st.namespace_labels("a"))
    assert not cp.selects(_pod("b", "p", "203.0.113.3", web), st.namespace_labels("b"))
    assert not cp.selects(_pod("a", "q", "203.0.113.4", {"tier": "db"}), st.namespace_labels("a"))
    # Every namespace carries its name label, whether or not the state holds its object.
    by_name = parse_object(edited(CLUSTER_POLICY, "spec.appliedTo.namespaceSelector",
                                  {"matchLabels": {"kubernetes.io/metadata.name": "c"}}))
    assert by_name.selects(_pod("c", "p", "203.0.113.5", web), st.namespace_labels("c"))
    anywhere = parse_object(edited(CLUSTER_POLICY, "spec.appliedTo.namespaceSelector", ...))
    assert anywhere.selects(_pod("b", "p", "203.0.113.3", web), st.namespace_labels("b"))


def test_steering_order_priority_then_namespaced_before_cluster():
    from flows.view import Ports
    from sdn_egress.allocation import allocate
    from sdn_egress.model import ClusterState, EgressGateway, LabelSelector, Namespace, Node
    from sdn_egress.view import NodeFacts, build_view, selected_policies

    gw = EgressGateway("edge", LabelSelector(), pool_v4=(netaddr.IPRange("192.0.2.200", "192.0.2.210"),),
                       cluster_default=True)
    node = Node("alpha", (), (netaddr.IPAddress("192.0.2.11"),), (netaddr.IPNetwork("203.0.113.0/27"),))
    cart = parse_object(POLICY)  # shop/cart: 198.51.100.0/24, priority 0
    cp = parse_object(edited(CLUSTER_POLICY, "spec.destSubnet", ["198.51.100.0/24"]))
    cp_high = parse_object(edited(edited(edited(CLUSTER_POLICY, "metadata.name", "high"), "spec.priority", 10),
                                  "spec.destSubnet", ["198.51.100.0/25"]))
    pod = _pod("shop", "p", "203.0.113.2", {"app": "cart", "tier": "web"})
    st = ClusterState(nodes={"alpha": node}, namespaces={"shop": Namespace("shop", (("env", "prod"),))},
                      pods={pod.key: pod}, gateways={"edge": gw},
                      policies={p.key: p for p in (cart, cp, cp_high)})
    alloc = allocate(st)
    assert [p.key for p in selected_policies(st, alloc, pod)] == ["high", "shop/cart", "prod"]
    facts = NodeFacts(ports=Ports(egw=1, tun_flow=2), egw_mac="02:00:00:00:00:01", brex_mac="02:00:00:00:00:02")
    steers = build_view("alpha", st, alloc, facts).steers
    assert [(str(s.dest), s.policy) for s in steers] == [("198.51.100.0/25", "high"),
                                                         ("198.51.100.128/25", "shop/cart")]

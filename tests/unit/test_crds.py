"""The CRDs (k8s/crds, rendered from sdn_egress.kube.crds): structure, schema, CEL rules."""
from __future__ import annotations

import copy
import os

import pytest
import yaml

from sdn_egress.kube import crds
from sdn_egress.model.manifests import parse_object
from sdn_egress.model import InvalidObject

celpy = pytest.importorskip("celpy")
import k8scel  # noqa: E402 - Kubernetes' IP/CIDR CEL functions, for cel-python

CRD_DIR = os.path.join(os.path.dirname(__file__), "..", "..", "k8s", "crds")
KINDS = ("EgressGateway", "EgressPolicy", "EgressClusterPolicy")


def load(kind: str) -> dict:
    with open(os.path.join(CRD_DIR, crds.FILES[kind])) as f:
        return yaml.safe_load(f)


@pytest.mark.parametrize("kind", KINDS)
def test_files_are_rendered_from_the_module(kind):
    with open(os.path.join(CRD_DIR, crds.FILES[kind])) as f:
        assert f.read() == crds.render(kind), "run: python -m sdn_egress.kube.crds k8s/crds"
    assert sorted(os.listdir(CRD_DIR)) == sorted(crds.FILES.values())


@pytest.mark.parametrize("kind, plural, scope", [
    ("EgressGateway", "egressgateways", "Cluster"),
    ("EgressPolicy", "egresspolicies", "Namespaced"),
    ("EgressClusterPolicy", "egressclusterpolicies", "Cluster"),
])
def test_crd_shape(kind, plural, scope):
    crd = load(kind)
    assert (crd["apiVersion"], crd["kind"]) == ("apiextensions.k8s.io/v1", "CustomResourceDefinition")
    assert crd["metadata"]["name"] == f"{plural}.sdn-egress.io"
    spec = crd["spec"]
    assert (spec["group"], spec["scope"], spec["names"]["kind"], spec["names"]["plural"]) == (
        "sdn-egress.io", scope, kind, plural)
    [version] = spec["versions"]
    assert (version["name"], version["served"], version["storage"]) == ("v1alpha1", True, True)
    assert version["subresources"] == {"status": {}}
    columns = {c["name"]: c["jsonPath"] for c in version["additionalPrinterColumns"]}
    assert columns["Ready"] == '.status.conditions[?(@.type=="Ready")].status'
    if kind != "EgressGateway":
        assert columns["IPv4"] == ".status.eip.ipv4" and columns["Node"] == ".status.node"
        assert columns["Gateway"] == ".status.gateway"
    else:
        assert columns["IPv4 Free"] == ".status.ipUsage.ipv4Free"


def walk(schema: dict, path: str = ""):
    yield path, schema
    for key, sub in (schema.get("properties") or {}).items():
        yield from walk(sub, f"{path}.{key}")
    if isinstance(schema.get("items"), dict):
        yield from walk(schema["items"], f"{path}[]")
    if isinstance(schema.get("additionalProperties"), dict):
        yield from walk(schema["additionalProperties"], f"{path}.*")


@pytest.mark.parametrize("kind", KINDS)
def test_schemas_are_structural(kind):
    """What the API server demands of a v1 CRD schema: a type everywhere, no
    properties beside additionalProperties, list-map keys required."""
    schema = load(kind)["spec"]["versions"][0]["schema"]["openAPIV3Schema"]
    for path, node in walk(schema):
        assert node.get("type") in ("object", "array", "string", "integer", "boolean", "number"), path
        assert not ("properties" in node and "additionalProperties" in node), path
        if node.get("x-kubernetes-list-type") == "map":
            assert set(node["x-kubernetes-list-map-keys"]) <= set(node["items"]["required"]), path
        if node["type"] == "array":
            assert "items" in node, path


# -- CEL -----------------------------------------------------------------------------------------------

def cel_violations(new, schema, old=None, path="") -> list[str]:
    """Evaluate every x-kubernetes-validations rule as the API server does:
    at each node present in ``new``; transition rules (oldSelf) only where
    ``old`` has the node too."""
    out = []
    if new is None:
        return out
    for rule in schema.get("x-kubernetes-validations", ()):
        transition = "oldSelf" in rule["rule"]
        if transition and old is None:
            continue
        act = {"self": celpy.json_to_cel(new)}
        if transition:
            act["oldSelf"] = celpy.json_to_cel(old)
        if not k8scel.evaluate(rule["rule"], act):
            out.append(f"{path or '<root>'}: {rule['message']}")
    for key, sub in (schema.get("properties") or {}).items():
        if isinstance(new, dict) and key in new:
            out += cel_violations(new[key], sub, old.get(key) if isinstance(old, dict) else None,
                                  f"{path}.{key}".lstrip("."))
    if isinstance(new, list) and isinstance(schema.get("items"), dict):
        for i, item in enumerate(new):
            out += cel_violations(item, schema["items"], None, f"{path}[{i}]")
    return out


POLICY = {"apiVersion": "sdn-egress.io/v1alpha1", "kind": "EgressPolicy",
          "metadata": {"name": "cart", "namespace": "shop"},
          "spec": {"egressGatewayName": "edge", "appliedTo": {"podSelector": {"matchLabels": {"app": "cart"}}}}}
GATEWAY = {"apiVersion": "sdn-egress.io/v1alpha1", "kind": "EgressGateway", "metadata": {"name": "edge"},
           "spec": {"nodeSelector": {}, "ippools": {"ipv4": ["192.0.2.200-192.0.2.210"]}}}


def with_spec(doc, **spec):
    doc = copy.deepcopy(doc)
    doc["spec"].update(spec)
    return doc


CASES = [
    # (document, the CEL message it breaks, or None)
    (POLICY, None),
    (with_spec(POLICY, appliedTo={"podSubnet": ["203.0.113.0/27"]}), None),
    (with_spec(POLICY, appliedTo={"podSelector": {}, "podSubnet": ["203.0.113.0/27"]}),
     "spec.appliedTo: appliedTo needs exactly one of podSelector and podSubnet"),
    (with_spec(POLICY, appliedTo={}), "spec.appliedTo: appliedTo needs exactly one of podSelector and podSubnet"),
    (with_spec(POLICY, egressIP={"useNodeIP": True}), None),
    (with_spec(POLICY, egressIP={"useNodeIP": True, "ipv4": "192.0.2.201"}),
     "spec.egressIP: useNodeIP cannot be combined with an explicit egress IP (ipv4, ipv6)"),
    (with_spec(POLICY, egressIP={"useNodeIP": False, "ipv6": "2001:db8::1"}), None),
    (with_spec(POLICY, appliedTo={"podSelector": {"matchExpressions": [{"key": "a", "operator": "In"}]}}),
     "spec.appliedTo.podSelector.matchExpressions[0]: values must list at least one value for In and NotIn, "
     "none for Exists and DoesNotExist"),
    (with_spec(POLICY, appliedTo={"podSelector": {"matchExpressions": [
        {"key": "a", "operator": "Exists", "values": ["x"]}]}}),
     "spec.appliedTo.podSelector.matchExpressions[0]: values must list at least one value for In and NotIn, "
     "none for Exists and DoesNotExist"),
    (GATEWAY, None),
    (with_spec(GATEWAY, ippools={"ipv4": [], "ipv6": []}),
     "spec.ippools: ippools must hold at least one address in ipv4 or ipv6"),
    # Addresses (issue 11): what the patterns let through and the controller refuses.
    (with_spec(POLICY, destSubnet=["198.51.100.0/24", "198.51.100.7", "2001:db8::/32"]), None),
    (with_spec(POLICY, destSubnet=["198.51.100.7/24"]), f"spec.destSubnet[0]: {crds.CIDR_RULE['message']}"),
    (with_spec(POLICY, excludeSubnet=["2001:db8::1/32"]), f"spec.excludeSubnet[0]: {crds.CIDR_RULE['message']}"),
    (with_spec(POLICY, appliedTo={"podSubnet": ["203.0.113.1/27"]}),
     f"spec.appliedTo.podSubnet[0]: {crds.CIDR_RULE['message']}"),
    (with_spec(POLICY, destSubnet=[":::1"]), f"spec.destSubnet[0]: {crds.CIDR_RULE['message']}"),
    (with_spec(GATEWAY, ippools={"ipv4": ["192.0.2.200", "192.0.2.240/30", "192.0.2.201-192.0.2.210"],
                                 "ipv6": ["2001:db8::1", "2001:db8::100/126", "2001:db8::2-2001:db8::b"]}), None),
    (with_spec(GATEWAY, ippools={"ipv4": ["192.0.2.7/24"]}),
     f"spec.ippools.ipv4[0]: {crds.POOL_FORM_RULE['message']}"),
    (with_spec(GATEWAY, ippools={"ipv4": ["192.0.2.210-192.0.2.200"]}),
     f"spec.ippools.ipv4[0]: {crds.POOL4_ORDER_RULE['message']}"),
    (with_spec(GATEWAY, ippools={"ipv4": ["0.0.0.0/0"]}),
     f"spec.ippools.ipv4[0]: {crds._usable_rule(4)['message']}"),
    (with_spec(GATEWAY, ippools={"ipv4": ["127.0.0.1"]}),
     f"spec.ippools.ipv4[0]: {crds._usable_rule(4)['message']}"),
    (with_spec(GATEWAY, ippools={"ipv4": ["223.255.255.250-224.0.0.3"]}),
     f"spec.ippools.ipv4[0]: {crds._usable_rule(4)['message']}"),
    (with_spec(GATEWAY, ippools={"ipv6": ["::/0"]}), f"spec.ippools.ipv6[0]: {crds._usable_rule(6)['message']}"),
    (with_spec(GATEWAY, ippools={"ipv6": ["fe80::1-fe80::9"]}),
     f"spec.ippools.ipv6[0]: {crds._usable_rule(6)['message']}"),
    (with_spec(GATEWAY, ippools={"ipv6": ["2001:db8::/32"]}), None),
]


@pytest.mark.parametrize("doc, message", CASES)
def test_cel_rules_agree_with_the_parser(doc, message):
    found = cel_violations(doc, crds.schema(doc["kind"]))
    assert found == ([message] if message else [])
    if message:
        with pytest.raises(InvalidObject):
            parse_object(doc)
    else:
        parse_object(doc)


@pytest.mark.parametrize("old_spec, new_spec, message", [
    ({"egressIP": {"ipv4": "192.0.2.201"}}, {"egressIP": {"ipv4": "192.0.2.201"}}, None),
    ({}, {"egressIP": {"ipv4": "192.0.2.201"}}, None),  # setting one where there was none
    ({"egressIP": {"ipv4": "192.0.2.201"}}, {"egressIP": {"ipv4": "192.0.2.202"}},
     "spec: egressIP.ipv4 is immutable once set"),
    ({"egressIP": {"ipv4": "192.0.2.201"}}, {}, "spec: egressIP.ipv4 is immutable once set"),
    ({"egressIP": {"ipv6": "2001:db8::1"}}, {"egressIP": {"ipv6": "2001:db8::2"}},
     "spec: egressIP.ipv6 is immutable once set"),
    ({"egressGatewayName": "edge"}, {"egressGatewayName": "west"}, "spec: egressGatewayName is immutable once set"),
    ({"egressGatewayName": "edge"}, {}, "spec: egressGatewayName is immutable once set"),
    ({}, {"egressGatewayName": "west"}, None),
])
def test_transition_rules_make_eip_and_gateway_immutable(old_spec, new_spec, message):
    base = {"appliedTo": {"podSelector": {}}}
    old = {"apiVersion": "sdn-egress.io/v1alpha1", "kind": "EgressPolicy", "metadata": {"name": "a"},
           "spec": {**base, **old_spec}}
    new = {**old, "spec": {**base, **new_spec}}
    for kind in ("EgressPolicy", "EgressClusterPolicy"):
        assert cel_violations(new, crds.schema(kind), old) == ([message] if message else [])


# -- k8s/deploy ------------------------------------------------------------------------------------------

DEPLOY_DIR = os.path.join(os.path.dirname(__file__), "..", "..", "k8s", "deploy")


def deploy_objects() -> dict[tuple, dict]:
    """(kind, name) -> object; a Role or RoleBinding outside the sdn-egress
    namespace is under (kind, name, namespace)."""
    out = {}
    for name in sorted(os.listdir(DEPLOY_DIR)):
        with open(os.path.join(DEPLOY_DIR, name)) as f:
            for doc in yaml.safe_load_all(f):
                key = (doc["kind"], doc["metadata"]["name"])
                if doc["metadata"].get("namespace", "sdn-egress") != "sdn-egress":
                    key += (doc["metadata"]["namespace"],)
                assert key not in out, f"{name}: {key} twice"
                out[key] = doc
    return out


def rules(objs, kind, name, namespace=None):
    return objs[(kind, name) + ((namespace,) if namespace else ())]["rules"]


def allowed(rule_list, group, resource, verb, name=None) -> bool:
    return any(group in r["apiGroups"] and resource in r["resources"] and verb in r["verbs"]
               and (name is None or "resourceNames" not in r or name in r["resourceNames"]) for r in rule_list)


def test_rbac_is_least_privilege_and_covers_what_the_code_calls():
    objs = deploy_objects()
    every_rule = [r for key, o in objs.items() if key[0] in ("Role", "ClusterRole") for r in o["rules"]]
    assert all("*" not in r["verbs"] and "*" not in r["resources"] and "*" not in r["apiGroups"]
               for r in every_rule)
    ctl = rules(objs, "ClusterRole", "sdn-egress-controller")
    ctl_ns = rules(objs, "Role", "sdn-egress-controller")
    for res in ("nodes", "namespaces", "pods"):
        assert all(allowed(ctl, "", res, v) for v in ("get", "list", "watch"))
        assert not allowed(ctl, "", res, "update")
    for plural in ("egressgateways", "egresspolicies", "egressclusterpolicies"):
        assert allowed(ctl, "sdn-egress.io", f"{plural}/status", "update")
    assert allowed(ctl, "sdn-egress.io", "egressgateways", "update")  # the finalizer
    assert not allowed(ctl, "sdn-egress.io", "egresspolicies", "update")  # never a policy's spec
    assert allowed(ctl, "", "events", "create")
    assert allowed(ctl_ns, "coordination.k8s.io", "leases", "update", "sdn-egress-controller")
    assert not allowed(ctl_ns, "coordination.k8s.io", "leases", "update", "someone-else")
    assert allowed(ctl_ns, "", "configmaps", "update", "sdn-egress-allocation")
    # The allocation's records: one ConfigMap per EIP and object, listed, written and deleted.
    assert all(allowed(ctl_ns, "", "configmaps", v, "sdn-egress-eip-v4-192-0-2-200")
               for v in ("create", "list", "update", "delete"))
    for role in ("sdn-egress-controller", "sdn-egress-agent"):  # both detect the service CIDRs
        assert allowed(rules(objs, "ClusterRole", role), "networking.k8s.io", "servicecidrs", "watch")
    agent_cluster = rules(objs, "ClusterRole", "sdn-egress-agent")
    # reads the cluster; writes nothing but Events (its Node's, when its passes fail)
    assert {v for r in agent_cluster if r["resources"] != ["events"] for v in r["verbs"]} == {"get", "list", "watch"}
    assert allowed(agent_cluster, "", "events", "create") and not allowed(agent_cluster, "", "events", "update")
    agent_ns = rules(objs, "Role", "sdn-egress-agent")  # sdn-egress: the allocation ConfigMap, read only
    assert allowed(agent_ns, "", "configmaps", "watch", "sdn-egress-allocation")
    assert not allowed(agent_ns, "", "configmaps", "update", "sdn-egress-allocation")
    assert all(allowed(agent_ns, "", "configmaps", v, "sdn-egress-eip-v4-192-0-2-200") for v in ("list", "watch"))
    assert {v for r in agent_ns for v in r["verbs"]} == {"get", "list", "watch"}  # the records, read only
    leases = rules(objs, "Role", "sdn-egress-agent", "sdn-egress-agents")  # its own Lease, in its own namespace
    assert all(allowed(leases, "coordination.k8s.io", "leases", v) for v in ("create", "get", "update"))
    # `sdn-egress status` in the agent's pod lists every agent's report.
    assert all(allowed(leases, "coordination.k8s.io", "leases", v) for v in ("list", "watch"))
    assert not allowed(leases, "coordination.k8s.io", "leases", "delete")
    assert allowed(rules(objs, "Role", "sdn-egress-controller", "sdn-egress-agents"),
                   "coordination.k8s.io", "leases", "watch")
    assert ("Namespace", "sdn-egress-agents") in objs


def test_controller_deployment_and_agent_daemonset():
    objs = deploy_objects()
    ctl = objs[("Deployment", "sdn-egress-controller")]["spec"]
    assert ctl["replicas"] == 2
    [c] = ctl["template"]["spec"]["containers"]
    assert "sdn-egress controller --in-cluster" in c["args"][0]
    assert c["securityContext"]["capabilities"] == {"drop": ["ALL"]}
    assert {e["name"] for e in c["env"]} == {"POD_NAME", "POD_NAMESPACE"}
    agent = objs[("DaemonSet", "sdn-egress-agent")]["spec"]["template"]["spec"]
    assert agent["hostNetwork"] is True
    [a] = agent["containers"]
    assert a["securityContext"]["privileged"] is False
    assert a["securityContext"]["capabilities"] == {"drop": ["ALL"], "add": ["NET_ADMIN", "NET_RAW"]}
    mounts = {m["mountPath"]: m["name"] for m in a["volumeMounts"]}
    paths = {v["name"]: v["hostPath"]["path"] for v in agent["volumes"]}
    assert paths[mounts["/var/run/openvswitch"]] == "/var/run/openvswitch"
    # The container's /proc/sys is read-only: the host's /proc/sys/net, writable, where the agent looks.
    assert paths[mounts["/host/proc/sys/net"]] == "/proc/sys/net"
    assert not any(m.get("readOnly") for m in a["volumeMounts"] if m["mountPath"] == "/host/proc/sys/net")
    assert "--proc-sys-net /host/proc/sys/net" in a["args"][0]
    # OpenFlow over the Unix socket in the OVS run directory, no TCP.
    assert "--listen punix:/var/run/openvswitch/sdn-egress.sock" in a["args"][0] and "6653" not in a["args"][0]
    assert "--in-cluster" in a["args"][0] and {e["name"] for e in a["env"]} == {"NODE_NAME", "POD_NAMESPACE"}
    assert objs[("ConfigMap", "sdn-egress-config")]["data"]["CLUSTER_CIDRS"]

"""The CustomResourceDefinitions of sdn-egress.io, as data.

This module is the one source of the CRDs: ``k8s/crds/*.yaml`` is rendered
from it (``python -m sdn_egress.kube.crds k8s/crds``; a test keeps the files in
step), and ``sdn-egress validate`` checks manifests against the same
``openAPIV3Schema``.  Rules across fields are CEL (``x-kubernetes-validations``):
exactly one of podSelector/podSubnet, useNodeIP xor an explicit EIP, and the
transition rules that make a policy's EIP and gateway name immutable once set.
The controller's parser (``sdn_egress.model.manifests``) enforces the same rules
with its own messages, so a cluster without CEL (or the manifest directory)
behaves alike.
"""
from __future__ import annotations

import copy
import os
import sys
from typing import Any

import yaml

from sdn_egress.model import API_GROUP, API_VERSION

# Patterns (RE2 and Python alike) and what they stand for, in messages.
IPV4 = r"(25[0-5]|2[0-4][0-9]|1[0-9][0-9]|[1-9]?[0-9])(\.(25[0-5]|2[0-4][0-9]|1[0-9][0-9]|[1-9]?[0-9])){3}"
IPV6 = r"[0-9A-Fa-f:.]*:[0-9A-Fa-f:.]*"
IPV4_PATTERN = f"^{IPV4}$"
IPV6_PATTERN = f"^{IPV6}$"
CIDR_PATTERN = rf"^({IPV4}(/([0-9]|[12][0-9]|3[0-2]))?|{IPV6}(/([0-9]|[1-9][0-9]|1[01][0-9]|12[0-8]))?)$"
POOL4_PATTERN = rf"^{IPV4}(/([0-9]|[12][0-9]|3[0-2])|-{IPV4})?$"
POOL6_PATTERN = rf"^{IPV6}(/([0-9]|[1-9][0-9]|1[01][0-9]|12[0-8])|-{IPV6})?$"
NAME_PATTERN = r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$"
PATTERN_MEANING = {
    IPV4_PATTERN: "an IPv4 address",
    IPV6_PATTERN: "an IPv6 address",
    CIDR_PATTERN: "a CIDR (or a bare address)",
    POOL4_PATTERN: "an IPv4 address, range (first-last) or CIDR",
    POOL6_PATTERN: "an IPv6 address, range (first-last) or CIDR",
    NAME_PATTERN: 'a name: lowercase letters, digits, "-" and ".", starting and ending with a letter or digit',
}
MAX_LIST = 256
PRIORITY_MAX = 1000

# CEL rules on addresses, with Kubernetes' IP and CIDR libraries (1.31+) and the
# strings extension: what the patterns cannot say, so the API server refuses at
# the door what the controller would refuse (host bits, reversed IPv4 ranges,
# addresses that cannot be an EIP).  Every rule is guarded so that it never
# fails to evaluate on a string the pattern let through.
_NET = "(isCIDR(self) && cidr(self) == cidr(self).masked())"
CIDR_RULE = {
    "rule": f"self.contains('/') ? {_NET} : isIP(self)",
    "message": "must be an address or a CIDR with no host bits set (198.51.100.0/24, not 198.51.100.7/24)",
}
_ENDS = "(size(self.split('-')) == 2 && isIP(self.split('-')[0]) && isIP(self.split('-')[1]))"
POOL_FORM_RULE = {
    "rule": f"self.contains('/') ? {_NET} : self.contains('-') ? {_ENDS} : isIP(self)",
    "message": "must be an address, a range first-last or a CIDR with no host bits set",
}


def _v4_value(s: str) -> str:
    return " + ".join(f"int({s}.split('.')[{i}]) * {256 ** (3 - i)}" for i in range(4))


_FIRST, _LAST = "self.split('-')[0]", "self.split('-')[1]"
POOL4_ORDER_RULE = {
    "rule": (f"!self.contains('-') || self.contains(':') || !{_ENDS} || "
             f"{_v4_value(_FIRST)} <= {_v4_value(_LAST)}"),
    "message": "a range must go from its first address to its last (first <= last)",
}
# The controller's list (sdn_egress.model.manifests.UNUSABLE); a range is judged by its ends here.
_UNUSABLE = {4: ("0.0.0.0/8", "127.0.0.0/8", "169.254.0.0/16", "224.0.0.0/4", "255.255.255.255/32"),
             6: ("::/128", "::1/128", "fe80::/10", "ff00::/8")}


def _usable_rule(version: int) -> dict:
    def clear_of(bad: str) -> str:
        first = bad.split("/")[0]
        return (f"(self.contains('/') ? !(cidr(self).containsIP('{first}') || cidr('{bad}').containsCIDR(self)) : "
                f"self.contains('-') ? !(cidr('{bad}').containsIP(self.split('-')[0]) || "
                f"cidr('{bad}').containsIP(self.split('-')[1])) : !cidr('{bad}').containsIP(self))")
    checks = " && ".join(clear_of(b) for b in _UNUSABLE[version])
    return {"rule": f"!({POOL_FORM_RULE['rule']}) || ({checks})",
            "message": "must not include an address that cannot be an egress IP (" + ", ".join(_UNUSABLE[version])
                       + ")"}


def _ruled(schema: dict, *rules: dict) -> dict:
    return {**schema, "x-kubernetes-validations": list(rules)}


def _string(pattern: str, description: str, max_length: int = 100) -> dict:
    return {"type": "string", "pattern": pattern, "maxLength": max_length, "description": description}


def _list(items: dict, description: str, min_items: int = 0) -> dict:
    out = {"type": "array", "items": items, "maxItems": MAX_LIST, "description": description}
    if min_items:
        out["minItems"] = min_items
    return out


def label_selector(description: str) -> dict:
    return {
        "type": "object",
        "description": description,
        "x-kubernetes-map-type": "atomic",
        "properties": {
            "matchLabels": {"type": "object", "additionalProperties": {"type": "string", "maxLength": 63},
                            "description": "label key -> value; all must match"},
            "matchExpressions": {
                "type": "array",
                "maxItems": 64,
                "description": "requirements; all must match",
                "items": {
                    "type": "object",
                    "required": ["key", "operator"],
                    "properties": {
                        "key": {"type": "string", "maxLength": 317},
                        "operator": {"type": "string", "enum": ["In", "NotIn", "Exists", "DoesNotExist"]},
                        "values": {"type": "array", "maxItems": 64, "items": {"type": "string", "maxLength": 63}},
                    },
                    "x-kubernetes-validations": [{
                        "rule": ("self.operator == 'In' || self.operator == 'NotIn' ? "
                                 "(has(self.values) && size(self.values) > 0) : "
                                 "(!has(self.values) || size(self.values) == 0)"),
                        "message": "values must list at least one value for In and NotIn, none for Exists "
                                   "and DoesNotExist",
                    }],
                },
            },
        },
    }


CONDITIONS = {
    "type": "array",
    "description": "the latest observations of the object's state",
    "x-kubernetes-list-type": "map",
    "x-kubernetes-list-map-keys": ["type"],
    "items": {
        "type": "object",
        "required": ["type", "status"],
        "properties": {
            "type": {"type": "string", "maxLength": 316},
            "status": {"type": "string", "enum": ["True", "False", "Unknown"]},
            "reason": {"type": "string", "maxLength": 1024},
            "message": {"type": "string", "maxLength": 32768},
            "lastTransitionTime": {"type": "string", "format": "date-time"},
            "observedGeneration": {"type": "integer", "format": "int64", "minimum": 0},
        },
    },
}
READY_COLUMN = {"name": "Ready", "type": "string", "jsonPath": '.status.conditions[?(@.type=="Ready")].status'}
AGE_COLUMN = {"name": "Age", "type": "date", "jsonPath": ".metadata.creationTimestamp"}

GATEWAY_SPEC = {
    "type": "object",
    "required": ["nodeSelector", "ippools"],
    "properties": {
        "nodeSelector": label_selector("the nodes that may hold this gateway's EIPs ({} selects every node)"),
        "ippools": {
            "type": "object",
            "description": ("the EIP pool. In a dual-stack gateway both lists hold as many addresses, and the "
                            "n-th IPv4 address pairs with the n-th IPv6 address"),
            "properties": {
                "ipv4": _list(_ruled(_string(POOL4_PATTERN, "an address, a range first-last or a CIDR (every "
                                                            "address of it)", 40),
                                     POOL_FORM_RULE, POOL4_ORDER_RULE, _usable_rule(4)),
                              "IPv4 pool entries; no overlaps"),
                "ipv6": _list(_ruled(_string(POOL6_PATTERN, "an address, a range first-last or a CIDR (every "
                                                            "address of it)", 100),
                                     POOL_FORM_RULE, _usable_rule(6)), "IPv6 pool entries; no overlaps"),
            },
            "x-kubernetes-validations": [{
                "rule": "(has(self.ipv4) && size(self.ipv4) > 0) || (has(self.ipv6) && size(self.ipv6) > 0)",
                "message": "ippools must hold at least one address in ipv4 or ipv6",
            }],
        },
        "clusterDefault": {"type": "boolean", "default": False,
                           "description": "serve the policies that name no gateway and whose namespace has "
                                          "no default gateway"},
        "namespaceSelector": label_selector("the namespaces whose EgressPolicies may use this gateway (its "
                                            "nodes and its pool); absent: every namespace. EgressClusterPolicies "
                                            "are always served"),
    },
}
GATEWAY_STATUS = {
    "type": "object",
    "properties": {
        "nodes": {
            "type": "array",
            "description": "the nodes the nodeSelector matches, and the EIPs each is the active gateway of",
            "items": {
                "type": "object",
                "required": ["name"],
                "properties": {
                    "name": {"type": "string"},
                    "ready": {"type": "boolean"},
                    "eips": {"type": "array", "items": {"type": "string"}},
                },
            },
        },
        "ipUsage": {
            "type": "object",
            "properties": {k: {"type": "integer", "format": "int64", "minimum": 0}
                           for k in ("ipv4Total", "ipv4Free", "ipv6Total", "ipv6Free")},
        },
        "conditions": CONDITIONS,
    },
}


def _policy_spec(cluster: bool) -> dict:
    applied: dict[str, Any] = {
        "podSelector": label_selector("the pods this policy applies to" +
                                      (" (with namespaceSelector)" if cluster else
                                       ", in the policy's namespace ({} selects all of them)")),
        "podSubnet": _list(_ruled(_string(CIDR_PATTERN, "a CIDR", 50), CIDR_RULE),
                           "the pods whose address lies in one of these "
                           "CIDRs", min_items=1),
    }
    if cluster:
        applied["namespaceSelector"] = label_selector("the namespaces whose pods this policy may select; "
                                                      "absent: every namespace")
    same = ("!has(oldSelf.{f}) || (has(self.{f}) && self.{f} == oldSelf.{f})")
    same_eip = ("!has(oldSelf.egressIP) || !has(oldSelf.egressIP.{f}) || (has(self.egressIP) && "
                "has(self.egressIP.{f}) && self.egressIP.{f} == oldSelf.egressIP.{f})")
    return {
        "type": "object",
        "required": ["appliedTo"],
        "properties": {
            "egressGatewayName": {**_string(NAME_PATTERN, "the EgressGateway serving this policy; absent: the "
                                            + ("cluster default" if cluster else
                                               "namespace's default (label sdn-egress.io/default-gateway), "
                                               "else the cluster default"), 253), "minLength": 1},
            "egressIP": {
                "type": "object",
                "properties": {
                    "ipv4": _string(IPV4_PATTERN, "an explicit IPv4 EIP from the gateway's pool", 15),
                    "ipv6": _string(IPV6_PATTERN, "an explicit IPv6 EIP from the gateway's pool", 45),
                    "useNodeIP": {"type": "boolean", "default": False,
                                  "description": "leave with the gateway node's own address (no EIP)"},
                    "allocatorPolicy": {"type": "string", "enum": ["default", "rr"], "default": "default",
                                        "description": "default: the lowest free address of the pool; rr: "
                                                       "the next free address after the last one handed out"},
                },
                "x-kubernetes-validations": [{
                    "rule": "!(has(self.useNodeIP) && self.useNodeIP) || (!has(self.ipv4) && !has(self.ipv6))",
                    "message": "useNodeIP cannot be combined with an explicit egress IP (ipv4, ipv6)",
                }],
            },
            "appliedTo": {
                "type": "object",
                "properties": applied,
                "x-kubernetes-validations": [{
                    "rule": "has(self.podSelector) != has(self.podSubnet)",
                    "message": "appliedTo needs exactly one of podSelector and podSubnet",
                }],
            },
            "destSubnet": _list(_ruled(_string(CIDR_PATTERN, "a CIDR", 50), CIDR_RULE),
                                "destinations steered to the EIP; empty: everything outside the cluster"),
            "excludeSubnet": _list(_ruled(_string(CIDR_PATTERN, "a CIDR", 50), CIDR_RULE),
                                   "destinations never steered"),
            "priority": {"type": "integer", "minimum": 0, "maximum": PRIORITY_MAX, "default": 0,
                         "description": "where policies overlap for a pod, the higher wins"},
        },
        "x-kubernetes-validations": [
            {"rule": same.format(f="egressGatewayName"),
             "message": "egressGatewayName is immutable once set"},
            {"rule": same_eip.format(f="ipv4"), "message": "egressIP.ipv4 is immutable once set"},
            {"rule": same_eip.format(f="ipv6"), "message": "egressIP.ipv6 is immutable once set"},
        ],
    }


POLICY_STATUS = {
    "type": "object",
    "properties": {
        "eip": {"type": "object", "properties": {"ipv4": {"type": "string"}, "ipv6": {"type": "string"}}},
        "gateway": {"type": "string", "description": "the EgressGateway serving the policy"},
        "node": {"type": "string", "description": "the active gateway node of its EIP"},
        "conditions": CONDITIONS,
    },
}


def _schema(spec: dict, status: dict) -> dict:
    return {
        "type": "object",
        "required": ["spec"],
        "properties": {
            "apiVersion": {"type": "string"},
            "kind": {"type": "string"},
            "metadata": {"type": "object"},
            "spec": spec,
            "status": status,
        },
    }


def _crd(kind: str, plural: str, short: list[str], scope: str, schema: dict, columns: list[dict]) -> dict:
    return {
        "apiVersion": "apiextensions.k8s.io/v1",
        "kind": "CustomResourceDefinition",
        "metadata": {"name": f"{plural}.{API_GROUP}"},
        "spec": {
            "group": API_GROUP,
            "names": {"kind": kind, "listKind": f"{kind}List", "plural": plural, "singular": kind.lower(),
                      "shortNames": short, "categories": ["sdn-egress"]},
            "scope": scope,
            "versions": [{
                "name": API_VERSION,
                "served": True,
                "storage": True,
                "subresources": {"status": {}},
                "additionalPrinterColumns": columns,
                "schema": {"openAPIV3Schema": schema},
            }],
        },
    }


_POLICY_COLUMNS = [
    {"name": "Gateway", "type": "string", "jsonPath": ".status.gateway"},
    {"name": "IPv4", "type": "string", "jsonPath": ".status.eip.ipv4"},
    {"name": "IPv6", "type": "string", "jsonPath": ".status.eip.ipv6", "priority": 1},
    {"name": "Node", "type": "string", "jsonPath": ".status.node"},
    READY_COLUMN,
    AGE_COLUMN,
]

CRDS: dict[str, dict] = {
    "EgressGateway": _crd("EgressGateway", "egressgateways", ["egw"], "Cluster",
                          _schema(GATEWAY_SPEC, GATEWAY_STATUS), [
                              {"name": "Default", "type": "boolean", "jsonPath": ".spec.clusterDefault"},
                              {"name": "IPv4 Free", "type": "integer", "jsonPath": ".status.ipUsage.ipv4Free"},
                              {"name": "IPv6 Free", "type": "integer", "jsonPath": ".status.ipUsage.ipv6Free"},
                              READY_COLUMN, AGE_COLUMN]),
    "EgressPolicy": _crd("EgressPolicy", "egresspolicies", ["egp"], "Namespaced",
                         _schema(_policy_spec(False), POLICY_STATUS), _POLICY_COLUMNS),
    "EgressClusterPolicy": _crd("EgressClusterPolicy", "egressclusterpolicies", ["egcp"], "Cluster",
                                _schema(_policy_spec(True), POLICY_STATUS), _POLICY_COLUMNS),
}
FILES = {"EgressGateway": "egressgateways.yaml", "EgressPolicy": "egresspolicies.yaml",
         "EgressClusterPolicy": "egressclusterpolicies.yaml"}


def schema(kind: str) -> dict:
    """The openAPIV3Schema of one of our kinds (a copy)."""
    return copy.deepcopy(CRDS[kind]["spec"]["versions"][0]["schema"]["openAPIV3Schema"])


def plural(kind: str) -> str:
    return CRDS[kind]["spec"]["names"]["plural"]


def render(kind: str) -> str:
    header = (f"# {plural(kind)}.{API_GROUP}: rendered from sdn_egress/kube/crds.py "
              "(python -m sdn_egress.kube.crds k8s/crds); edit that, not this.\n")
    return header + yaml.safe_dump(CRDS[kind], sort_keys=False, default_flow_style=False, width=100)


def write(directory: str) -> list[str]:
    os.makedirs(directory, exist_ok=True)
    written = []
    for kind, name in FILES.items():
        path = os.path.join(directory, name)
        with open(path, "w") as f:
            f.write(render(kind))
        written.append(path)
    return written


if __name__ == "__main__":
    for path in write(sys.argv[1] if len(sys.argv) > 1 else "k8s/crds"):
        print(path)

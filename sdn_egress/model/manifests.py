"""Kubernetes-style dicts -> model objects, strictly.

One parser per kind: ``Node``, ``Namespace`` and ``Pod`` (``v1``), and the
project's own ``EgressGateway``, ``EgressPolicy`` and ``EgressClusterPolicy``
(``sdn-egress.io/v1alpha1``).
The input is what ``yaml.safe_load`` gives for a manifest, or what the
Kubernetes client's ``sanitize_for_serialization`` gives for an API object, so
every state source shares these parsers.

Each refusal raises :class:`~sdn_egress.model.InvalidObject` carrying one
:class:`~sdn_egress.model.ObjectError`: the object, the field path
(``spec.destSubnet[1]``) and a message that says what is allowed.  The core
kinds are read leniently (a real Pod has hundreds of fields we do not use), but
every field we do read is type- and syntax-checked; the project's own kinds are
strict: unknown keys and wrong types are errors.
"""
from __future__ import annotations

import ipaddress
import json
import re
from typing import Any, Iterator, Mapping, NoReturn

import netaddr

from sdn_egress.model import (
    ALLOCATORS,
    GROUP_VERSION,
    API_GROUP,
    EgressGateway,
    EgressPolicy,
    InvalidObject,
    LabelSelector,
    Namespace,
    Node,
    ObjectError,
    ObjectRef,
    Pod,
    Requirement,
    frozen_labels,
)

# The name an error's ObjectRef carries when the object has no usable name.
UNNAMED = "(unnamed)"
# The field an error names when the whole document is wrong.
WHOLE_DOCUMENT = "(document)"

CORE_KINDS = ("Namespace", "Node", "Pod")
EGRESS_KINDS = ("EgressClusterPolicy", "EgressGateway", "EgressPolicy")
NAMESPACED = {"Pod", "EgressPolicy"}
OPERATORS = ("In", "NotIn", "Exists", "DoesNotExist")
PRIORITY_MIN, PRIORITY_MAX = 0, 1000
MAX_STEERING_CIDRS = 512  # per address family and policy: see _bound_steering

_DNS_LABEL = r"[a-z0-9]([-a-z0-9]*[a-z0-9])?"
_DNS_LABEL_RE = re.compile(rf"^{_DNS_LABEL}$")
_DNS_SUBDOMAIN_RE = re.compile(rf"^{_DNS_LABEL}(\.{_DNS_LABEL})*$")
_LABEL_NAME_RE = re.compile(r"^[A-Za-z0-9]([-A-Za-z0-9_.]*[A-Za-z0-9])?$")

SUBDOMAIN_RULE = ('lowercase letters, digits, "-" and ".", starting and ending with a '
                  'letter or digit, at most 253 characters')
DNS_LABEL_RULE = 'lowercase letters, digits and "-", starting and ending with a letter or digit, at most 63 characters'
LABEL_KEY_RULE = ('an optional DNS subdomain prefix and "/", then a name of at most 63 letters, '
                  'digits, "-", "_" or ".", starting and ending with a letter or digit')
LABEL_VALUE_RULE = ('empty, or at most 63 letters, digits, "-", "_" or ".", starting and ending '
                    'with a letter or digit')

_GATEWAY_SPEC_KEYS = ("clusterDefault", "ippools", "namespaceSelector", "nodeSelector")
_POLICY_SPEC_KEYS = ("appliedTo", "destSubnet", "egressGatewayName", "egressIP", "excludeSubnet",
                     "priority")
_EGRESS_IP_KEYS = ("allocatorPolicy", "ipv4", "ipv6", "useNodeIP")
_TOP_KEYS = ("apiVersion", "kind", "metadata", "spec", "status")

Object = Node | Namespace | Pod | EgressGateway | EgressPolicy  # EgressPolicy: also cluster policies


# -- syntax checks shared with other modules ------------------------------------------------------

# fullmatch, never match: Python's "$" also matches before a final newline,
# the API server's (Go) patterns do not.

def is_dns_subdomain(s: str) -> bool:
    return len(s) <= 253 and bool(_DNS_SUBDOMAIN_RE.fullmatch(s))


def is_dns_label(s: str) -> bool:
    return len(s) <= 63 and bool(_DNS_LABEL_RE.fullmatch(s))


def is_label_key(s: str) -> bool:
    prefix, slash, name = s.rpartition("/")
    if slash and not (prefix and is_dns_subdomain(prefix)):
        return False
    return len(name) <= 63 and bool(_LABEL_NAME_RE.fullmatch(name))


def is_label_value(s: str) -> bool:
    return s == "" or (len(s) <= 63 and bool(_LABEL_NAME_RE.fullmatch(s)))


def quote(value: Any) -> str:
    """A value as it appears in messages: JSON-quoted strings."""
    try:
        return json.dumps(value, ensure_ascii=False, default=str)
    except (TypeError, ValueError):
        try:
            return repr(value)
        except ValueError:  # an integer too long to print (Python's 4,300-digit limit)
            return f"<{describe(value)}>"


def describe(value: Any) -> str:
    """What a YAML/JSON value is, in words."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "a boolean"
    if isinstance(value, (int, float)):
        return "a number"
    if isinstance(value, str):
        return "a string"
    if isinstance(value, Mapping):
        return "a mapping"
    if isinstance(value, (list, tuple)):
        return "a list"
    return f"a {type(value).__name__}"


# -- the parse context --------------------------------------------------------------------------

class _Ctx:
    """The object being parsed; raises its errors."""

    def __init__(self, ref: ObjectRef, source: str):
        self.ref = ref
        self.source = source

    def fail(self, field: str, message: str) -> NoReturn:
        raise InvalidObject(ObjectError(self.ref, field, message, self.source))

    # -- types ------------------------------------------------------------------------------
    def mapping(self, value: Any, path: str, what: str = "a mapping") -> Mapping[str, Any]:
        """A mapping; null counts as absent (empty)."""
        if value is None:
            return {}
        if not isinstance(value, Mapping):
            self.fail(path, f"must be {what}, not {describe(value)}")
        for k in value:
            if not isinstance(k, str):
                self.fail(path, f"keys must be strings, not {describe(k)} ({quote(k)})")
        return value

    def strict_keys(self, value: Mapping[str, Any], path: str, allowed: tuple[str, ...]) -> None:
        for k in value:
            if k not in allowed:
                where = f"{path}.{k}" if path else k
                self.fail(where, f"unknown key {quote(k)}; allowed: {', '.join(allowed)}")

    def seq(self, value: Any, path: str, what: str) -> list:
        if value is None:
            return []
        if not isinstance(value, list):
            self.fail(path, f"must be {what}, not {describe(value)}")
        return value

    def string(self, value: Any, path: str, what: str = "a string") -> str:
        if not isinstance(value, str):
            hint = ""
            if isinstance(value, (bool, int, float)):
                hint = f" (quote it: {quote(_yaml_scalar(value))})"
            self.fail(path, f"must be {what}, not {describe(value)}{hint}")
        return value

    def required(self, mapping: Mapping[str, Any], key: str, path: str, what: str) -> Any:
        value = mapping.get(key)
        if value is None:
            self.fail(path, f"is required: {what}")
        return value

    # -- addresses ----------------------------------------------------------------------------
    def no_zone(self, s: str, path: str, what: str) -> None:
        """``fe80::1%eth0``: Python's ipaddress takes a zone index, netaddr and
        the API server do not, and no egress address or CIDR has one."""
        if "%" in s:
            self.fail(path, f"{quote(s)} is not {what}: a zone index (%...) is not allowed")

    def ip(self, value: Any, path: str, version: int | None = None) -> netaddr.IPAddress:
        s = self.string(value, path, "an IP address string")
        self.no_zone(s, path, "an IP address")
        try:
            addr = ipaddress.ip_address(s)
        except ValueError:
            self.fail(path, f"{quote(s)} is not an IP address")
        if version is not None and addr.version != version:
            self.fail(path, f"{quote(s)} is not an IPv{version} address")
        return netaddr.IPAddress(int(addr), addr.version)  # checked once, by ipaddress: not parsed again

    def _network(self, s: str, path: str, what: str):
        """``s`` as an ipaddress network without host bits, parsed once (a
        second, loose parse only to name the network in the error)."""
        try:
            return ipaddress.ip_network(s)
        except ValueError:
            try:
                loose = ipaddress.ip_network(s, strict=False)
            except ValueError:
                self.fail(path, f"{quote(s)} is not {what}")
            self.fail(path, f"{quote(s)} is not a CIDR: host bits are set (the network is {loose})")

    def cidr(self, value: Any, path: str, version: int | None = None) -> netaddr.IPNetwork:
        s = self.string(value, path, "a CIDR string")
        self.no_zone(s, path, "a CIDR")
        net = self._network(s, path, "a CIDR")
        if version is not None and net.version != version:
            self.fail(path, f"{quote(s)} is not an IPv{version} CIDR")
        return netaddr.IPNetwork((int(net.network_address), net.prefixlen), version=net.version)

    def pool_entry(self, value: Any, path: str, version: int) -> netaddr.IPRange:
        what = f"an IPv{version} address, range (first-last) or CIDR"
        s = self.string(value, path, f"a string: {what}")
        self.no_zone(s, path, what)
        if "/" in s:
            net = self._network(s, path, what)
            first, last = net.network_address, net.broadcast_address
        else:
            ends = s.split("-")
            if len(ends) > 2:
                self.fail(path, f"{quote(s)} is not {what}")
            try:
                first = ipaddress.ip_address(ends[0])
                last = ipaddress.ip_address(ends[-1])
            except ValueError:
                self.fail(path, f"{quote(s)} is not {what}")
        if first.version != version or last.version != version:
            self.fail(path, f"{quote(s)} is not {what}")
        if last < first:
            self.fail(path, f"{quote(s)} is not a range: {last} comes before {first}")
        pool = netaddr.IPRange(str(first), str(last))
        for bad, why in UNUSABLE[version]:
            if pool.first <= bad.last and bad.first <= pool.last:
                self.fail(path, f"{quote(s)} includes {bad} ({why}), which cannot be an egress IP: "
                                "leave those addresses out of the pool")
        return pool


# Addresses that can never be an egress IP: a pool that includes them would
# hand them out (a pool of 0.0.0.0/0 starts with 0.0.0.0).
UNUSABLE = {
    4: tuple((netaddr.IPNetwork(n), why) for n, why in (
        ("0.0.0.0/8", "this network"), ("127.0.0.0/8", "loopback"), ("169.254.0.0/16", "link-local"),
        ("224.0.0.0/4", "multicast"), ("255.255.255.255/32", "broadcast"))),
    6: tuple((netaddr.IPNetwork(n), why) for n, why in (
        ("::/128", "unspecified"), ("::1/128", "loopback"), ("fe80::/10", "link-local"),
        ("ff00::/8", "multicast"))),
}


def _yaml_scalar(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    return shown_number(value) if isinstance(value, int) else str(value)


def shown_number(value: int | float) -> str:
    """A number as messages show it; one too long to print (Python refuses to
    print an integer of more than 4,300 digits) by its size."""
    if isinstance(value, int) and not isinstance(value, bool) and abs(value) >= 10**18:
        return f"a number of {value.bit_length()} bits"
    return str(value)


# -- metadata -------------------------------------------------------------------------------------

def ref_of(doc: Any, default_kind: str = "Object") -> ObjectRef:
    """The best :class:`ObjectRef` that can be made of a document, however broken."""
    kind = default_kind
    namespace, name = "", UNNAMED
    if isinstance(doc, Mapping):
        if isinstance(doc.get("kind"), str) and doc["kind"]:
            kind = doc["kind"]
        meta = doc.get("metadata")
        meta = meta if isinstance(meta, Mapping) else {}
        if isinstance(meta.get("name"), str) and meta["name"]:
            # a name with a newline or another control character is shown quoted,
            # so one error stays one line
            name = meta["name"] if meta["name"].isprintable() else quote(meta["name"])
        if kind in NAMESPACED:
            ns = meta.get("namespace")
            namespace = ns if isinstance(ns, str) and ns else "default"
            namespace = namespace if namespace.isprintable() else quote(namespace)
    return ObjectRef(kind, namespace, name)


# The fields of a Kubernetes ObjectMeta: the API server refuses any other
# under metadata (strict field validation), so our kinds refuse them too.
OBJECT_META_KEYS = ("annotations", "creationTimestamp", "deletionGracePeriodSeconds", "deletionTimestamp",
                    "finalizers", "generateName", "generation", "labels", "managedFields", "name", "namespace",
                    "ownerReferences", "resourceVersion", "selfLink", "uid")
MAX_ANNOTATIONS_BYTES = 256 * 1024  # the API server's limit on all annotations of an object


def _metadata(ctx: _Ctx, doc: Mapping[str, Any], kind: str) -> Mapping[str, Any]:
    meta = ctx.mapping(doc.get("metadata"), "metadata")
    if kind in EGRESS_KINDS:
        ctx.strict_keys(meta, "metadata", OBJECT_META_KEYS)
        _labels(ctx, meta.get("labels"), "metadata.labels")
        _annotations(ctx, meta.get("annotations"), "metadata.annotations")
    name = meta.get("name")
    if name is None or name == "":
        ctx.fail("metadata.name", "is required")
    name = ctx.string(name, "metadata.name")
    if kind == "Namespace":
        if not is_dns_label(name):
            ctx.fail("metadata.name", f"{quote(name)} is not a valid namespace name: {DNS_LABEL_RULE}")
    elif not is_dns_subdomain(name):
        ctx.fail("metadata.name", f"{quote(name)} is not a valid name: {SUBDOMAIN_RULE}")
    ns = meta.get("namespace")
    # A namespace on a cluster-scoped kind is dropped, as the API server drops
    # it; "" on a namespaced kind means the default namespace, as with kubectl.
    if kind in NAMESPACED and ns not in (None, ""):
        ns = ctx.string(ns, "metadata.namespace")
        if not is_dns_label(ns):
            ctx.fail("metadata.namespace", f"{quote(ns)} is not a valid namespace name: {DNS_LABEL_RULE}")
    elif kind not in NAMESPACED and ns is not None:
        ctx.string(ns, "metadata.namespace")
    return meta


def _labels(ctx: _Ctx, value: Any, path: str) -> tuple[tuple[str, str], ...]:
    labels = dict(ctx.mapping(value, path, "a mapping of label keys to string values"))
    for k, v in labels.items():
        if not is_label_key(k):
            ctx.fail(path, f"{quote(k)} is not a valid label key: {LABEL_KEY_RULE}")
        if v is None:  # the API server reads a null string as ""
            labels[k] = v = ""
        v = ctx.string(v, f"{path}.{k}")
        if not is_label_value(v):
            ctx.fail(f"{path}.{k}", f"{quote(v)} is not a valid label value: {LABEL_VALUE_RULE}")
    return frozen_labels(labels)


def _annotations(ctx: _Ctx, value: Any, path: str) -> tuple[tuple[str, str], ...]:
    annotations = dict(ctx.mapping(value, path, "a mapping of annotation keys to string values"))
    size = 0
    for k, v in annotations.items():
        if not is_label_key(k):
            ctx.fail(path, f"{quote(k)} is not a valid annotation key: {LABEL_KEY_RULE}")
        if v is None:
            annotations[k] = v = ""
        size += len(k) + len(ctx.string(v, f"{path}.{k}"))
    if size > MAX_ANNOTATIONS_BYTES:
        ctx.fail(path, f"must hold at most {MAX_ANNOTATIONS_BYTES} bytes in all (keys and values), not {size}")
    return frozen_labels(annotations)


def parse_selector(ctx: _Ctx, value: Any, path: str) -> LabelSelector:
    """A ``matchLabels`` / ``matchExpressions`` label selector; empty selects everything."""
    sel = ctx.mapping(value, path, "a label selector (a mapping with matchLabels and/or matchExpressions)")
    ctx.strict_keys(sel, path, ("matchExpressions", "matchLabels"))
    match_labels = _labels(ctx, sel.get("matchLabels"), f"{path}.matchLabels")
    requirements = []
    exprs = ctx.seq(sel.get("matchExpressions"), f"{path}.matchExpressions",
                     "a list of {key, operator, values} mappings")
    for i, expr in enumerate(exprs):
        p = f"{path}.matchExpressions[{i}]"
        expr = ctx.mapping(expr, p, "a mapping with key, operator and values")
        ctx.strict_keys(expr, p, ("key", "operator", "values"))
        key = ctx.string(ctx.required(expr, "key", f"{p}.key", "a label key"), f"{p}.key")
        if not is_label_key(key):
            ctx.fail(f"{p}.key", f"{quote(key)} is not a valid label key: {LABEL_KEY_RULE}")
        op = ctx.string(ctx.required(expr, "operator", f"{p}.operator", ", ".join(OPERATORS)),
                        f"{p}.operator")
        if op not in OPERATORS:
            ctx.fail(f"{p}.operator", f"{quote(op)} is not an operator; allowed: {', '.join(OPERATORS)}")
        values = ctx.seq(expr.get("values"), f"{p}.values", "a list of strings")
        for j, v in enumerate(values):
            v = ctx.string(v, f"{p}.values[{j}]")
            if not is_label_value(v):
                ctx.fail(f"{p}.values[{j}]", f"{quote(v)} is not a valid label value: {LABEL_VALUE_RULE}")
        if op in ("In", "NotIn") and not values:
            ctx.fail(f"{p}.values", f"must list at least one value for operator {op}")
        if op in ("Exists", "DoesNotExist") and values:
            ctx.fail(f"{p}.values", f"must be empty for operator {op}")
        requirements.append(Requirement(key, op, tuple(values)))
    return LabelSelector(match_labels, tuple(requirements))


# -- core kinds (v1) -------------------------------------------------------------------------------

def parse_node(doc: Mapping[str, Any], source: str = "") -> Node:
    ctx = _Ctx(ref_of(doc, "Node"), source)
    meta = _metadata(ctx, doc, "Node")
    labels = _labels(ctx, meta.get("labels"), "metadata.labels")
    spec = ctx.mapping(doc.get("spec"), "spec")
    status = ctx.mapping(doc.get("status"), "status")
    cidrs: list[netaddr.IPNetwork] = []
    if spec.get("podCIDR") is not None:
        cidrs.append(ctx.cidr(spec["podCIDR"], "spec.podCIDR"))
    for i, c in enumerate(ctx.seq(spec.get("podCIDRs"), "spec.podCIDRs", "a list of CIDR strings")):
        net = ctx.cidr(c, f"spec.podCIDRs[{i}]")
        if net not in cidrs:
            cidrs.append(net)
    internal: list[netaddr.IPAddress] = []
    other: list[netaddr.IPAddress] = []
    addrs = ctx.seq(status.get("addresses"), "status.addresses", "a list of {type, address} mappings")
    for i, a in enumerate(addrs):
        p = f"status.addresses[{i}]"
        a = ctx.mapping(a, p, "a mapping with type and address")
        kind = ctx.string(ctx.required(a, "type", f"{p}.type", "InternalIP, ExternalIP, Hostname, ..."),
                          f"{p}.type")
        if kind not in ("InternalIP", "ExternalIP"):
            continue  # Hostname, InternalDNS, ExternalDNS: not addresses we route to
        ip = ctx.ip(ctx.required(a, "address", f"{p}.address", "an IP address"), f"{p}.address")
        target = internal if kind == "InternalIP" else other
        if ip not in internal and ip not in other:
            target.append(ip)
    ready = True
    conds = ctx.seq(status.get("conditions"), "status.conditions", "a list of {type, status} mappings")
    for i, c in enumerate(conds):
        p = f"status.conditions[{i}]"
        c = ctx.mapping(c, p, "a mapping with type and status")
        if c.get("type") == "Ready":
            st = ctx.string(ctx.required(c, "status", f"{p}.status", '"True", "False" or "Unknown"'),
                            f"{p}.status")
            ready = st == "True"
    return Node(name=ctx.ref.name, labels=labels, addresses=tuple(internal + other),
                pod_cidrs=tuple(cidrs), ready=ready)


def parse_namespace(doc: Mapping[str, Any], source: str = "") -> Namespace:
    ctx = _Ctx(ref_of(doc, "Namespace"), source)
    meta = _metadata(ctx, doc, "Namespace")
    return Namespace(name=ctx.ref.name, labels=_labels(ctx, meta.get("labels"), "metadata.labels"))


def parse_pod(doc: Mapping[str, Any], source: str = "") -> Pod | None:
    """A Pod, or None when it has no part in egress: not scheduled yet, no IP
    yet, finished (Succeeded/Failed: its IP may be reused), or hostNetwork
    (its address is the node's)."""
    ctx = _Ctx(ref_of(doc, "Pod"), source)
    meta = _metadata(ctx, doc, "Pod")
    labels = _labels(ctx, meta.get("labels"), "metadata.labels")
    annotations = _annotations(ctx, meta.get("annotations"), "metadata.annotations")
    spec = ctx.mapping(doc.get("spec"), "spec")
    status = ctx.mapping(doc.get("status"), "status")
    node = spec.get("nodeName")
    if node is not None:
        node = ctx.string(node, "spec.nodeName")
    host_network = spec.get("hostNetwork")
    if host_network is not None and not isinstance(host_network, bool):
        ctx.fail("spec.hostNetwork", f"must be a boolean, not {describe(host_network)}")
    phase = status.get("phase")
    if phase is not None:
        phase = ctx.string(phase, "status.phase")
    ips: list[netaddr.IPAddress] = []
    if status.get("podIP") not in (None, ""):
        ips.append(ctx.ip(status["podIP"], "status.podIP"))
    for i, entry in enumerate(ctx.seq(status.get("podIPs"), "status.podIPs", "a list of {ip} mappings")):
        entry = ctx.mapping(entry, f"status.podIPs[{i}]", "a mapping with ip")
        ip = ctx.ip(ctx.required(entry, "ip", f"status.podIPs[{i}].ip", "an IP address"),
                    f"status.podIPs[{i}].ip")
        if ip not in ips:
            ips.append(ip)
    if host_network or phase in ("Succeeded", "Failed") or not node or not ips:
        return None
    return Pod(namespace=ctx.ref.namespace, name=ctx.ref.name, node=node, labels=labels,
               ips=tuple(ips), annotations=annotations)


# -- sdn-egress.io kinds ---------------------------------------------------------------------------

def _boolean(ctx: _Ctx, value: Any, path: str) -> bool:
    if value is None:
        return False
    if not isinstance(value, bool):
        hint = ' (write true or false, unquoted)' if isinstance(value, str) else ""
        ctx.fail(path, f"must be a boolean, not {describe(value)}{hint}")
    return value


def parse_gateway(doc: Mapping[str, Any], source: str = "") -> EgressGateway:
    ctx = _Ctx(ref_of(doc, "EgressGateway"), source)
    ctx.strict_keys(doc, "", _TOP_KEYS)
    meta = _metadata(ctx, doc, "EgressGateway")
    spec = ctx.mapping(ctx.required(doc, "spec", "spec", "nodeSelector and ippools"), "spec")
    ctx.strict_keys(spec, "spec", _GATEWAY_SPEC_KEYS)
    if spec.get("nodeSelector") is None:
        ctx.fail("spec.nodeSelector", "is required: a label selector of the nodes that may hold the EIPs "
                                      "({} selects every node)")
    selector = parse_selector(ctx, spec["nodeSelector"], "spec.nodeSelector")
    pools = ctx.mapping(ctx.required(spec, "ippools", "spec.ippools", "ipv4 and/or ipv6 address lists"),
                        "spec.ippools", "a mapping with ipv4 and/or ipv6 lists")
    ctx.strict_keys(pools, "spec.ippools", ("ipv4", "ipv6"))
    by_version: dict[int, tuple[netaddr.IPRange, ...]] = {}
    for version in (4, 6):
        path = f"spec.ippools.ipv{version}"
        entries = ctx.seq(pools.get(f"ipv{version}"), path,
                           f"a list of IPv{version} addresses, ranges (first-last) or CIDRs")
        ranges: list[netaddr.IPRange] = []
        for i, entry in enumerate(entries):
            r = ctx.pool_entry(entry, f"{path}[{i}]", version)
            for j, seen in enumerate(ranges):
                if r.first <= seen.last and seen.first <= r.last:
                    ctx.fail(f"{path}[{i}]", f"{quote(entry)} overlaps {quote(entries[j])} ({path}[{j}])")
            ranges.append(r)
        by_version[version] = tuple(sorted(ranges, key=lambda r: r.first))
    if not by_version[4] and not by_version[6]:
        ctx.fail("spec.ippools", "must hold at least one address in ipv4 or ipv6")
    namespaces = None
    if spec.get("namespaceSelector") is not None:
        namespaces = parse_selector(ctx, spec["namespaceSelector"], "spec.namespaceSelector")
    gw = EgressGateway(name=ctx.ref.name, node_selector=selector, pool_v4=by_version[4],
                       pool_v6=by_version[6], namespace_selector=namespaces,
                       cluster_default=_boolean(ctx, spec.get("clusterDefault"), "spec.clusterDefault"),
                       deleting=bool(meta.get("deletionTimestamp")))
    if gw.dual_stack and gw.pool_size(4) != gw.pool_size(6):
        ctx.fail("spec.ippools", f"IPv4 and IPv6 addresses must pair up: {gw.pool_size(4)} IPv4 and "
                                 f"{gw.pool_size(6)} IPv6 addresses (in a dual-stack gateway the n-th IPv4 "
                                 "address pairs with the n-th IPv6 address: give as many of each)")
    return gw


def _subnets(ctx: _Ctx, value: Any, path: str) -> tuple[netaddr.IPNetwork, ...]:
    nets: list[netaddr.IPNetwork] = []
    for i, item in enumerate(ctx.seq(value, path, "a list of CIDR strings")):
        net = ctx.cidr(item, f"{path}[{i}]")
        if net not in nets:
            nets.append(net)
    return tuple(nets)


def steering_cidrs(dest: tuple[netaddr.IPNetwork, ...], exclude: tuple[netaddr.IPNetwork, ...],
                   version: int) -> int:
    """How many steering entries (a flow and an ip rule each, per selected
    pod) a policy's destinations and exclusions make, as the node view builds
    them (``sdn_egress.view.pod_steers``): the destinations with the
    exclusions cut out, or, when that is more, the destinations and the
    exclusions as entries of their own."""
    wanted = netaddr.IPSet([d for d in dest if d.version == version]
                           or ([] if dest else ["0.0.0.0/0" if version == 4 else "::/0"]))
    excluded = netaddr.IPSet([x for x in exclude if x.version == version])
    cut = sum(1 for _ in (wanted - excluded).iter_cidrs())
    listed = sum(1 for _ in wanted.iter_cidrs()) + sum(1 for _ in (wanted & excluded).iter_cidrs())
    return min(cut, listed)


def _bound_steering(ctx: _Ctx, dest, exclude) -> None:
    """One policy's cost on a node is bounded: each destination and each
    exclusion is one entry per selected pod (exclusions are entries of their
    own, not holes cut into the destinations: 256 scattered /32 exclusions of
    0.0.0.0/0 are 257 entries)."""
    for version in (4, 6):
        n = steering_cidrs(dest, exclude, version)
        if n > MAX_STEERING_CIDRS:
            field = "spec.excludeSubnet" if any(x.version == version for x in exclude) else "spec.destSubnet"
            ctx.fail(field, f"the destinations minus the exclusions make {n} IPv{version} CIDRs, each one steering "
                            f"entry per selected pod; at most {MAX_STEERING_CIDRS}: exclude fewer, wider ranges, or "
                            "steer narrower destinations")


def parse_policy(doc: Mapping[str, Any], source: str = "") -> EgressPolicy:
    """An EgressPolicy, or an EgressClusterPolicy (by ``kind``)."""
    cluster = doc.get("kind") == "EgressClusterPolicy"
    kind = "EgressClusterPolicy" if cluster else "EgressPolicy"
    ctx = _Ctx(ref_of(doc, kind), source)
    ctx.strict_keys(doc, "", _TOP_KEYS)
    _metadata(ctx, doc, kind)
    spec = ctx.mapping(ctx.required(doc, "spec", "spec", "appliedTo (and egressGatewayName)"), "spec")
    ctx.strict_keys(spec, "spec", _POLICY_SPEC_KEYS)
    # An empty string is not "absent" to the API server (the CRD refuses it):
    # not here either.
    gateway = ""
    if spec.get("egressGatewayName") is not None:
        gateway = ctx.string(spec["egressGatewayName"], "spec.egressGatewayName", "the name of an EgressGateway")
        if gateway == "":
            ctx.fail("spec.egressGatewayName", "must not be empty: leave it out to use the default gateway")
        if not is_dns_subdomain(gateway):
            ctx.fail("spec.egressGatewayName", f"{quote(gateway)} is not a valid name: {SUBDOMAIN_RULE}")

    eip = ctx.mapping(spec.get("egressIP"), "spec.egressIP",
                      "a mapping with ipv4, ipv6, useNodeIP and/or allocatorPolicy")
    ctx.strict_keys(eip, "spec.egressIP", _EGRESS_IP_KEYS)
    eip_v4 = eip_v6 = None
    if eip.get("ipv4") is not None:
        eip_v4 = ctx.ip(eip["ipv4"], "spec.egressIP.ipv4", 4)
    if eip.get("ipv6") is not None:
        eip_v6 = ctx.ip(eip["ipv6"], "spec.egressIP.ipv6", 6)
    use_node_ip = _boolean(ctx, eip.get("useNodeIP"), "spec.egressIP.useNodeIP")
    if use_node_ip and (eip_v4 or eip_v6):
        given = "spec.egressIP.ipv4" if eip_v4 else "spec.egressIP.ipv6"
        ctx.fail("spec.egressIP.useNodeIP", f"cannot be combined with an explicit egress IP ({given}): "
                                            "give one or the other")
    allocator = eip.get("allocatorPolicy")
    if allocator is None:
        allocator = ALLOCATORS[0]
    allocator = ctx.string(allocator, "spec.egressIP.allocatorPolicy")
    if allocator not in ALLOCATORS:
        ctx.fail("spec.egressIP.allocatorPolicy", f"{quote(allocator)} is not an allocator policy; "
                                                  f"allowed: {', '.join(ALLOCATORS)}")

    applied_keys = ("namespaceSelector", "podSelector", "podSubnet") if cluster else ("podSelector", "podSubnet")
    one_of = ("exactly one of podSelector (a label selector; {} selects every pod"
              + (")" if cluster else " of the namespace)") + " and podSubnet (a list of CIDRs)")
    applied = ctx.mapping(ctx.required(spec, "appliedTo", "spec.appliedTo", one_of), "spec.appliedTo",
                          f"a mapping with {' or '.join(applied_keys)}")
    ctx.strict_keys(applied, "spec.appliedTo", applied_keys)
    has_selector = applied.get("podSelector") is not None
    has_subnet = applied.get("podSubnet") is not None
    if has_selector == has_subnet:
        ctx.fail("spec.appliedTo", f"{'give only one' if has_selector else 'is required'}: {one_of}")
    selector = None
    pod_subnets: tuple[netaddr.IPNetwork, ...] = ()
    if has_selector:
        selector = parse_selector(ctx, applied["podSelector"], "spec.appliedTo.podSelector")
    else:
        pod_subnets = _subnets(ctx, applied["podSubnet"], "spec.appliedTo.podSubnet")
        if not pod_subnets:
            ctx.fail("spec.appliedTo.podSubnet", "must list at least one CIDR")
    namespace_selector = None
    if cluster and applied.get("namespaceSelector") is not None:
        namespace_selector = parse_selector(ctx, applied["namespaceSelector"], "spec.appliedTo.namespaceSelector")

    dest = _subnets(ctx, spec.get("destSubnet"), "spec.destSubnet")
    exclude = _subnets(ctx, spec.get("excludeSubnet"), "spec.excludeSubnet")
    _bound_steering(ctx, dest, exclude)

    priority = spec.get("priority", 0)
    if priority is None:
        priority = 0
    if isinstance(priority, float) and priority.is_integer():
        priority = int(priority)  # 1.0: the API server takes an integral number as an integer
    if isinstance(priority, bool) or not isinstance(priority, int):
        ctx.fail("spec.priority", f"must be an integer, not {describe(priority)}")
    if not PRIORITY_MIN <= priority <= PRIORITY_MAX:
        ctx.fail("spec.priority", f"{shown_number(priority)} is out of range {PRIORITY_MIN}..{PRIORITY_MAX}")

    return EgressPolicy(namespace=ctx.ref.namespace, name=ctx.ref.name, gateway=gateway,
                        pod_selector=selector, eip_v4=eip_v4, eip_v6=eip_v6,
                        dest_subnets=dest, exclude_subnets=exclude, priority=priority,
                        pod_subnets=pod_subnets, namespace_selector=namespace_selector, cluster=cluster,
                        use_node_ip=use_node_ip, allocator=allocator)


# -- dispatch --------------------------------------------------------------------------------------

_PARSERS = {
    "Node": parse_node,
    "Namespace": parse_namespace,
    "Pod": parse_pod,
    "EgressGateway": parse_gateway,
    "EgressPolicy": parse_policy,
    "EgressClusterPolicy": parse_policy,
}


def is_relevant(doc: Any) -> bool:
    """Whether a document is meant for sdn-egress: one of our kinds, or
    anything of the sdn-egress.io group (so a misspelt kind is an error, while
    a Deployment in the same directory is simply not ours)."""
    if not isinstance(doc, Mapping):
        return True
    kind, api = doc.get("kind"), doc.get("apiVersion")
    if kind in CORE_KINDS or kind in EGRESS_KINDS:
        return True
    return isinstance(api, str) and api.split("/")[0] == API_GROUP


def parse_object(doc: Any, source: str = "") -> Object | None:
    """One document -> one model object.  None: not ours (another kind) or a
    Pod with no part in egress.  Raises :class:`InvalidObject`."""
    if not isinstance(doc, Mapping):
        raise InvalidObject(ObjectError(ObjectRef("Object", "", UNNAMED), WHOLE_DOCUMENT,
                                        f"must be a mapping (a Kubernetes object), not {describe(doc)}",
                                        source))
    ref = ref_of(doc)
    ctx = _Ctx(ref, source)
    kind = doc.get("kind")
    if kind is None or kind == "":
        ctx.fail("kind", f"is required: one of {', '.join(CORE_KINDS + EGRESS_KINDS)}")
    kind = ctx.string(kind, "kind")
    api = doc.get("apiVersion")
    if api is None or api == "":
        ctx.fail("apiVersion", "is required")
    api = ctx.string(api, "apiVersion")
    if kind in EGRESS_KINDS:
        if api != GROUP_VERSION:
            ctx.fail("apiVersion", f"{quote(api)} is not served for {kind}; use {GROUP_VERSION}")
    elif kind in CORE_KINDS:
        if api != "v1":
            ctx.fail("apiVersion", f"{quote(api)} is not served for {kind}; use v1")
    elif api.split("/")[0] == API_GROUP:
        ctx.fail("kind", f"{quote(kind)} is not a kind of {API_GROUP}; known kinds: {', '.join(EGRESS_KINDS)}")
    else:
        return None
    return _PARSERS[kind](doc, source)


def expand_lists(doc: Any) -> Iterator[Any]:
    """A ``kind: List`` (or ``PodList`` ...) document's items, else the document."""
    if (isinstance(doc, Mapping) and isinstance(doc.get("kind"), str) and doc["kind"].endswith("List")
            and isinstance(doc.get("items"), list)):
        for item in doc["items"]:
            yield from expand_lists(item)
    else:
        yield doc

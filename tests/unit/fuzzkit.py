"""The fuzz harness of issue 11, shared by ``tests/unit/test_fuzz.py`` (bounded,
in the suite) and ``bench/fuzz.py`` (more cases, figures into BENCHMARKS.md).

Hypothesis strategies make manifests of three sorts: valid objects (built from
a grammar of what the API server and the controller both accept), objects with
one known-invalid field (the error must name that field), and hostile input
(random values in random places, mangled YAML text, bombs).  Each check
returns the failures it found, by category:

- ``crash``: an exception escaped a parser, ``validate``, the source or the
  controller;
- ``hang``: one case ran longer than :data:`CASE_SECONDS`;
- ``accepted-invalid``: an invalid object accepted (by the parser, by
  ``validate``), or accepted by the parser while the CRD's schema or CEL
  rules refuse it;
- ``refused-valid``: a valid object refused (by the parser, ``validate``, the
  CRD's schema or CEL);
- ``interference``: another object (a hostile file, a duplicate, a claim on
  the same address), with a restart of the controller in between, changed a
  valid object's outcome (its parsed version, its EIP, its gateway).
"""
from __future__ import annotations

import contextlib
import copy
import os
import shutil
import signal
import string
import tempfile
import traceback

import yaml
from hypothesis import strategies as st

from sdn_egress.model.manifests import parse_object
from sdn_egress.model import InvalidObject
from tests.support.objects import set_path

CASE_SECONDS = 5.0
CATEGORIES = ("crash", "hang", "accepted-invalid", "refused-valid", "interference")
API = "sdn-egress.io/v1alpha1"


class Hang(Exception):
    pass


@contextlib.contextmanager
def time_limit(seconds: float = CASE_SECONDS):
    """Raise :class:`Hang` in the main thread once ``seconds`` have passed."""
    def alarm(signum, frame):
        raise Hang(f"longer than {seconds} s")

    old = signal.signal(signal.SIGALRM, alarm)
    signal.setitimer(signal.ITIMER_REAL, seconds)
    try:
        yield
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, old)


def guarded(check, *args) -> list[tuple[str, str]]:
    """Run one check: its own failures, or a crash or hang of its own."""
    try:
        with time_limit():
            return check(*args)
    except Hang as exc:
        return [("hang", f"{check.__name__}: {exc}")]
    except Exception:  # noqa: BLE001 - that is what we look for
        return [("crash", f"{check.__name__}: {traceback.format_exc(limit=-3)}")]


# -- valid objects -------------------------------------------------------------------------------------

_lower = string.ascii_lowercase + string.digits
dns_label = st.builds(lambda a, mid, b: a + mid + b if mid or b else a,
                      st.sampled_from(string.ascii_lowercase),
                      st.text(_lower + "-", max_size=8), st.text(_lower, max_size=1)).filter(
    lambda s: not s.endswith("-"))
label_value = st.one_of(st.just(""), st.text(string.ascii_letters + string.digits, min_size=1, max_size=8))
labels = st.dictionaries(st.sampled_from(["app", "team", "tier", "example.com/role", "egress"]), label_value,
                         max_size=3)


@st.composite
def selectors(draw) -> dict:
    out: dict = {}
    if draw(st.booleans()):
        out["matchLabels"] = draw(labels)
    if draw(st.booleans()):
        exprs = []
        for _ in range(draw(st.integers(0, 2))):
            op = draw(st.sampled_from(["In", "NotIn", "Exists", "DoesNotExist"]))
            e = {"key": draw(st.sampled_from(["app", "team", "zone"])), "operator": op}
            if op in ("In", "NotIn"):
                e["values"] = draw(st.lists(label_value.filter(bool), min_size=1, max_size=3))
            exprs.append(e)
        out["matchExpressions"] = exprs
    return out


def v4(i: int) -> str:
    return f"192.0.2.{i}"


def v6(i: int) -> str:
    return f"2001:db8::{i:x}"


@st.composite
def gateways(draw, name: str | None = None, first: int = 200, size: int | None = None) -> dict:
    """A valid EgressGateway with a pool of ``size`` addresses from ``first``
    (IPv4, IPv6 or both, paired)."""
    name = name or draw(dns_label)
    size = size or draw(st.integers(1, 8))
    family = draw(st.sampled_from(["4", "6", "dual"]))
    last = first + size - 1
    pools = {}
    if family in ("4", "dual"):
        pools["ipv4"] = [v4(first) if size == 1 else f"{v4(first)}-{v4(last)}"]
    if family in ("6", "dual"):
        pools["ipv6"] = [v6(first) if size == 1 else f"{v6(first)}-{v6(last)}"]
    spec = {"nodeSelector": draw(selectors()), "ippools": pools}
    if draw(st.booleans()):
        spec["clusterDefault"] = False
    return {"apiVersion": API, "kind": "EgressGateway", "metadata": {"name": name}, "spec": spec}


cidrs = st.sampled_from(["198.51.100.0/24", "198.51.100.7", "203.0.113.128/25", "2001:db8:1::/48",
                         "10.0.0.0/8", "0.0.0.0/0", "::/0", "2001:db8::5"])


@st.composite
def policies(draw, gateway: dict | None = None, name: str | None = None, namespace: str | None = None,
             explicit: int | None = None, cluster: bool | None = None) -> dict:
    """A valid EgressPolicy (or EgressClusterPolicy) of ``gateway``; ``explicit``:
    the pool index of an explicit EIP to claim."""
    cluster = draw(st.booleans()) if cluster is None else cluster
    spec: dict = {}
    if gateway is not None:
        spec["egressGatewayName"] = gateway["metadata"]["name"]
        pools = gateway["spec"]["ippools"]
        if explicit is not None:
            eip = {}
            first = pools.get("ipv4") or pools.get("ipv6")
            base = int(first[0].split("-")[0].rsplit(".", 1)[-1]) if "ipv4" in pools else int(
                first[0].split("-")[0].rsplit(":", 1)[-1], 16)
            if "ipv4" in pools:
                eip["ipv4"] = v4(base + explicit)
            if "ipv6" in pools and ("ipv4" not in pools or draw(st.booleans())):
                eip["ipv6"] = v6(base + explicit)
            spec["egressIP"] = eip
    if "egressIP" not in spec and draw(st.booleans()):
        spec["egressIP"] = {"allocatorPolicy": draw(st.sampled_from(["default", "rr"]))}
    applied: dict = ({"podSelector": draw(selectors())} if draw(st.booleans()) else
                     {"podSubnet": [draw(st.sampled_from(["203.0.113.0/27", "203.0.113.32/27", "2001:db8:2::/64"]))]})
    if cluster and draw(st.booleans()):
        applied["namespaceSelector"] = draw(selectors())
    spec["appliedTo"] = applied
    if draw(st.booleans()):
        spec["destSubnet"] = draw(st.lists(cidrs, max_size=3))
    if draw(st.booleans()):
        spec["excludeSubnet"] = draw(st.lists(cidrs, max_size=2))
    if draw(st.booleans()):
        spec["priority"] = draw(st.integers(0, 1000))
    meta = {"name": name or draw(dns_label)}
    if draw(st.booleans()):
        meta["labels"] = draw(labels)
    if not cluster:
        meta["namespace"] = namespace or draw(dns_label)
    return {"apiVersion": API, "kind": "EgressClusterPolicy" if cluster else "EgressPolicy",
            "metadata": meta, "spec": spec}


# -- one known-invalid field ------------------------------------------------------------------------------

# (path, bad value); the refusal must name the path (or a field under it).
POLICY_MUTATIONS = [
    ("spec.priority", "high"), ("spec.priority", -1), ("spec.priority", 1001), ("spec.priority", 1.5),
    ("spec.priority", True),
    ("spec.destSubnet", ["10.0.0.0/33"]), ("spec.destSubnet", ["198.51.100.7/24"]),
    ("spec.destSubnet", ["fe80::%eth0/64"]), ("spec.destSubnet", ["198.51.100.0/24\n"]),
    ("spec.destSubnet", [5]), ("spec.destSubnet", "198.51.100.0/24"), ("spec.excludeSubnet", [" 10.0.0.0/8"]),
    ("metadata.name", "Bad_Name"), ("metadata.name", "cart\n"), ("metadata.name", 5), ("metadata.name", "x" * 254),
    ("metadata.colour", "blue"), ("metadata.labels", {"bad key": "x"}), ("metadata.labels", {"app": "a b"}),
    ("metadata.annotations", {"note": 5}),
    ("spec.egressIP", {"ipv4": "2001:db8::1"}), ("spec.egressIP", {"ipv4": "192.0.2.1%1"}),
    ("spec.egressIP", {"ipv4": "300.1.1.1"}), ("spec.egressIP", {"ipv6": "fe80::1%eth0"}),
    ("spec.egressIP", {"useNodeIP": True, "ipv4": "192.0.2.200"}), ("spec.egressIP", {"allocatorPolicy": "lru"}),
    ("spec.egressIP", {"colour": 1}),
    ("spec.appliedTo", {}), ("spec.appliedTo", {"podSelector": {}, "podSubnet": ["203.0.113.0/27"]}),
    ("spec.appliedTo", {"podSubnet": []}), ("spec.appliedTo", {"podSelector": {"matchLabels": {"a": True}}}),
    ("spec.appliedTo", {"podSelector": {"matchExpressions": [{"key": "a", "operator": "In"}]}}),
    ("spec.appliedTo", {"podSelector": {"matchExpressions": [{"key": "a", "operator": "Is"}]}}),
    ("spec.egressGatewayName", "Edge"), ("spec.egressGatewayName", ["edge"]), ("spec.egressGatewayName", ""),
    ("spec.egressIP", {"ipv4": ""}), ("spec.egressIP", {"allocatorPolicy": ""}),
    ("spec.colour", "blue"), ("apiVersion", "sdn-egress.io/v1"),
]
GATEWAY_MUTATIONS = [
    ("spec.ippools", {"ipv4": ["192.0.2.210-192.0.2.200"]}),
    ("spec.ippools", {"ipv4": ["192.0.2.200-192.0.2.210", "192.0.2.208/29"]}),
    ("spec.ippools", {"ipv4": ["0.0.0.0/0"]}), ("spec.ippools", {"ipv6": ["::/0"]}),
    ("spec.ippools", {"ipv4": ["192.0.2.7/24"]}), ("spec.ippools", {"ipv6": ["2001:db8::1%eth0"]}),
    ("spec.ippools", {"ipv4": ["192.0.2.200"], "ipv6": ["2001:db8::1-2001:db8::2"]}),
    ("spec.ippools", {"ipv4": [], "ipv6": []}), ("spec.ippools", {"ipv4": ["192.0.2.200 - 192.0.2.201"]}),
    ("spec.ippools", {"ipv4": ["127.0.0.1"]}),
    ("spec.nodeSelector", None), ("spec.nodeSelector", {"matchLabels": {"egress": True}}),
    ("spec.clusterDefault", "yes"), ("metadata.name", "edge\n"),
]


@st.composite
def invalid_objects(draw) -> tuple[dict, str]:
    """(document, the field its refusal must name)."""
    if draw(st.booleans()):
        gw = draw(gateways())
        path, value = draw(st.sampled_from(GATEWAY_MUTATIONS))
        return set_path(gw, path, value), path
    doc = draw(policies(gateway=draw(gateways(name="edge")), cluster=False))
    path, value = draw(st.sampled_from(POLICY_MUTATIONS))
    return set_path(doc, path, value), path


# -- hostile values ---------------------------------------------------------------------------------------

def _too_long_to_print() -> int:
    """An integer Python refuses to print (more than 4,300 digits): YAML reads
    one from ``0xfff...``, which has no digit limit."""
    return int("f" * 5000, 16)


json_values = st.recursive(
    st.one_of(st.none(), st.booleans(), st.integers(-2**70, 2**70), st.floats(allow_nan=True),
              st.text(max_size=20), st.sampled_from(["fe80::1%eth0", "0.0.0.0/0", "192.0.2.1\n", "::",
                                                      "192.0.2.200-192.0.2.1", "a" * 300, "", 1e308 * 10]),
              st.builds(_too_long_to_print)),
    lambda children: st.one_of(st.lists(children, max_size=4),
                               st.dictionaries(st.one_of(st.text(max_size=10),
                                                         st.sampled_from(["spec", "metadata", "kind", "ippools",
                                                                          "ipv4", "ipv6", "podSelector"])),
                                               children, max_size=4)),
    max_leaves=20)


def _paths(doc, prefix=()):
    yield prefix
    if isinstance(doc, dict):
        for k, v in doc.items():
            yield from _paths(v, prefix + (k,))
    elif isinstance(doc, list):
        for i, v in enumerate(doc):
            yield from _paths(v, prefix + (i,))


@st.composite
def hostile_objects(draw) -> dict:
    """A valid object with a random value put at a random place in it."""
    base = draw(st.one_of(gateways(), policies(gateway=draw(gateways(name="edge"))),
                          st.just({"apiVersion": "v1", "kind": "Pod",
                                   "metadata": {"name": "p", "namespace": "shop"}, "spec": {"nodeName": "n"},
                                   "status": {"podIP": "203.0.113.2"}}),
                          st.just({"apiVersion": "v1", "kind": "Node", "metadata": {"name": "n"},
                                   "spec": {"podCIDR": "203.0.113.0/27"},
                                   "status": {"addresses": [{"type": "InternalIP", "address": "192.0.2.11"}]}})))
    paths = list(_paths(base))
    path = draw(st.sampled_from(paths[1:]))
    value = draw(json_values)
    doc = copy.deepcopy(base)
    target = doc
    for p in path[:-1]:
        target = target[p]
    target[path[-1]] = value
    return doc


NASTY_SCALARS = ["1" * 5000, "0x" + "f" * 5000, "0o" + "7" * 5000, "-" + "9" * 4400, "1" + "_0" * 4400,
                 "!!timestamp 2001-99-99", "2001-02-30", "!!float 1e999999", "!!binary '@@@'", "!!int x",
                 "!!python/object:os.system x", "!!set {a: 1}", "!!omap [a, b]", "!!pairs [[a]]", "? [a, b]\n: c",
                 "1:2:3:4:5:6:7:8:9:" + "0" * 4400, "!!str [a]", "&a [*a]", "!!null x", "!!bool maybe"]


def _bomb(levels: int) -> str:
    lines = ["a0: &a0 [x, x, x, x, x, x, x, x, x, x]"]
    lines += [f"a{i}: &a{i} [" + ", ".join([f"*a{i - 1}"] * 10) + "]" for i in range(1, levels)]
    return "\n".join(lines) + f"\nkind: List\napiVersion: v1\nitems: *a{levels - 1}\n"


@st.composite
def hostile_texts(draw) -> tuple[str, bytes]:
    """(file name, content) of a file nobody should trust."""
    kind = draw(st.sampled_from(["mangled", "bomb", "deep", "random", "documents", "object", "scalar"]))
    name = draw(st.sampled_from(["0-first.yaml", "zz-last.yaml", "m.json", "n.yml"]))
    if kind == "bomb":
        return name.replace(".json", ".yaml"), _bomb(draw(st.integers(3, 9))).encode()
    if kind == "deep":
        n = draw(st.integers(50, 3000))
        return name, (("[" * n + "]" * n) if draw(st.booleans()) else ("{a: " * n + "1" + "}" * n)).encode()
    if kind == "random":
        return name, draw(st.binary(max_size=200))
    if kind == "documents":
        return name.replace(".json", ".yaml"), b"---\n{}\n" * draw(st.integers(1, 12000))
    if kind == "scalar":  # values YAML's own constructors choke on
        value = draw(st.sampled_from(NASTY_SCALARS))
        key = draw(st.sampled_from(["spec", "metadata", "priority", "a"]))
        return name.replace(".json", ".yaml"), f"apiVersion: v1\nkind: Pod\n{key}: {value}\n".encode()
    if kind == "object":
        try:
            return name.replace(".json", ".yaml"), yaml.safe_dump(draw(hostile_objects())).encode()
        except ValueError:  # an integer too long to print: written the way YAML reads it back
            return name.replace(".json", ".yaml"), b"apiVersion: v1\nkind: Pod\nspec: {priority: 0x" + b"f" * 5000 + b"}\n"
    text = yaml.safe_dump_all([draw(policies(gateway=draw(gateways(name="edge")))), draw(gateways())])
    for _ in range(draw(st.integers(1, 5))):
        if not text:
            break
        i = draw(st.integers(0, len(text) - 1))
        op = draw(st.sampled_from(["delete", "insert", "replace"]))
        ch = draw(st.sampled_from(list("{}[]:-&*!|>'\"#%@`\n\t ,?") + ["&a ", "*a", "<<: ", "\x00", "\ufeff"]))
        text = (text[:i] + text[i + 1:] if op == "delete" else
                text[:i] + ch + text[i:] if op == "insert" else text[:i] + ch + text[i + 1:])
    return name.replace(".json", ".yaml"), text.encode("utf-8", "surrogatepass")


# -- the checks ----------------------------------------------------------------------------------------------

def _schema_and_cel(doc: dict) -> list[str]:
    """What the API server would say of one of our documents: schema, then CEL."""
    from sdn_egress.commands.validate import schema_errors

    found = [f"{e.field}: {e.message}" for e in schema_errors(doc)]
    if not found and doc.get("kind") in ("EgressGateway", "EgressPolicy", "EgressClusterPolicy"):
        from sdn_egress.kube import crds
        found = cel_violations(doc, crds.schema(doc["kind"]))
    return found





def cel_violations(new, schema, path="") -> list[str]:
    """The CRD's CEL rules (transition rules aside), as the API server runs them."""
    import celpy

    import k8scel

    out = []
    if new is None:
        return out
    for rule in schema.get("x-kubernetes-validations", ()):
        if "oldSelf" in rule["rule"]:
            continue
        if not k8scel.evaluate(rule["rule"], {"self": celpy.json_to_cel(new)}):
            out.append(f"{path or '<root>'}: {rule['message']}")
    for key, sub in (schema.get("properties") or {}).items():
        if isinstance(new, dict) and key in new:
            out += cel_violations(new[key], sub, f"{path}.{key}".lstrip("."))
    if isinstance(new, list) and isinstance(schema.get("items"), dict):
        for i, item in enumerate(new):
            out += cel_violations(item, schema["items"], f"{path}[{i}]")
    return out


def _parse(doc):
    try:
        return parse_object(doc, "f.yaml"), None
    except InvalidObject as exc:
        return None, exc.error


def check_valid(doc: dict) -> list[tuple[str, str]]:
    """A valid object: the parser, the CRD and ``validate`` all accept it."""
    out = []
    obj, err = _parse(doc)
    if err is not None:
        out.append(("refused-valid", f"parser: {err}"))
    crd = _schema_and_cel(doc)
    if crd:
        out.append(("refused-valid", f"CRD: {crd} of {doc}"))
    return out


def check_invalid(doc: dict, field: str) -> list[tuple[str, str]]:
    """An object with one bad field: refused, naming that field."""
    obj, err = _parse(doc)
    if err is None:
        return [("accepted-invalid", f"parser accepted {field}={_at(doc, field)!r}")]
    if not err.field.startswith(field):
        return [("accepted-invalid", f"refused for {err.field}, not {field}: {err}")]
    return []


def _at(doc, path):
    for p in path.split("."):
        doc = doc.get(p) if isinstance(doc, dict) else None
    return doc


def check_hostile(doc) -> list[tuple[str, str]]:
    """Any value anywhere: no crash, and what the parser accepts of our kinds
    the CRD accepts too."""
    obj, err = _parse(doc)
    if obj is not None and isinstance(doc, dict) and doc.get("kind") in (
            "EgressGateway", "EgressPolicy", "EgressClusterPolicy"):
        crd = _schema_and_cel(doc)
        if crd:
            return [("accepted-invalid", f"parser accepted what the CRD refuses: {crd}")]
    return []


def check_validate(files: list[tuple[str, bytes]], expect_problem: bool | None) -> list[tuple[str, str]]:
    """``validate`` over a directory: never an exception; a problem reported
    exactly when there is one (``expect_problem`` None: either)."""
    from sdn_egress.commands.validate import validate

    with tempfile.TemporaryDirectory() as d:
        for name, data in files:
            with open(os.path.join(d, name), "wb") as f:
                f.write(data)
        report = validate([d], partial=True)
    if expect_problem is True and report.ok:
        return [("accepted-invalid", f"validate found nothing in {[n for n, _ in files]}")]
    if expect_problem is False and not report.ok:
        return [("refused-valid", f"validate: {[str(e) for e in report.errors]}")]
    return []


def _outcome(alloc, state, keys):
    return {k: (state.policies.get(k), alloc.policies[k].eip_v4 if k in alloc.policies else None,
                alloc.policies[k].eip_v6 if k in alloc.policies else None,
                alloc.policies[k].gateway if k in alloc.policies else None) for k in keys}


def check_interference(valid: list[dict], hostile: tuple[str, bytes]) -> list[tuple[str, str]]:
    """The valid objects alone, one controller pass; then a new controller
    process (new source, same status directory) with a hostile file beside
    them: every valid object's parsed version, EIP and gateway stay."""
    from sdn_egress.allocation import FileAllocationStore
    from sdn_egress.controller import Controller
    from sdn_egress.source import ManifestDirSource

    root = tempfile.mkdtemp()
    try:
        manifests, status = os.path.join(root, "m"), os.path.join(root, "s")
        os.makedirs(manifests)
        with open(os.path.join(manifests, "a-valid.yaml"), "w") as f:
            yaml.safe_dump_all(valid, f)
        first = ManifestDirSource(manifests)
        alone = Controller(first, FileAllocationStore(status)).reconcile()
        state_alone = first.snapshot()
        keys = sorted(state_alone.policies)
        gateways_alone = dict(state_alone.gateways)
        name, data = hostile
        with open(os.path.join(manifests, name), "wb") as f:
            f.write(data)
        second = ManifestDirSource(manifests)  # a restarted controller
        after = Controller(second, FileAllocationStore(status)).reconcile()
        state_after = second.snapshot()
        out = []
        before, now = _outcome(alone, state_alone, keys), _outcome(after, state_after, keys)
        for k in keys:
            if before[k] != now[k]:
                out.append(("interference", f"policy {k}: {before[k][1:]} -> {now[k][1:]} "
                                            f"(parsed equal: {before[k][0] == now[k][0]}) by {name}"))
        for g, gw in gateways_alone.items():
            if state_after.gateways.get(g) != gw:
                out.append(("interference", f"gateway {g} changed by {name}"))
        return out
    finally:
        shutil.rmtree(root, ignore_errors=True)


@st.composite
def valid_sets(draw) -> list[dict]:
    """A gateway (the cluster default) and two policies, one with an explicit EIP."""
    gw = draw(gateways(name="edge", size=4))
    gw["spec"]["clusterDefault"] = True
    p1 = draw(policies(gateway=gw, name="billing", namespace="shop", explicit=2, cluster=False))
    p2 = draw(policies(gateway=None, name="web", namespace="shop", cluster=False))
    return [gw, p1, p2]


@st.composite
def interfering_files(draw, valid: list[dict]) -> tuple[str, bytes]:
    """A hostile file against ``valid``: a duplicate, a claim on its explicit
    EIP, a second default gateway, or anything of :func:`hostile_texts`."""
    gw, billing = valid[0], valid[1]
    kind = draw(st.sampled_from(["duplicate", "claim", "default", "text"]))
    name = draw(st.sampled_from(["0-first.yaml", "zz-last.yaml"]))
    if kind == "duplicate":
        dup = draw(policies(gateway=gw, name="billing", namespace="shop", cluster=False))
        return name, yaml.safe_dump(dup).encode()
    if kind == "claim":
        claimer = copy.deepcopy(billing)
        claimer["metadata"] = {"name": draw(st.sampled_from(["aaa", "zzz"])), "namespace": draw(
            st.sampled_from(["aaa", "shop", "zz"]))}
        return name, yaml.safe_dump(claimer).encode()
    if kind == "default":
        other = draw(gateways(name=draw(st.sampled_from(["aaa", "zzz"])), first=100))
        other["spec"]["clusterDefault"] = True
        return name, yaml.safe_dump(other).encode()
    return draw(hostile_texts())


@st.composite
def interference_cases(draw) -> tuple[list[dict], tuple[str, bytes]]:
    """(a valid set, a hostile file against it)."""
    valid = draw(valid_sets())
    return valid, draw(interfering_files(valid))


# -- lab topologies (issue 12: ipFamilies) -------------------------------------------------------------

FAMILY_SPELLINGS = st.sampled_from([["IPv4"], ["IPv6"], ["IPv4", "IPv6"]])


@st.composite
def topologies(draw) -> dict:
    """A valid lab topology: 1-8 nodes, pods on them, externals, a family choice."""
    from sdn_egress.lab import topology as t

    names = draw(st.lists(dns_label, min_size=1, max_size=t.MAX_NODES, unique=True))
    nodes = [{"name": n, **({"labels": draw(labels)} if draw(st.booleans()) else {})} for n in names]
    pods = [{"name": f"p-{i}", "namespace": draw(st.sampled_from(["shop", "pay"])), "node": draw(st.sampled_from(names))}
            for i in range(draw(st.integers(0, 6)))]
    ext_names = draw(st.lists(dns_label.filter(lambda s: s not in names and s != "router"), max_size=3, unique=True))
    families = draw(st.one_of(st.none(), FAMILY_SPELLINGS))
    lowest = t.MIN_IPV6_MTU if families and "IPv6" in families else t.MIN_EXTERNAL_MTU
    externals = [{"name": x, **({"mtu": draw(st.integers(lowest, t.MAX_EXTERNAL_MTU))} if draw(st.booleans()) else {})}
                 for x in ext_names]
    doc = {"nodes": nodes, "pods": pods, "externals": externals}
    if families is not None:
        doc["ipFamilies"] = families
    return doc


@st.composite
def hostile_topologies(draw) -> dict:
    """A valid topology with a random value put at a random place (often ipFamilies)."""
    doc = draw(topologies())
    if draw(st.booleans()):
        doc["ipFamilies"] = draw(st.one_of(json_values, st.lists(st.sampled_from(
            ["IPv4", "IPv6", "ipv4", "IPV6", "IPv5", "", 4, 6, None]), max_size=4)))
        return doc
    path = draw(st.sampled_from(list(_paths(doc))[1:]))
    target = doc
    for p in path[:-1]:
        target = target[p]
    target[path[-1]] = draw(json_values)
    return doc


def check_topology(doc) -> list[tuple[str, str]]:
    """A valid topology parses, with each family's addresses unique,
    canonical and in that family's documented range; anything else is a
    :class:`TopologyError` (never another exception)."""
    import ipaddress

    from sdn_egress.lab import topology as t

    try:
        topo = t.parse(doc)
    except t.TopologyError:
        return []
    out, seen = [], set()
    fams = doc.get("ipFamilies") or ["IPv4"]
    if list(topo.families) != fams:
        out.append(("accepted-invalid", f"ipFamilies {doc.get('ipFamilies')!r} parsed as {topo.families}"))
    ranges = {"IPv4": ("192.0.2.0/24", "198.51.100.0/24", "203.0.113.0/24"),
              "IPv6": (t.UNDERLAY6, t.EXTERNAL_LAN6, t.CLUSTER_POD_CIDR6)}
    hosts = [(n.ips, 0) for n in topo.nodes] + [(x.ips, 1) for x in topo.externals] + [(p.addresses, 2) for p in topo.pods]
    for ips, where in hosts:
        if len(ips) != len(topo.families):
            out.append(("accepted-invalid", f"{ips} for families {topo.families}"))
        for ip, fam in zip(ips, topo.families, strict=False):
            addr = ipaddress.ip_address(ip)
            if str(addr) != ip or ip in seen or addr not in ipaddress.ip_network(ranges[fam][where]):
                out.append(("accepted-invalid", f"{fam} address {ip} (duplicate, not canonical or out of range)"))
            seen.add(ip)
    return out

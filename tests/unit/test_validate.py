"""``sdn-egress validate``: offline checks of manifests, by the CRD schema and the controller's rules."""
from __future__ import annotations

import os
import shutil

import pytest

from sdn_egress.cli import main

EXAMPLES = os.path.join(os.path.dirname(__file__), "..", "..", "k8s", "examples")
GATEWAY = """\
apiVersion: sdn-egress.io/v1alpha1
kind: EgressGateway
metadata: {name: edge}
spec:
  nodeSelector: {matchLabels: {egress: "true"}}
  ippools: {ipv4: [192.0.2.200-192.0.2.201]}
"""


def policy(spec: str, name: str = "cart", kind: str = "EgressPolicy", namespace: str = "shop") -> str:
    meta = f"{{name: {name}, namespace: {namespace}}}" if kind == "EgressPolicy" else f"{{name: {name}}}"
    return f"apiVersion: sdn-egress.io/v1alpha1\nkind: {kind}\nmetadata: {meta}\nspec:\n{spec}"


def run(capsys, *args) -> tuple[int, list[str], str]:
    code = main(["validate", *map(str, args)])
    out, err = capsys.readouterr()
    return code, out.splitlines(), err


def test_every_example_validates(capsys):
    code, out, err = run(capsys, EXAMPLES)
    assert (code, out) == (0, [])
    assert err.strip().endswith("valid") and "problem" not in err


def test_the_examples_mean_what_they_say(tmp_path, capsys):
    """The examples as one cluster: a trial allocation gives every policy its EIP
    (the useNodeIP one would take a gateway node's address: there are no Nodes)."""
    from sdn_egress.allocation import allocate
    from sdn_egress.source import ManifestDirSource

    shutil.copytree(EXAMPLES, tmp_path / "m")
    state = ManifestDirSource(str(tmp_path / "m")).snapshot()
    assert state.errors == ()
    alloc = allocate(state)
    eips = {k: (str(s.eip_v4), str(s.eip_v6) if s.eip_v6 else None, s.gateway)
            for k, s in alloc.policies.items()}
    assert eips == {
        # Policies by key: payments/psp (the namespace's default gateway) first.
        "payments/psp": ("192.0.2.200", None, "edge"),
        "shop/cart": ("192.0.2.201", None, "edge"),
        "shop/billing": ("192.0.2.205", None, "edge"),
        "shop/crawler": ("192.0.2.202", None, "edge"),  # rr: the next after the last one handed out
        "legacy/legacy-range": ("192.0.2.220", "2001:db8::220", "dual"),
        "shop/cart-v6": ("192.0.2.221", "2001:db8::221", "dual"),  # IPv6 destinations; the pair all the same
        "prod-frontends": ("192.0.2.240", None, "shared"),  # the cluster default
        "shop/cart-node-ip": ("None", None, "edge"),  # useNodeIP: the examples hold no Node to take it from
    }
    assert alloc.policies["shop/cart-node-ip"].condition("Ready").reason == "NoGatewayNode"


CASES = [
    (policy("  egressGatewayName: edge\n  appliedTo: {podSelector: {}}\n  priority: high\n"
            "  destSubnet: [10.0.0.0/33, nonsense]\n"),
     ["EgressPolicy shop/cart: spec.priority: must be an integer, not a string ({f})",
      'EgressPolicy shop/cart: spec.destSubnet[0]: "10.0.0.0/33" is not a CIDR (or a bare address) ({f})',
      'EgressPolicy shop/cart: spec.destSubnet[1]: "nonsense" is not a CIDR (or a bare address) ({f})']),
    (policy("  egressGatewayName: edge\n  appliedTo: {podSelector: {}, podSubnet: [203.0.113.0/27]}\n"),
     ["EgressPolicy shop/cart: spec.appliedTo: give only one: exactly one of podSelector (a label selector; "
      "{{}} selects every pod of the namespace) and podSubnet (a list of CIDRs) ({f})"]),
    (policy("  egressGatewayName: edge\n  appliedTo: {}\n"),
     ["EgressPolicy shop/cart: spec.appliedTo: is required: exactly one of podSelector (a label selector; "
      "{{}} selects every pod of the namespace) and podSubnet (a list of CIDRs) ({f})"]),
    (policy("  egressGatewayName: edge\n  egressIP: {useNodeIP: true, ipv4: 192.0.2.200}\n"
            "  appliedTo: {podSelector: {}}\n"),
     ["EgressPolicy shop/cart: spec.egressIP.useNodeIP: cannot be combined with an explicit egress IP "
      "(spec.egressIP.ipv4): give one or the other ({f})"]),
    (policy("  egressGatewayName: edge\n  egressIP: {ipv4: 192.0.2.99}\n  appliedTo: {podSelector: {}}\n"),
     ['EgressPolicy shop/cart: spec.egressIP.ipv4: "192.0.2.99" is not in the pool of EgressGateway edge '
      "(192.0.2.200-192.0.2.201) ({f})"]),
    (policy("  egressGatewayName: edge\n  egressIP: {allocatorPolicy: random}\n  appliedTo: {podSelector: {}}\n"),
     ['EgressPolicy shop/cart: spec.egressIP.allocatorPolicy: "random" is not allowed; allowed: default, rr ({f})']),
    (policy("  egressGatewayName: nowhere\n  appliedTo: {podSelector: {}}\n"),
     ['EgressPolicy shop/cart: spec.egressGatewayName: no EgressGateway named "nowhere" ({f})']),
    (policy("  appliedTo: {podSelector: {}}\n"),
     ["EgressPolicy shop/cart: spec.egressGatewayName: names no EgressGateway and there is no default "
      "gateway: name one, label namespace shop with sdn-egress.io/default-gateway=NAME, or set "
      "clusterDefault: true on one EgressGateway ({f})"]),
    (policy("  appliedTo: {podSelector: {}, namespaceSelector: {matchLabels: {env: prod}}}\n",
            kind="EgressClusterPolicy") + "---\n"
     + policy("  egressGatewayName: edge\n  appliedTo: {namespaceSelector: {}, podSelector: {}}\n", name="x"),
     ['EgressPolicy shop/x: spec.appliedTo.namespaceSelector: unknown key "namespaceSelector"; allowed: '
      "podSelector, podSubnet ({f}, document 2)",
      "EgressClusterPolicy cart: spec.egressGatewayName: names no EgressGateway and there is no default "
      "gateway: name one, set clusterDefault: true on one EgressGateway ({f}, document 1)"]),
    ("".join(policy("  egressGatewayName: edge\n  appliedTo: {podSelector: {}}\n", name=n) + "---\n"
             for n in ("a", "b", "c")),
     ["EgressPolicy shop/c: spec.egressGatewayName: no free IPv4 address left in the pool of EgressGateway "
      "edge (192.0.2.200-192.0.2.201) ({f}, document 3)"]),
    ("apiVersion: sdn-egress.io/v1alpha1\nkind: EgressGateway\nmetadata: {name: two}\nspec:\n"
     "  nodeSelector: {}\n  ippools:\n    ipv4: [192.0.2.210-192.0.2.212]\n    ipv6: ['2001:db8::1-2001:db8::2']\n",
     ["EgressGateway two: spec.ippools: IPv4 and IPv6 addresses must pair up: 3 IPv4 and 2 IPv6 addresses "
      "(in a dual-stack gateway the n-th IPv4 address pairs with the n-th IPv6 address: give as many of "
      "each) ({f})"]),
    ("apiVersion: sdn-egress.io/v1alpha1\nkind: EgressGateway\nmetadata: {name: bad}\nspec:\n"
     "  ippools: {ipv4: [192.0.2.220-192.0.2.230, 192.0.2.225/32, 2001:db8::1]}\n  clusterDefault: 'yes'\n",
     ["EgressGateway bad: spec.nodeSelector: is required ({f})",
      'EgressGateway bad: spec.ippools.ipv4[2]: "2001:db8::1" is not an IPv4 address, range (first-last) or '
      "CIDR ({f})",
      "EgressGateway bad: spec.clusterDefault: must be a boolean, not a string ({f})"]),
    ("apiVersion: sdn-egress.io/v1alpha1\nkind: EgressGateway\nmetadata: {name: lap}\nspec:\n"
     "  nodeSelector: {}\n  ippools: {ipv4: [192.0.2.220-192.0.2.230, 192.0.2.225]}\n",
     ['EgressGateway lap: spec.ippools.ipv4[1]: "192.0.2.225" overlaps "192.0.2.220-192.0.2.230" '
      "(spec.ippools.ipv4[0]) ({f})"]),
    ("apiVersion: sdn-egress.io/v1alpha1\nkind: EgressGateway\nmetadata: {name: zz}\nspec:\n"
     "  clusterDefault: true\n  nodeSelector: {}\n  ippools: {ipv4: [192.0.2.230]}\n---\n"
     "apiVersion: sdn-egress.io/v1alpha1\nkind: EgressGateway\nmetadata: {name: aa}\nspec:\n"
     "  clusterDefault: true\n  nodeSelector: {}\n  ippools: {ipv4: [192.0.2.231]}\n",
     ["EgressGateway zz: spec.clusterDefault: EgressGateway aa is already the cluster default; only one "
      "gateway may be (this one is not) ({f}, document 1)"]),
    ("apiVersion: sdn-egress.io/v1alpha1\nkind: EgressPolcy\nmetadata: {name: x}\n",
     ['EgressPolcy x: kind: "EgressPolcy" is not a kind of sdn-egress.io; known kinds: EgressClusterPolicy, '
      "EgressGateway, EgressPolicy ({f})"]),
    ("kind: [unclosed\n", None),
]


@pytest.mark.parametrize("text, expected", CASES)
def test_invalid_manifests_are_refused_with_the_expected_message(tmp_path, capsys, text, expected):
    (tmp_path / "gateway.yaml").write_text(GATEWAY)
    f = tmp_path / "policy.yaml"
    f.write_text(text)
    code, out, err = run(capsys, tmp_path)
    assert code == 1
    if expected is None:
        assert len(out) == 1 and out[0].startswith(f"File {f}: line 2, column 1: not valid YAML")
    else:
        assert out == [e.format(f=f) for e in expected]
    assert err.strip().endswith(f"{len(out)} problem{'s' if len(out) > 1 else ''}")


def test_partial_sets_may_name_gateways_elsewhere(tmp_path, capsys):
    f = tmp_path / "p.yaml"
    f.write_text(policy("  egressGatewayName: edge\n  appliedTo: {podSelector: {}}\n")
                 + "---\n" + policy("  appliedTo: {podSelector: {}}\n", name="defaulted"))
    code, out, _ = run(capsys, f)
    assert code == 1 and len(out) == 2
    code, out, _ = run(capsys, "--partial", f)
    assert (code, out) == (0, [])
    # Other problems stay problems.
    f.write_text(policy("  egressGatewayName: edge\n  appliedTo: {podSelector: {}}\n  priority: -1\n"))
    code, out, _ = run(capsys, "--partial", f)
    assert (code, out) == (1, [f"EgressPolicy shop/cart: spec.priority: -1 is out of range 0..1000 ({f})"])


def test_a_missing_path_is_a_usage_error(tmp_path, capsys):
    code, out, err = run(capsys, tmp_path / "absent.yaml")
    assert code == 2 and out == []
    assert "absent.yaml: no such file or directory" in err

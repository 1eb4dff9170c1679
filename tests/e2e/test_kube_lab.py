"""The production path on the lab: the cluster state in an API server (in the
router namespace), the controller and every agent in Kubernetes mode (the
real ``kubernetes`` client, informers, Leases, the allocation ConfigMap),
real packets, and what the external host saw.  Family: IPv4 (``ipFamilies: [IPv4]``)."""
from __future__ import annotations

import json
import os
import subprocess
import sys

import netaddr
import pytest
import yaml

from tests.support.waiting import wait_for

from .conftest import lab_up, policy_doc, scrape

EXT = "198.51.100.10"
EIP = "192.0.2.205"
NODE_IP = {"alpha": "192.0.2.11", "bravo": "192.0.2.12", "charlie": "192.0.2.13"}
TOPOLOGY = {
    "ipFamilies": ["IPv4"],  # written for IPv4 (issue 12: the family each test runs on is named)
    "nodes": [{"name": "alpha", "labels": {"egress": "true"}}, {"name": "bravo", "labels": {"egress": "true"}},
              {"name": "charlie"}],
    "pods": [{"name": "cart-0", "namespace": "shop", "node": "charlie", "labels": {"app": "cart"}},
             {"name": "etl-0", "namespace": "shop", "node": "charlie", "labels": {"app": "etl"}}],
    "externals": [{"name": "ext-1"}],
}
GATEWAY = {"apiVersion": "sdn-egress.io/v1alpha1", "kind": "EgressGateway", "metadata": {"name": "edge"},
           "spec": {"nodeSelector": {"matchLabels": {"egress": "true"}},
                    "ippools": {"ipv4": ["192.0.2.200-192.0.2.210"]}}}


@pytest.fixture(scope="module")
def lab(tmp_path_factory):
    with lab_up(TOPOLOGY, "sek", kube=True) as lab:
        docs = tmp_path_factory.mktemp("kube") / "objects.yaml"
        docs.write_text(yaml.safe_dump_all([GATEWAY, policy_doc("cart", "shop", eip=EIP)]))
        lab.apply(str(docs))
        wait_for(lambda: lab.udp_source("shop/cart-0", EXT) == EIP, "cart-0 out with its EIP", timeout=60)
        yield lab


def policy_status(lab, name="cart", ns="shop") -> dict:
    return (lab.kube_api().get("EgressPolicy", name, ns) or {}).get("status") or {}


def lease_report(lab, node: str) -> dict:
    lease = lab.kube_api().get("Lease", f"sdn-egress-agent-{node}", "sdn-egress-agents") or {}
    return json.loads(((lease.get("metadata") or {}).get("annotations") or {}).get("sdn-egress.io/report", "{}"))


def conditions(status: dict) -> dict:
    return {c["type"]: (c["status"], c["reason"]) for c in status.get("conditions") or []}


def flows(lab, node: str) -> dict[str, str]:
    """The node's flows without counters, per bridge."""
    return {br: "\n".join(sorted(lab.ovs(node).ofctl("dump-flows", br, "--no-stats").splitlines()[1:]))
            for br in ("br-int", "br-ex")}


def test_the_state_comes_from_the_api_and_the_status_goes_back_to_it(lab):
    # The lab wrote nothing to a manifest directory: the API is the only source.
    assert lab.kube and not lab.kube_api().get("ConfigMap", "nothing", "sdn-egress")
    # The status is written after the allocation the data path already follows.
    status = wait_for(lambda: (lambda st: st if st.get("eip") else None)(policy_status(lab)), "the policy's status")
    assert status["eip"] == {"ipv4": EIP}
    assert status["node"] in ("alpha", "bravo")
    assert conditions(status) == {"IPAllocated": ("True", "Allocated"), "Ready": ("True", "GatewayNodeSelected")}
    gw = lab.kube_api().get("EgressGateway", "edge")
    assert {n["name"]: n["eips"] for n in gw["status"]["nodes"]}[status["node"]] == [EIP]
    # The allocation the agents read: one ConfigMap per EIP.
    records = [json.loads(cm["data"]["record.json"]) for cm in lab.kube_api().items("ConfigMap")
               if cm["metadata"].get("labels", {}).get("sdn-egress.io/allocation-record") == "eip"]
    assert [(r["eip"]["ip"], r["eip"]["nodes"][0]) for r in records] == [(EIP, status["node"])]
    # Every agent reports through its Lease; the holder names the EIP.
    wait_for(lambda: lease_report(lab, status["node"]).get("held_eips") == [EIP], "the holder's Lease report")
    for node in ("alpha", "bravo", "charlie"):
        # An agent reports "waiting for the first answer of the API server"
        # until its informers have listed: on a loaded machine that can
        # outlast the holder's first report.
        wait_for(lambda: lease_report(lab, node).get("passes", 0) > 0, f"{node}'s Lease report of a pass")
        # Owned by its Node: deleting the Node lets the garbage collector take the Lease.
        lease = lab.kube_api().get("Lease", f"sdn-egress-agent-{node}", "sdn-egress-agents")
        assert [(o["kind"], o["name"], o["uid"]) for o in lease["metadata"]["ownerReferences"]] == [
            ("Node", node, lab.kube_api().get("Node", node)["metadata"]["uid"])]
    # The pod the policy does not select keeps the node IP (the CNI's masquerade).
    assert lab.udp_source("shop/etl-0", EXT) == NODE_IP["charlie"]
    assert lab.tcp_source("shop/cart-0", EXT) == EIP


def test_status_reads_the_cluster_through_the_api(lab):
    exe = os.path.join(os.path.dirname(sys.executable), "sdn-egress")
    out = lab.exec("router", [exe, "status", "--kubeconfig", lab.kubeconfig, "--json"])
    st = json.loads(out.stdout)
    (cart,) = [p for p in st["policies"] if p["policy"] == "shop/cart"]
    assert cart["eip"] == EIP and cart["ready"] and cart["held_by"] == cart["active"]
    assert {n["node"] for n in st["nodes"]} == {"alpha", "bravo", "charlie"}
    assert all(n["report_age_s"] < 30 for n in st["nodes"]), st["nodes"]
    # Never steered: the detected service CIDR, the pod CIDRs and node addresses.
    never = netaddr.IPSet(st["cluster_cidrs"])
    assert "192.0.2.64/27" in st["cluster_cidrs"]
    assert all(ip in never for ip in NODE_IP.values()) and "203.0.113.66" in never  # charlie's pod CIDR
    assert "198.51.100.10" not in never
    # The trace explains the path in the policy's terms, from the API's objects too.
    from sdn_egress.debug.env import LabEnv
    from sdn_egress.debug.trace import trace
    tr = trace(LabEnv(lab), "shop/cart-0", f"{EXT}:8080", "udp")
    assert tr["policy"]["policy"] == "shop/cart" and tr["policy"]["eip"] == EIP
    # The lab's own view of the same: from its API server too.
    text = subprocess.run([exe, "status", "--lab-state", lab.state_dir], capture_output=True, text=True).stdout
    assert "192.0.2.64/27" in text and "shop/cart" in text


def test_an_invalid_policy_gets_its_condition_and_disturbs_nothing(lab, tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text(yaml.safe_dump(policy_doc("etl", "shop", eip="192.0.2.99", selector={"app": "etl"})))
    lab.apply(str(bad))
    try:
        wait_for(lambda: conditions(policy_status(lab, "etl")).get("IPAllocated", ("",))[0] == "False",
                 "the refusal in the policy's status")
        cond = next(c for c in policy_status(lab, "etl")["conditions"] if c["type"] == "IPAllocated")
        assert "192.0.2.99" in cond["message"] and "pool" in cond["message"]
        assert lab.udp_source("shop/etl-0", EXT) == NODE_IP["charlie"]
        assert lab.udp_source("shop/cart-0", EXT) == EIP
    finally:
        lab.delete(str(bad))


def test_the_api_server_going_away_costs_no_flows(lab, tmp_path):
    before = {n: flows(lab, n) for n in NODE_IP}
    pids = {n: lab.agent_pid(n) for n in NODE_IP}
    lab.stop_kube_api()
    try:
        # The agents notice (their informers and Lease writes fail) and keep going.
        wait_for(lambda: "cannot write the agent's report" in lab.agent_log("charlie"), "the agent saw the outage")
        url = f"http://{NODE_IP['alpha']}:9100/metrics"
        failed = 'sdn_egress_agent_report_writes_total{result="error"}'
        wait_for(lambda: scrape(lab, "router", url).get(failed, 0) > 0, "failed report writes counted")
        passes = {n: lab.agent_passes(n) for n in NODE_IP}
        wait_for(lambda: all(lab.agent_passes(n) > passes[n] for n in NODE_IP), "agents resyncing meanwhile",
                 timeout=30)
        assert lab.udp_source("shop/cart-0", EXT) == EIP
        assert {n: flows(lab, n) for n in NODE_IP} == before
        # An agent that starts while the API is away has no state: it changes nothing.
        log_before = len(lab.agent_log("charlie"))
        pids["charlie"] = lab.restart_agent("charlie")
        wait_for(lambda: "waiting for the first answer of the API server" in lab.agent_log("charlie")[log_before:],
                 "the new agent waits for the API")
        assert lab.udp_source("shop/cart-0", EXT) == EIP
        assert {n: flows(lab, n) for n in NODE_IP} == before
    finally:
        lab.start_kube_api()
    assert {n: lab.agent_pid(n) for n in NODE_IP} == pids
    ok_at = scrape(lab, "router", url)["sdn_egress_agent_report_last_success_timestamp_seconds"]
    wait_for(lambda: scrape(lab, "router", url)["sdn_egress_agent_report_last_success_timestamp_seconds"] > ok_at,
             "reports written again")
    # Back: a change made through the API reaches the data path again.
    lab.label("shop/cart-0", "app", "paused")
    try:
        wait_for(lambda: lab.udp_source("shop/cart-0", EXT) == NODE_IP["charlie"], "unselected after the outage",
                 timeout=40)
    finally:
        lab.label("shop/cart-0", "app", "cart")
    wait_for(lambda: lab.udp_source("shop/cart-0", EXT) == EIP, "selected again", timeout=30)
    assert {n: flows(lab, n) for n in NODE_IP} == before


def test_a_failover_shows_in_the_policy_status(lab):
    active = policy_status(lab)["node"]
    survivor = ({"alpha", "bravo"} - {active}).pop()
    wait_for(lab.bfd_sessions_up, "BFD up")
    lab.kill(active)
    try:
        wait_for(lambda: lab.udp_source("shop/cart-0", EXT) == EIP, "the same EIP through the survivor")
        # The survivor's Lease says it holds the EIP; the controller follows.
        wait_for(lambda: lease_report(lab, survivor).get("held_eips") == [EIP], "the survivor's report")
        wait_for(lambda: policy_status(lab)["node"] == survivor, "the status names the survivor")
    finally:
        lab.revive(active)
    wait_for(lambda: lease_report(lab, active).get("passes", 0) > 0 and lab.bfd_sessions_up(), "the old active back")
    assert policy_status(lab)["node"] == survivor  # no flap back
    assert lab.udp_source("shop/cart-0", EXT) == EIP


def test_a_planned_move_through_the_api(lab):
    wait_for(lab.bfd_sessions_up, "BFD up")
    source = policy_status(lab)["node"]
    target = ({"alpha", "bravo"} - {source}).pop()
    exe = os.path.join(os.path.dirname(sys.executable), "sdn-egress")
    out = lab.exec("router", [exe, "move", "--kubeconfig", lab.kubeconfig, "--eip", EIP, "--to", target,
                              "--wait", "30"], check=False)
    assert out.returncode == 0, out.stderr
    assert f"now held by {target}" in out.stdout
    assert "moves.json" not in lab.kube_api().get("ConfigMap", "sdn-egress-allocation", "sdn-egress")["data"]
    wait_for(lambda: policy_status(lab)["node"] == target, "the status names the target")
    assert lease_report(lab, target).get("held_eips") == [EIP]
    wait_for(lambda: lease_report(lab, source).get("held_eips") == [], "the source let go")
    assert lab.udp_source("shop/cart-0", EXT) == EIP
    bad = lab.exec("router", [exe, "move", "--kubeconfig", lab.kubeconfig, "--eip", EIP, "--to", "charlie"],
                   check=False)
    assert bad.returncode == 1 and f"charlie is not a gateway node of EIP {EIP}" in bad.stderr
    # The lab's file-based path would never reach this controller: it says where to ask.
    lab_way = subprocess.run([exe, "move", "--lab-state", lab.state_dir, "--eip", EIP, "--to", source],
                             capture_output=True, text=True, timeout=60)
    assert lab_way.returncode == 2 and "--kubeconfig" in lab_way.stderr


# The node as the agent's pod sees it: its OVS run directory at /var/run/openvswitch,
# the agent's records at /var/run/sdn-egress (a private mount namespace; /run a
# tmpfs in it, so nothing of the host's /run is touched).
AS_A_NODE = ('mount -t tmpfs tmpfs /run && mkdir -p /run/openvswitch /run/sdn-egress'
             ' && mount --bind "$1" /run/openvswitch && mount --bind "$2" /run/sdn-egress && shift 2 && exec "$@"')


def as_on_a_node(lab, node: str, *args: str) -> subprocess.CompletedProcess:
    """A debugging command as a user on a real cluster runs it on ``node``
    (``kubectl exec`` into its agent's pod): the API through a kubeconfig,
    ``$NODE_NAME``, the OVS and the agent's records at their real paths, its
    own routing; no other flag, no lab state."""
    exe = os.path.join(os.path.dirname(sys.executable), "sdn-egress")
    return lab.exec(node, ["unshare", "-m", "--propagation", "private", "sh", "-c", AS_A_NODE, "sh",
                           lab.ovs(node).rundir, lab.status_dir, "env", f"NODE_NAME={node}",
                           exe, *args, "--kubeconfig", lab.kubeconfig], check=False)


def test_flows_trace_and_status_as_on_a_real_cluster_say_what_the_lab_says(lab):
    from sdn_egress.debug import flows as flows_mod
    from sdn_egress.debug.env import LabEnv
    from sdn_egress.debug.status import collect
    from sdn_egress.debug.trace import trace

    env = LabEnv(lab)
    holder = policy_status(lab)["node"]
    # trace on the pod's node: the same policy block, kernel and br-int hops;
    # the gateway's hop is named with where to run it ...
    out = as_on_a_node(lab, "charlie", "trace", "--src", "shop/cart-0", "--dst", f"{EXT}:8080", "--proto", "udp",
                       "--json")
    assert out.returncode == 0, out.stderr
    real, ref = json.loads(out.stdout), trace(env, "shop/cart-0", f"{EXT}:8080", "udp")
    assert real["policy"] == ref["policy"] and real["policy"]["eip"] == EIP
    assert real["hops"][:2] == ref["hops"][:2]
    assert real["hops"][2]["where"] == f"{holder} (gateway)"
    assert real["hops"][2]["explain"].startswith(f"not traced from here: the switch of node {holder} is on {holder}")
    # ... and traced there with --gateway-hop: what the lab's trace shows for that hop.
    out = as_on_a_node(lab, holder, "trace", "--src", "shop/cart-0", "--dst", f"{EXT}:8080", "--proto", "udp",
                       "--gateway-hop", "--json")
    assert out.returncode == 0, out.stderr
    assert json.loads(out.stdout)["hops"] == ref["hops"][2:]
    assert f"nat(src={EIP})" in json.dumps(ref["hops"][2])
    # An unselected pod: the same reason, the same kernel hop.
    out = as_on_a_node(lab, "charlie", "trace", "--src", "shop/etl-0", "--dst", EXT, "--proto", "udp", "--json")
    assert json.loads(out.stdout) == trace(env, "shop/etl-0", EXT, "udp")
    assert "policy shop/cart does not select the pod" in out.stdout

    # flows, with a stale flow injected by hand and a wanted one deleted (the
    # node's agent stopped meanwhile, so it repairs neither).
    def rows(report):
        return sorted((b, r["table"], r["priority"], r["match"], r["actions"], r["owner"], r["state"])
                      for b, br in report["bridges"].items() for t in br["tables"].values() for r in t)

    lab.stop_agent("charlie")
    try:
        ovs = lab.ovs("charlie")
        ovs.ofctl("add-flow", "br-int", "table=0,priority=5000,cookie=0x99,ip,nw_dst=198.51.100.99,actions=drop")
        steer = next(l for l in ovs.ofctl("dump-flows", "br-int", "--no-stats").splitlines() if "nw_src=" in l)
        match = ",".join(t for t in steer.split("actions=")[0].replace(" ", ",").split(",")
                         if t and not t.startswith(("cookie=", "duration=")))
        ovs.ofctl("--strict", "del-flows", "br-int", match)
        out = as_on_a_node(lab, "charlie", "flows", "--node", "charlie", "--json")
        assert out.returncode == 0, out.stderr
        real, ref = json.loads(out.stdout), flows_mod.read(env, "charlie")
        assert rows(real) == rows(ref)
        assert [(r["priority"], r["match"], r["owner"]) for r in real["bridges"]["br-int"]["stale"]] == [
            (5000, "ip,nw_dst=198.51.100.99", "no object owns it")]
        assert [m["owner"] for m in real["bridges"]["br-int"]["missing"]] == [
            m["owner"] for m in ref["bridges"]["br-int"]["missing"]] and len(real["bridges"]["br-int"]["missing"]) == 1
        assert "policy shop/cart" in real["bridges"]["br-int"]["missing"][0]["owner"]
    finally:
        lab.start_agent("charlie")
    wait_for(lambda: flows_mod.read(env, "charlie")["bridges"]["br-int"]["stale"] == [], "charlie's agent repairs")

    # status through the API: liveness and BFD per tunnel from the agents' reports, as the lab's OVSDBs say.
    wait_for(lambda: lab.bfd_sessions_up(), "every BFD session up")
    def both():
        out = lab.exec("router", [os.path.join(os.path.dirname(sys.executable), "sdn-egress"), "status",
                                  "--kubeconfig", lab.kubeconfig, "--json"])
        return ({n["node"]: n for n in json.loads(out.stdout)["nodes"]},
                {n["node"]: n for n in collect(env)["nodes"]})

    # A restarted agent's report reaches its Lease within a heartbeat (5 s).
    real, ref = wait_for(lambda: (lambda r: r if all(r[0][n].get("bfd") for n in r[0]) else None)(both()),
                         "every agent's report with its BFD states", timeout=20)
    assert {n: r["agent_alive"] for n, r in real.items()} == {"alpha": True, "bravo": True, "charlie": True}
    for node in ("alpha", "bravo", "charlie"):
        assert real[node]["bfd"] == ref[node]["bfd"] and ref[node]["bfd"], (node, real[node], ref[node])
        assert set(real[node]["bfd"].values()) == {"up"}


def test_a_leader_change_gives_no_explicit_eip_to_a_refused_claimant(lab, tmp_path):
    """Issue 11, item 1, in Kubernetes mode: shop/aaa (sorts before shop/cart)
    claims cart's explicit EIP for etl-0 and is refused; a new controller
    process takes the Lease (and every agent restarts): the external host still
    sees the EIP from cart-0 only."""
    path = tmp_path / "claim.yaml"
    path.write_text(yaml.safe_dump(policy_doc("aaa", "shop", eip=EIP, selector={"app": "etl"})))
    lab.apply(str(path))
    try:
        wait_for(lambda: conditions(policy_status(lab, "aaa")).get("IPAllocated") == ("False", "Invalid"),
                 "the claim refused", timeout=30)
        lab.restart_controller()  # SIGTERM releases the Lease; the new process takes it
        metrics = "http://127.0.0.1:9101/metrics"
        wait_for(lambda: scrape(lab, "router", metrics).get("sdn_egress_controller_reconcile_seconds_count", 0) >= 1,
                 "the new leader's first pass", timeout=60)
        for node in NODE_IP:
            lab.restart_agent(node)
        wait_for(lambda: all(lab.agent_passes(n) > 0 for n in NODE_IP), "the restarted agents' first pass",
                 timeout=60)
        for _ in range(5):
            assert lab.udp_source("shop/cart-0", EXT) == EIP
            assert lab.udp_source("shop/etl-0", EXT) == NODE_IP["charlie"]
        aaa = policy_status(lab, "aaa")
        assert conditions(aaa)["IPAllocated"] == ("False", "Invalid") and "eip" not in aaa
        assert policy_status(lab)["eip"] == {"ipv4": EIP}
    finally:
        lab.delete(str(path))

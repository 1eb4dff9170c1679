"""The informers and the Event recorder call the API through
:mod:`sdn_egress.kube.rest` (the ``kubernetes`` client's configuration and
errors, not its generated API classes): what they send, what they raise, and
that an agent-like process never loads ``CoreV1Api`` (~22 MB)."""
from __future__ import annotations

import json
import subprocess
import sys

import pytest

from sdn_egress.kube import rest
from sdn_egress.kube.events import EventRecorder
from sdn_egress.kube.resources import NODES, PODS, list_function

from tests.support.kubeemu import api, emu  # noqa: F401 - fixtures
from tests.support.objects import node, pod


def test_a_list_sends_the_query_of_the_generated_functions(emu, api):
    for i in range(3):
        emu.apply(node(f"n{i}", i))
    func, args = list_function(api, NODES)
    resp = func(*args, _preload_content=False, label_selector="egress=true", limit=2)
    data = json.loads(resp.data)
    assert [o["metadata"]["name"] for o in data["items"]] == ["n0", "n1"] and data["metadata"]["continue"]
    assert emu.requests_to("GET", "/api/v1/nodes$")[-1].query == {"labelSelector": "egress=true", "limit": "2"}
    emu.apply(pod("shop", "p", "n0", "203.0.113.10", app="web"))
    func, args = list_function(api, PODS, "shop")
    resp = func(*args, _preload_content=False, field_selector="spec.nodeName=n0")
    assert [o["metadata"]["name"] for o in json.loads(resp.data)["items"]] == ["p"]
    assert emu.requests_to("GET", "/api/v1/namespaces/shop/pods$")


def test_an_error_status_is_the_clients_api_exception(emu, api):
    from kubernetes.client.rest import ApiException

    emu.fail("GET", r"/api/v1/nodes$", 410, reason="Expired")
    func, args = list_function(api, NODES)
    with pytest.raises(ApiException) as err:
        func(*args, _preload_content=False)
    assert err.value.status == 410 and "Expired" in err.value.body
    with pytest.raises(TypeError):
        func(*args, _preload_content=True)  # nothing is deserialized


def test_an_event_is_posted_and_a_refused_one_only_logged(emu, api):
    rec = EventRecorder(api, component="sdn-egress-agent", instance="n0")
    obj = {"apiVersion": "v1", "kind": "Node", "metadata": {"name": "n0", "uid": "u"}}
    assert rec.record(obj, "Normal", "Held", "EIP 192.0.2.200 held")
    (event,) = emu.items("Event")
    assert event["reason"] == "Held" and event["involvedObject"]["name"] == "n0"
    assert event["metadata"]["namespace"] == "default"
    emu.fail("POST", r"/events$", 500)
    assert not rec.record(obj, "Warning", "Failed", "x") and rec.recorded == 1
    assert rest.send(api, "GET", "/api/v1/nodes")["kind"] == "NodeList"


AGENT_LIKE = """
import json, sys
from kubernetes import client
from sdn_egress.kube.events import EventRecorder
from sdn_egress.source.kube import KubeSource
configuration = client.Configuration()
configuration.host = sys.argv[1]
api = client.ApiClient(configuration)
source = KubeSource(api, node="n0").start()
assert source.wait_synced(timeout=20)
assert EventRecorder(api).record({"kind": "Node", "metadata": {"name": "n0"}}, "Normal", "Up", "up")
state = source.snapshot()
source.stop()
print(json.dumps({"nodes": sorted(state.nodes), "loaded": sorted(
    m for m in sys.modules if m.startswith("kubernetes.client.api.") or m == "kubernetes.client.models.v1_pod")}))
"""


def test_an_agent_process_never_loads_the_generated_core_api(emu):
    emu.apply(node("n0", 0))
    proc = subprocess.run([sys.executable, "-c", AGENT_LIKE, emu.url], capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr[-2000:]
    out = json.loads(proc.stdout.strip().splitlines()[-1])
    assert out == {"nodes": ["n0"], "loaded": []}

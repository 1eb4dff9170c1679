"""An informer lists in pages (``limit`` and ``continue``), as client-go's
pager does: the real kubernetes client against the emulated API server, which
serves every page of a list from the first page's snapshot."""
from __future__ import annotations

import pytest

from sdn_egress.kube.informer import PAGE_RESTARTS, Informer
from sdn_egress.kube.resources import CONFIGMAPS, NODES, PODS, TRIMS

from tests.support.kubeemu import api, emu  # noqa: F401 - fixtures
from tests.support.objects import node, pod
from tests.support.waiting import wait_for


@pytest.fixture
def informers():
    started: list[Informer] = []

    def start(*args, **kwargs) -> Informer:
        inf = Informer(*args, **kwargs).start()
        started.append(inf)
        assert inf.synced.wait(20)
        return inf
    try:
        yield start
    finally:
        for inf in started:
            inf.stop()


def seed_nodes(emu, n: int) -> None:
    for i in range(n):
        emu.apply(node(f"n{i:02d}", i))


def lists(emu, path: str) -> list[dict]:
    """The queries of the list requests (not the watches) to ``path``."""
    return [r.query for r in emu.requests_to("GET", path + "$") if not r.query.get("watch")]


def names(inf) -> list[str]:
    return [o["metadata"]["name"] for o in inf.items()]


def test_a_list_in_pages_caches_every_object_of_the_server(emu, api, informers):
    seed_nodes(emu, 23)
    inf = informers(api, NODES, page_size=5)
    assert inf.items() == emu.items("Node")  # untrimmed: the very objects, kind and apiVersion filled in
    queries = lists(emu, "/api/v1/nodes")
    assert [q.get("limit") for q in queries] == ["5"] * 5
    assert [bool(q.get("continue")) for q in queries] == [False, True, True, True, True]
    assert inf.lists == 1 and inf.pages == 5
    # The watch starts from the list's version: the snapshot's, the first page's.
    watch = emu.wait_for(lambda: [r.query for r in emu.requests_to("GET", "/api/v1/nodes$") if r.query.get("watch")])
    assert watch[0]["resourceVersion"] == str(emu.rv)


def test_a_change_between_two_pages_comes_by_the_watch(emu, api, informers):
    """The pages are one snapshot: an object added or deleted while the list
    is read is not in it; the watch from the list's version brings the change."""
    seed_nodes(emu, 12)
    served = emu.on_request
    changed = []

    def between_pages(request):
        served(request)
        if request.query.get("continue") and not changed:
            changed.append(request)
            emu.apply(node("late", 40))
            emu.delete("Node", "n00")
    emu.on_request = between_pages
    inf = informers(api, NODES, page_size=5, trim=TRIMS["Node"])
    assert changed and lists(emu, "/api/v1/nodes")[0].get("limit") == "5"
    after = ["late"] + [f"n{i:02d}" for i in range(1, 12)]
    wait_for(lambda: names(inf) == after, "the change by the watch")
    assert inf.lists == 1


def test_an_expired_continue_token_restarts_the_list(emu, api, informers):
    seed_nodes(emu, 12)
    emu.expire_continues(1)
    inf = informers(api, NODES, page_size=5)
    assert inf.items() == emu.items("Node")
    queries = lists(emu, "/api/v1/nodes")
    # page 1, page 2 (410), then the list again from its start: pages 1, 2, 3.
    assert [bool(q.get("continue")) for q in queries] == [False, True, False, True, True]
    assert all(q.get("limit") == "5" for q in queries)
    assert inf.lists == 1 and not inf.failing


def test_a_list_whose_tokens_keep_expiring_is_made_whole_in_one_request(emu, api, informers):
    seed_nodes(emu, 12)
    emu.expire_continues(PAGE_RESTARTS)
    inf = informers(api, NODES, page_size=5)
    assert inf.items() == emu.items("Node")
    queries = lists(emu, "/api/v1/nodes")
    assert [(q.get("limit"), bool(q.get("continue"))) for q in queries] == (
        [("5", False), ("5", True)] * PAGE_RESTARTS + [(None, False)])
    assert inf.lists == 1


def test_every_page_keeps_the_selectors(emu, api, informers):
    for i in range(3):
        emu.apply(node(f"n{i}", i))
    for k in range(14):
        emu.apply(pod("shop", f"p{k:02d}", f"n{k % 3}", f"203.0.113.{10 + k}", app="web" if k % 2 else "db"))
    inf = informers(api, PODS, page_size=2, field_selector="spec.nodeName=n1", trim=TRIMS["Pod"])
    assert names(inf) == [f"p{k:02d}" for k in range(14) if k % 3 == 1]
    queries = lists(emu, "/api/v1/pods")
    assert len(queries) == 3 and all(q["fieldSelector"] == "spec.nodeName=n1" for q in queries)
    for k in range(5):
        emu.apply({"apiVersion": "v1", "kind": "ConfigMap", "metadata": {
            "name": f"c{k}", "namespace": "sdn-egress", "labels": {"a": str(k % 2)}}, "data": {}})
    cms = informers(api, CONFIGMAPS, namespace="sdn-egress", label_selector="a=0", page_size=1)
    assert names(cms) == ["c0", "c2", "c4"]
    queries = lists(emu, "/api/v1/namespaces/sdn-egress/configmaps")
    assert len(queries) == 3 and all(q["labelSelector"] == "a=0" for q in queries)


def test_the_emulator_refuses_a_continue_token_of_another_query(emu, api):
    """What makes the selector test able to fail: a page asked with other
    selectors than its list's is an error, as on the real server."""
    from kubernetes import client
    from kubernetes.client.rest import ApiException

    seed_nodes(emu, 3)
    core = client.CoreV1Api(api)
    first = core.list_node(limit=1, label_selector="egress=true")
    assert first.metadata._continue and len(first.items) == 1
    with pytest.raises(ApiException) as err:
        core.list_node(limit=1, _continue=first.metadata._continue)
    assert err.value.status == 400

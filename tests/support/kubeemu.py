"""The lab's API server (:mod:`sdn_egress.lab.kubeapi`) as the tests drive it,
with the real ``kubernetes`` client: :class:`KubeEmulator` adds what only a
test wants of a server (a request log, injected faults, waiting for its
objects), and the fixtures and objects the tests use with it."""
from __future__ import annotations

import collections
import itertools
import re
from dataclasses import dataclass

import pytest

from sdn_egress.lab.kubeapi import ApiError, KubeApiServer
from sdn_egress.lab.kubehttp import Request
from tests.support.waiting import wait_for


@dataclass
class Fault:
    method: str
    pattern: re.Pattern
    code: int
    times: int
    reason: str = "InternalError"
    after: int = 0  # matching requests let through first


class KubeEmulator(KubeApiServer):
    """Every request is logged (:attr:`requests`); faults can be injected (:meth:`fail`).

    Lists are paginated as the real server's are: a list with ``limit`` gets at
    most that many items and, when more remain, a ``continue`` token in its
    metadata; each next page comes from the first page's snapshot (its
    resourceVersion and objects, whatever changed since) and must carry the
    first request's selectors.  A token is honoured once; a compaction
    (:meth:`compact`) or :meth:`expire_continues` makes it ``410 Expired``."""

    def __init__(self) -> None:
        super().__init__()
        self.requests: collections.deque = collections.deque(maxlen=50000)
        self.faults: list[Fault] = []
        self.snapshots: dict[str, tuple[dict, dict, list]] = {}  # token -> (query, list head, items left)
        self.expiring = 0  # continue requests still to find their token expired
        self._tokens = itertools.count(1)

    def on_request(self, request: Request) -> None:
        self.requests.append(request)
        with self.cond:
            for fault in self.faults:
                if fault.times > 0 and fault.method == request.method and fault.pattern.search(request.path):
                    if fault.after > 0:
                        fault.after -= 1
                        continue
                    fault.times -= 1
                    raise ApiError(fault.code, fault.reason,
                                   f"injected {fault.code} for {request.method} {request.path}")

    def fail(self, method: str, path_regex: str, code: int, times: int = 1, reason: str = "Conflict",
             after: int = 0) -> None:
        """The next ``times`` requests ``method`` to a path ``path_regex`` matches get ``code``
        (``after``: once that many such requests went through, as a writer cut short after them)."""
        with self.cond:
            self.faults.append(Fault(method, re.compile(path_regex), code, times, reason, after))

    def expire_continues(self, times: int = 1) -> None:
        """The next ``times`` continue requests find their token expired (410),
        as after a compaction between two pages."""
        with self.cond:
            self.expiring += times

    def compact(self) -> None:
        """As the real server's: a compaction expires the lists' continue tokens too."""
        with self.cond:
            super().compact()
            self.snapshots.clear()

    def operate(self, method: str, res, namespace: str, name: str | None, sub: str | None, query: dict, body):
        if method != "GET" or name is not None or not (query.get("limit") or query.get("continue")):
            return super().operate(method, res, namespace, name, sub, query, body)
        asked = {k: v for k, v in query.items() if k not in ("limit", "continue")}
        token = query.get("continue")
        if token:
            if self.expiring > 0:
                self.expiring -= 1
                self.snapshots.pop(token, None)
            if token not in self.snapshots:
                raise ApiError(410, "Expired", "The provided continue parameter is too old to display a "
                                               "consistent list result. You can start a new list without the "
                                               "continue parameter.")
            if self.snapshots[token][0] != asked:
                raise ApiError(400, "BadRequest", f"the continue token was issued for {self.snapshots[token][0]}, "
                                                  f"not {asked}")
            _, head, rest = self.snapshots.pop(token)
        else:
            head = super().operate(method, res, namespace, name, sub, query, body)
            rest = head.pop("items")
        limit = int(query.get("limit") or 0) or len(rest)
        page, rest = rest[:limit], rest[limit:]
        meta = {"resourceVersion": head["metadata"]["resourceVersion"]}
        if rest:
            meta["continue"] = token = f"{meta['resourceVersion']}-{next(self._tokens)}"
            self.snapshots[token] = (asked, head, rest)
        return {**head, "metadata": meta, "items": page}

    def requests_to(self, method: str, path_regex: str) -> list[Request]:
        return [r for r in list(self.requests) if r.method == method and re.search(path_regex, r.path)]

    def wait_for(self, predicate, timeout: float = 20.0):
        """Until ``predicate()`` (on this server's objects, its lock held) is
        truthy, checked again on every write."""
        return wait_for(predicate, getattr(predicate, "__doc__", None) or str(predicate), timeout, interval=0.05,
                        condition=self.cond)

@pytest.fixture
def emu():
    server = KubeEmulator().start()
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture
def api(emu):
    from kubernetes import client

    configuration = client.Configuration()
    configuration.host = emu.url
    with client.ApiClient(configuration) as api_client:
        yield api_client


@pytest.fixture
def kubeconfig(emu, tmp_path) -> str:
    path = tmp_path / "kubeconfig"
    path.write_text(
        "apiVersion: v1\nkind: Config\ncurrent-context: emu\n"
        f"clusters: [{{name: emu, cluster: {{server: '{emu.url}'}}}}]\n"
        "users: [{name: tester, user: {token: not-checked}}]\n"
        "contexts: [{name: emu, context: {cluster: emu, user: tester}}]\n")
    return str(path)

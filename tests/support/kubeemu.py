"""The lab's API server (:mod:`sdn_egress.lab.kubeapi`) as the tests drive it,
with the real ``kubernetes`` client: :class:`KubeEmulator` adds what only a
test wants of a server (a request log, injected faults, waiting for its
objects), and the fixtures and objects the tests use with it."""
from __future__ import annotations

import collections
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
    """Every request is logged (:attr:`requests`); faults can be injected (:meth:`fail`)."""

    def __init__(self) -> None:
        super().__init__()
        self.requests: collections.deque = collections.deque(maxlen=50000)
        self.faults: list[Fault] = []

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

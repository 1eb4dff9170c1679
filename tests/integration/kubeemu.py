"""A small Kubernetes API server on localhost, for the real ``kubernetes`` client.

What the controller's side of the API needs, with the semantics that matter:
a global ``resourceVersion`` bumped by every write; list; watch from a
resourceVersion (chunked, one JSON event a line; ``410 Expired`` as an ERROR
event for a version older than the last :meth:`KubeEmulator.compact`);
create (``409 AlreadyExists``); replace with optimistic concurrency (``409
Conflict`` on a stale resourceVersion); the ``/status`` subresource (a PUT of
the object keeps its status, a PUT of ``/status`` changes only the status);
merge patch; delete with finalizers (``deletionTimestamp``, gone when the last
finalizer goes).  Every request is logged (:attr:`requests`) and faults can be
injected (:meth:`fail`).  kmock's ``KubernetesEmulator`` keeps no
resourceVersions, so it can show neither 410 nor conflicts: hence this one.
"""
from __future__ import annotations

import copy
import datetime
import json
import re
import threading
import uuid
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import parse_qs, urlsplit

import pytest

# (group, version, plural) -> (kind, namespaced, has a status subresource)
RESOURCES = {
    ("", "v1", "nodes"): ("Node", False, False),
    ("", "v1", "namespaces"): ("Namespace", False, False),
    ("", "v1", "pods"): ("Pod", True, False),
    ("", "v1", "events"): ("Event", True, False),
    ("", "v1", "configmaps"): ("ConfigMap", True, False),
    ("coordination.k8s.io", "v1", "leases"): ("Lease", True, False),
    ("sdn-egress.io", "v1alpha1", "egressgateways"): ("EgressGateway", False, True),
    ("sdn-egress.io", "v1alpha1", "egresspolicies"): ("EgressPolicy", True, True),
    ("sdn-egress.io", "v1alpha1", "egressclusterpolicies"): ("EgressClusterPolicy", False, True),
}
PLURALS = {kind: key for key, (kind, _, _) in RESOURCES.items()}


def api_version(res) -> str:
    group, version, _ = res
    return f"{group}/{version}" if group else version


def now() -> str:
    return datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


def status_body(code: int, reason: str, message: str) -> dict:
    return {"kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Failure", "code": code,
            "reason": reason, "message": message}


class ApiError(Exception):
    def __init__(self, code: int, reason: str, message: str):
        super().__init__(message)
        self.code, self.reason, self.message = code, reason, message


@dataclass
class Request:
    method: str
    path: str
    query: dict
    body: object = None


@dataclass
class _Fault:
    method: str
    pattern: re.Pattern
    code: int
    times: int
    reason: str = "InternalError"


@dataclass
class _Watch:
    res: tuple
    namespace: str | None
    closed: bool = False


@dataclass
class KubeEmulator:
    requests: list[Request] = field(default_factory=list)

    def __post_init__(self):
        self.cond = threading.Condition()
        self.rv = 0
        self.objects: dict[tuple, dict] = {}  # (res, namespace or "", name) -> object
        self.log: list[tuple[int, tuple, str, dict]] = []  # (rv, res, type, object)
        self.compacted = 0
        self.faults: list[_Fault] = []
        self.watches: list[_Watch] = []
        self.server: ThreadingHTTPServer | None = None

    # -- lifecycle ------------------------------------------------------------------------------------
    def start(self) -> "KubeEmulator":
        emu = self

        class Handler(_Handler):
            emulator = emu

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        threading.Thread(target=self.server.serve_forever, daemon=True, name="kubeemu").start()
        return self

    @property
    def url(self) -> str:
        host, port = self.server.server_address[:2]
        return f"http://{host}:{port}"

    def stop(self) -> None:
        self.drop_watches()
        if self.server is not None:
            self.server.shutdown()
            self.server.server_close()

    # -- test controls ----------------------------------------------------------------------------------
    def apply(self, obj: dict) -> dict:
        """Create or update (no resourceVersion check) an object, as a user would."""
        res = PLURALS[obj["kind"]]
        meta = obj.get("metadata", {})
        key = (res, meta.get("namespace", "") if RESOURCES[res][1] else "", meta["name"])
        with self.cond:
            if key in self.objects:
                body = copy.deepcopy(obj)
                body.setdefault("metadata", {})["resourceVersion"] = self.objects[key]["metadata"]["resourceVersion"]
                return self._replace(res, key[1], key[2], body, subresource=None)
            return self._create(res, key[1], copy.deepcopy(obj))

    def delete(self, kind: str, name: str, namespace: str = "") -> None:
        with self.cond:
            self._delete(PLURALS[kind], namespace, name)

    def get(self, kind: str, name: str, namespace: str = "") -> dict | None:
        with self.cond:
            obj = self.objects.get((PLURALS[kind], namespace, name))
            return copy.deepcopy(obj)

    def items(self, kind: str) -> list[dict]:
        res = PLURALS[kind]
        with self.cond:
            return [copy.deepcopy(o) for (r, _, _), o in sorted(self.objects.items(), key=lambda kv: kv[0][1:])
                    if r == res]

    def compact(self) -> None:
        """Forget the history so far: a watch from an older resourceVersion gets 410."""
        with self.cond:
            self.compacted = self.rv
            self.log.clear()

    def drop_watches(self) -> None:
        """End every open watch stream (as a restarting API server would)."""
        with self.cond:
            for w in self.watches:
                w.closed = True
            self.cond.notify_all()

    def fail(self, method: str, path_regex: str, code: int, times: int = 1, reason: str = "Conflict") -> None:
        with self.cond:
            self.faults.append(_Fault(method, re.compile(path_regex), code, times, reason))

    def requests_to(self, method: str, path_regex: str) -> list[Request]:
        return [r for r in list(self.requests) if r.method == method and re.search(path_regex, r.path)]

    def wait_for(self, predicate, timeout: float = 20.0):
        """Block until ``predicate()`` is truthy (re-checked on every write)."""
        deadline = threading.Event()
        timer = threading.Timer(timeout, deadline.set)
        timer.start()
        try:
            with self.cond:
                while True:
                    value = predicate()
                    if value:
                        return value
                    if deadline.is_set():
                        raise AssertionError(f"gave up waiting for {getattr(predicate, '__doc__', None) or predicate}")
                    self.cond.wait(0.05)
        finally:
            timer.cancel()

    # -- the store (self.cond held) -------------------------------------------------------------------
    def _bump(self, res, type_: str, obj: dict) -> None:
        self.rv += 1
        obj["metadata"]["resourceVersion"] = str(self.rv)
        self.log.append((self.rv, res, type_, copy.deepcopy(obj)))
        self.cond.notify_all()

    def _create(self, res, namespace: str, obj: dict) -> dict:
        kind, namespaced, _ = RESOURCES[res]
        meta = obj.setdefault("metadata", {})
        if not meta.get("name") and meta.get("generateName"):
            meta["name"] = meta["generateName"] + uuid.uuid4().hex[:5]
        if not meta.get("name"):
            raise ApiError(422, "Invalid", "metadata.name: Required value")
        key = (res, namespace if namespaced else "", meta["name"])
        if key in self.objects:
            raise ApiError(409, "AlreadyExists", f'{res[2]} "{meta["name"]}" already exists')
        obj["kind"], obj["apiVersion"] = kind, api_version(res)
        if namespaced:
            meta["namespace"] = namespace
        meta.update(uid=str(uuid.uuid4()), creationTimestamp=now(), generation=1)
        self.objects[key] = obj
        self._bump(res, "ADDED", obj)
        return copy.deepcopy(obj)

    def _replace(self, res, namespace: str, name: str, body: dict, subresource: str | None) -> dict:
        kind, namespaced, has_status = RESOURCES[res]
        key = (res, namespace if namespaced else "", name)
        old = self.objects.get(key)
        if old is None:
            raise ApiError(404, "NotFound", f'{res[2]} "{name}" not found')
        given = (body.get("metadata") or {}).get("resourceVersion")
        if given and given != old["metadata"]["resourceVersion"]:
            raise ApiError(409, "Conflict", f'Operation cannot be fulfilled on {res[2]} "{name}": the object has '
                                            "been modified; please apply your changes to the latest version and "
                                            "try again")
        new = copy.deepcopy(old)
        if subresource == "status":
            new["status"] = copy.deepcopy(body.get("status"))
        else:
            for k, v in body.items():
                if k in ("metadata", "kind", "apiVersion") or (k == "status" and has_status):
                    continue
                new[k] = copy.deepcopy(v)
            for k in [k for k in new if k not in body and k not in ("metadata", "kind", "apiVersion", "status")]:
                del new[k]
            meta = body.get("metadata") or {}
            for k in ("labels", "annotations", "finalizers"):
                if meta.get(k) is not None:
                    new["metadata"][k] = copy.deepcopy(meta[k])
                else:
                    new["metadata"].pop(k, None)
            if new.get("spec") != old.get("spec"):
                new["metadata"]["generation"] = old["metadata"].get("generation", 1) + 1
        if new["metadata"].get("deletionTimestamp") and not new["metadata"].get("finalizers"):
            del self.objects[key]
            self._bump(res, "DELETED", new)
            return copy.deepcopy(new)
        self.objects[key] = new
        self._bump(res, "MODIFIED", new)
        return copy.deepcopy(new)

    def _delete(self, res, namespace: str, name: str) -> dict:
        kind, namespaced, _ = RESOURCES[res]
        key = (res, namespace if namespaced else "", name)
        obj = self.objects.get(key)
        if obj is None:
            raise ApiError(404, "NotFound", f'{res[2]} "{name}" not found')
        if obj["metadata"].get("finalizers"):
            if not obj["metadata"].get("deletionTimestamp"):
                obj["metadata"]["deletionTimestamp"] = now()
                self._bump(res, "MODIFIED", obj)
            return copy.deepcopy(obj)
        del self.objects[key]
        self._bump(res, "DELETED", obj)
        return copy.deepcopy(obj)


def merge_patch(target, patch):
    if not isinstance(patch, dict):
        return copy.deepcopy(patch)
    out = copy.deepcopy(target) if isinstance(target, dict) else {}
    for k, v in patch.items():
        if v is None:
            out.pop(k, None)
        else:
            out[k] = merge_patch(out.get(k), v)
    return out


class _Handler(BaseHTTPRequestHandler):
    emulator: KubeEmulator
    protocol_version = "HTTP/1.1"

    def log_message(self, format, *args):  # noqa: A002 - the base class's name
        pass

    # -- plumbing -------------------------------------------------------------------------------------
    def _send(self, code: int, body: dict) -> None:
        data = json.dumps(body).encode()
        self.send_response(code)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def _route(self):
        url = urlsplit(self.path)
        query = {k: v[-1] for k, v in parse_qs(url.query).items()}
        parts = [p for p in url.path.split("/") if p]
        if parts[:2] == ["api", "v1"]:
            group, version, rest = "", "v1", parts[2:]
        elif parts[:1] == ["apis"] and len(parts) >= 3:
            group, version, rest = parts[1], parts[2], parts[3:]
        else:
            raise ApiError(404, "NotFound", f"no route for {url.path}")
        namespace = None
        if len(rest) >= 3 and rest[0] == "namespaces":
            namespace, rest = rest[1], rest[2:]
        if not rest:
            raise ApiError(404, "NotFound", f"no route for {url.path}")
        res = (group, version, rest[0])
        if res not in RESOURCES:
            raise ApiError(404, "NotFound", f"the server could not find the requested resource ({url.path})")
        name = rest[1] if len(rest) > 1 else None
        sub = rest[2] if len(rest) > 2 else None
        return url.path, query, res, namespace, name, sub

    def _body(self):
        length = int(self.headers.get("Content-Length") or 0)
        data = self.rfile.read(length) if length else b""
        try:
            return json.loads(data) if data else None
        except ValueError:
            raise ApiError(400, "BadRequest", "the body is not JSON") from None

    def _handle(self, method: str) -> None:
        emu = self.emulator
        try:
            body = self._body() if method in ("POST", "PUT", "PATCH") else None
            path, query, res, namespace, name, sub = self._route()
            emu.requests.append(Request(method, path, query, body))
            with emu.cond:
                for fault in emu.faults:
                    if fault.times > 0 and fault.method == method and fault.pattern.search(path):
                        fault.times -= 1
                        raise ApiError(fault.code, fault.reason, f"injected {fault.code} for {method} {path}")
            if method == "GET" and name is None and query.get("watch") in ("true", "1"):
                return self._watch(res, namespace, query)
            with emu.cond:
                result = self._operate(method, res, namespace or "", name, sub, query, body)
            self._send(201 if method == "POST" else 200, result)
        except ApiError as exc:
            self._send(exc.code, status_body(exc.code, exc.reason, exc.message))

    def _operate(self, method, res, namespace, name, sub, query, body):
        emu = self.emulator
        kind, namespaced, has_status = RESOURCES[res]
        ns = namespace if namespaced else ""
        if method == "GET" and name is None:
            items = []
            for (r, ons, _), obj in sorted(emu.objects.items(), key=lambda kv: kv[0][1:]):
                if r == res and (not namespace or ons == namespace):
                    item = copy.deepcopy(obj)
                    item.pop("kind", None)  # as a real list: items carry neither kind nor apiVersion
                    item.pop("apiVersion", None)
                    items.append(item)
            return {"kind": f"{kind}List", "apiVersion": api_version(res),
                    "metadata": {"resourceVersion": str(emu.rv)}, "items": items}
        if method == "GET":
            obj = emu.objects.get((res, ns, name))
            if obj is None:
                raise ApiError(404, "NotFound", f'{res[2]} "{name}" not found')
            return copy.deepcopy(obj)
        if method == "POST":
            return emu._create(res, ns, body)
        if method == "PUT":
            if sub not in (None, "status") or (sub == "status" and not has_status):
                raise ApiError(404, "NotFound", f"no subresource {sub}")
            return emu._replace(res, ns, name, body, sub)
        if method == "PATCH":
            obj = emu.objects.get((res, ns, name))
            if obj is None:
                raise ApiError(404, "NotFound", f'{res[2]} "{name}" not found')
            merged = merge_patch(obj, body)
            if not (body.get("metadata") or {}).get("resourceVersion"):
                merged["metadata"]["resourceVersion"] = obj["metadata"]["resourceVersion"]
            return emu._replace(res, ns, name, merged, sub)
        if method == "DELETE":
            return emu._delete(res, ns, name)
        raise ApiError(405, "MethodNotAllowed", method)

    def _chunk(self, data: bytes) -> None:
        self.wfile.write(f"{len(data):x}\r\n".encode() + data + b"\r\n")
        self.wfile.flush()

    def _watch(self, res, namespace, query) -> None:
        emu = self.emulator
        since = int(query.get("resourceVersion") or 0)
        timeout = float(query.get("timeoutSeconds") or 300)
        bookmarks = query.get("allowWatchBookmarks") in ("true", "1")
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Transfer-Encoding", "chunked")
        self.end_headers()
        w = _Watch(res, namespace)
        deadline = threading.Event()
        timer = threading.Timer(timeout, lambda: (deadline.set(), _notify(emu)))
        timer.start()
        try:
            with emu.cond:
                if since and since < emu.compacted:
                    gone = status_body(410, "Expired", f"too old resource version: {since} ({emu.compacted})")
                    pending = [{"type": "ERROR", "object": gone}]
                    emu.watches.append(w)
                    w.closed = True
                else:
                    pending = []
                    if not since:  # from now, with the objects there are as ADDED
                        pending = [{"type": "ADDED", "object": copy.deepcopy(o)}
                                   for (r, ons, _), o in sorted(emu.objects.items(), key=lambda kv: kv[0][1:])
                                   if r == res and (not namespace or ons == namespace)]
                        since = emu.rv
                    emu.watches.append(w)
            while True:
                for event in pending:
                    self._chunk(json.dumps(event).encode() + b"\n")
                if w.closed or deadline.is_set():
                    break
                with emu.cond:
                    while True:
                        pending = []
                        if w.closed or deadline.is_set():
                            break
                        pending = [{"type": t, "object": o} for rv, r, t, o in emu.log
                                   if rv > since and r == res
                                   and (not namespace or o["metadata"].get("namespace") == namespace)]
                        if pending:
                            break
                        emu.cond.wait(0.2)
                    if pending:
                        since = int(pending[-1]["object"]["metadata"]["resourceVersion"])
                    elif deadline.is_set() and bookmarks and not w.closed:
                        pending = [{"type": "BOOKMARK", "object": {
                            "kind": RESOURCES[res][0], "apiVersion": api_version(res),
                            "metadata": {"resourceVersion": str(emu.rv)}}}]
            self.wfile.write(b"0\r\n\r\n")
            self.wfile.flush()
        except (BrokenPipeError, ConnectionResetError, OSError):
            pass
        finally:
            timer.cancel()
            self.close_connection = True
            with emu.cond:
                if w in emu.watches:
                    emu.watches.remove(w)

    def do_GET(self):  # noqa: N802 - http.server's names
        self._handle("GET")

    def do_POST(self):  # noqa: N802
        self._handle("POST")

    def do_PUT(self):  # noqa: N802
        self._handle("PUT")

    def do_PATCH(self):  # noqa: N802
        self._handle("PATCH")

    def do_DELETE(self):  # noqa: N802
        self._handle("DELETE")


def _notify(emu: KubeEmulator) -> None:
    with emu.cond:
        emu.cond.notify_all()


# -- objects and fixtures for the tests ------------------------------------------------------------------

GROUP_VERSION = "sdn-egress.io/v1alpha1"


def node(name: str, i: int, egress: bool = True, ready: str = "True") -> dict:
    return {"apiVersion": "v1", "kind": "Node",
            "metadata": {"name": name, "labels": {"egress": "true"} if egress else {}},
            "spec": {"podCIDR": f"203.0.113.{32 * i}/27"},
            "status": {"addresses": [{"type": "InternalIP", "address": f"192.0.2.{11 + i}"}],
                       "conditions": [{"type": "Ready", "status": ready}]}}


def namespace(name: str, **labels) -> dict:
    return {"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": name, "labels": labels}}


def pod(ns: str, name: str, node_name: str, ip: str, **labels) -> dict:
    return {"apiVersion": "v1", "kind": "Pod", "metadata": {"name": name, "namespace": ns, "labels": labels},
            "spec": {"nodeName": node_name, "containers": [{"name": "c", "image": "x"}]},
            "status": {"phase": "Running", "podIP": ip}}


def gateway(name: str = "edge", pool: str = "192.0.2.200-192.0.2.210", **spec) -> dict:
    return {"apiVersion": GROUP_VERSION, "kind": "EgressGateway", "metadata": {"name": name},
            "spec": {"nodeSelector": {"matchLabels": {"egress": "true"}}, "ippools": {"ipv4": [pool]}, **spec}}


def policy(name: str, ns: str = "shop", gw: str | None = "edge", **spec) -> dict:
    body = {"appliedTo": {"podSelector": {"matchLabels": {"app": name}}}, **spec}
    if gw:
        body["egressGatewayName"] = gw
    return {"apiVersion": GROUP_VERSION, "kind": "EgressPolicy", "metadata": {"name": name, "namespace": ns},
            "spec": body}


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

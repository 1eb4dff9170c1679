"""A small Kubernetes API server: the lab's cluster API, and the tests' emulator.

``sdn-egress lab up --kube`` runs it in the lab's router namespace, where the
controller and the node agents reach it over the underlay with the real
``kubernetes`` client; the integration tests start it in-process on localhost.

What sdn-egress's side of the API needs, with the semantics that matter:
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
List and watch take ``labelSelector`` (``k=v``, ``k!=v``, ``k``, ``!k``) and
``fieldSelector`` (``metadata.name``, ``metadata.namespace``, and a Pod's
``spec.nodeName``, as the kube-apiserver serves it); the history a
watch resumes from is compacted past :data:`HISTORY` writes.  With a state
file (:meth:`KubeEmulator.persist`) the objects outlive a restart, as etcd's
do; the history does not (a watch from before gets 410 and lists again).

Not here: authentication, admission (CRD schemas and CEL rules are checked by
``sdn-egress validate`` and the controller), server-side apply.
"""
from __future__ import annotations

import argparse
import collections
import copy
import datetime
import json
import os
import re
import signal
import socketserver
import threading
import uuid
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import parse_qs, urlsplit

from sdn_egress.fileio import write_json_atomic

# (group, version, plural) -> (kind, namespaced, has a status subresource)
RESOURCES = {
    ("", "v1", "nodes"): ("Node", False, False),
    ("", "v1", "namespaces"): ("Namespace", False, False),
    ("", "v1", "pods"): ("Pod", True, False),
    ("", "v1", "events"): ("Event", True, False),
    ("", "v1", "configmaps"): ("ConfigMap", True, False),
    ("coordination.k8s.io", "v1", "leases"): ("Lease", True, False),
    ("networking.k8s.io", "v1", "servicecidrs"): ("ServiceCIDR", False, False),
    ("sdn-egress.io", "v1alpha1", "egressgateways"): ("EgressGateway", False, True),
    ("sdn-egress.io", "v1alpha1", "egresspolicies"): ("EgressPolicy", True, True),
    ("sdn-egress.io", "v1alpha1", "egressclusterpolicies"): ("EgressClusterPolicy", False, True),
}
PLURALS = {kind: key for key, (kind, _, _) in RESOURCES.items()}
HISTORY = 20000  # writes a watch can resume across; older: 410 Gone


def _label_matcher(selector: str | None):
    """A predicate on a labels dict for an equality-based ``labelSelector``."""
    if not selector:
        return lambda labels: True
    terms = []
    for term in (t.strip() for t in selector.split(",") if t.strip()):
        if "!=" in term:
            k, v = term.split("!=", 1)
            terms.append(lambda lb, k=k.strip(), v=v.strip(): lb.get(k) != v)
        elif "=" in term:
            k, v = term.replace("==", "=").split("=", 1)
            terms.append(lambda lb, k=k.strip(), v=v.strip(): lb.get(k) == v)
        elif term.startswith("!"):
            terms.append(lambda lb, k=term[1:].strip(): k not in lb)
        elif re.fullmatch(r"[\w./-]+", term):
            terms.append(lambda lb, k=term: k in lb)
        else:
            raise ApiError(400, "BadRequest", f"unable to parse labelSelector requirement {term!r}")
    return lambda labels: all(t(labels) for t in terms)


def _field_matcher(selector: str | None):
    if not selector:
        return lambda obj: True
    want = {}
    for term in (t.strip() for t in selector.split(",") if t.strip()):
        k, sep, v = term.replace("==", "=").partition("=")
        if not sep or k not in ("metadata.name", "metadata.namespace", "spec.nodeName"):
            raise ApiError(400, "BadRequest", f"field label not supported: {k}")
        want[tuple(k.split(".", 1))] = v
    return lambda obj: all((obj.get(part) or {}).get(k, "") == v for (part, k), v in want.items())


def selector(query: dict):
    labels, fields = _label_matcher(query.get("labelSelector")), _field_matcher(query.get("fieldSelector"))
    return lambda obj: labels((obj.get("metadata") or {}).get("labels") or {}) and fields(obj)


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
    requests: collections.deque = field(default_factory=lambda: collections.deque(maxlen=50000))

    def __post_init__(self):
        self.cond = threading.Condition()
        self.rv = 0
        self.objects: dict[tuple, dict] = {}  # (res, namespace or "", name) -> object
        self.log: list[tuple[int, tuple, str, dict]] = []  # (rv, res, type, object)
        self.compacted = 0
        self.faults: list[_Fault] = []
        self.watches: list[_Watch] = []
        self.servers: list[socketserver.BaseServer] = []
        self.state_file: str | None = None

    # -- lifecycle ------------------------------------------------------------------------------------
    def _handler(self):
        emu = self

        class Handler(_Handler):
            emulator = emu

        return Handler

    def _serve(self, server) -> None:
        server.daemon_threads = True
        self.servers.append(server)
        threading.Thread(target=server.serve_forever, daemon=True, name="kubeapi").start()

    def start(self, host: str = "127.0.0.1", port: int = 0) -> "KubeEmulator":
        """Serve HTTP on ``host:port`` (port 0: any free one); callable more than once."""
        self._serve(ThreadingHTTPServer((host, port), self._handler()))
        return self

    def start_unix(self, path: str) -> "KubeEmulator":
        """Serve HTTP on a Unix socket too (reachable from every network namespace)."""
        if os.path.exists(path):
            os.unlink(path)
        server = _UnixHTTPServer(path, self._handler())
        os.chmod(path, 0o600)
        self._serve(server)
        return self

    @property
    def server(self):
        return self.servers[0] if self.servers else None

    @property
    def url(self) -> str:
        host, port = self.server.server_address[:2]
        return f"http://{host}:{port}"

    def stop(self) -> None:
        self.drop_watches()
        for server in self.servers:
            server.shutdown()
            server.server_close()
        self.servers = []

    def persist(self, path: str) -> "KubeEmulator":
        """Keep the objects in ``path``: load them now (when it exists), write
        them after every change."""
        self.state_file = path
        try:
            with open(path) as f:
                saved = json.load(f)
        except FileNotFoundError:
            return self
        with self.cond:
            self.rv = self.compacted = int(saved["resourceVersion"])
            self.objects = {(tuple(o["res"]), o["namespace"], o["name"]): o["object"] for o in saved["objects"]}
        return self

    def _save(self) -> None:
        if not self.state_file:
            return
        data = {"resourceVersion": self.rv,
                "objects": [{"res": list(r), "namespace": ns, "name": n, "object": o}
                            for (r, ns, n), o in sorted(self.objects.items(), key=lambda kv: kv[0][1:])]}
        write_json_atomic(self.state_file, data, indent=None)

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
        if len(self.log) > HISTORY:
            drop = len(self.log) - HISTORY // 2
            self.compacted = self.log[drop - 1][0]
            del self.log[:drop]
        self._save()
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
            for k in ("labels", "annotations", "finalizers", "ownerReferences"):
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
            match = selector(query)
            for (r, ons, _), obj in sorted(emu.objects.items(), key=lambda kv: kv[0][1:]):
                if r == res and (not namespace or ons == namespace) and match(obj):
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
        match = selector(query)
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
                                   if r == res and (not namespace or ons == namespace) and match(o)]
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
                                   and (not namespace or o["metadata"].get("namespace") == namespace)
                                   and match(o)]
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




class Client:
    """Plain HTTP to the API server's Unix socket: what the lab itself uses
    (``lab apply`` and friends) from outside the lab's namespaces."""

    def __init__(self, socket_path: str, timeout: float = 10.0):
        self.socket_path = socket_path
        self.timeout = timeout

    def request(self, method: str, path: str, body: dict | None = None) -> tuple[int, dict]:
        import http.client
        import socket

        conn = http.client.HTTPConnection("localhost", timeout=self.timeout)
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        sock.settimeout(self.timeout)
        sock.connect(self.socket_path)
        conn.sock = sock
        try:
            data = json.dumps(body).encode() if body is not None else None
            conn.request(method, path, body=data, headers={"Content-Type": "application/json"})
            resp = conn.getresponse()
            return resp.status, json.loads(resp.read() or b"{}")
        finally:
            conn.close()

    @staticmethod
    def path(kind: str, name: str = "", namespace: str = "") -> str:
        if kind not in PLURALS:
            raise ValueError(f"kind {kind!r} is not served here (kinds: {', '.join(sorted(PLURALS))})")
        res = PLURALS[kind]
        base = f"/apis/{res[0]}/{res[1]}" if res[0] else f"/api/{res[1]}"
        if RESOURCES[res][1]:
            base += f"/namespaces/{namespace or 'default'}"
        return f"{base}/{res[2]}" + (f"/{name}" if name else "")

    def get(self, kind: str, name: str, namespace: str = "") -> dict | None:
        code, obj = self.request("GET", self.path(kind, name, namespace))
        if code == 404:
            return None
        self._check(code, obj)
        return obj

    def apply(self, obj: dict) -> dict:
        """Create, or replace keeping the status (as ``kubectl apply`` would)."""
        meta = obj.get("metadata") or {}
        path = self.path(str(obj.get("kind")), "", meta.get("namespace", ""))
        for _ in range(5):
            old = self.get(obj["kind"], meta["name"], meta.get("namespace", ""))
            if old is None:
                code, out = self.request("POST", path, obj)
            else:
                body = copy.deepcopy(obj)
                body.setdefault("metadata", {})["resourceVersion"] = old["metadata"]["resourceVersion"]
                for k in ("finalizers",):  # the controller's, not the user's
                    if k in old["metadata"] and k not in body["metadata"]:
                        body["metadata"][k] = old["metadata"][k]
                code, out = self.request("PUT", f"{path}/{meta['name']}", body)
            if code != 409:
                self._check(code, out)
                return out
        self._check(code, out)
        return out

    def delete(self, kind: str, name: str, namespace: str = "") -> bool:
        code, out = self.request("DELETE", self.path(kind, name, namespace))
        if code == 404:
            return False
        self._check(code, out)
        return True

    def items(self, kind: str) -> list[dict]:
        res = PLURALS[kind]
        base = f"/apis/{res[0]}/{res[1]}" if res[0] else f"/api/{res[1]}"
        code, out = self.request("GET", f"{base}/{res[2]}")
        self._check(code, out)
        return out.get("items") or []

    @staticmethod
    def _check(code: int, out: dict) -> None:
        if code >= 300:
            raise ApiError(code, str(out.get("reason")), str(out.get("message")))


class _UnixHTTPServer(socketserver.ThreadingUnixStreamServer):
    def get_request(self):
        conn, _ = super().get_request()
        return conn, ("unix", 0)  # BaseHTTPRequestHandler expects (host, port)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m sdn_egress.lab.kubeapi", description=__doc__.splitlines()[0])
    ap.add_argument("--listen", action="append", default=[], metavar="HOST:PORT",
                    help="serve HTTP here (repeatable)")
    ap.add_argument("--unix", metavar="PATH", help="serve HTTP on this Unix socket too")
    ap.add_argument("--state", metavar="FILE", help="keep the objects in this file across restarts")
    ap.add_argument("--ready", metavar="FILE", help="create this file once serving")
    args = ap.parse_args(argv)
    emu = KubeEmulator()
    if args.state:
        emu.persist(args.state)
    for listen in args.listen:
        host, _, port = listen.rpartition(":")
        emu.start(host, int(port))
    if args.unix:
        emu.start_unix(args.unix)
    if not emu.servers:
        ap.error("nothing to serve on: give --listen or --unix")
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    signal.signal(signal.SIGINT, lambda *_: stop.set())
    if args.ready:
        open(args.ready, "w").close()
    stop.wait()
    emu.stop()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

"""The lab's API server's HTTP side: routes, the request body limit, watch streams.

Paths as the real API server serves them (``/api/v1/...``,
``/apis/GROUP/VERSION/...``, ``namespaces/NS/``, the ``status``
subresource); a body over the real server's default limit (3 MiB) is ``413
RequestEntityTooLarge``.  A watch streams chunked JSON events, one a line,
from a resourceVersion (``410 Expired`` as an ERROR event when it is older
than the history), bookmarks when asked for, and ends at ``timeoutSeconds``.
"""
from __future__ import annotations

import copy
import json
import socketserver
import threading
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler
from typing import TYPE_CHECKING
from urllib.parse import parse_qs, urlsplit

from sdn_egress.lab.kubestore import RESOURCES, ApiError, Watch, api_version, selector, status_body

if TYPE_CHECKING:
    from sdn_egress.lab.kubeapi import KubeApiServer

MAX_REQUEST_BYTES = 3 << 20  # the API server's default request body limit (3 MiB)


@dataclass
class Request:
    method: str
    path: str
    query: dict
    body: object = None


class Handler(BaseHTTPRequestHandler):
    """HTTP for :attr:`server` (a :class:`~sdn_egress.lab.kubeapi.KubeApiServer`)."""

    api: "KubeApiServer"
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
        if length > MAX_REQUEST_BYTES:
            while length > 0:  # read and drop it, so that the client, still sending, gets the answer
                chunk = self.rfile.read(min(length, 1 << 16))
                if not chunk:
                    break
                length -= len(chunk)
            raise ApiError(413, "RequestEntityTooLarge", f"Request entity too large: limit is {MAX_REQUEST_BYTES}")
        data = self.rfile.read(length) if length else b""
        try:
            return json.loads(data) if data else None
        except ValueError:
            raise ApiError(400, "BadRequest", "the body is not JSON") from None

    def _handle(self, method: str) -> None:
        emu = self.api
        try:
            body = self._body() if method in ("POST", "PUT", "PATCH") else None
            path, query, res, namespace, name, sub = self._route()
            emu.on_request(Request(method, path, query, body))
            if method == "GET" and name is None and query.get("watch") in ("true", "1"):
                return self._watch(res, namespace, query)
            with emu.cond:
                result = emu.operate(method, res, namespace or "", name, sub, query, body)
            self._send(201 if method == "POST" else 200, result)
        except ApiError as exc:
            self._send(exc.code, exc.status())

    def _chunk(self, data: bytes) -> None:
        self.wfile.write(f"{len(data):x}\r\n".encode() + data + b"\r\n")
        self.wfile.flush()

    def _watch(self, res, namespace, query) -> None:
        emu = self.api
        since = int(query.get("resourceVersion") or 0)
        timeout = float(query.get("timeoutSeconds") or 300)
        bookmarks = query.get("allowWatchBookmarks") in ("true", "1")
        match = selector(query)
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Transfer-Encoding", "chunked")
        self.end_headers()
        w = Watch(res, namespace)
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
                                   for o in emu.matching(res, namespace, match)]
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
                        pending = emu.events_since(since, res, namespace, match)
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

    def handle(self):
        try:
            super().handle()
        except (ConnectionResetError, BrokenPipeError):
            pass  # a client that went between requests (a stopped informer): nothing to answer

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


def _notify(emu) -> None:
    with emu.cond:
        emu.cond.notify_all()


class UnixHTTPServer(socketserver.ThreadingUnixStreamServer):
    def get_request(self):
        conn, _ = super().get_request()
        return conn, ("unix", 0)  # BaseHTTPRequestHandler expects (host, port)

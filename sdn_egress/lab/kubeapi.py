"""A small Kubernetes API server: the lab's cluster API.

``sdn-egress lab up --kube`` runs it (``python -m sdn_egress.lab.kubeapi``)
in the lab's router namespace, where the controller and the node agents reach
it over the underlay with the real ``kubernetes`` client; the integration
tests start it in-process on localhost (their emulator,
``tests/support/kubeemu.py``, adds fault injection and a request log).

What sdn-egress's side of the API needs, with the semantics that matter:
the objects, their history and the real server's size limits in
:mod:`sdn_egress.lab.kubestore`; HTTP, the request body limit and watch
streams in :mod:`sdn_egress.lab.kubehttp`; the lab's own client in
:mod:`sdn_egress.lab.kubeclient`.  kmock's ``KubernetesEmulator`` keeps no
resourceVersions, so it can show neither 410 nor conflicts: hence this one.

Not here: authentication, admission (CRD schemas and CEL rules are checked by
``sdn-egress validate`` and the controller), server-side apply.
"""
from __future__ import annotations

import argparse
import os
import signal
import socketserver
import threading
from http.server import ThreadingHTTPServer

from sdn_egress.lab.kubehttp import Handler, Request, UnixHTTPServer
from sdn_egress.lab.kubestore import ApiError, ApiStore  # noqa: F401 - ApiError: part of this API

__all__ = ["ApiError", "KubeApiServer", "main"]


class KubeApiServer(ApiStore):
    """The store served over HTTP, on TCP and Unix sockets."""

    def __init__(self) -> None:
        super().__init__()
        self.servers: list[socketserver.BaseServer] = []

    def on_request(self, request: Request) -> None:
        """Called with every request before it is served (its routing checked);
        raising :class:`ApiError` answers it with that error."""

    def _handler(self):
        api = self

        class Bound(Handler):
            pass

        Bound.api = api
        return Bound

    def _serve(self, server) -> None:
        server.daemon_threads = True
        self.servers.append(server)
        threading.Thread(target=server.serve_forever, daemon=True, name="kubeapi").start()

    def start(self, host: str = "127.0.0.1", port: int = 0):
        """Serve HTTP on ``host:port`` (port 0: any free one); callable more than once."""
        self._serve(ThreadingHTTPServer((host, port), self._handler()))
        return self

    def start_unix(self, path: str):
        """Serve HTTP on a Unix socket too (reachable from every network namespace)."""
        if os.path.exists(path):
            os.unlink(path)
        server = UnixHTTPServer(path, self._handler())
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


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m sdn_egress.lab.kubeapi", description=__doc__.splitlines()[0])
    ap.add_argument("--listen", action="append", default=[], metavar="HOST:PORT",
                    help="serve HTTP here (repeatable)")
    ap.add_argument("--unix", metavar="PATH", help="serve HTTP on this Unix socket too")
    ap.add_argument("--state", metavar="FILE", help="keep the objects in this file across restarts")
    ap.add_argument("--ready", metavar="FILE", help="create this file once serving")
    args = ap.parse_args(argv)
    api = KubeApiServer()
    if args.state:
        api.persist(args.state)
    for listen in args.listen:
        host, _, port = listen.rpartition(":")
        api.start(host, int(port))
    if args.unix:
        api.start_unix(args.unix)
    if not api.servers:
        ap.error("nothing to serve on: give --listen or --unix")
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    signal.signal(signal.SIGINT, lambda *_: stop.set())
    if args.ready:
        open(args.ready, "w").close()
    stop.wait()
    api.stop()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

"""A plain HTTP client of the lab's API server over its Unix socket: what the
lab itself uses (``lab apply`` and friends) from outside the lab's namespaces."""
from __future__ import annotations

import copy
import json

from sdn_egress.lab.kubestore import PLURALS, RESOURCES, ApiError


class Client:
    """Plain HTTP to the API server's Unix socket."""

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

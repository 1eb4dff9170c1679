"""The lab's API server's objects: what etcd and the API server's storage do.

A global ``resourceVersion`` bumped by every write; create (``409
AlreadyExists``); replace with optimistic concurrency (``409 Conflict`` on a
stale resourceVersion); the ``/status`` subresource (a PUT of the object keeps
its status, a PUT of ``/status`` changes only the status); merge patch; delete
with finalizers (``deletionTimestamp``, gone when the last finalizer goes);
list with ``labelSelector`` (``k=v``, ``k!=v``, ``k``, ``!k``) and
``fieldSelector`` (``metadata.name``, ``metadata.namespace``, and a Pod's
``spec.nodeName``, as the kube-apiserver serves it); the history a
watch resumes from (compacted past :data:`HISTORY` writes, or by
:meth:`ApiStore.compact`: older is ``410 Expired``).  With a state file
(:meth:`ApiStore.persist`) the objects outlive a restart, as etcd's do; the
history does not.

The real server's size limits hold, with its errors: ConfigMap and Secret
data at most 1 MiB (``422 Invalid``), and etcd's 1.5 MiB per stored value
(``500``, ``etcdserver: request is too large``); the 3 MiB request body
limit is the HTTP side's (:mod:`sdn_egress.lab.kubehttp`).
"""
from __future__ import annotations

import base64
import binascii
import copy
import datetime
import json
import re
import threading
import uuid
from dataclasses import dataclass

from sdn_egress.fileio import write_json_atomic

# (group, version, plural) -> (kind, namespaced, has a status subresource)
RESOURCES = {
    ("", "v1", "nodes"): ("Node", False, False),
    ("", "v1", "namespaces"): ("Namespace", False, False),
    ("", "v1", "pods"): ("Pod", True, False),
    ("", "v1", "events"): ("Event", True, False),
    ("", "v1", "configmaps"): ("ConfigMap", True, False),
    ("", "v1", "secrets"): ("Secret", True, False),
    ("coordination.k8s.io", "v1", "leases"): ("Lease", True, False),
    ("networking.k8s.io", "v1", "servicecidrs"): ("ServiceCIDR", False, False),
    ("sdn-egress.io", "v1alpha1", "egressgateways"): ("EgressGateway", False, True),
    ("sdn-egress.io", "v1alpha1", "egresspolicies"): ("EgressPolicy", True, True),
    ("sdn-egress.io", "v1alpha1", "egressclusterpolicies"): ("EgressClusterPolicy", False, True),
}
PLURALS = {kind: key for key, (kind, _, _) in RESOURCES.items()}
HISTORY = 20000  # writes a watch can resume across; older: 410 Gone

# The real server's limits (Kubernetes core validation's MaxSecretSize, etcd's --max-request-bytes default).
MAX_DATA_BYTES = 1 << 20  # ConfigMap data + binaryData, Secret data: 1 MiB
MAX_STORED_BYTES = 3 << 19  # etcd: 1.5 MiB a request (the stored value and its key)


def _label_matcher(selector: str | None):
    """A predicate on a labels dict for an equality-based ``labelSelector``."""
    if not selector:
        return lambda labels: True
    terms = []
    for term in (t.strip() for t in selector.split(",") if t.strip()):
        if "!=" in term:
            k, v = (x.strip() for x in term.split("!=", 1))
            terms.append(lambda lb, k=k, v=v: lb.get(k) != v)
        elif "=" in term:
            k, v = (x.strip() for x in term.replace("==", "=").split("=", 1))
            terms.append(lambda lb, k=k, v=v: lb.get(k) == v)
        elif term.startswith("!"):
            k = term[1:].strip()
            terms.append(lambda lb, k=k: k not in lb)
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
    def __init__(self, code: int, reason: str, message: str, details: dict | None = None):
        super().__init__(message)
        self.code, self.reason, self.message, self.details = code, reason, message, details

    def status(self) -> dict:
        body = status_body(self.code, self.reason, self.message)
        if self.details:
            body["details"] = self.details
        return body


def _decoded_len(value) -> int:
    try:
        return len(base64.b64decode(str(value), validate=True))
    except (binascii.Error, ValueError):
        return len(str(value))


def data_size(kind: str, obj: dict) -> int:
    """The bytes a ConfigMap's or Secret's size limit counts: the values (keys
    not), binary ones decoded."""
    if kind == "ConfigMap":
        return (sum(len(str(v).encode()) for v in (obj.get("data") or {}).values())
                + sum(_decoded_len(v) for v in (obj.get("binaryData") or {}).values()))
    return (sum(_decoded_len(v) for v in (obj.get("data") or {}).values())
            + sum(len(str(v).encode()) for v in (obj.get("stringData") or {}).values()))


def check_size(kind: str, obj: dict) -> None:
    """What validation, then etcd, refuses of an object about to be stored."""
    if kind in ("ConfigMap", "Secret") and data_size(kind, obj) > MAX_DATA_BYTES:
        where = "[]" if kind == "ConfigMap" else "data"
        detail = f"Too long: must have at most {MAX_DATA_BYTES} bytes"
        name = obj["metadata"]["name"]
        raise ApiError(422, "Invalid", f'{kind} "{name}" is invalid: {where}: {detail}',
                       details={"name": name, "kind": kind,
                                "causes": [{"reason": "FieldValueTooLong", "message": detail, "field": where}]})
    stored = len(json.dumps(obj, separators=(",", ":")).encode())
    if stored > MAX_STORED_BYTES:
        # etcd's error, passed on as the API server does any non-Status error.
        raise ApiError(500, "", "etcdserver: request is too large")


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


@dataclass
class Watch:
    res: tuple
    namespace: str | None
    closed: bool = False


class ApiStore:
    """The objects and their history; every method takes :attr:`cond` (the
    ``_``-prefixed ones and :meth:`operate` expect it held)."""

    def __init__(self) -> None:
        self.cond = threading.Condition()
        self.rv = 0
        self.objects: dict[tuple, dict] = {}  # (res, namespace or "", name) -> object
        self.log: list[tuple[int, tuple, str, dict, dict | None]] = []  # (rv, res, type, object, before)
        self.compacted = 0
        self.watches: list[Watch] = []
        self.state_file: str | None = None

    # -- persistence ----------------------------------------------------------------------------------
    def persist(self, path: str):
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

    # -- as a user would, and as etcd does ------------------------------------------------------------
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

    def matching(self, res, namespace: str | None, match) -> list[dict]:
        """The objects of ``res`` (in ``namespace``, when given) ``match`` accepts, in key order."""
        return [obj for (r, ons, _), obj in sorted(self.objects.items(), key=lambda kv: kv[0][1:])
                if r == res and (not namespace or ons == namespace) and match(obj)]

    def events_since(self, since: int, res, namespace: str | None, match) -> list[dict]:
        """The events a watch with this selector gets, as the real server's
        cacher sends them: an object that comes into the selection is
        ``ADDED``, one that leaves it ``DELETED`` (its last state)."""
        out = []
        for rv, r, t, o, before in self.log:
            if rv <= since or r != res or (namespace and o["metadata"].get("namespace") != namespace):
                continue
            now, was = match(o), before is not None and match(before)
            if t == "MODIFIED" and before is not None and now != was:
                out.append({"type": "ADDED" if now else "DELETED", "object": o})
            elif now:
                out.append({"type": t, "object": o})
        return out

    # -- the store (self.cond held) -------------------------------------------------------------------
    def _bump(self, res, type_: str, obj: dict, before: dict | None = None) -> None:
        self.rv += 1
        obj["metadata"]["resourceVersion"] = str(self.rv)
        self.log.append((self.rv, res, type_, copy.deepcopy(obj), before))
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
        check_size(kind, obj)
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
        check_size(kind, new)
        self.objects[key] = new
        self._bump(res, "MODIFIED", new, before=old)
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


    def operate(self, method: str, res, namespace: str, name: str | None, sub: str | None, query: dict,
                body):
        """One request (not a watch) on the store; ``self.cond`` held."""
        emu = self
        kind, namespaced, has_status = RESOURCES[res]
        ns = namespace if namespaced else ""
        if method == "GET" and name is None:
            items = []
            for obj in emu.matching(res, namespace, selector(query)):
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

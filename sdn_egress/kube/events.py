"""Kubernetes Events (``core/v1``) about sdn-egress objects.

An Event goes to the object's namespace (cluster-scoped objects: ``default``,
as Kubernetes itself does).  A failure to record one is logged and never
stops the caller: Events are for people, not for the controller's logic.
"""
from __future__ import annotations

import datetime
import logging
import socket
import uuid

LOG = logging.getLogger(__name__)

NORMAL, WARNING = "Normal", "Warning"
COMPONENT = "sdn-egress-controller"


def _now() -> str:
    return datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


class EventRecorder:
    def __init__(self, api_client, component: str = COMPONENT, instance: str | None = None):
        self.api_client = api_client
        self.component = component
        self.instance = instance or socket.gethostname()
        self.recorded = 0

    def record(self, obj: dict, type_: str, reason: str, message: str) -> bool:
        """One Event about the (raw) object ``obj``; True when it was created."""
        from kubernetes.client.rest import ApiException

        from sdn_egress.kube import rest

        meta = obj.get("metadata") or {}
        namespace = meta.get("namespace") or "default"
        stamp = _now()
        body = {
            "apiVersion": "v1",
            "kind": "Event",
            "metadata": {"name": f"{meta.get('name', 'object')}.{uuid.uuid4().hex[:16]}", "namespace": namespace},
            "involvedObject": {
                "apiVersion": obj.get("apiVersion"), "kind": obj.get("kind"), "name": meta.get("name"),
                "namespace": meta.get("namespace") or None, "uid": meta.get("uid"),
                "resourceVersion": meta.get("resourceVersion"),
            },
            "type": type_,
            "reason": reason,
            "message": message[:1024],
            "source": {"component": self.component, "host": self.instance},
            "reportingComponent": self.component,
            "reportingInstance": self.instance,
            "firstTimestamp": stamp,
            "lastTimestamp": stamp,
            "count": 1,
        }
        try:
            rest.send(self.api_client, "POST", f"/api/v1/namespaces/{namespace}/events", body)
        except (ApiException, OSError) as exc:
            LOG.warning("event %s %s on %s %s not recorded: %s", type_, reason, obj.get("kind"), meta.get("name"),
                        getattr(exc, "reason", None) or exc)
            return False
        except Exception as exc:  # noqa: BLE001 - urllib3 errors and the like: log, go on
            LOG.warning("event %s on %s not recorded: %s", reason, meta.get("name"), exc)
            return False
        self.recorded += 1
        return True

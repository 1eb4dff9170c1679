"""Leader election with a ``coordination.k8s.io/v1`` Lease, as client-go does it.

A candidate takes the Lease when it is absent, free (no holder) or expired,
and the leader renews it every ``retry_period``.  Expiry is judged on the
candidate's own monotonic clock: a Lease counts as expired when its record
(holder, renewTime, transitions) has not changed for ``lease_duration`` since
this candidate first saw it, so clock skew between nodes does not matter.
Every write carries the resourceVersion read: of two candidates racing for a
free Lease one gets ``409 Conflict`` and stays a follower.  A leader that
cannot renew for ``renew_deadline`` (< ``lease_duration``) stops its work
before anyone else may take over; a leader that stops releases the Lease
(holder cleared), so a standby takes over at its next try, not a lease
duration later.

(The client's own ``kubernetes.leaderelection`` can neither be stopped nor
release its Lease, and exits the process on a bad configuration.)
"""
from __future__ import annotations

import datetime
import json
import logging
import threading
import time
from typing import Callable

LOG = logging.getLogger(__name__)

LEASE_DURATION = 15.0
RENEW_DEADLINE = 10.0
RETRY_PERIOD = 2.0


def micro_time(t: datetime.datetime | None = None) -> str:
    t = t or datetime.datetime.now(datetime.timezone.utc)
    return t.strftime("%Y-%m-%dT%H:%M:%S.%fZ")


class LeaderElector:
    def __init__(self, api_client, namespace: str, name: str, identity: str,
                 lease_duration: float = LEASE_DURATION, renew_deadline: float = RENEW_DEADLINE,
                 retry_period: float = RETRY_PERIOD, clock: Callable[[], float] = time.monotonic):
        if not retry_period < renew_deadline < lease_duration:
            raise ValueError("leader election needs retry_period < renew_deadline < lease_duration "
                             f"(got {retry_period}, {renew_deadline}, {lease_duration})")
        self.api_client = api_client
        self.namespace, self.name, self.identity = namespace, name, identity
        self.lease_duration, self.renew_deadline, self.retry_period = lease_duration, renew_deadline, retry_period
        self.clock = clock
        self.is_leader = False
        self._observed: tuple | None = None
        self._observed_at = 0.0

    # -- one attempt ------------------------------------------------------------------------------------
    def _api(self):
        from kubernetes import client

        return client.CoordinationV1Api(self.api_client)

    def _read(self) -> dict | None:
        from kubernetes.client.rest import ApiException

        try:
            resp = self._api().read_namespaced_lease(self.name, self.namespace, _preload_content=False)
        except ApiException as exc:
            if exc.status == 404:
                return None
            raise
        return json.loads(resp.data)

    def holder(self) -> str | None:
        lease = self._read()
        return ((lease or {}).get("spec") or {}).get("holderIdentity") or None

    def try_acquire_or_renew(self) -> bool:
        """One attempt; True when this candidate holds the Lease afterwards."""
        from kubernetes.client.rest import ApiException

        now = micro_time()
        duration = max(1, int(round(self.lease_duration)))
        try:
            lease = self._read()
            if lease is None:
                self._api().create_namespaced_lease(self.namespace, {
                    "apiVersion": "coordination.k8s.io/v1", "kind": "Lease",
                    "metadata": {"name": self.name, "namespace": self.namespace},
                    "spec": {"holderIdentity": self.identity, "leaseDurationSeconds": duration,
                             "acquireTime": now, "renewTime": now, "leaseTransitions": 0}},
                    _preload_content=False)
                return self._became(True)
            spec = lease.get("spec") or {}
            holder = spec.get("holderIdentity") or ""
            record = (holder, spec.get("renewTime"), spec.get("leaseTransitions"), spec.get("leaseDurationSeconds"))
            if record != self._observed:
                self._observed, self._observed_at = record, self.clock()
            held_for = float(spec.get("leaseDurationSeconds") or self.lease_duration)
            if holder and holder != self.identity and self._observed_at + held_for > self.clock():
                return self._became(False)
            mine = holder == self.identity
            lease["spec"] = {
                **spec, "holderIdentity": self.identity, "leaseDurationSeconds": duration, "renewTime": now,
                "acquireTime": spec.get("acquireTime") if mine else now,
                "leaseTransitions": int(spec.get("leaseTransitions") or 0) + (0 if mine or not holder else 1),
            }
            self._api().replace_namespaced_lease(self.name, self.namespace, lease, _preload_content=False)
            return self._became(True)
        except ApiException as exc:
            if exc.status != 409:
                LOG.warning("lease %s/%s: HTTP %s %s", self.namespace, self.name, exc.status, exc.reason)
            return self._became(False)
        except Exception as exc:  # noqa: BLE001 - the API unreachable: not the leader this time
            LOG.warning("lease %s/%s: %s", self.namespace, self.name, exc)
            return self._became(False)

    def _became(self, leader: bool) -> bool:
        if leader and not self.is_leader:
            LOG.info("%s: became the leader (lease %s/%s)", self.identity, self.namespace, self.name)
        self.is_leader = leader
        return leader

    def release(self) -> bool:
        """Give the Lease up (when held): clear the holder so a standby takes over at once."""
        from kubernetes.client.rest import ApiException

        try:
            lease = self._read()
            spec = (lease or {}).get("spec") or {}
            if lease is None or spec.get("holderIdentity") != self.identity:
                return False
            now = micro_time()
            lease["spec"] = {**spec, "holderIdentity": None, "leaseDurationSeconds": 1, "renewTime": now,
                             "acquireTime": now}
            self._api().replace_namespaced_lease(self.name, self.namespace, lease, _preload_content=False)
            LOG.info("%s: released lease %s/%s", self.identity, self.namespace, self.name)
            return True
        except (ApiException, OSError) as exc:
            LOG.warning("lease %s/%s not released: %s", self.namespace, self.name, exc)
            return False
        finally:
            self.is_leader = False

    # -- the loop -----------------------------------------------------------------------------------------
    def run(self, stop: threading.Event, lead: Callable[[threading.Event], None]) -> None:
        """Until ``stop``: become the leader, run ``lead(leading_stop)`` in a
        thread while leading, stop it (set ``leading_stop``, join) when the
        Lease is lost, and stand for election again.  On ``stop`` the Lease is
        released."""
        while not stop.is_set():
            while not stop.is_set() and not self.try_acquire_or_renew():
                stop.wait(self.retry_period)
            if stop.is_set():
                break
            leading = threading.Event()
            worker = threading.Thread(target=lead, args=(leading,), name="leader-work", daemon=True)
            worker.start()
            renewed = self.clock()
            while not stop.is_set() and worker.is_alive():
                stop.wait(self.retry_period)
                if stop.is_set():
                    break
                if self.try_acquire_or_renew():
                    renewed = self.clock()
                elif self.clock() - renewed > self.renew_deadline:
                    LOG.error("%s: lost the lease %s/%s (not renewed for %.1f s): stopping work",
                              self.identity, self.namespace, self.name, self.clock() - renewed)
                    break
            leading.set()
            worker.join()
            self.is_leader = False
            if stop.is_set():
                self.release()
            elif not worker.is_alive():
                LOG.info("%s: work ended; standing for election again", self.identity)

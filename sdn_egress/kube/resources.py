"""The API resources sdn-egress reads and writes, and how to call them."""
from __future__ import annotations

from dataclasses import dataclass

from sdn_egress.model import API_GROUP, API_VERSION


@dataclass(frozen=True)
class Resource:
    group: str  # "" for the core group
    version: str
    plural: str
    kind: str
    namespaced: bool
    status_subresource: bool = False

    @property
    def api_version(self) -> str:
        return f"{self.group}/{self.version}" if self.group else self.version

    @property
    def custom(self) -> bool:
        return self.group == API_GROUP

    def path(self, namespace: str = "", name: str = "") -> str:
        """The object's (or the collection's) URL path, as errors cite it."""
        base = f"/apis/{self.group}/{self.version}" if self.group else f"/api/{self.version}"
        if self.namespaced and namespace:
            base += f"/namespaces/{namespace}"
        base += f"/{self.plural}"
        return f"{base}/{name}" if name else base


NODES = Resource("", "v1", "nodes", "Node", namespaced=False)
NAMESPACES = Resource("", "v1", "namespaces", "Namespace", namespaced=False)
PODS = Resource("", "v1", "pods", "Pod", namespaced=True)
GATEWAYS = Resource(API_GROUP, API_VERSION, "egressgateways", "EgressGateway", False, True)
POLICIES = Resource(API_GROUP, API_VERSION, "egresspolicies", "EgressPolicy", True, True)
CLUSTER_POLICIES = Resource(API_GROUP, API_VERSION, "egressclusterpolicies", "EgressClusterPolicy", False, True)

# The service CIDRs, where the cluster serves them (Kubernetes 1.33+, GA): the
# kube-apiserver keeps object "kubernetes" with its --service-cluster-ip-range.
SERVICE_CIDRS = Resource("networking.k8s.io", "v1", "servicecidrs", "ServiceCIDR", namespaced=False)
CONFIGMAPS = Resource("", "v1", "configmaps", "ConfigMap", namespaced=True)
LEASES = Resource("coordination.k8s.io", "v1", "leases", "Lease", namespaced=True)

# What the state source watches, in the order a snapshot reads them.
WATCHED = (NODES, NAMESPACES, PODS, GATEWAYS, POLICIES, CLUSTER_POLICIES)
BY_KIND = {r.kind: r for r in WATCHED}


def list_function(api_client, res: Resource, namespace: str | None = None):
    """(function, args) that list (and, with watch=True, watch) ``res``
    across all namespaces, or in ``namespace``."""
    from kubernetes import client

    if res.custom or res == SERVICE_CIDRS:  # the generic REST calls serve any group
        api = client.CustomObjectsApi(api_client)
        if namespace and res.namespaced:
            return api.list_namespaced_custom_object, (res.group, res.version, namespace, res.plural)
        return api.list_cluster_custom_object, (res.group, res.version, res.plural)
    if res == LEASES:
        api = client.CoordinationV1Api(api_client)
        return (api.list_namespaced_lease, (namespace,)) if namespace else (api.list_lease_for_all_namespaces, ())
    core = client.CoreV1Api(api_client)
    if namespace and res.namespaced:
        return {"pods": core.list_namespaced_pod,
                "configmaps": core.list_namespaced_config_map}[res.plural], (namespace,)
    return {
        "nodes": core.list_node,
        "namespaces": core.list_namespace,
        "pods": core.list_pod_for_all_namespaces,
        "configmaps": core.list_config_map_for_all_namespaces,
    }[res.plural], ()

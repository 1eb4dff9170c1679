"""A ``kubernetes`` API client from a kubeconfig file, or from inside a pod."""
from __future__ import annotations

import json
import os


def api_client(kubeconfig: str | None = None, context: str | None = None):
    """An ``ApiClient`` of its own (never the library's global default):
    ``kubeconfig`` (and ``context``), else the pod's service account."""
    from kubernetes import client, config

    configuration = client.Configuration()
    if kubeconfig:
        config.load_kube_config(config_file=kubeconfig, context=context, client_configuration=configuration)
    else:
        config.load_incluster_config(client_configuration=configuration)
    return client.ApiClient(configuration)


def api_client_from(args, program: str):
    """The client ``add_source_arguments``' flags ask for; None (the reason
    logged, naming ``program``) when the kubeconfig or the pod's service
    account cannot give one."""
    import logging

    try:
        return api_client(args.kubeconfig, args.context)
    except Exception as exc:  # noqa: BLE001 - the config's own errors are many kinds
        logging.getLogger(__name__).error("%s: no Kubernetes API client: %s", program, exc)
        return None


def add_source_arguments(parser, manifests_help: str) -> None:
    """Where a program takes the cluster state from: ``--manifests DIR`` |
    ``--kubeconfig PATH`` | ``--in-cluster`` (exactly one), and ``--context``."""
    where = parser.add_mutually_exclusive_group(required=True)
    where.add_argument("--manifests", metavar="DIR", help=manifests_help)
    where.add_argument("--kubeconfig", metavar="PATH",
                       help="Kubernetes mode: reach the API server with this kubeconfig")
    where.add_argument("--in-cluster", action="store_true",
                       help="Kubernetes mode: reach the API server with the pod's service account")
    parser.add_argument("--context", help="Kubernetes mode: the kubeconfig context (default: its current one)")


def pod_namespace(default: str = "sdn-egress") -> str:
    """The namespace this pod runs in: ``$POD_NAMESPACE``, else the service
    account's, else ``default``."""
    if os.environ.get("POD_NAMESPACE"):
        return os.environ["POD_NAMESPACE"]
    try:
        with open("/var/run/secrets/kubernetes.io/serviceaccount/namespace") as f:
            return f.read().strip() or default
    except OSError:
        return default


def read_or_none(read) -> dict | None:
    """The object ``read()`` fetches (called with ``_preload_content=False``:
    the raw JSON, parsed here), or None when the API server has none (404)."""
    from kubernetes.client.rest import ApiException

    try:
        resp = read()
    except ApiException as exc:
        if exc.status == 404:
            return None
        raise
    return json.loads(resp.data)

"""sdn-egress on the Kubernetes API: the CRDs (``crds``), offline schema
checks (``schema``), and the controller's side of the API: informers and the
state source (``informer``, ``source``), status and Events (``status``,
``events``), Lease leader election
(``leader``) and client setup (``client``). The allocation's ConfigMaps are
written and read by ``sdn_egress.allocation.store_kube``.

Only ``crds`` and ``schema`` are imported by light commands (``validate``);
the rest imports the ``kubernetes`` client.
"""

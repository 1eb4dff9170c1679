"""sdn-egress on the Kubernetes API: the CRDs (``crds``), offline schema
checks (``schema``), and the controller's side of the API: informers and the
state source (``informer``, ``source``), status and Events (``status``,
``events``), the allocation ConfigMap (``store``), Lease leader election
(``leader``) and client setup (``client``).

Only ``crds`` and ``schema`` are imported by light commands (``validate``);
the rest imports the ``kubernetes`` client.
"""

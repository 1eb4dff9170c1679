"""Policies indexed by what can make them select a pod, so that a pod's
policies are judged against a handful of candidates, not every policy of
the cluster.

A namespaced policy can select only pods of its namespace; one with
``matchLabels`` only pods carrying its first label pair; any namespaced
policy also the pods whose annotation names it.  A cluster policy can
select pods of any namespace (its namespaceSelector is judged per pod), with
the same label rule.  :meth:`PolicyIndex.candidates` is a superset of the
policies that select a pod; :meth:`~sdn_egress.model.EgressPolicy.selects`
still decides.
"""
from __future__ import annotations

from typing import Any, Mapping

from sdn_egress.model import POLICY_ANNOTATION, EgressPolicy, Pod

CLUSTER = ""  # the scope of cluster policies (their namespace is empty)


class PolicyIndex:
    def __init__(self, policies: Mapping[str, EgressPolicy]):
        # Each entry (policy key, policy).
        self.by_label: dict[tuple[str, str, str], list[tuple]] = {}  # (scope, label key, value)
        self.unlabelled: dict[str, list[tuple]] = {}  # scope -> no matchLabels to index by
        self.by_name: dict[tuple[str, str], tuple] = {}  # (namespace, name): the annotation
        self._pairs: dict[str, tuple] = {}  # pod key -> (pod, statuses, candidate_pairs): see there
        for p in policies.values():
            key = p.key
            scope = CLUSTER if p.cluster else p.namespace
            if not p.cluster:
                self.by_name[(p.namespace, p.name)] = (key, p)
            pairs = p.pod_selector.match_labels if p.pod_selector is not None else ()
            if pairs:
                self.by_label.setdefault((scope, *pairs[0]), []).append((key, p))
            else:
                self.unlabelled.setdefault(scope, []).append((key, p))

    def candidates(self, pod: Pod) -> list[EgressPolicy]:
        """Every policy that may select ``pod`` (each once), in no particular order."""
        return list(self.candidates_by_key(pod).values())

    def candidates_by_key(self, pod: Pod) -> dict[str, EgressPolicy]:
        """:meth:`candidates` by policy key, in an order that depends only on
        the index and the pod."""
        found: dict[str, EgressPolicy] = {}
        for scope in (pod.namespace, CLUSTER):
            found.update(self.unlabelled.get(scope, ()))
            for k, v in pod.labels:
                found.update(self.by_label.get((scope, k, v), ()))
        named = dict(pod.annotations).get(POLICY_ANNOTATION) if pod.annotations else None
        if named is not None and (pair := self.by_name.get((pod.namespace, named))) is not None:
            found[pair[0]] = pair[1]
        return found

    def candidate_pairs(self, pod: Pod, statuses: Mapping[str, Any]) -> tuple[tuple[EgressPolicy, Any], ...]:
        """``(policy, statuses.get(its key))`` for every candidate of ``pod``,
        in :meth:`candidates_by_key`'s order; the same tuple again while the
        pod and ``statuses`` (the allocation's, one per version) are the same
        objects, so that what is kept per pod compares it by identity."""
        hit = self._pairs.get(pod.key)
        if hit is not None and hit[0] is pod and hit[1] is statuses:
            return hit[2]
        out = tuple((p, statuses.get(k)) for k, p in self.candidates_by_key(pod).items())
        if len(self._pairs) >= _PAIRS_MAX:
            self._pairs.clear()
        self._pairs[pod.key] = (pod, statuses, out)
        return out


_PAIRS_MAX = 4096  # pods whose candidate pairs an index keeps (a node's: a few hundred at most)
_LAST: tuple = (None, None, None)  # (the policies' mapping, its policies, the index): one per process


def policy_index(policies: Mapping[str, EgressPolicy]) -> PolicyIndex:
    """The index of ``policies``, built again only when one of them changed
    (the incremental snapshot hands out the same mapping while none does, and
    the same objects for those that did not, so the comparison is one
    pointer, else one per policy).  Safe across threads: the entry is read
    and replaced whole."""
    global _LAST
    last = _LAST
    if last[0] is policies:
        return last[2]
    key = tuple(policies.values())
    if last[1] != key:
        last = (policies, key, PolicyIndex(policies))
    else:
        last = (policies, key, last[2])
    _LAST = last
    return last[2]

"""``sdn-egress validate PATH...``: check manifests offline.

Every document of every file (directories: their ``*.yaml``, ``*.yml`` and
``*.json`` files, recursively) is checked as the cluster and the controller
would check it: sdn-egress.io objects against the CRDs' schema, then by the
controller's own parser (the CEL rules are among its rules), then the rules
across objects (gateway references, explicit EIPs in their pool and claimed
once, dual-stack pairs, one cluster default) and a trial allocation (pool
exhaustion, default gateways).  Documents of other kinds are skipped.  Each
problem is one line naming the object, the field and what is allowed; the exit
status is 1 when there is any, 2 when a path does not exist or the check itself
failed.  What one file may cost is bounded as in the manifest directory
(:func:`sdn_egress.source.read_manifest`, :func:`~sdn_egress.source.load_documents`):
a FIFO, a device, a huge or deeply nested file or an alias bomb is a problem of
its own, never a hang.
"""
from __future__ import annotations

import argparse
import os
import sys
from dataclasses import dataclass, field, replace

from sdn_egress.model.manifests import EGRESS_KINDS, WHOLE_DOCUMENT, ref_of
from sdn_egress.model import GROUP_VERSION, ClusterState, ObjectError, ObjectRef

@dataclass
class Report:
    errors: list[ObjectError] = field(default_factory=list)
    files: int = 0
    objects: int = 0  # documents of ours that were checked

    @property
    def ok(self) -> bool:
        return not self.errors


def schema_errors(doc, source: str = "") -> list[ObjectError]:
    """The CRD schema's complaints about one sdn-egress.io document."""
    from sdn_egress.kube import crds, schema

    kind = doc.get("kind")
    if kind not in EGRESS_KINDS or doc.get("apiVersion") != GROUP_VERSION:
        return []  # the parser says what is wrong with the kind or the version
    ref = ref_of(doc, kind)
    return [ObjectError(ref, path, message, source)
            for path, message in schema.violations(doc, crds.schema(kind), meaning=crds.PATTERN_MEANING)]


def _files(path: str) -> list[str]:
    from sdn_egress.source import SUFFIXES

    if not os.path.isdir(path):
        return [path]  # named directly: read it, whatever it is (a FIFO is refused, not skipped)
    found = []
    for root, dirs, names in os.walk(path):
        dirs[:] = sorted(d for d in dirs if not d.startswith("."))
        found.extend(os.path.join(root, n) for n in sorted(names)
                     if not n.startswith(".") and n.lower().endswith(SUFFIXES))
    return found


def validate(paths: list[str], partial: bool = False) -> Report:
    """Check the files under ``paths`` as one set of manifests.  ``partial``:
    the set is part of a larger one (a cluster): a reference to a gateway or
    a default that is not among the files is no error."""
    from sdn_egress.allocation import allocate
    from sdn_egress.source import Assembler, FileError, Pass, load_documents, read_manifest, relevant_items

    report = Report()
    run = Pass()
    for path in paths:
        if not os.path.exists(path):
            raise FileNotFoundError(path)
        for name in _files(path):
            report.files += 1
            try:
                docs = load_documents(read_manifest(name), name)
            except OSError as exc:
                run.errors.append(ObjectError(ObjectRef("File", "", name), WHOLE_DOCUMENT,
                                              f"cannot be read: {exc.strerror or exc}"))
                continue
            except FileError as exc:
                run.errors.append(ObjectError(ObjectRef("File", "", name), exc.where, exc.message))
                continue
            except Exception as exc:  # noqa: BLE001 - as in the source: a reader bug costs only its file
                run.errors.append(ObjectError(ObjectRef("File", "", name), WHOLE_DOCUMENT,
                                              f"cannot be read ({type(exc).__name__}: {exc}); this is a bug of "
                                              "sdn-egress, please report it"))
                continue
            for item, source in relevant_items(docs, name):
                report.objects += 1
                found = schema_errors(item, source) if isinstance(item, dict) else []
                if found:
                    run.errors.extend(found)
                else:
                    run.add(item, source, name)
    by_kind = Assembler().finish(run)
    state = ClusterState(**by_kind)
    sources = {ref: kept.source for ref, kept in run.chosen.items()}
    trial = [replace(e, source=e.source or sources.get(e.ref, "")) for e in allocate(state).errors
             if e not in run.errors]
    report.errors = [e for e in run.errors + trial if not (partial and _names_what_is_elsewhere(e, state))]
    return report


def _names_what_is_elsewhere(err: ObjectError, state: ClusterState) -> bool:
    """An error about a gateway (or a default gateway) that is not among the
    files, or about a namespace whose labels are not (no Namespace object)."""
    if err.field != "spec.egressGatewayName":
        return False
    if "does not serve namespace" in err.message:
        return err.ref.namespace not in state.namespaces
    return any(s in err.message for s in ("no EgressGateway named", "no default gateway", "as its default"))


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("paths", nargs="+", metavar="PATH", help="manifest files or directories")
    parser.add_argument("--partial", action="store_true",
                        help="the files are part of a cluster's objects: gateways they name may live there")
    parser.add_argument("-q", "--quiet", action="store_true", help="print the problems only, no summary")


def run(args: argparse.Namespace) -> int:
    try:
        report = validate(args.paths, partial=args.partial)
    except FileNotFoundError as exc:
        print(f"validate: {exc.args[0]}: no such file or directory", file=sys.stderr)
        return 2
    except Exception as exc:  # noqa: BLE001 - our own failure: say so, and never "valid"
        print(f"validate: could not check the manifests ({type(exc).__name__}: {exc}); this is a bug "
              "of sdn-egress, please report it", file=sys.stderr)
        return 2
    for err in report.errors:
        print(err)
    if not args.quiet:
        verdict = "valid" if report.ok else f"{len(report.errors)} problem{'s' * (len(report.errors) != 1)}"
        print(f"validate: {report.objects} object{'s' * (report.objects != 1)} in {report.files} "
              f"file{'s' * (report.files != 1)}: {verdict}", file=sys.stderr)
    return 0 if report.ok else 1

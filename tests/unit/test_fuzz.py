"""Issue 11: a bounded property-based fuzz of every parser (the manifests
parser, ``validate``, the manifest-directory source), with the controller
restarted in between for interference.  The harness is ``fuzzkit``;
``bench/fuzz.py`` runs it longer and writes the figures to BENCHMARKS.md.

Bounded: each test draws a fixed number of examples with a deadline, and each
case runs under a 5 s alarm, so the file runs in well under a minute on two
cores."""
from __future__ import annotations

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import fuzzkit as fk

BOUND = settings(max_examples=200, deadline=5000, derandomize=True, database=None,
                 suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])


def no_failures(found):
    assert found == [], found


@BOUND
@given(st.one_of(fk.gateways(), fk.policies(gateway=None), st.builds(lambda gw, p: p, fk.gateways(name="edge"),
                                                                     fk.policies())))
def test_a_valid_object_is_accepted_by_the_parser_and_the_crd(doc):
    no_failures(fk.guarded(fk.check_valid, doc))


@BOUND
@given(fk.invalid_objects())
def test_an_invalid_field_is_refused_and_named(case):
    doc, field = case
    no_failures(fk.guarded(fk.check_invalid, doc, field))


@settings(BOUND, max_examples=600)
@given(st.one_of(fk.hostile_objects(), fk.json_values))
def test_any_value_anywhere_never_crashes_and_the_crd_agrees(doc):
    no_failures(fk.guarded(fk.check_hostile, doc))


@BOUND
@given(fk.hostile_texts())
def test_validate_never_fails_or_hangs_on_a_hostile_file(hostile):
    no_failures(fk.guarded(fk.check_validate, [hostile], None))


@BOUND
@given(fk.interference_cases())
def test_a_hostile_file_and_a_restart_change_no_valid_objects_outcome(case):
    valid, hostile = case
    no_failures(fk.guarded(fk.check_interference, valid, hostile))


@pytest.mark.parametrize("value", fk.NASTY_SCALARS, ids=lambda v: v[:24])
def test_every_value_yamls_constructors_choke_on_is_a_file_error_in_validate(value):
    """Beside the random draws: each of these, every time (one found a crash the draws missed)."""
    for key in ("spec", "metadata", "a"):
        data = f"apiVersion: v1\nkind: Pod\n{key}: {value}\n".encode()
        no_failures(fk.guarded(fk.check_validate, [("x.yaml", data)], None))


@BOUND
@given(st.one_of(fk.topologies(), fk.hostile_topologies()))
def test_a_lab_topology_parses_to_documented_addresses_or_names_its_error(doc):
    """Issue 12: the lab's topology parser (ipFamilies and the rest) under the same fuzz."""
    no_failures(fk.guarded(fk.check_topology, doc))

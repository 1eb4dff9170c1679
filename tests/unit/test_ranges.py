"""sdn_egress.ranges: the set arithmetic of the view builder gives exactly
netaddr.IPSet's CIDRs, in its order."""
from __future__ import annotations

import netaddr
from hypothesis import given, settings
from hypothesis import strategies as st

from sdn_egress.ranges import Ranges


def cidrs(version: int):
    bits = 32 if version == 4 else 128
    # Near one another, so that they overlap, touch and nest; and the whole space at times.
    base = 0xC6336400 if version == 4 else 0x20010DB8 << 96
    return st.lists(st.tuples(st.integers(0, 4095), st.integers(bits - 16, bits) | st.just(0)).map(
        lambda vp: netaddr.IPNetwork((base + vp[0] << (0 if version == 4 else 0), vp[1]), version).cidr),
        max_size=12)


@settings(max_examples=200, deadline=None)
@given(st.sampled_from((4, 6)).flatmap(lambda v: st.tuples(st.just(v), cidrs(v), cidrs(v))))
def test_union_intersection_difference_and_cidrs_are_ipsets(case):
    version, a, b = case
    ra, rb = Ranges.of(version, a), Ranges.of(version, b)
    sa, sb = netaddr.IPSet(a), netaddr.IPSet(b)
    for ours, theirs in ((ra, sa), (ra | rb, sa | sb), (ra & rb, sa & sb), (ra - rb, sa - sb), (rb - ra, sb - sa)):
        assert ours.cidrs() == list(theirs.iter_cidrs())
        assert [str(c) for c in ours.cidrs()] == [str(c) for c in theirs.iter_cidrs()]
        assert bool(ours) == bool(theirs)
    assert Ranges.of_set(version, sa) == ra


def test_the_whole_space_less_scattered_hosts():
    holes = [netaddr.IPNetwork(f"198.51.100.{4 * i}/32") for i in range(64)]
    everything = Ranges.of(4, ["0.0.0.0/0"])
    assert (everything - Ranges.of(4, holes)).cidrs() == list((netaddr.IPSet(["0.0.0.0/0"]) - netaddr.IPSet(holes))
                                                              .iter_cidrs())
    assert Ranges.of(6, ["::/0"]).cidrs() == [netaddr.IPNetwork("::/0")]
    assert Ranges.of(4, ["2001:db8::/32"]).cidrs() == []  # another family: left out


def test_counting_cidrs_makes_none():
    r = Ranges.of(4, ["0.0.0.0/0"]) - Ranges.of(4, [f"198.51.100.{4 * i}/32" for i in range(64)])
    assert r.count_cidrs() == len(r.cidrs()) == 152


def test_everything_is_the_whole_space():
    assert Ranges.everything(4) == Ranges.of(4, ["0.0.0.0/0"]) and Ranges.everything(6) == Ranges.of(6, ["::/0"])

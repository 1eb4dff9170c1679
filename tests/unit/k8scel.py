"""The part of Kubernetes' CEL IP and CIDR libraries (``isIP``, ``ip``,
``isCIDR``, ``cidr`` and their methods; Kubernetes 1.31+) and of the strings
extension (``split``) that the CRDs' rules use, for cel-python, so the tests evaluate those rules as the API
server does.  Semantics after k8s.io/apiserver/pkg/cel/library/{ip,cidr}.go:
no zone, no IPv4-mapped IPv6, ``cidr()`` keeps host bits (``masked()`` drops
them), equality compares address and prefix length.
"""
from __future__ import annotations

import ipaddress

import celpy
from celpy import celtypes


class IP(celtypes.StringType):
    """An IP, as its canonical text (equality is the address's)."""


class CIDR(celtypes.StringType):
    """A prefix ``address/length`` as given (host bits kept), canonical text."""


def _parse_ip(s: str):
    if "%" in s:
        raise ValueError("zone")
    addr = ipaddress.ip_address(s)
    if addr.version == 6 and addr.ipv4_mapped is not None:
        raise ValueError("IPv4-mapped IPv6")
    return addr


def _parse_cidr(s: str):
    addr, _, length = s.partition("/")
    if not length or not length.isdigit() or (len(length) > 1 and length[0] == "0"):
        raise ValueError("not a prefix")
    iface = ipaddress.ip_interface(f"{_parse_ip(addr)}/{length}")
    return iface


def _err(what):
    return celpy.CELEvalError(what)


def _parses(parse, s) -> celtypes.BoolType:
    try:
        parse(str(s))
        return celtypes.BoolType(True)
    except ValueError:
        return celtypes.BoolType(False)


def is_ip(s):
    return _parses(_parse_ip, s)


def ip(value):
    if isinstance(value, CIDR):  # cidr(...).ip()
        return IP(str(_parse_cidr(str(value)).ip))
    try:
        return IP(str(_parse_ip(str(value))))
    except ValueError:
        return _err(f"IP Address {value!r} parse error")


def is_cidr(s):
    return _parses(_parse_cidr, s)


def cidr(s):
    try:
        iface = _parse_cidr(str(s))
    except ValueError:
        return _err(f"network address {s!r} parse error")
    return CIDR(f"{iface.ip}/{iface.network.prefixlen}")


def masked(c):
    return CIDR(str(_parse_cidr(str(c)).network))


def prefix_length(c):
    return celtypes.IntType(_parse_cidr(str(c)).network.prefixlen)


def contains_ip(c, other):
    net = _parse_cidr(str(c)).network
    try:
        addr = _parse_ip(str(other))
    except ValueError:
        return _err(f"IP Address {other!r} parse error")
    return celtypes.BoolType(addr.version == net.version and addr in net)


def contains_cidr(c, other):
    net = _parse_cidr(str(c)).network
    try:
        sub = _parse_cidr(str(other)).network
    except ValueError:
        return _err(f"network address {other!r} parse error")
    return celtypes.BoolType(sub.version == net.version and sub.subnet_of(net))


def family(a):
    return celtypes.IntType(_parse_ip(str(a)).version)


def _ip_test(name):
    return lambda a: celtypes.BoolType(getattr(_parse_ip(str(a)), name))


def split(s, sep):
    """The strings extension's ``split`` (Kubernetes enables it for CRD rules)."""
    return celtypes.ListType([celtypes.StringType(x) for x in str(s).split(str(sep))])


FUNCTIONS = {
    "split": split,
    "isIP": is_ip, "ip": ip, "isCIDR": is_cidr, "cidr": cidr, "masked": masked, "prefixLength": prefix_length,
    "containsIP": contains_ip, "containsCIDR": contains_cidr, "family": family,
    "isUnspecified": _ip_test("is_unspecified"), "isLoopback": _ip_test("is_loopback"),
    "isLinkLocalUnicast": lambda a: celtypes.BoolType(_parse_ip(str(a)) in (
        ipaddress.ip_network("169.254.0.0/16") if _parse_ip(str(a)).version == 4 else ipaddress.ip_network("fe80::/10"))),
    "isLinkLocalMulticast": lambda a: celtypes.BoolType(_parse_ip(str(a)) in (
        ipaddress.ip_network("224.0.0.0/24") if _parse_ip(str(a)).version == 4 else ipaddress.ip_network("ff02::/16"))),
}

_ENV = None
_PROGRAMS: dict[str, object] = {}


def evaluate(rule: str, activation: dict) -> bool:
    """One rule, as the API server evaluates it: an evaluation error is a
    violation too."""
    global _ENV
    if _ENV is None:
        _ENV = celpy.Environment()
    prog = _PROGRAMS.get(rule)
    if prog is None:
        prog = _PROGRAMS[rule] = _ENV.program(_ENV.compile(rule), functions=FUNCTIONS)
    try:
        result = prog.evaluate(activation)
    except celpy.CELEvalError:
        return False
    return not isinstance(result, celpy.CELEvalError) and bool(result)

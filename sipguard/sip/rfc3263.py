"""Locating the next hop from a SIP URI (RFC 3263 §4): transport, port and address.

Pure: the DNS answers come from a :class:`Lookup` the caller implements
(:mod:`sipguard.net.dns` with real DNS, tests with dicts). :func:`select_targets` returns
every (transport, address, port) the URI leads to, best first, for failover in order:

- §4.1, the transport: the URI's ``transport`` parameter; otherwise UDP (``sip:``) or TLS
  (``sips:``) when the host is an IP address or a port is given; otherwise the NAPTR
  records of the host (``SIP+D2U``, ``SIP+D2T``, ``SIPS+D2T`` with flag ``s``, ordered by
  order then preference); without usable NAPTR records, the SRV records of each transport
  we support (``_sip._udp``, ``_sip._tcp``, ``_sips._tcp``); without those either, UDP for
  ``sip:`` and TLS for ``sips:``.
- §4.2, the port and address: an IP address is used as it is; a host with a port is looked
  up with A/AAAA; otherwise the SRV records (from NAPTR, or of the chosen transport) are
  ordered as RFC 2782 says (lowest priority first, weighted random within a priority) and
  each target's addresses follow in turn; without SRV records, A/AAAA at the default port
  (5060, or 5061 for TLS).

A ``sips:`` URI only ever yields TLS. ``maddr`` replaces the host (RFC 3261 §19.1.1).
"""

from __future__ import annotations

import ipaddress
import random
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import Literal, Protocol

from sipguard.sip.uri import Uri

__all__ = [
    "DEFAULT_PORTS",
    "TRANSPORTS",
    "Lookup",
    "Naptr",
    "Srv",
    "Target",
    "Transport",
    "needs_dns",
    "order_srv",
    "select_targets",
    "srv_name",
]

Transport = Literal["udp", "tcp", "tls"]
TRANSPORTS: tuple[Transport, ...] = ("udp", "tcp", "tls")
DEFAULT_PORTS: dict[Transport, int] = {"udp": 5060, "tcp": 5060, "tls": 5061}

# NAPTR service field -> transport (RFC 3263 §4.1, §8; the IANA registry)
_SERVICES: dict[str, Transport] = {"sip+d2u": "udp", "sip+d2t": "tcp", "sips+d2t": "tls"}
# transport -> SRV service prefix (RFC 3263 §4.1: "_sips" for TLS)
_SRV_PREFIX: dict[Transport, str] = {"udp": "_sip._udp", "tcp": "_sip._tcp", "tls": "_sips._tcp"}

RandInt = Callable[[int, int], int]  # randint(a, b): a <= n <= b, as random.randint


@dataclass(frozen=True, slots=True)
class Naptr:
    """A NAPTR record (RFC 3403): ``order preference "flags" "service" "regexp" replacement``."""

    order: int
    preference: int
    flags: str
    service: str
    regexp: str
    replacement: str  # a domain name; "." or "" for none


@dataclass(frozen=True, slots=True)
class Srv:
    """An SRV record (RFC 2782): ``priority weight port target``."""

    priority: int
    weight: int
    port: int
    target: str  # a domain name; "." means the service is not offered here


@dataclass(frozen=True, slots=True)
class Target:
    """One place to send a request: the transport, an IP address (no brackets), a port."""

    transport: Transport
    host: str
    port: int

    def as_tuple(self) -> tuple[str, str, int]:
        return (self.transport, self.host, self.port)


class Lookup(Protocol):
    """The DNS answers :func:`select_targets` asks for. Names come without a final dot.

    Each returns the records found, or an empty sequence when there are none (NXDOMAIN,
    no data). A failure that says nothing about the name (timeout, SERVFAIL) should raise:
    an answer built on it would be wrong rather than empty.
    """

    def naptr(self, name: str) -> Sequence[Naptr]: ...

    def srv(self, name: str) -> Sequence[Srv]: ...

    def addresses(self, name: str) -> Sequence[str]:
        """The IPv6 and IPv4 addresses of ``name`` (AAAA and A), in the order to try."""
        ...


def _host(uri: Uri) -> str:
    """TARGET of RFC 3263 §4: ``maddr`` if present, else the host; no IPv6 brackets."""
    maddr = uri.param("maddr")
    host = maddr if maddr else uri.host
    if host.startswith("[") and host.endswith("]"):
        host = host[1:-1]
    return _name(host)


def _name(name: str) -> str:
    return name.rstrip(".").lower()


def _is_ip(host: str) -> bool:
    try:
        ipaddress.ip_address(host)
    except ValueError:
        return False
    return True


def _uri_transport(uri: Uri) -> Transport | None:
    """The transport the URI itself fixes: its ``transport`` parameter, TLS for ``sips:``.

    Raise ``ValueError`` for a transport sipguard does not carry (sctp, ws, …) or that a
    ``sips:`` URI cannot use.
    """
    if not uri.is_sip:
        raise ValueError(f"not a sip: or sips: URI: {uri}")
    param = uri.param("transport")
    if param is None:
        return None
    value = param.lower()
    if value == "tls" or (value == "tcp" and uri.scheme == "sips"):
        return "tls"
    if value == "udp" and uri.scheme == "sips":
        raise ValueError(f"a sips: URI needs TLS, not UDP: {uri}")
    if value in ("udp", "tcp"):
        return "udp" if value == "udp" else "tcp"
    raise ValueError(f"unsupported transport {param!r} in {uri}")


def needs_dns(uri: Uri) -> bool:
    """Whether :func:`select_targets` would ask DNS anything (the host is not an address)."""
    return not _is_ip(_host(uri))


def srv_name(transport: Transport, domain: str) -> str:
    """The SRV owner name for ``transport`` at ``domain``: ``_sip._udp.example.net``."""
    return f"{_SRV_PREFIX[transport]}.{_name(domain)}"


def select_targets(
    uri: Uri,
    answers: Lookup,
    *,
    transports: Iterable[Transport] = TRANSPORTS,
    randint: RandInt = random.randint,
) -> list[Target]:
    """Every (transport, address, port) ``uri`` leads to, in the order to try them.

    ``transports`` are those we can send on, in our order of preference (it orders the
    SRV lookups made when there is no NAPTR record, RFC 3263 §4.1 leaving that choice to
    the client); ``randint`` is the random source of the RFC 2782 weighting. Duplicates
    are dropped. An empty list: the name leads nowhere. Raise ``ValueError`` for a URI
    that no transport of ours can reach (a ``tel:`` URI, ``transport=sctp``…).
    """
    supported = _supported(uri, transports)
    host = _host(uri)
    fixed = _uri_transport(uri)
    if fixed is not None and fixed not in supported:
        return []  # a transport we do not send on
    if _is_ip(host):  # §4.1, §4.2: a numeric address is used as it is, no DNS
        transport = fixed or _default_transport(supported)
        if transport is None:
            return []
        return [Target(transport, str(ipaddress.ip_address(host)), _port(uri, transport))]
    if uri.port is not None:  # §4.2: a port given: A/AAAA only, no NAPTR or SRV
        transport = fixed or _default_transport(supported)
        if transport is None:
            return []
        return _dedup(_address_targets(answers, host, transport, uri.port))
    if fixed is not None:  # §4.1: the transport is given: no NAPTR; §4.2: its SRV
        return _dedup(_srv_or_addresses(answers, host, fixed, randint))
    found = _naptr_targets(uri, answers, host, supported, randint)
    if found is not None:
        return _dedup(found)
    # §4.1: no (usable) NAPTR records: the SRV records of each transport we support
    out: list[Target] = []
    any_srv = False
    for transport in supported:
        records = answers.srv(srv_name(transport, host))
        if records:
            any_srv = True
            out.extend(_srv_targets(answers, records, transport, randint))
    if any_srv:
        return _dedup(out)
    # §4.1, §4.2: no SRV either: UDP (sip:) or TLS (sips:) at the default port
    transport = _default_transport(supported)
    if transport is None:
        return []
    return _dedup(_address_targets(answers, host, transport, DEFAULT_PORTS[transport]))


def _default_transport(supported: Sequence[Transport]) -> Transport | None:
    """UDP for ``sip:``, TLS for ``sips:`` (RFC 3263 §4.1).

    ``supported`` holds only TLS for a ``sips:`` URI. Where UDP is not enabled a ``sip:``
    URI goes over TCP, which every SIP element implements as well (RFC 3261 §18).
    """
    for transport in TRANSPORTS:
        if transport in supported:
            return transport
    return None


def _supported(uri: Uri, transports: Iterable[Transport]) -> list[Transport]:
    out: list[Transport] = []
    for t in transports:
        if t not in DEFAULT_PORTS:
            raise ValueError(f"unknown transport {t!r}")
        if t not in out and (uri.scheme != "sips" or t == "tls"):
            out.append(t)
    return out


def _port(uri: Uri, transport: Transport) -> int:
    return uri.port if uri.port is not None else DEFAULT_PORTS[transport]


def _naptr_targets(
    uri: Uri, answers: Lookup, host: str, supported: Sequence[Transport], randint: RandInt
) -> list[Target] | None:
    """§4.1 with NAPTR records; None when there is no usable record (then SRV is tried)."""
    usable: list[tuple[Naptr, Transport]] = []
    for rec in answers.naptr(host):
        transport = _SERVICES.get(rec.service.lower())
        if transport is None or transport not in supported or rec.flags.lower() != "s":
            continue  # another application, a transport we lack, or not "go to SRV"
        if uri.scheme == "sips" and transport != "tls":
            continue  # a SIPS URI only ever leaves over TLS
        if not _name(rec.replacement):
            continue  # RFC 3263 uses the replacement field, never the regexp
        usable.append((rec, transport))
    if not usable:
        return None
    usable.sort(key=lambda item: (item[0].order, item[0].preference))  # stable
    out: list[Target] = []
    for rec, transport in usable:
        records = answers.srv(_name(rec.replacement))
        out.extend(_srv_targets(answers, records, transport, randint))
    return out


def _srv_or_addresses(
    answers: Lookup, host: str, transport: Transport, randint: RandInt
) -> list[Target]:
    """§4.2 with the transport known: its SRV records, or A/AAAA at the default port."""
    records = answers.srv(srv_name(transport, host))
    if records:
        return _srv_targets(answers, records, transport, randint)
    return _address_targets(answers, host, transport, DEFAULT_PORTS[transport])


def _srv_targets(
    answers: Lookup, records: Sequence[Srv], transport: Transport, randint: RandInt
) -> list[Target]:
    out: list[Target] = []
    for rec in order_srv(records, randint):
        out.extend(_address_targets(answers, _name(rec.target), transport, rec.port))
    return out


def _address_targets(answers: Lookup, name: str, transport: Transport, port: int) -> list[Target]:
    out: list[Target] = []
    for address in answers.addresses(name):
        try:
            ip = ipaddress.ip_address(address)
        except ValueError:
            continue  # a lookup that returns something else is ignored, not trusted
        out.append(Target(transport, str(ip), port))
    return out


def order_srv(records: Sequence[Srv], randint: RandInt = random.randint) -> list[Srv]:
    """SRV records in the order to try them (RFC 2782, "Usage rules").

    Lowest priority first; within a priority, each next record is drawn at random with a
    chance in proportion to its weight (records of weight 0 first in the list, so that they
    are picked only when the draw is 0 or nothing else is left). A single record whose
    target is ``.`` means the service is not offered: no record is returned.
    """
    if len(records) == 1 and not _name(records[0].target):
        return []
    live = [r for r in records if _name(r.target)]
    out: list[Srv] = []
    for priority in sorted({r.priority for r in live}):
        group = [r for r in live if r.priority == priority]
        group.sort(key=lambda r: r.weight != 0)  # weight 0 first, otherwise as given
        while group:
            total = sum(r.weight for r in group)
            draw = randint(0, total)
            running = 0
            chosen = len(group) - 1
            for i, r in enumerate(group):
                running += r.weight
                if running >= draw:
                    chosen = i
                    break
            out.append(group.pop(chosen))
    return out


def _dedup(targets: Iterable[Target]) -> list[Target]:
    seen: set[Target] = set()
    out: list[Target] = []
    for t in targets:
        if t not in seen:
            seen.add(t)
            out.append(t)
    return out

"""RFC 3263 §4 target selection, against dict-backed DNS answers (no I/O)."""

from __future__ import annotations

import random
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field

import pytest

from sipguard.sip.rfc3263 import (
    Naptr,
    Srv,
    Target,
    needs_dns,
    order_srv,
    select_targets,
    srv_name,
)
from sipguard.sip.uri import parse_uri


@dataclass
class FakeDns:
    """A :class:`Lookup` over dicts; records every question asked."""

    naptrs: dict[str, list[Naptr]] = field(default_factory=dict)
    srvs: dict[str, list[Srv]] = field(default_factory=dict)
    addrs: dict[str, list[str]] = field(default_factory=dict)
    asked: list[tuple[str, str]] = field(default_factory=list)

    def naptr(self, name: str) -> Sequence[Naptr]:
        self.asked.append(("NAPTR", name))
        return self.naptrs.get(name, [])

    def srv(self, name: str) -> Sequence[Srv]:
        self.asked.append(("SRV", name))
        return self.srvs.get(name, [])

    def addresses(self, name: str) -> Sequence[str]:
        self.asked.append(("ADDR", name))
        return self.addrs.get(name, [])


class NoDns:
    def naptr(self, name: str) -> Sequence[Naptr]:
        raise AssertionError(f"NAPTR {name} asked")

    def srv(self, name: str) -> Sequence[Srv]:
        raise AssertionError(f"SRV {name} asked")

    def addresses(self, name: str) -> Sequence[str]:
        raise AssertionError(f"A/AAAA {name} asked")


def first(a: int, b: int) -> int:
    """A random source that always draws the lowest value."""
    return a


def last(a: int, b: int) -> int:
    return b


def naptr(order: int, pref: int, service: str, repl: str, flags: str = "s") -> Naptr:
    return Naptr(order, pref, flags, service, "", repl)


def tuples(targets: list[Target]) -> list[tuple[str, str, int]]:
    return [t.as_tuple() for t in targets]


def select(uri: str, dns: object, **kw: object) -> list[tuple[str, str, int]]:
    return tuples(select_targets(parse_uri(uri), dns, **kw))  # type: ignore[arg-type]


# the zone most tests use: three NAPTR records, SRV per transport, two hosts
def zone() -> FakeDns:
    return FakeDns(
        naptrs={
            "pbx.example.net": [
                naptr(50, 50, "SIP+D2U", "_sip._udp.pbx.example.net."),
                naptr(40, 50, "SIP+D2T", "_sip._tcp.pbx.example.net."),
                naptr(90, 50, "SIPS+D2T", "_sips._tcp.pbx.example.net."),
            ]
        },
        srvs={
            "_sip._udp.pbx.example.net": [Srv(10, 0, 5060, "a.example.net.")],
            "_sip._tcp.pbx.example.net": [
                Srv(20, 0, 5070, "b.example.net."),
                Srv(10, 0, 5070, "a.example.net."),
            ],
            "_sips._tcp.pbx.example.net": [Srv(10, 0, 5061, "a.example.net.")],
        },
        addrs={"a.example.net": ["192.0.2.1", "2001:db8::1"], "b.example.net": ["192.0.2.2"]},
    )


# -- §4.1 and §4.2 without DNS ----------------------------------------------------------------


@pytest.mark.parametrize(
    ("uri", "expected"),
    [
        ("sip:192.0.2.7", ("udp", "192.0.2.7", 5060)),
        ("sip:192.0.2.7:5080", ("udp", "192.0.2.7", 5080)),
        ("sip:127.0.0.2:5080;transport=tcp", ("tcp", "127.0.0.2", 5080)),
        ("sip:192.0.2.7;transport=TCP", ("tcp", "192.0.2.7", 5060)),
        ("sip:192.0.2.7;transport=tls", ("tls", "192.0.2.7", 5061)),
        ("sips:192.0.2.7", ("tls", "192.0.2.7", 5061)),
        ("sips:192.0.2.7:5063;transport=tcp", ("tls", "192.0.2.7", 5063)),
        ("sip:[2001:db8::7]", ("udp", "2001:db8::7", 5060)),
        ("sip:[2001:DB8::7]:5090;transport=tcp", ("tcp", "2001:db8::7", 5090)),
        ("sip:+31201234567@192.0.2.7;user=phone", ("udp", "192.0.2.7", 5060)),
        ("sip:pbx.example.net;maddr=192.0.2.9", ("udp", "192.0.2.9", 5060)),
    ],
)
def test_numeric_ip_needs_no_dns(uri: str, expected: tuple[str, str, int]) -> None:
    assert not needs_dns(parse_uri(uri))
    assert select(uri, NoDns()) == [expected]


def test_names_need_dns() -> None:
    assert needs_dns(parse_uri("sip:pbx.example.net"))
    assert needs_dns(parse_uri("sip:pbx.example.net:5060"))


@pytest.mark.parametrize(
    "uri",
    ["tel:+31201234567", "sip:192.0.2.7;transport=sctp", "sips:192.0.2.7;transport=udp"],
)
def test_unusable_uri_is_our_error(uri: str) -> None:
    with pytest.raises(ValueError):
        select(uri, NoDns())


def test_transport_not_enabled_gives_nothing() -> None:
    assert select("sip:192.0.2.7;transport=tls", NoDns(), transports=("udp", "tcp")) == []
    assert select("sips:192.0.2.7", NoDns(), transports=("udp", "tcp")) == []
    # a sip: URI without a transport goes over TCP where UDP is not enabled (RFC 3261 §18)
    assert select("sip:192.0.2.7", NoDns(), transports=("tcp",)) == [("tcp", "192.0.2.7", 5060)]


# -- NAPTR ------------------------------------------------------------------------------------


def test_naptr_order_then_preference() -> None:
    dns = zone()
    got = select("sip:pbx.example.net", dns, randint=first)
    assert got == [
        # order 40: TCP, SRV priority 10 (a) before 20 (b); a's addresses as given
        ("tcp", "192.0.2.1", 5070),
        ("tcp", "2001:db8::1", 5070),
        ("tcp", "192.0.2.2", 5070),
        # order 50: UDP
        ("udp", "192.0.2.1", 5060),
        ("udp", "2001:db8::1", 5060),
        # order 90: TLS (a sip: URI may use a SIPS+D2T record)
        ("tls", "192.0.2.1", 5061),
        ("tls", "2001:db8::1", 5061),
    ]
    assert dns.asked[0] == ("NAPTR", "pbx.example.net")


def test_naptr_preference_breaks_order_ties() -> None:
    dns = zone()
    dns.naptrs["pbx.example.net"] = [
        naptr(10, 20, "SIP+D2T", "_sip._tcp.pbx.example.net."),
        naptr(10, 10, "SIP+D2U", "_sip._udp.pbx.example.net."),
    ]
    got = select("sip:pbx.example.net", dns, randint=first)
    assert [t for t, _, _ in got] == ["udp", "udp", "tcp", "tcp", "tcp"]


def test_naptr_filters_transports_and_services() -> None:
    dns = zone()
    dns.naptrs["pbx.example.net"] += [
        naptr(1, 1, "SIP+D2S", "_sip._sctp.pbx.example.net."),  # SCTP: not ours
        naptr(1, 1, "E2U+sip", "x.example.net."),  # ENUM, another application
        naptr(1, 1, "SIP+D2T", "a.example.net.", flags="a"),  # not "go to SRV"
        naptr(1, 1, "SIP+D2T", "."),  # no replacement
    ]
    got = select("sip:pbx.example.net", dns, transports=("udp",), randint=first)
    assert got == [("udp", "192.0.2.1", 5060), ("udp", "2001:db8::1", 5060)]


def test_sips_uses_only_sips_naptr_and_tls() -> None:
    got = select("sips:pbx.example.net", zone(), randint=first)
    assert got == [("tls", "192.0.2.1", 5061), ("tls", "2001:db8::1", 5061)]


def test_naptr_service_case_insensitive() -> None:
    dns = zone()
    dns.naptrs["pbx.example.net"] = [
        naptr(1, 1, "sip+d2u", "_SIP._UDP.PBX.example.net", flags="S"),
    ]
    dns.srvs["_sip._udp.pbx.example.net"] = [Srv(1, 0, 5062, "A.example.net")]
    assert select("sip:PBX.example.net", dns) == [
        ("udp", "192.0.2.1", 5062),
        ("udp", "2001:db8::1", 5062),
    ]


def test_naptr_without_usable_records_falls_back_to_srv() -> None:
    dns = zone()
    dns.naptrs["pbx.example.net"] = [naptr(1, 1, "SIP+D2S", "_sip._sctp.pbx.example.net.")]
    got = select("sip:pbx.example.net", dns, transports=("udp",), randint=first)
    assert got == [("udp", "192.0.2.1", 5060), ("udp", "2001:db8::1", 5060)]
    assert ("SRV", "_sip._udp.pbx.example.net") in dns.asked


def test_naptr_to_missing_srv_skips_that_record() -> None:
    dns = zone()
    del dns.srvs["_sip._tcp.pbx.example.net"]
    got = select("sip:pbx.example.net", dns, transports=("udp", "tcp"), randint=first)
    assert got == [("udp", "192.0.2.1", 5060), ("udp", "2001:db8::1", 5060)]


# -- no NAPTR: SRV for each transport, then A/AAAA -----------------------------------------


def test_no_naptr_srv_for_each_transport_in_our_order() -> None:
    dns = zone()
    dns.naptrs.clear()
    got = select("sip:pbx.example.net", dns, transports=("udp", "tcp", "tls"), randint=first)
    assert [t for t, _, _ in got] == ["udp", "udp", "tcp", "tcp", "tcp", "tls", "tls"]
    asked = [q for q in dns.asked if q[0] == "SRV"]
    assert asked == [
        ("SRV", "_sip._udp.pbx.example.net"),
        ("SRV", "_sip._tcp.pbx.example.net"),
        ("SRV", "_sips._tcp.pbx.example.net"),
    ]
    got = select("sip:pbx.example.net", dns, transports=("tcp", "udp"), randint=first)
    assert [t for t, _, _ in got] == ["tcp", "tcp", "tcp", "udp", "udp"]


def test_no_naptr_only_some_transports_have_srv() -> None:
    dns = zone()
    dns.naptrs.clear()
    del dns.srvs["_sip._udp.pbx.example.net"]
    got = select("sip:pbx.example.net", dns, transports=("udp", "tcp"), randint=first)
    assert got == [
        ("tcp", "192.0.2.1", 5070),
        ("tcp", "2001:db8::1", 5070),
        ("tcp", "192.0.2.2", 5070),
    ]


def test_no_naptr_no_srv_addresses_at_default_port() -> None:
    dns = FakeDns(addrs={"pbx.example.net": ["2001:db8::5", "192.0.2.5"]})
    assert select("sip:pbx.example.net", dns) == [
        ("udp", "2001:db8::5", 5060),
        ("udp", "192.0.2.5", 5060),
    ]
    assert select("sips:pbx.example.net", dns) == [
        ("tls", "2001:db8::5", 5061),
        ("tls", "192.0.2.5", 5061),
    ]
    assert ("SRV", "_sips._tcp.pbx.example.net") in dns.asked


def test_unknown_name_gives_nothing() -> None:
    assert select("sip:nowhere.example.net", FakeDns()) == []


def test_sips_asks_only_sips_srv() -> None:
    dns = zone()
    dns.naptrs.clear()
    got = select("sips:pbx.example.net", dns, randint=first)
    assert got == [("tls", "192.0.2.1", 5061), ("tls", "2001:db8::1", 5061)]
    assert [q for q in dns.asked if q[0] == "SRV"] == [("SRV", "_sips._tcp.pbx.example.net")]


# -- an explicit port or transport -------------------------------------------------------


def test_explicit_port_skips_naptr_and_srv() -> None:
    dns = zone()
    dns.addrs["pbx.example.net"] = ["192.0.2.8"]
    assert select("sip:pbx.example.net:5080", dns) == [("udp", "192.0.2.8", 5080)]
    assert select("sips:pbx.example.net:5081", dns) == [("tls", "192.0.2.8", 5081)]
    assert select("sip:pbx.example.net:5082;transport=tcp", dns) == [("tcp", "192.0.2.8", 5082)]
    assert {kind for kind, _ in dns.asked} == {"ADDR"}


def test_transport_param_skips_naptr_and_uses_its_srv() -> None:
    dns = zone()
    got = select("sip:pbx.example.net;transport=tcp", dns, randint=first)
    assert got == [
        ("tcp", "192.0.2.1", 5070),
        ("tcp", "2001:db8::1", 5070),
        ("tcp", "192.0.2.2", 5070),
    ]
    assert ("NAPTR", "pbx.example.net") not in dns.asked
    got = select("sip:pbx.example.net;transport=tls", dns, randint=first)
    assert got == [("tls", "192.0.2.1", 5061), ("tls", "2001:db8::1", 5061)]
    assert ("SRV", "_sips._tcp.pbx.example.net") in dns.asked


def test_transport_param_without_srv_uses_default_port() -> None:
    dns = FakeDns(addrs={"pbx.example.net": ["192.0.2.5"]})
    assert select("sip:pbx.example.net;transport=tcp", dns) == [("tcp", "192.0.2.5", 5060)]
    assert select("sip:pbx.example.net;transport=tls", dns) == [("tls", "192.0.2.5", 5061)]
    assert select("sips:pbx.example.net;transport=tcp", dns) == [("tls", "192.0.2.5", 5061)]


def test_maddr_replaces_the_host() -> None:
    dns = FakeDns(addrs={"proxy.example.net": ["192.0.2.6"]})
    assert select("sip:pbx.example.net:5090;maddr=proxy.example.net", dns) == [
        ("udp", "192.0.2.6", 5090)
    ]


# -- SRV ordering (RFC 2782) ------------------------------------------------------------


def test_srv_lowest_priority_first() -> None:
    recs = [Srv(30, 5, 1, "c."), Srv(10, 5, 1, "a."), Srv(20, 5, 1, "b.")]
    assert [r.target for r in order_srv(recs, first)] == ["a.", "b.", "c."]


def test_srv_weight_draw_rfc2782() -> None:
    recs = [Srv(10, 60, 1, "big."), Srv(10, 0, 1, "zero."), Srv(10, 40, 1, "small.")]
    # draw 0: the weight-0 record, placed first, is chosen first
    assert order_srv(recs, first)[0].target == "zero."
    # the highest draw picks the last record of the running sum
    assert order_srv(recs, last)[0].target == "small."
    # scripted draws: 0 -> "zero."; of big(60), small(40): 61 -> small; then big
    draws = iter([0, 61, 0])
    got = order_srv(recs, lambda a, b: next(draws))
    assert [r.target for r in got] == ["zero.", "small.", "big."]


def test_srv_weighted_random_seeded() -> None:
    recs = [Srv(10, 75, 1, "heavy."), Srv(10, 25, 1, "light."), Srv(20, 100, 1, "backup.")]
    rng = random.Random(3263)
    firsts = Counter(order_srv(recs, rng.randint)[0].target for _ in range(4000))
    assert set(firsts) == {"heavy.", "light."}  # never the priority-20 record
    assert 0.70 < firsts["heavy."] / 4000 < 0.80
    # the same seed gives the same order
    a = [r.target for r in order_srv(recs, random.Random(7).randint)]
    b = [r.target for r in order_srv(recs, random.Random(7).randint)]
    assert a == b
    assert a[-1] == "backup."


def test_srv_dot_target_means_no_service() -> None:
    assert order_srv([Srv(0, 0, 0, ".")]) == []
    dns = FakeDns(
        srvs={"_sip._udp.pbx.example.net": [Srv(0, 0, 0, ".")]},
        addrs={"pbx.example.net": ["192.0.2.5"]},
    )
    # SRV says "not here": no fall-back to A/AAAA
    assert select("sip:pbx.example.net", dns, transports=("udp",)) == []


def test_srv_target_without_address_is_skipped_and_duplicates_dropped() -> None:
    dns = FakeDns(
        srvs={
            "_sip._udp.pbx.example.net": [
                Srv(10, 0, 5060, "gone.example.net."),
                Srv(20, 0, 5060, "a.example.net."),
                Srv(30, 0, 5060, "a.example.net."),
            ]
        },
        addrs={"a.example.net": ["192.0.2.1", "not-an-ip"]},
    )
    assert select("sip:pbx.example.net", dns, transports=("udp",)) == [("udp", "192.0.2.1", 5060)]


def test_srv_name() -> None:
    assert srv_name("udp", "Example.NET.") == "_sip._udp.example.net"
    assert srv_name("tcp", "example.net") == "_sip._tcp.example.net"
    assert srv_name("tls", "example.net") == "_sips._tcp.example.net"


def test_unknown_transport_in_our_list_is_our_error() -> None:
    with pytest.raises(ValueError):
        select("sip:192.0.2.1", NoDns(), transports=("sctp",))

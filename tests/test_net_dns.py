"""The target resolver against a real (tiny) authoritative DNS server on loopback."""

from __future__ import annotations

import asyncio
import gc
import logging
from collections.abc import AsyncIterator
from typing import Any, cast

import dns.flags
import dns.message
import dns.rcode
import dns.rdataclass
import dns.rdatatype
import dns.rrset
import pytest

from sipguard.config.loader import load_config_text
from sipguard.config.model import Config, Dns
from sipguard.net.dns import DnsError, TargetResolver, config_transports

pytestmark = pytest.mark.timeout(30)

TTL = 300


class Zone(asyncio.DatagramProtocol):
    """Answers queries from ``records``: {(name, type): (ttl, [rdata text])}.

    ``mode``: "answer", "silent" (drops every query), "servfail".
    """

    def __init__(self) -> None:
        self.records: dict[tuple[str, str], tuple[int, list[str]]] = {}
        self.mode = "answer"
        self.queries: list[tuple[str, str]] = []
        self.transport: asyncio.DatagramTransport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.DatagramTransport, transport)

    def add(self, name: str, kind: str, *rdatas: str, ttl: int = TTL) -> None:
        self.records[name.lower(), kind] = (ttl, list(rdatas))

    def datagram_received(self, data: bytes, addr: Any) -> None:
        query = dns.message.from_wire(data)
        question = query.question[0]
        name = question.name.to_text().lower()
        kind = dns.rdatatype.to_text(question.rdtype)
        self.queries.append((name, kind))
        if self.mode == "silent":
            return
        response = dns.message.make_response(query)
        response.flags |= dns.flags.AA
        if self.mode == "servfail":
            response.set_rcode(dns.rcode.SERVFAIL)
        elif (name, kind) in self.records:
            ttl, rdatas = self.records[name, kind]
            rrset = dns.rrset.from_text_list(
                question.name, ttl, dns.rdataclass.IN, question.rdtype, rdatas
            )
            response.answer.append(rrset)
        elif not any(n == name for n, _ in self.records):
            response.set_rcode(dns.rcode.NXDOMAIN)
        # else: the name exists without this type: NOERROR, no data
        assert self.transport is not None
        self.transport.sendto(response.to_wire(), addr)


@pytest.fixture
async def zone() -> AsyncIterator[tuple[Zone, int]]:
    loop = asyncio.get_running_loop()
    transport, proto = await loop.create_datagram_endpoint(Zone, local_addr=("127.0.0.1", 0))
    port = transport.get_extra_info("sockname")[1]
    proto.add(
        "pbx.test.",
        "NAPTR",
        '10 50 "s" "SIP+D2T" "" _sip._tcp.pbx.test.',
        '20 50 "s" "SIP+D2U" "" _sip._udp.pbx.test.',
    )
    proto.add("_sip._tcp.pbx.test.", "SRV", "10 0 5070 a.pbx.test.", "20 0 5071 b.pbx.test.")
    proto.add("_sip._udp.pbx.test.", "SRV", "10 0 5060 a.pbx.test.")
    proto.add("_sips._tcp.pbx.test.", "SRV", "10 0 5061 b.pbx.test.")
    proto.add("a.pbx.test.", "A", "127.0.0.10")
    proto.add("a.pbx.test.", "AAAA", "::1")
    proto.add("b.pbx.test.", "A", "127.0.0.11")
    proto.add("plain.test.", "A", "127.0.0.12")
    try:
        yield proto, port
    finally:
        transport.close()


def resolver(port: int, **kw: Any) -> TargetResolver:
    kw.setdefault("timeout", 0.3)
    return TargetResolver(servers=[f"127.0.0.1:{port}"], **kw)


CONFIG = """
listen:
  - {transport: udp, address: 127.0.0.1, port: 5060}
  - {transport: tcp, address: 127.0.0.1, port: 5060}
  - {transport: tls, address: 127.0.0.1, port: 5061, cert: c.pem, key: k.pem}
trunks:
  pbx:
    sources: [127.0.0.2/32]
    targets:
      - "sip:pbx.test"
      - "sip:127.0.0.2:5080;transport=tcp"
      - "sips:pbx.test"
      - "sip:plain.test:5090"
      - "sip:missing.test"
  other:
    sources: [127.0.0.3/32]
    targets: ["sip:pbx.test"]
"""


def config() -> Config:
    return load_config_text(CONFIG, "test.yaml")


EXPECTED_PBX = [
    ("tcp", "::1", 5070),  # NAPTR order 10: TCP; SRV priority 10 (a: AAAA, then A)
    ("tcp", "127.0.0.10", 5070),
    ("tcp", "127.0.0.11", 5071),  # SRV priority 20 (b)
    ("udp", "::1", 5060),  # NAPTR order 20: UDP
    ("udp", "127.0.0.10", 5060),
]


async def test_resolve_naptr_srv_addresses(zone: tuple[Zone, int]) -> None:
    proto, port = zone
    r = resolver(port)
    got = await r.resolve("sip:pbx.test")
    assert [t.as_tuple() for t in got] == EXPECTED_PBX
    kinds = {k for _, k in proto.queries}
    assert kinds == {"NAPTR", "SRV", "A", "AAAA"}
    # cached until due: no new query
    n = len(proto.queries)
    assert await r.resolve("sip:pbx.test") == got
    assert len(proto.queries) == n


async def test_refresh_all_maps_every_config_target(zone: tuple[Zone, int]) -> None:
    proto, port = zone
    r = resolver(port)
    cfg = config()
    assert config_transports(cfg) == ("udp", "tcp", "tls")
    # before any lookup: IP literals are there already, names are empty
    assert r.snapshot(cfg) == {
        "sip:pbx.test": [],
        "sip:127.0.0.2:5080;transport=tcp": [("tcp", "127.0.0.2", 5080)],
        "sips:pbx.test": [],
        "sip:plain.test:5090": [],
        "sip:missing.test": [],
    }
    got = await r.refresh_all(cfg)
    assert got == {
        "sip:pbx.test": EXPECTED_PBX,
        "sip:127.0.0.2:5080;transport=tcp": [("tcp", "127.0.0.2", 5080)],
        # no SIPS+D2T NAPTR: the _sips._tcp SRV record
        "sips:pbx.test": [("tls", "127.0.0.11", 5061)],
        # an explicit port: A/AAAA only
        "sip:plain.test:5090": [("udp", "127.0.0.12", 5090)],
        "sip:missing.test": [],  # NXDOMAIN, never resolved
    }
    assert ("plain.test.", "NAPTR") not in proto.queries
    assert ("plain.test.", "SRV") not in proto.queries
    assert r.snapshot(cfg) == got


async def test_transports_follow_the_listen_entries(zone: tuple[Zone, int]) -> None:
    _, port = zone
    r = resolver(port)
    udp_only = load_config_text(
        CONFIG.replace("  - {transport: tcp, address: 127.0.0.1, port: 5060}\n", "").replace(
            "  - {transport: tls, address: 127.0.0.1, port: 5061, cert: c.pem, key: k.pem}\n", ""
        ),
        "t.yaml",
    )
    got = await r.refresh_all(udp_only)
    assert got["sip:pbx.test"] == [("udp", "::1", 5060), ("udp", "127.0.0.10", 5060)]
    assert got["sips:pbx.test"] == []
    assert got["sip:127.0.0.2:5080;transport=tcp"] == []


async def test_ttl_is_clamped(zone: tuple[Zone, int]) -> None:
    proto, port = zone
    now = [1000.0]
    r = resolver(port, refresh_min=60.0, refresh_max=600.0, clock=lambda: now[0])
    proto.add("plain.test.", "A", "127.0.0.12", ttl=5)  # below refresh_min
    await r.resolve("sip:plain.test:5090")
    n = len(proto.queries)
    now[0] += 59.0
    await r.resolve("sip:plain.test:5090")
    assert len(proto.queries) == n  # not due before refresh_min
    now[0] += 2.0
    await r.resolve("sip:plain.test:5090")
    assert len(proto.queries) > n
    proto.add("plain.test.", "A", "127.0.0.12", ttl=86400)  # above refresh_max
    now[0] += 61.0
    await r.resolve("sip:plain.test:5090")
    n = len(proto.queries)
    now[0] += 599.0
    await r.resolve("sip:plain.test:5090")
    assert len(proto.queries) == n
    now[0] += 2.0
    await r.resolve("sip:plain.test:5090")
    assert len(proto.queries) > n


async def test_run_refreshes_when_the_ttl_runs_out(zone: tuple[Zone, int]) -> None:
    proto, port = zone
    proto.add("plain.test.", "A", "127.0.0.12", ttl=1)
    r = resolver(port, refresh_min=0.2, refresh_max=10.0)
    cfg = load_config_text(
        "trunks:\n  pbx:\n    sources: [127.0.0.2/32]\n    targets: ['sip:plain.test:5090']\n"
    )
    updates: asyncio.Queue[dict[str, list[tuple[str, str, int]]]] = asyncio.Queue()
    task = asyncio.create_task(r.run(cfg, updates.put_nowait))
    try:
        first = await asyncio.wait_for(updates.get(), 5)
        assert first == {"sip:plain.test:5090": [("udp", "127.0.0.12", 5090)]}
        proto.add("plain.test.", "A", "127.0.0.13", ttl=1)
        second = await asyncio.wait_for(updates.get(), 5)
        assert second == {"sip:plain.test:5090": [("udp", "127.0.0.13", 5090)]}
    finally:
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task


@pytest.mark.parametrize("failure", ["silent", "servfail", "nxdomain"])
async def test_failure_keeps_the_last_good_answer(
    zone: tuple[Zone, int], failure: str, caplog: pytest.LogCaptureFixture
) -> None:
    proto, port = zone
    now = [0.0]
    r = resolver(port, refresh_min=30.0, clock=lambda: now[0])
    good = await r.resolve("sip:pbx.test")
    assert [t.as_tuple() for t in good] == EXPECTED_PBX
    saved = dict(proto.records)
    if failure == "nxdomain":
        proto.records.clear()
    else:
        proto.mode = failure
    caplog.set_level(logging.INFO, logger="sipguard.dns")
    now[0] += TTL + 1
    assert await r.resolve("sip:pbx.test") == good
    warnings = [rec for rec in caplog.records if rec.levelno == logging.WARNING]
    assert len(warnings) == 1
    assert "keeping the last answer" in warnings[0].getMessage()
    # failing again for the same reason is not logged again; it is retried after refresh_min
    n = len(proto.queries)
    now[0] += 10
    assert await r.resolve("sip:pbx.test") == good
    assert len(proto.queries) == n
    now[0] += 21
    assert await r.resolve("sip:pbx.test") == good
    assert len(proto.queries) > n
    assert len([rec for rec in caplog.records if rec.levelno == logging.WARNING]) == 1
    # the server is back: a new answer, and one line saying so
    proto.mode = "answer"
    proto.records = saved
    proto.add("b.pbx.test.", "A", "127.0.0.20")
    now[0] += 31
    got = await r.resolve("sip:pbx.test")
    assert ("tcp", "127.0.0.20", 5071) in [t.as_tuple() for t in got]
    infos = [rec.getMessage() for rec in caplog.records if rec.levelno == logging.INFO]
    assert any("resolves again" in m for m in infos)


async def test_failure_before_any_answer(zone: tuple[Zone, int]) -> None:
    proto, port = zone
    proto.mode = "silent"
    r = resolver(port, timeout=0.2)
    with pytest.raises(DnsError, match="timed out"):
        await r.resolve("sip:pbx.test")
    cfg = config()
    got = await r.refresh_all(cfg)
    assert got["sip:pbx.test"] == []
    assert got["sip:127.0.0.2:5080;transport=tcp"] == [("tcp", "127.0.0.2", 5080)]


async def test_recovers_after_failure(zone: tuple[Zone, int]) -> None:
    proto, port = zone
    now = [0.0]
    r = resolver(port, refresh_min=30.0, clock=lambda: now[0])
    proto.mode = "servfail"
    with pytest.raises(DnsError, match="SERVFAIL"):
        await r.resolve("sip:plain.test:5090")
    proto.mode = "answer"
    now[0] += 31
    got = await r.resolve("sip:plain.test:5090")
    assert [t.as_tuple() for t in got] == [("udp", "127.0.0.12", 5090)]


async def test_ip_literal_needs_no_dns() -> None:
    # no server at all: an IP literal still resolves
    r = TargetResolver(servers=["127.0.0.1:9"], timeout=0.1)
    got = await r.resolve("sip:[::1]:5080;transport=tcp")
    assert [t.as_tuple() for t in got] == [("tcp", "::1", 5080)]


async def test_second_server_is_tried(zone: tuple[Zone, int]) -> None:
    _, port = zone
    loop = asyncio.get_running_loop()
    dead, _ = await loop.create_datagram_endpoint(
        asyncio.DatagramProtocol, local_addr=("127.0.0.1", 0)
    )
    try:
        dead_port = dead.get_extra_info("sockname")[1]
        r = TargetResolver(servers=[f"127.0.0.1:{dead_port}", f"127.0.0.1:{port}"], timeout=0.3)
        got = await r.resolve("sip:plain.test:5090")
        assert [t.as_tuple() for t in got] == [("udp", "127.0.0.12", 5090)]
    finally:
        dead.close()


async def test_reconfigure_keeps_answers(zone: tuple[Zone, int]) -> None:
    _, port = zone
    r = TargetResolver.from_config(Dns(servers=(f"127.0.0.1:{port}",)), timeout=0.3)
    cfg = config()
    await r.refresh_all(cfg)
    r.reconfigure(Dns(servers=("127.0.0.1:9",), refresh_min=1.0, refresh_max=2.0))
    assert r.snapshot(cfg)["sip:pbx.test"] == EXPECTED_PBX
    assert (r.refresh_min, r.refresh_max) == (1.0, 2.0)
    # the new server does not answer: the last good answers stay
    got = await r.refresh_all(cfg)
    assert got["sip:pbx.test"] == EXPECTED_PBX


def test_bad_bounds_are_our_error() -> None:
    with pytest.raises(ValueError):
        TargetResolver(refresh_min=10.0, refresh_max=5.0)


@pytest.mark.parametrize("mode", ["silent", "servfail"])
async def test_a_failed_lookup_leaves_no_reference_cycle(zone: tuple[Zone, int], mode: str) -> None:
    """sipguard runs with the cyclic collector off: a dead DNS server must not leak."""
    proto, port = zone
    proto.mode = mode
    r = resolver(port, timeout=0.1)
    with pytest.raises(DnsError):
        await r.resolve("sip:plain.test:5090")  # first use: dnspython's own caches
    gc.collect()
    gc.disable()
    try:
        for _ in range(3):
            with pytest.raises(DnsError):
                await r.resolve("sip:plain.test:5090")
        found = gc.collect()
    finally:
        gc.enable()
    assert found == 0

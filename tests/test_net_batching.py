"""When the driver batches its sends per loop iteration (under load) or sends at once."""

from __future__ import annotations

import pytest

from sipguard.net import server


def test_sends_are_batched_only_above_the_rate() -> None:
    assert not server.batch_sends(100, 0.05, above=5000)  # 2,000 messages/s
    assert not server.batch_sends(250, 0.05, above=5000)  # exactly the rate
    assert server.batch_sends(251, 0.05, above=5000)
    assert server.batch_sends(1000, 0.1, above=5000)  # a late probe: the real interval
    assert not server.batch_sends(1000, 0.25, above=5000)
    assert server.batch_sends(0, 0.05, above=0)  # 0: always


@pytest.mark.parametrize(
    ("text", "expected"),
    [(None, 5000.0), ("0", 0.0), ("12000", 12000.0), ("abc", 5000.0), ("nan", 5000.0),
     ("inf", 5000.0), ("-1", 5000.0)],
)  # fmt: skip
def test_the_rate_from_the_environment_is_checked(
    monkeypatch: pytest.MonkeyPatch, text: str | None, expected: float
) -> None:
    if text is None:
        monkeypatch.delenv("SIPGUARD_BATCH_SENDS_ABOVE", raising=False)
    else:
        monkeypatch.setenv("SIPGUARD_BATCH_SENDS_ABOVE", text)
    assert server._batch_sends_above() == expected


def _response(via: str) -> bytes:
    return (
        f"SIP/2.0 486 Busy Here\r\nVia: {via}\r\nFrom: <sip:a@h>;tag=1\r\nTo: <sip:b@h>;tag=2\r\n"
        "Call-ID: c@h\r\nCSeq: 1 INVITE\r\nContent-Length: 0\r\n\r\n"
    ).encode()


@pytest.mark.parametrize(
    "transport, via, host, port",
    [
        ("tcp", "SIP/2.0/TCP 127.0.0.3:5070;branch=z9hG4bK1;rport", "127.0.0.3", 5070),
        ("tcp", "SIP/2.0/TCP caller.example;branch=z9hG4bK1", "127.0.0.3", 5060),
        ("tls", "SIP/2.0/TLS caller.example;branch=z9hG4bK1", "127.0.0.3", 5061),
        # received and rport name other addresses: only sent-by's port counts (RFC 3581
        # §4 is for unreliable transports), and the host is where the request came from
        (
            "tcp",
            "SIP/2.0/TCP evil.example:5099;branch=z9hG4bK1;received=192.0.2.9;rport=7",
            "127.0.0.3",
            5099,
        ),
        ("tcp", "SIP/2.0/TCP [2001:db8::5]:5072;branch=z9hG4bK1", "2001:db8::5", 5072),
    ],
)
def test_a_response_without_its_connection_goes_to_the_source_and_the_via_port(
    transport: str, via: str, host: str, port: int
) -> None:
    """RFC 3261 §18.2.2: the request's source address (``received``) and the top Via's
    sent-by port, or the transport's default port."""
    source = "2001:db8::5" if "2001" in via else "127.0.0.3"
    flow = server.Flow(transport, 1, source, 40123, conn=7)
    got = server.response_flow(flow, _response(via))
    assert (got.transport, got.local, got.host, got.port, got.conn) == (
        transport,
        1,
        host,
        port,
        0,
    )


def _request(ruri: str, route: str = "") -> bytes:
    return (
        f"BYE {ruri} SIP/2.0\r\nVia: SIP/2.0/TCP 127.0.0.1:5060;branch=z9hG4bK1\r\n"
        f"{route}From: <sip:a@h>;tag=1\r\nTo: <sip:b@h>;tag=2\r\nCall-ID: c@h\r\n"
        "CSeq: 2 BYE\r\nMax-Forwards: 70\r\nContent-Length: 0\r\n\r\n"
    ).encode()


@pytest.mark.parametrize(
    "transport, data, port",
    [
        ("tcp", _request("sip:caller@127.0.0.3:5070;transport=tcp"), 5070),
        ("tcp", _request("sip:caller@pbx.example;transport=tcp"), 5060),
        ("tls", _request("sips:caller@pbx.example"), 5061),
        # a route set: the first Route is the next hop (the caller's proxy)
        (
            "tcp",
            _request("sip:caller@10.0.0.7:5099", "Route: <sip:127.0.0.3:5080;lr>\r\n"),
            5080,
        ),
        # sipguard sends the whole route set as Route, a strict router's (no lr) too
        ("tcp", _request("sip:caller@10.0.0.7:5099", "Route: <sip:127.0.0.3:5081>\r\n"), 5081),
        ("tcp", _request("sip:caller@[2001:db8::5]:5072;transport=tcp"), 5072),
    ],
)
def test_a_request_without_its_connection_goes_to_the_peer_and_its_next_hop_port(
    transport: str, data: bytes, port: int
) -> None:
    """RFC 3261 §12.2.1.1, §18.1.1: the peer listens at its next hop's port; the address
    stays the one the dialog was set up with (symmetric routing)."""
    flow = server.Flow(transport, 1, "127.0.0.3", 40123, conn=7)
    got = server.request_flow(flow, data)
    assert (got.transport, got.local, got.host, got.port, got.conn) == (
        transport,
        1,
        "127.0.0.3",
        port,
        0,
    )

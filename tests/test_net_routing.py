"""Where a message goes over TCP or TLS once the connection it named is gone (RFC 3261
§18): ``sipguard.net.routing``, without sockets."""

from __future__ import annotations

import pytest

from sipguard.net.routing import fails_with, request_flow, reroute, response_flow
from sipguard.sip.message import Request, parse_message
from sipguard.sip.transaction import Flow


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
    flow = Flow(transport, 1, source, 40123, conn=7)
    got = response_flow(flow, _response(via))
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
    flow = Flow(transport, 1, "127.0.0.3", 40123, conn=7)
    got = request_flow(flow, data)
    assert (got.transport, got.local, got.host, got.port, got.conn) == (
        transport,
        1,
        "127.0.0.3",
        port,
        0,
    )


def test_reroute_sends_a_response_by_its_via_and_a_request_by_its_next_hop() -> None:
    flow = Flow("tcp", 0, "127.0.0.3", 40123, conn=7)
    via = "SIP/2.0/TCP 127.0.0.3:5070;branch=z9hG4bK1"
    assert reroute(flow, _response(via)) == Flow("tcp", 0, "127.0.0.3", 5070)
    bye = _request("sip:caller@127.0.0.3:5071;transport=tcp")
    assert reroute(flow, bye) == Flow("tcp", 0, "127.0.0.3", 5071)


@pytest.mark.parametrize(
    "data",
    [
        b"SIP/2.0 200 OK\r\nContent-Length: 0\r\n\r\n",  # no Via
        b"BYE nonsense SIP/2.0\r\nContent-Length: 0\r\n\r\n",  # no Request-URI to read
        b"\x00garbage",
    ],
)
def test_bytes_that_cannot_be_read_go_back_where_they_came_from(data: bytes) -> None:
    """Our own messages are never malformed, but a reroute is never worse than before:
    the same host and port, on a new connection."""
    flow = Flow("tls", 2, "127.0.0.3", 40123, conn=7)
    assert reroute(flow, data) == Flow("tls", 2, "127.0.0.3", 40123)


def _bye(ruri: str) -> Request:
    req = parse_message(_request(ruri))
    assert isinstance(req, Request)
    return req


def test_a_failed_connection_fails_the_transactions_sent_to_it() -> None:
    req = _bye("sip:caller@127.0.0.3:5070;transport=tcp")
    on_it = Flow("tcp", 0, "127.0.0.3", 5070, conn=9)
    assert fails_with(on_it, req, "tcp", "127.0.0.3", 5070, conn_open=True)
    # its own connection closed, it went to its next hop's port: that one failed
    rerouted = Flow("tcp", 0, "127.0.0.3", 40123, conn=9)
    assert fails_with(rerouted, req, "tcp", "127.0.0.3", 5070, conn_open=False)
    # while its own connection is open, it did not go there
    assert not fails_with(rerouted, req, "tcp", "127.0.0.3", 5070, conn_open=True)
    # another address, port or transport
    assert not fails_with(on_it, req, "tcp", "127.0.0.4", 5070, conn_open=True)
    assert not fails_with(on_it, req, "tcp", "127.0.0.3", 5071, conn_open=True)
    assert not fails_with(on_it, req, "tls", "127.0.0.3", 5070, conn_open=True)

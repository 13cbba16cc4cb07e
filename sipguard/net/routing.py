"""Where a message goes over TCP or TLS once the connection it named is gone (RFC 3261 §18).

Sans-IO: these read the bytes sipguard itself built and a :class:`Flow`, and return a
new flow; the driver looks the flow up among its connections, or opens one. Nothing
here touches a socket or the clock.
"""

from __future__ import annotations

import contextlib

from sipguard.sip.errors import SipError
from sipguard.sip.message import Limits, Request, Response, parse_message
from sipguard.sip.transaction import Flow


def default_port(transport: str) -> int:
    """The port a SIP URI or Via without one means (RFC 3261 §19.1.2, §18.2.2)."""
    return 5061 if transport == "tls" else 5060


def _own_message(data: bytes) -> Request | Response:
    """Parse a message sipguard itself built, within no limit tighter than its own size
    (a relayed body may be larger than a peer's message may be; a route set long)."""
    limits = Limits(max_message=len(data), max_headers=len(data), max_line=len(data))
    return parse_message(data, datagram=False, limits=limits)


def _same_peer(flow: Flow) -> Flow:
    """``flow``'s address without its connection: a new one to the same host and port."""
    return Flow(flow.transport, flow.local, flow.host, flow.port)


def response_flow(flow: Flow, data: bytes) -> Flow:
    """Where a response goes over TCP or TLS once its request's connection is gone (RFC
    3261 §18.2.2): the address the request came from (its ``received``) and the port of
    the top Via's sent-by, or the transport's default port when the Via names none.

    A response whose Via cannot be read (our own: never, but never worse than before)
    goes to the address and port the request came from."""
    try:
        port = _own_message(data).top_via.port or default_port(flow.transport)
    except SipError:
        return _same_peer(flow)
    return Flow(flow.transport, flow.local, flow.host, port)


def next_hop_port(req: Request, transport: str) -> int:
    """The port where the peer of an in-dialog request listens: its first ``Route``'s, or
    else its Request-URI's (the peer's Contact), or the transport's default (RFC 3261
    §12.2.1.1; sipguard sends the whole route set as ``Route``, strict router or not)."""
    routes = req.name_addrs("route")
    uri = routes[0].uri if routes else req.request_uri
    return uri.host_port(default_port(transport))[1]


def request_flow(flow: Flow, data: bytes) -> Flow:
    """Where an in-dialog request goes over TCP or TLS once the dialog's connection is
    gone: the peer's address as before (symmetric, as the dialog was set up) and the port
    where it listens (:func:`next_hop_port`, RFC 3261 §18.1.1).

    A request whose next hop cannot be read goes to the address and port as before."""
    try:
        msg = _own_message(data)
        if not isinstance(msg, Request):
            return _same_peer(flow)
        port = next_hop_port(msg, flow.transport)
    except SipError:
        return _same_peer(flow)
    return Flow(flow.transport, flow.local, flow.host, port)


def reroute(flow: Flow, data: bytes) -> Flow:
    """Where ``data`` goes now that the connection ``flow`` named has closed: a response
    to the port of the top Via's sent-by (§18.2.2), a request to its next hop's port,
    where the peer listens; never to the closed connection's ephemeral port."""
    if data.startswith(b"SIP/2.0 "):
        return response_flow(flow, data)
    return request_flow(flow, data)


def fails_with(
    flow: Flow, request: Request, transport: str, host: str, port: int, conn_open: bool
) -> bool:
    """Whether a client transaction sent on ``flow`` fails with a connection to
    ``transport:host:port`` that could not be made: its flow names that address, or its
    own connection (``conn_open`` False) had closed and it was rerouted there
    (:func:`request_flow`)."""
    if flow.transport != transport or flow.host != host:
        return False
    sent_to = flow.port
    if flow.conn and not conn_open:
        with contextlib.suppress(SipError):
            sent_to = next_hop_port(request, flow.transport)
    return sent_to == port

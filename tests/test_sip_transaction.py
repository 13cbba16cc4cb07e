"""Transactions (RFC 3261 §17 as updated by RFC 6026) with a fake clock and no sockets.

Every timer is fired the way the driver fires it: ``now = layer.next_deadline()`` then
``layer.handle_timer(now)``; what the layer sends is read from its outbox with the time
it was sent. Loss is a datagram that is simply not fed to the other side.

The state diagrams in ``docs/transactions.md`` are drawn from ``TRANSITIONS`` by
:func:`render_transitions`; a test checks that the document holds exactly that drawing,
and a session hook (``tests/conftest.py``) that every row of the table is taken by at
least one test here, whenever the whole module ran, in whatever order. To redraw
the document after changing the table: ``python -m tests.test_sip_transaction``.
"""

from __future__ import annotations

import itertools
from collections import Counter
from collections.abc import Callable
from pathlib import Path

import pytest

from sipguard.sip import transaction as txm
from sipguard.sip.message import REASONS, Request, Response, parse_message
from sipguard.sip.transaction import (
    MAGIC_COOKIE,
    TRANSITIONS,
    ClientTransaction,
    Flow,
    ServerTransaction,
    State,
    Timers,
    TransactionLayer,
    make_response,
    new_branch,
    new_tag,
    server_key,
)

T1, T2, T4 = 0.5, 4.0, 5.0
TIMERS = Timers(t1=T1, t2=T2, t4=T4, d=32.0)
UDP = Flow("udp", 0, "192.0.2.20", 5060)
TCP = Flow("tcp", 0, "192.0.2.20", 5060, conn=7)
DOC = Path(__file__).resolve().parent.parent / "docs" / "transactions.md"

# -- which rows of TRANSITIONS the tests take ---------------------------------------------

FIRED: set[tuple[str, State, State]] = set()
# compiled with mypyc, the machines call ``_to`` natively and the recording below sees
# nothing: the session check is then left out (``tests/test_tools_native.py`` runs this module so)
RECORDED = not (txm.__file__ or "").endswith((".so", ".pyd"))


@pytest.fixture(autouse=True)
def _record_transitions(monkeypatch: pytest.MonkeyPatch) -> None:
    original = txm.Transaction._to

    def to(self: txm.Transaction, state: State) -> None:
        FIRED.add((self.machine, self.state, state))
        original(self, state)

    monkeypatch.setattr(txm.Transaction, "_to", to)


# -- fakes ------------------------------------------------------------------------------


class FakeTU:
    """Records what the layer hands up; ``react`` lets a scenario answer at once."""

    def __init__(self) -> None:
        self.requests: list[tuple[Request, ServerTransaction | None, float]] = []
        self.strays: list[tuple[Response, Flow, float]] = []
        self.react: Callable[[Request, ServerTransaction | None, float], None] | None = None
        self.cancel_refused: set[tuple[int, str]] = set()  # (listen entry, host)

    def on_request(self, req: Request, tx: ServerTransaction | None, now: float) -> None:
        self.requests.append((req, tx, now))
        if self.react is not None:
            self.react(req, tx, now)

    def on_ack(self, req: Request, flow: Flow, now: float) -> None:
        self.requests.append((req, None, now))
        if self.react is not None:
            self.react(req, None, now)

    def cancel_allowed(self, invite: ServerTransaction, flow: Flow) -> bool:
        return (flow.local, flow.host) not in self.cancel_refused

    def on_stray_response(self, resp: Response, flow: Flow, now: float) -> None:
        self.strays.append((resp, flow, now))

    def methods(self) -> list[str]:
        return [r.method for r, _, _ in self.requests]


class ClientRec:
    """A client transaction's owner: records responses and timeouts."""

    def __init__(self) -> None:
        self.events: list[tuple[str, int, float]] = []
        self.responses: list[Response] = []
        self.on_2xx: Callable[[ClientTransaction, Response, float], None] | None = None

    def on_response(self, tx: ClientTransaction, resp: Response, now: float) -> None:
        self.events.append(("response", resp.status, now))
        self.responses.append(resp)
        if self.on_2xx is not None and 200 <= resp.status < 300:
            self.on_2xx(tx, resp, now)

    def on_timeout(self, tx: ClientTransaction, now: float) -> None:
        self.events.append(("timeout", 0, now))


class ServerRec:
    """A server transaction's owner: records CANCELs and ACK timeouts."""

    def __init__(self) -> None:
        self.cancels: list[tuple[ServerTransaction, Request, float]] = []
        self.ack_timeouts: list[tuple[ServerTransaction, float]] = []

    def on_cancel(self, tx: ServerTransaction, cancel: Request, now: float) -> None:
        self.cancels.append((tx, cancel, now))

    def on_ack_timeout(self, tx: ServerTransaction, now: float) -> None:
        self.ack_timeouts.append((tx, now))


# -- messages ---------------------------------------------------------------------------


def request_bytes(
    method: str = "INVITE",
    *,
    branch: str | None = "z9hG4bK-t1",
    cseq: int = 1,
    cseq_method: str | None = None,
    call_id: str = "call-1@192.0.2.10",
    from_tag: str = "ft1",
    to_tag: str | None = None,
    uri: str = "sip:+4930123456@192.0.2.20",
    sent_by: str = "192.0.2.10:5060",
    transport: str = "UDP",
    routes: tuple[str, ...] = (),
) -> bytes:
    via = f"Via: SIP/2.0/{transport} {sent_by}" + (f";branch={branch}" if branch else "")
    to = "To: <sip:+4930123456@192.0.2.20>" + (f";tag={to_tag}" if to_tag else "")
    lines = [
        f"{method} {uri} SIP/2.0",
        via,
        "Max-Forwards: 70",
        f"From: <sip:alice@192.0.2.10>;tag={from_tag}",
        to,
        f"Call-ID: {call_id}",
        f"CSeq: {cseq} {cseq_method or method}",
        *(f"Route: {r}" for r in routes),
        "Contact: <sip:alice@192.0.2.10:5060>",
        "Content-Length: 0",
        "",
        "",
    ]
    return "\r\n".join(lines).encode()


def parse(data: bytes) -> Request | Response:
    return parse_message(data)


def req(method: str = "INVITE", **kw: object) -> Request:
    msg = parse(request_bytes(method, **kw))  # type: ignore[arg-type]
    assert isinstance(msg, Request)
    return msg


def response_bytes(request: Request, status: int, *, to_tag: str | None = "uas-1") -> bytes:
    """A response as the far end writes it, independent of make_response."""
    to = request.get("to") or ""
    if to_tag is not None and ";tag=" not in to and status != 100:
        to += f";tag={to_tag}"
    lines = [
        f"SIP/2.0 {status} {REASONS.get(status, 'Whatever')}",
        *(f"Via: {v}" for v in request.get_lines("via")),
        f"From: {request.get('from')}",
        f"To: {to}",
        f"Call-ID: {request.call_id}",
        f"CSeq: {request.get('cseq')}",
        "Content-Length: 0",
        "",
        "",
    ]
    return "\r\n".join(lines).encode()


def resp(request: Request, status: int, *, to_tag: str | None = "uas-1") -> Response:
    msg = parse(response_bytes(request, status, to_tag=to_tag))
    assert isinstance(msg, Response)
    return msg


def ack_for_2xx(invite: Request, ok: Response) -> Request:
    """The UAC core's ACK for a 2xx: a new branch, CSeq number of the INVITE (§13.2.2.4)."""
    to_tag = ok.to.tag
    assert to_tag is not None
    return req(
        "ACK",
        branch=new_branch(),
        cseq=invite.cseq.number,
        call_id=invite.call_id,
        from_tag=invite.from_.tag or "",
        to_tag=to_tag,
    )


# -- driving the clock -------------------------------------------------------------------


def layer() -> tuple[TransactionLayer, FakeTU]:
    tu = FakeTU()
    return TransactionLayer(tu, TIMERS), tu


def take(layer: TransactionLayer) -> list[Request | Response]:
    """What the layer sent since the last look, parsed."""
    out = [parse(data) for _, data in layer.outbox]
    layer.outbox.clear()
    return out


def advance(layer: TransactionLayer, until: float) -> list[tuple[float, Request | Response]]:
    """Fire every timer due up to ``until``; return each message sent with its time."""
    sent: list[tuple[float, Request | Response]] = []
    while (now := layer.next_deadline()) is not None and now <= until:
        layer.handle_timer(now)
        sent.extend((now, msg) for msg in take(layer))
    return sent


def fire_next(layer: TransactionLayer) -> float:
    now = layer.next_deadline()
    assert now is not None
    layer.handle_timer(now)
    return now


def assert_idle(layer: TransactionLayer) -> None:
    """Nothing left behind: no transaction, no timer."""
    assert layer.client == {}
    assert layer.server == {}
    assert layer.next_deadline() is None
    assert len(layer.timers) == 0


def start(
    method: str = "INVITE", flow: Flow = UDP, now: float = 0.0, **kw: object
) -> tuple[TransactionLayer, FakeTU, ClientRec, ClientTransaction, Request]:
    lay, tu = layer()
    owner = ClientRec()
    request = req(method, **kw)
    tx = lay.send_request(request, flow, owner, now)
    sent = take(lay)
    assert len(sent) == 1 and isinstance(sent[0], Request) and sent[0].method == method
    return lay, tu, owner, tx, request


def serve(
    method: str = "INVITE", flow: Flow = UDP, now: float = 0.0, **kw: object
) -> tuple[TransactionLayer, FakeTU, ServerRec, ServerTransaction, Request]:
    lay, tu = layer()
    owner = ServerRec()
    request = req(method, **kw)
    lay.receive_request(request, flow, now)
    assert len(tu.requests) == 1
    stx = tu.requests[0][1]
    assert stx is not None and stx.request is request
    stx.owner = owner
    assert take(lay) == []  # nothing sent on its own: not even 100 Trying (the TU's job)
    return lay, tu, owner, stx, request


def statuses(msgs: list[tuple[float, Request | Response]]) -> list[tuple[float, int]]:
    out = []
    for t, m in msgs:
        assert isinstance(m, Response)
        out.append((t, m.status))
    return out


# =========================================================================================
# INVITE client transaction (§17.1.1, RFC 6026 §7.2)
# =========================================================================================


def test_ict_udp_timer_a_doubles_and_timer_b_gives_up_at_64_t1() -> None:
    lay, _, owner, tx, invite = start()
    assert tx.state is State.CALLING
    sent = advance(lay, 100.0)
    assert [t for t, _ in sent] == [0.5, 1.5, 3.5, 7.5, 15.5, 31.5]
    assert all(m.to_bytes() == invite.to_bytes() for _, m in sent)
    assert lay.retransmissions == 6
    assert owner.events == [("timeout", 0, 32.0)]
    assert tx.state is State.TERMINATED
    assert_idle(lay)


def test_ict_tcp_sends_once_and_times_out_with_timer_b() -> None:
    lay, _, owner, _, _ = start(flow=TCP, transport="TCP")
    assert lay.next_deadline() == 32.0
    assert advance(lay, 100.0) == []
    assert lay.retransmissions == 0
    assert owner.events == [("timeout", 0, 32.0)]
    assert_idle(lay)


def test_ict_provisional_stops_timer_a_and_timer_b() -> None:
    """Timer B only runs in Calling (§17.1.1.2): a ringing INVITE waits for its final."""
    lay, _, owner, tx, invite = start()
    assert [t for t, _ in advance(lay, 1.5)] == [0.5, 1.5]
    lay.receive_response(resp(invite, 180), UDP, 2.0)
    assert tx.state is State.PROCEEDING and tx.provisional_seen
    assert lay.next_deadline() is None
    lay.receive_response(resp(invite, 183), UDP, 50.0)
    assert owner.events == [("response", 180, 2.0), ("response", 183, 50.0)]
    lay.receive_response(resp(invite, 200), UDP, 120.0)  # answered after two minutes
    assert tx.state is State.ACCEPTED
    assert lay.next_deadline() == 120.0 + 64 * T1  # Timer M
    fire_next(lay)
    assert_idle(lay)


def test_ict_2xx_accepted_timer_m_and_every_2xx_goes_to_the_owner() -> None:
    lay, tu, owner, tx, invite = start()
    lay.receive_response(resp(invite, 200, to_tag="fork-a"), UDP, 2.0)
    assert tx.state is State.ACCEPTED
    assert take(lay) == []  # the ACK for a 2xx is the TU's, not the transaction's
    assert lay.next_deadline() == 2.0 + 32.0
    lay.receive_response(resp(invite, 200, to_tag="fork-a"), UDP, 3.0)  # retransmission
    lay.receive_response(resp(invite, 200, to_tag="fork-b"), UDP, 4.0)  # another fork
    lay.receive_response(resp(invite, 180), UDP, 5.0)  # ignored in Accepted
    lay.receive_response(resp(invite, 486), UDP, 6.0)  # ignored in Accepted
    assert owner.events == [("response", 200, 2.0), ("response", 200, 3.0), ("response", 200, 4.0)]
    assert [r.to.tag for r in owner.responses] == ["fork-a", "fork-a", "fork-b"]
    assert take(lay) == []
    assert fire_next(lay) == 34.0  # Timer M
    assert tx.state is State.TERMINATED
    assert_idle(lay)
    # after Timer M a 2xx is stray: the TU must still see it (to ACK it); others dropped
    lay.receive_response(resp(invite, 200, to_tag="fork-a"), UDP, 40.0)
    lay.receive_response(resp(invite, 180), UDP, 40.0)
    lay.receive_response(resp(invite, 486), UDP, 40.0)
    assert [(r.status, f, t) for r, f, t in tu.strays] == [(200, UDP, 40.0)]
    assert len(owner.events) == 3
    assert_idle(lay)


def test_ict_2xx_straight_from_calling_stops_timer_a() -> None:
    lay, _, owner, tx, invite = start()
    lay.receive_response(resp(invite, 200), UDP, 0.2)
    assert tx.state is State.ACCEPTED
    assert advance(lay, 10.0) == []  # no INVITE retransmission any more
    assert fire_next(lay) == 0.2 + 32.0
    assert owner.events == [("response", 200, 0.2)]
    assert_idle(lay)


def test_ict_non_2xx_final_sends_the_ack_and_absorbs_retransmissions() -> None:
    routes = ("<sip:proxy1.example.net;lr>", "<sip:proxy2.example.net;lr>")
    lay, _, owner, tx, invite = start(cseq=7, routes=routes)
    lay.receive_response(resp(invite, 180), UDP, 1.0)
    final = resp(invite, 486, to_tag="busy-1")
    lay.receive_response(final, UDP, 3.0)
    assert tx.state is State.COMPLETED
    [ack] = take(lay)
    assert isinstance(ack, Request)
    assert ack.method == "ACK"
    assert ack.uri == invite.uri
    assert ack.get_lines("via") == invite.get_lines("via")  # the same branch (§17.1.1.3)
    assert ack.top_via.branch == invite.top_via.branch
    assert ack.get("to") == final.get("to")
    assert ack.to.tag == "busy-1"
    assert ack.get("from") == invite.get("from")
    assert ack.call_id == invite.call_id
    assert (ack.cseq.number, ack.cseq.method) == (7, "ACK")
    assert ack.get_lines("route") == list(routes)
    assert ack.body == b""
    assert owner.events == [("response", 180, 1.0), ("response", 486, 3.0)]
    # the 486 is repeated (our ACK was lost): the same ACK again, the TU not told twice
    rtx_before = lay.retransmissions
    lay.receive_response(resp(invite, 486, to_tag="busy-1"), UDP, 4.0)
    [again] = take(lay)
    assert again.to_bytes() == ack.to_bytes()
    assert lay.retransmissions == rtx_before + 1
    lay.receive_response(resp(invite, 180), UDP, 4.5)  # ignored in Completed
    assert take(lay) == []
    assert len(owner.events) == 2
    assert lay.next_deadline() == 3.0 + 32.0  # Timer D
    fire_next(lay)
    assert tx.state is State.TERMINATED
    assert invite.top_via.branch not in {k[0] for k in lay.client}
    assert_idle(lay)


def test_ict_non_2xx_from_calling() -> None:
    lay, _, owner, tx, invite = start()
    lay.receive_response(resp(invite, 603), UDP, 0.1)
    assert tx.state is State.COMPLETED
    [ack] = take(lay)
    assert isinstance(ack, Request) and ack.method == "ACK"
    assert advance(lay, 31.0) == []  # Timer A stopped
    assert fire_next(lay) == 32.1
    assert owner.events == [("response", 603, 0.1)]
    assert_idle(lay)


def test_ict_timer_d_is_zero_over_tcp() -> None:
    lay, _, _, tx, invite = start(flow=TCP, transport="TCP")
    lay.receive_response(resp(invite, 404), TCP, 1.0)
    assert len(take(lay)) == 1
    assert lay.next_deadline() == 1.0
    lay.handle_timer(1.0)
    assert tx.state is State.TERMINATED
    assert_idle(lay)


def test_ict_fail_is_a_transport_error() -> None:
    lay, _, owner, tx, _ = start()
    tx.fail(0.3)
    assert owner.events == [("timeout", 0, 0.3)]
    assert_idle(lay)
    tx.fail(0.4)  # once only
    assert owner.events == [("timeout", 0, 0.3)]


def test_ict_fail_after_the_final_response_is_a_no_op() -> None:
    lay, _, owner, tx, invite = start()
    lay.receive_response(resp(invite, 200), UDP, 1.0)
    tx.fail(1.5)
    assert tx.state is State.ACCEPTED
    assert owner.events == [("response", 200, 1.0)]


def test_ict_owner_dropped_before_fail_is_not_called() -> None:
    lay, _, owner, tx, _ = start()
    tx.owner = None
    tx.fail(1.0)
    assert owner.events == []
    assert_idle(lay)


# =========================================================================================
# Client CANCEL (§9.1)
# =========================================================================================


def test_cancel_before_any_provisional_waits_for_one() -> None:
    routes = ("<sip:edge.example.net;lr>",)
    lay, _, owner, tx, invite = start(cseq=3, routes=routes)
    lay.cancel(tx, 0.2)
    assert take(lay) == []  # §9.1: no CANCEL before a provisional response
    assert tx.cancel_pending
    sent = advance(lay, 0.5)
    assert [m.method for _, m in sent if isinstance(m, Request)] == ["INVITE"]  # A goes on
    lay.receive_response(resp(invite, 100), UDP, 0.7)
    [cancel] = take(lay)
    assert isinstance(cancel, Request)
    assert cancel.method == "CANCEL"
    assert cancel.uri == invite.uri
    assert cancel.get_lines("via") == invite.get_lines("via")
    assert cancel.top_via.branch == invite.top_via.branch
    assert (cancel.cseq.number, cancel.cseq.method) == (3, "CANCEL")
    assert cancel.get("to") == invite.get("to") and cancel.to.tag is None
    assert cancel.get("from") == invite.get("from")
    assert cancel.call_id == invite.call_id
    assert cancel.get_lines("route") == list(routes)
    assert not tx.cancel_pending and tx.cancel_sent
    assert owner.events == [("response", 100, 0.7)]
    # a second cancel, or another provisional, sends no second CANCEL
    lay.cancel(tx, 0.8)
    lay.receive_response(resp(invite, 180), UDP, 0.9)
    assert take(lay) == []
    # the 200 to the CANCEL is for the layer; the 487 to the INVITE is the owner's
    lay.receive_response(resp(cancel, 200), UDP, 1.0)
    lay.receive_response(resp(invite, 487), UDP, 1.1)
    [ack] = take(lay)
    assert isinstance(ack, Request) and ack.method == "ACK"
    assert owner.events[-1] == ("response", 487, 1.1)
    assert tx.state is State.COMPLETED
    advance(lay, 100.0)
    assert_idle(lay)


def test_cancel_after_a_provisional_goes_at_once() -> None:
    lay, _, _, tx, invite = start()
    lay.receive_response(resp(invite, 180), UDP, 1.0)
    lay.cancel(tx, 2.0)
    [cancel] = take(lay)
    assert isinstance(cancel, Request) and cancel.method == "CANCEL"
    assert (cancel.top_via.branch, "CANCEL") in lay.client
    # the CANCEL's own NICT retransmits on Timer E until answered
    sent = advance(lay, 2.5)
    assert [(t, m.method) for t, m in sent if isinstance(m, Request)] == [(2.5, "CANCEL")]


def test_cancelled_invite_with_no_final_ends_64_t1_after_the_cancel() -> None:
    """§9.1: no final response 64*T1 after the CANCEL: the INVITE is given up."""
    lay, _, owner, tx, invite = start()
    lay.receive_response(resp(invite, 180), UDP, 1.0)
    lay.cancel(tx, 10.0)
    [cancel] = take(lay)
    assert isinstance(cancel, Request)
    lay.receive_response(resp(cancel, 200), UDP, 10.1)
    advance(lay, 10.0 + 64 * T1 - 0.001)
    assert tx.state is State.PROCEEDING
    assert fire_next(lay) == 10.0 + 64 * T1
    assert owner.events[-1] == ("timeout", 0, 42.0)
    assert tx.state is State.TERMINATED
    advance(lay, 100.0)
    assert_idle(lay)


def test_cancel_pending_then_timer_b_never_sends_a_cancel() -> None:
    lay, _, owner, tx, _ = start()
    lay.cancel(tx, 0.1)
    sent = advance(lay, 100.0)
    assert {m.method for _, m in sent if isinstance(m, Request)} == {"INVITE"}
    assert owner.events == [("timeout", 0, 32.0)]
    assert_idle(lay)


def test_cancel_after_the_final_response_or_of_a_non_invite_does_nothing() -> None:
    lay, _, _, tx, invite = start()
    lay.receive_response(resp(invite, 200), UDP, 1.0)
    lay.cancel(tx, 2.0)
    assert take(lay) == []
    lay2, _, _, opt, _ = start("OPTIONS")
    lay2.cancel(opt, 0.1)
    assert take(lay2) == [] and not opt.cancel_pending


def test_cancel_pending_then_2xx_sends_no_cancel() -> None:
    lay, _, owner, tx, invite = start()
    lay.cancel(tx, 0.1)
    lay.receive_response(resp(invite, 200), UDP, 0.2)
    assert take(lay) == []
    assert owner.events == [("response", 200, 0.2)]


# =========================================================================================
# non-INVITE client transaction (§17.1.2)
# =========================================================================================


def test_nict_timer_e_doubles_to_t2_and_timer_f_gives_up() -> None:
    lay, _, owner, tx, request = start("OPTIONS")
    assert tx.state is State.TRYING
    sent = advance(lay, 100.0)
    assert [t for t, _ in sent] == [0.5, 1.5, 3.5, 7.5, 11.5, 15.5, 19.5, 23.5, 27.5, 31.5]
    assert all(m.to_bytes() == request.to_bytes() for _, m in sent)
    assert owner.events == [("timeout", 0, 32.0)]
    assert_idle(lay)


def test_nict_timer_e_fires_every_t2_in_proceeding() -> None:
    lay, _, owner, tx, request = start("BYE", to_tag="dlg-1")
    assert [t for t, _ in advance(lay, 0.5)] == [0.5]
    lay.receive_response(resp(request, 100), UDP, 1.0)
    assert tx.state is State.PROCEEDING
    # E was due at 1.5 (interval 1 s); from then on every T2, not 2 s, 4 s …
    sent = advance(lay, 20.0)
    assert [t for t, _ in sent] == [1.5, 5.5, 9.5, 13.5, 17.5]
    lay.receive_response(resp(request, 200, to_tag=None), UDP, 20.0)
    assert tx.state is State.COMPLETED
    assert owner.events == [("response", 100, 1.0), ("response", 200, 20.0)]
    lay.receive_response(resp(request, 200, to_tag=None), UDP, 21.0)  # absorbed
    lay.receive_response(resp(request, 100), UDP, 21.0)  # absorbed
    assert len(owner.events) == 2
    assert take(lay) == []
    assert lay.next_deadline() == 20.0 + T4  # Timer K
    fire_next(lay)
    assert tx.state is State.TERMINATED
    assert_idle(lay)


def test_nict_timer_e_in_proceeding_with_a_small_t2() -> None:
    """Timer E stays at T2 in Proceeding even when T2 is below the doubled interval."""
    lay, _tu = layer()
    lay.t = Timers(t1=0.5, t2=1.0, t4=5.0)
    owner = ClientRec()
    request = req("OPTIONS")
    lay.send_request(request, UDP, owner, 0.0)
    take(lay)
    lay.receive_response(resp(request, 180), UDP, 0.1)
    assert [t for t, _ in advance(lay, 4.0)] == [0.5, 1.5, 2.5, 3.5]


def test_nict_timer_f_in_proceeding() -> None:
    lay, _, owner, _tx, request = start("OPTIONS")
    lay.receive_response(resp(request, 100), UDP, 0.2)
    advance(lay, 100.0)
    assert owner.events == [("response", 100, 0.2), ("timeout", 0, 32.0)]
    assert_idle(lay)


def test_nict_final_from_trying_and_timer_k() -> None:
    lay, _, _owner, tx, request = start("OPTIONS")
    lay.receive_response(resp(request, 200), UDP, 0.3)
    assert tx.state is State.COMPLETED
    assert advance(lay, 5.0) == []
    assert fire_next(lay) == 0.3 + T4
    assert_idle(lay)


def test_nict_over_tcp_no_timer_e_and_timer_k_zero() -> None:
    lay, _, owner, _tx, request = start("OPTIONS", flow=TCP, transport="TCP")
    assert lay.next_deadline() == 32.0  # only Timer F
    lay.receive_response(resp(request, 404), TCP, 3.0)
    assert lay.next_deadline() == 3.0  # Timer K = 0
    lay.handle_timer(3.0)
    assert owner.events == [("response", 404, 3.0)]
    assert lay.retransmissions == 0
    assert_idle(lay)


def test_nict_transport_error_in_trying() -> None:
    lay, _, owner, tx, _ = start("OPTIONS")
    tx.fail(0.1)
    assert owner.events == [("timeout", 0, 0.1)]
    assert_idle(lay)


def test_send_request_refuses_ack() -> None:
    lay, _ = layer()
    with pytest.raises(ValueError):
        lay.send_request(req("ACK"), UDP, ClientRec(), 0.0)
    assert lay.outbox == []


# =========================================================================================
# INVITE server transaction (§17.2.1, RFC 6026 §7.1)
# =========================================================================================


def test_ist_retransmitted_invite_repeats_the_last_provisional() -> None:
    lay, tu, _, stx, invite = serve()
    assert stx.state is State.PROCEEDING
    lay.receive_request(req(), UDP, 0.2)  # before any response: nothing to repeat
    assert take(lay) == []
    stx.respond(make_response(invite, 100), 0.3)
    lay.receive_request(req(), UDP, 0.5)
    [_r1, r2] = take(lay)
    assert isinstance(r2, Response) and r2.status == 100
    stx.respond(make_response(invite, 180, to_tag="uas-tag"), 1.0)
    take(lay)
    lay.receive_request(req(), UDP, 1.5)
    [again] = take(lay)
    assert isinstance(again, Response) and again.status == 180
    assert again.to.tag == "uas-tag"
    assert len(tu.requests) == 1  # retransmissions never reach the TU
    assert lay.next_deadline() is None  # no timer while Proceeding


def test_ist_non_2xx_timer_g_to_t2_and_timer_h() -> None:
    lay, _tu, owner, stx, invite = serve()
    stx.respond(make_response(invite, 486, to_tag="busy"), 0.0)
    assert stx.state is State.COMPLETED
    [first] = take(lay)
    sent = advance(lay, 100.0)
    assert statuses(sent) == [
        (t, 486) for t in (0.5, 1.5, 3.5, 7.5, 11.5, 15.5, 19.5, 23.5, 27.5, 31.5)
    ]
    assert all(m.to_bytes() == first.to_bytes() for _, m in sent)
    assert stx.state is State.TERMINATED  # Timer H at 64*T1
    assert owner.ack_timeouts == []  # Timer L's report, not Timer H's
    assert_idle(lay)


def test_ist_ack_confirms_is_absorbed_and_timer_i_ends() -> None:
    lay, tu, _, stx, invite = serve()
    final = make_response(invite, 404, to_tag="nf")
    stx.respond(final, 1.0)
    take(lay)
    assert statuses(advance(lay, 1.5)) == [(1.5, 404)]
    ack = req("ACK", to_tag="nf")  # same branch as the INVITE
    lay.receive_request(ack, UDP, 2.0)
    assert stx.state is State.CONFIRMED
    assert tu.methods() == ["INVITE"]  # the ACK is not passed up
    assert lay.next_deadline() == 2.0 + T4  # Timer I; G and H are gone
    lay.receive_request(req("ACK", to_tag="nf"), UDP, 3.0)  # absorbed
    lay.receive_request(req(), UDP, 3.0)  # INVITE retransmission: absorbed too
    assert take(lay) == []
    assert tu.methods() == ["INVITE"]
    assert fire_next(lay) == 7.0
    assert stx.state is State.TERMINATED
    assert_idle(lay)


def test_ist_retransmitted_invite_in_completed_repeats_the_final() -> None:
    lay, tu, _, stx, invite = serve()
    stx.respond(make_response(invite, 603, to_tag="dec"), 0.0)
    take(lay)
    lay.receive_request(req(), UDP, 0.2)
    [again] = take(lay)
    assert isinstance(again, Response) and again.status == 603
    assert len(tu.requests) == 1


def test_ist_over_tcp_no_timer_g_and_timer_i_zero() -> None:
    lay, _, _, stx, invite = serve(flow=TCP, transport="TCP")
    stx.respond(make_response(invite, 480, to_tag="x"), 0.0)
    take(lay)
    assert lay.next_deadline() == 32.0  # Timer H only
    lay.receive_request(req("ACK", to_tag="x", transport="TCP"), TCP, 1.0)
    assert lay.next_deadline() == 1.0  # Timer I = 0
    lay.handle_timer(1.0)
    assert lay.retransmissions == 0
    assert_idle(lay)


def test_ist_2xx_retransmitted_until_the_ack_then_absorbs_invites() -> None:
    lay, tu, owner, stx, invite = serve()

    def on_ack(r: Request, tx: ServerTransaction | None, now: float) -> None:
        if r.method == "ACK":
            assert tx is None  # the ACK for a 2xx is its own transaction
            stx.ack_received(now)

    tu.react = on_ack
    ok = make_response(invite, 200, to_tag="ok-1")
    stx.respond(ok, 0.0)
    assert stx.state is State.ACCEPTED
    take(lay)
    assert statuses(advance(lay, 8.0)) == [(0.5, 200), (1.5, 200), (3.5, 200), (7.5, 200)]
    # the INVITE comes again after the 2xx: absorbed, never a second call
    lay.receive_request(req(), UDP, 8.0)
    assert take(lay) == []
    assert tu.methods() == ["INVITE"]
    lay.receive_request(ack_for_2xx(invite, ok), UDP, 9.0)
    assert tu.methods() == ["INVITE", "ACK"]
    assert stx.acked
    assert advance(lay, 31.9) == []  # no more 2xx
    lay.receive_request(req(), UDP, 20.0)  # still absorbed
    assert take(lay) == [] and tu.methods() == ["INVITE", "ACK"]
    assert fire_next(lay) == 32.0  # Timer L
    assert stx.state is State.TERMINATED
    assert owner.ack_timeouts == []  # the ACK came
    assert_idle(lay)


def test_ist_2xx_without_ack_retransmits_to_t2_and_reports_at_timer_l() -> None:
    lay, _tu, owner, stx, invite = serve()
    stx.respond(make_response(invite, 200, to_tag="ok"), 0.0)
    take(lay)
    sent = advance(lay, 100.0)
    assert statuses(sent) == [
        (t, 200) for t in (0.5, 1.5, 3.5, 7.5, 11.5, 15.5, 19.5, 23.5, 27.5, 31.5)
    ]
    assert owner.ack_timeouts == [(stx, 32.0)]
    assert stx.owner is None
    assert_idle(lay)


def test_ist_2xx_over_tcp_is_not_retransmitted() -> None:
    lay, _, owner, stx, invite = serve(flow=TCP, transport="TCP")
    stx.respond(make_response(invite, 200, to_tag="ok"), 0.0)
    take(lay)
    assert lay.next_deadline() == 32.0
    fire_next(lay)
    assert lay.retransmissions == 0
    assert owner.ack_timeouts == [(stx, 32.0)]
    assert_idle(lay)


def test_ist_second_2xx_in_accepted_is_sent_and_retransmitted() -> None:
    lay, _, _, stx, invite = serve()
    stx.respond(make_response(invite, 200, to_tag="a"), 0.0)
    stx.respond(make_response(invite, 200, to_tag="b"), 0.2)
    stx.respond(make_response(invite, 486, to_tag="c"), 0.3)  # too late: dropped
    stx.respond(make_response(invite, 180, to_tag="c"), 0.3)  # too late: dropped
    assert [(m.status, m.to.tag) for m in take(lay) if isinstance(m, Response)] == [
        (200, "a"),
        (200, "b"),
    ]
    [(_t, m)] = advance(lay, 0.5)
    assert isinstance(m, Response) and m.to.tag == "b"


def test_ist_ack_with_the_invite_branch_in_accepted_goes_to_the_tu() -> None:
    lay, tu, _, stx, invite = serve()
    stx.respond(make_response(invite, 200, to_tag="ok"), 0.0)
    lay.receive_request(req("ACK", to_tag="ok"), UDP, 0.1)
    assert tu.methods() == ["INVITE", "ACK"]
    assert tu.requests[1][1] is None
    assert stx.state is State.ACCEPTED


def test_ist_responses_after_the_end_are_dropped() -> None:
    lay, _, _, stx, invite = serve()
    stx.respond(make_response(invite, 500, to_tag="e"), 0.0)
    take(lay)
    stx.respond(make_response(invite, 200, to_tag="e"), 0.1)
    assert take(lay) == []
    assert stx.state is State.COMPLETED


def test_ist_terminate_forgets_it_so_a_retransmission_is_new() -> None:
    lay, tu, _owner, stx, _invite = serve()
    stx.terminate()
    assert stx.state is State.TERMINATED and stx.owner is None
    assert_idle(lay)
    lay.receive_request(req(), UDP, 1.0)
    assert len(tu.requests) == 2 and tu.requests[1][1] is not stx
    stx.terminate()  # twice is harmless


def test_respond_with_bytes_needs_the_status() -> None:
    lay, _, _, stx, invite = serve()
    data = make_response(invite, 180, to_tag="t").to_bytes()
    with pytest.raises(ValueError):
        stx.respond(data, 0.0)
    stx.respond(data, 0.0, status=180)
    assert [d for _, d in lay.outbox] == [data]


# =========================================================================================
# non-INVITE server transaction (§17.2.2)
# =========================================================================================


def test_nist_repeats_the_last_response_and_timer_j_ends() -> None:
    lay, tu, _, stx, request = serve("OPTIONS")
    assert stx.state is State.TRYING
    lay.receive_request(req("OPTIONS"), UDP, 0.1)  # Trying: discarded
    assert take(lay) == []
    stx.respond(make_response(request, 100), 0.2)
    assert stx.state is State.PROCEEDING
    take(lay)
    lay.receive_request(req("OPTIONS"), UDP, 0.3)
    [p] = take(lay)
    assert isinstance(p, Response) and p.status == 100
    stx.respond(make_response(request, 200, to_tag="o"), 1.0)
    assert stx.state is State.COMPLETED
    # for Timer J it keeps its key and its response, not the parsed request
    assert stx.request.headers == () and stx.request.method == "OPTIONS"
    take(lay)
    lay.receive_request(req("OPTIONS"), UDP, 2.0)
    [f] = take(lay)
    assert isinstance(f, Response) and f.status == 200
    stx.respond(make_response(request, 500), 3.0)  # after the final: dropped
    assert take(lay) == []
    assert len(tu.requests) == 1
    assert lay.next_deadline() == 1.0 + 64 * T1  # Timer J
    assert advance(lay, 100.0) == []  # a NIST never retransmits on its own
    assert_idle(lay)


def test_nist_final_from_trying_and_timer_j_zero_over_tcp() -> None:
    lay, _, _, stx, request = serve("BYE", flow=TCP, transport="TCP", to_tag="d")
    stx.respond(make_response(request, 200), 5.0)
    assert stx.state is State.COMPLETED
    assert lay.next_deadline() == 5.0
    lay.handle_timer(5.0)
    assert_idle(lay)


def test_nist_terminate_in_trying_and_in_proceeding() -> None:
    lay, _, _, stx, _request = serve("OPTIONS")
    stx.terminate()
    assert_idle(lay)
    lay2, _, _, stx2, request2 = serve("INFO", to_tag="d")
    stx2.respond(make_response(request2, 100), 0.0)
    stx2.terminate()
    assert stx2.state is State.TERMINATED
    assert_idle(lay2)


# =========================================================================================
# CANCEL received (§9.2)
# =========================================================================================


def test_cancel_for_a_pending_invite_gets_200_and_reaches_the_owner() -> None:
    lay, tu, owner, stx, invite = serve(cseq=5)
    stx.respond(make_response(invite, 180, to_tag="ring-1"), 0.0)
    take(lay)
    cancel = req("CANCEL", cseq=5)
    lay.receive_request(cancel, UDP, 1.0)
    [ok] = take(lay)
    assert isinstance(ok, Response)
    assert ok.status == 200
    assert (ok.cseq.number, ok.cseq.method) == (5, "CANCEL")
    assert ok.to.tag == "ring-1"  # §9.2: the same To tag as the INVITE's responses
    assert ok.top_via.branch == invite.top_via.branch
    assert [(tx, c, t) for tx, c, t in owner.cancels] == [(stx, cancel, 1.0)]
    assert tu.methods() == ["INVITE"]  # the CANCEL is the layer's, not a new request
    # the CANCEL is repeated: the same 200 again, the owner not told twice
    lay.receive_request(req("CANCEL", cseq=5), UDP, 1.5)
    [again] = take(lay)
    assert again.to_bytes() == ok.to_bytes()
    assert len(owner.cancels) == 1
    # the owner answers the INVITE 487; the caller ACKs; everything ends
    stx.respond(make_response(invite, 487, to_tag="ring-1"), 1.6)
    lay.receive_request(req("ACK", cseq=5, to_tag="ring-1"), UDP, 1.7)
    advance(lay, 100.0)
    assert_idle(lay)


def test_cancel_before_any_response_gets_a_to_tag() -> None:
    lay, _, owner, _stx, _invite = serve()
    lay.receive_request(req("CANCEL"), UDP, 0.1)
    [ok] = take(lay)
    assert isinstance(ok, Response) and ok.status == 200
    assert ok.to.tag  # §8.2.6.2
    assert len(owner.cancels) == 1


def test_cancel_with_no_matching_invite_gets_481() -> None:
    lay, tu = layer()
    lay.receive_request(req("CANCEL", branch="z9hG4bK-nothing"), UDP, 0.0)
    [r] = take(lay)
    assert isinstance(r, Response) and r.status == 481
    assert r.to.tag
    assert tu.requests == []
    lay.receive_request(req("CANCEL", branch="z9hG4bK-nothing"), UDP, 0.5)
    [again] = take(lay)
    assert again.to_bytes() == r.to_bytes()
    advance(lay, 100.0)
    assert_idle(lay)


def test_cancel_from_another_peer_gets_a_stateless_481_and_the_real_one_still_works() -> None:
    """The branch a CANCEL is matched by (§9.2) is the caller's, and a third party can copy
    it: where the TU refuses the CANCEL's source, it is answered 481 as if there were no
    INVITE, keeps no transaction, and the caller's own CANCEL still matches."""
    lay, tu, owner, stx, _invite = serve()
    forger = Flow("udp", 0, "198.51.100.7", 5060)
    tu.cancel_refused.add((0, forger.host))
    lay.receive_request(req("CANCEL"), forger, 0.1)
    [(to, data)] = lay.outbox
    lay.outbox.clear()
    refusal = parse_message(data)
    assert isinstance(refusal, Response) and refusal.status == 481 and to == forger
    assert owner.cancels == []
    assert not [k for k in lay.server if k[-1] == "CANCEL"]  # nothing kept
    lay.receive_request(req("CANCEL"), UDP, 0.2)
    [ok] = take(lay)
    assert isinstance(ok, Response) and ok.status == 200
    assert [tx for tx, _, _ in owner.cancels] == [stx]


def test_cancel_of_a_different_branch_does_not_match() -> None:
    lay, _, owner, _stx, _ = serve(branch="z9hG4bK-inv")
    lay.receive_request(req("CANCEL", branch="z9hG4bK-other"), UDP, 0.1)
    [r] = take(lay)
    assert isinstance(r, Response) and r.status == 481
    assert owner.cancels == []


def test_cancel_after_the_final_response_gets_200_and_changes_nothing() -> None:
    lay, _, owner, stx, invite = serve()
    stx.respond(make_response(invite, 200, to_tag="ok"), 0.0)
    take(lay)
    lay.receive_request(req("CANCEL"), UDP, 0.1)
    [r] = take(lay)
    assert isinstance(r, Response) and r.status == 200 and r.to.tag == "ok"
    assert owner.cancels == []
    assert stx.state is State.ACCEPTED


def test_cancel_without_an_owner_yet_is_answered() -> None:
    lay, _tu = layer()
    invite = req()
    lay.receive_request(invite, UDP, 0.0)
    lay.receive_request(req("CANCEL"), UDP, 0.1)
    [r] = take(lay)
    assert isinstance(r, Response) and r.status == 200


# =========================================================================================
# RFC 2543 fallback matching (§17.2.3)
# =========================================================================================


@pytest.mark.parametrize("branch", [None, "1234abcd", MAGIC_COOKIE])
def test_rfc2543_invite_retransmission_and_ack_match(branch: str | None) -> None:
    lay, tu, _, stx, invite = serve(branch=branch)
    assert stx.key[2] == "2543"
    stx.respond(make_response(invite, 180, to_tag="old"), 0.0)
    take(lay)
    lay.receive_request(req(branch=branch), UDP, 0.5)
    [p] = take(lay)
    assert isinstance(p, Response) and p.status == 180
    assert len(tu.requests) == 1
    stx.respond(make_response(invite, 486, to_tag="old"), 1.0)
    take(lay)
    lay.receive_request(req("ACK", branch=branch, to_tag="old"), UDP, 1.2)
    assert stx.state is State.CONFIRMED
    assert tu.methods() == ["INVITE"]
    advance(lay, 100.0)
    assert_idle(lay)


def test_rfc2543_other_from_tag_or_cseq_is_another_transaction() -> None:
    lay, tu, _, _, _ = serve(branch=None)
    lay.receive_request(req(branch=None, from_tag="someone-else"), UDP, 0.1)
    lay.receive_request(req(branch=None, cseq=2), UDP, 0.2)
    assert len(tu.requests) == 3
    assert len(lay.server) == 3


def test_rfc2543_ack_for_a_2xx_goes_to_the_tu() -> None:
    lay, tu, _, stx, invite = serve(branch=None)
    stx.respond(make_response(invite, 200, to_tag="ok"), 0.0)
    lay.receive_request(req("ACK", branch=None, to_tag="ok"), UDP, 0.1)
    assert tu.methods() == ["INVITE", "ACK"]
    assert tu.requests[1][1] is None


def test_rfc2543_cancel_matches_its_invite() -> None:
    lay, _, owner, _stx, _ = serve(branch=None)
    lay.receive_request(req("CANCEL", branch=None), UDP, 0.1)
    [r] = take(lay)
    assert isinstance(r, Response) and r.status == 200
    assert len(owner.cancels) == 1


def test_server_key_folds_ack_into_invite_and_keeps_sent_by() -> None:
    invite, ack = req(), req("ACK", to_tag="x")
    assert server_key(invite, invite.top_via) == server_key(ack, ack.top_via)
    other = req(sent_by="192.0.2.99:5060")
    assert server_key(other, other.top_via) != server_key(invite, invite.top_via)
    bye = req("BYE", to_tag="x")
    assert server_key(bye, bye.top_via)[-1] == "BYE"


def test_same_branch_different_method_is_another_transaction() -> None:
    lay, tu = layer()
    lay.receive_request(req("INVITE"), UDP, 0.0)
    lay.receive_request(req("PRACK", to_tag="x"), UDP, 0.1)
    assert tu.methods() == ["INVITE", "PRACK"]


# =========================================================================================
# stray responses (§18.1.2, RFC 6026 §7.2)
# =========================================================================================


def test_stray_responses() -> None:
    lay, tu = layer()
    invite, options = req(branch="z9hG4bK-gone"), req("OPTIONS", branch="z9hG4bK-gone2")
    lay.receive_response(resp(invite, 200), UDP, 1.0)
    lay.receive_response(resp(invite, 183), UDP, 1.0)
    lay.receive_response(resp(invite, 404), UDP, 1.0)
    lay.receive_response(resp(options, 200), UDP, 1.0)
    assert [(r.status, r.cseq.method) for r, _, _ in tu.strays] == [(200, "INVITE")]
    assert take(lay) == []
    assert_idle(lay)


def test_response_to_another_method_with_the_same_branch_does_not_match() -> None:
    lay, _tu, owner, _, _invite = start()
    lay.receive_response(resp(req("CANCEL"), 200), UDP, 0.1)
    assert owner.events == []


# =========================================================================================
# two stacks wired in memory: loss is a datagram not delivered (STYLE 8)
# =========================================================================================


class Pair:
    """A UAC stack ``a`` and a UAS stack ``b`` joined by an in-memory link."""

    def __init__(self, transport: str = "udp") -> None:
        self.a_tu, self.b_tu = FakeTU(), FakeTU()
        self.a = TransactionLayer(self.a_tu, TIMERS)
        self.b = TransactionLayer(self.b_tu, TIMERS)
        self.to_b = Flow(transport, 0, "192.0.2.20", 5060)
        self.to_a = Flow(transport, 0, "192.0.2.10", 5060)
        self.log: list[tuple[float, str, str]] = []
        self._drops: list[tuple[str, str]] = []

    def lose_next(self, direction: str, start_line: str) -> None:
        """Do not deliver the next message from ``direction`` starting so."""
        self._drops.append((direction, start_line))

    def _lost(self, direction: str, first: str) -> bool:
        for i, (d, s) in enumerate(self._drops):
            if d == direction and first.startswith(s):
                del self._drops[i]
                return True
        return False

    def flush(self, now: float) -> None:
        moved = True
        while moved:
            moved = False
            for src, dst, name, back in (
                (self.a, self.b, "a>b", self.to_a),
                (self.b, self.a, "b>a", self.to_b),
            ):
                batch, src.outbox[:] = list(src.outbox), []
                for _, data in batch:
                    moved = True
                    first = data.split(b"\r\n", 1)[0].decode()
                    if self._lost(name, first):
                        self.log.append((now, name, "lost " + first))
                        continue
                    self.log.append((now, name, first))
                    msg = parse(data)
                    if isinstance(msg, Request):
                        dst.receive_request(msg, back, now)
                    else:
                        dst.receive_response(msg, back, now)

    def run(self, until: float) -> None:
        while True:
            deadlines = [d for d in (self.a.next_deadline(), self.b.next_deadline()) if d]
            if not deadlines or min(deadlines) > until:
                return
            now = min(deadlines)
            self.a.handle_timer(now)
            self.b.handle_timer(now)
            self.flush(now)

    def lines(self, direction: str) -> list[tuple[float, str]]:
        return [(t, s.split(" sip:")[0]) for t, d, s in self.log if d == direction]

    def idle(self) -> None:
        assert_idle(self.a)
        assert_idle(self.b)


def uac_auto_ack(pair: Pair, invite: Request) -> ClientRec:
    """The UAC core: ACK every 2xx (a new transaction, §13.2.2.4)."""
    owner = ClientRec()

    def ack(tx: ClientTransaction, ok: Response, now: float) -> None:
        pair.a.send(pair.to_b, ack_for_2xx(invite, ok).to_bytes())

    owner.on_2xx = ack
    return owner


def uas_acks_to_transaction(pair: Pair) -> list[ServerTransaction]:
    """The UAS core: each INVITE's transaction kept; the ACK of a 2xx reported to it."""
    invites: list[ServerTransaction] = []

    def react(r: Request, tx: ServerTransaction | None, now: float) -> None:
        if tx is not None and r.method == "INVITE":
            tx.owner = ServerRec()
            invites.append(tx)
        elif r.method == "ACK":
            for stx in invites:
                if stx.request.call_id == r.call_id:
                    stx.ack_received(now)

    pair.b_tu.react = react
    return invites


def test_lost_invite_is_recovered_by_timer_a() -> None:
    pair = Pair()
    invites = uas_acks_to_transaction(pair)
    invite = req()
    owner = uac_auto_ack(pair, invite)
    pair.lose_next("a>b", "INVITE")
    pair.a.send_request(invite, pair.to_b, owner, 0.0)
    pair.flush(0.0)
    assert invites == []
    pair.run(0.5)
    assert len(invites) == 1 and pair.b_tu.requests[0][2] == 0.5
    invites[0].respond(make_response(invite, 200, to_tag="ok"), 0.6)
    pair.flush(0.6)
    assert owner.events == [("response", 200, 0.6)]
    assert invites[0].acked
    pair.run(100.0)
    assert pair.b_tu.methods() == ["INVITE", "ACK"]
    pair.idle()


def test_lost_200_is_retransmitted_until_the_ack_comes() -> None:
    pair = Pair()
    invites = uas_acks_to_transaction(pair)
    invite = req()
    owner = uac_auto_ack(pair, invite)
    pair.a.send_request(invite, pair.to_b, owner, 0.0)
    pair.flush(0.0)
    [stx] = invites
    stx.respond(make_response(invite, 180, to_tag="ok"), 0.0)
    pair.flush(0.0)
    pair.lose_next("b>a", "SIP/2.0 200")  # the 200 …
    pair.lose_next("b>a", "SIP/2.0 200")  # … and its first retransmission
    pair.lose_next("a>b", "ACK")  # and the first ACK
    stx.respond(make_response(invite, 200, to_tag="ok"), 1.0)
    pair.flush(1.0)
    pair.run(100.0)
    assert pair.lines("b>a") == [
        (0.0, "SIP/2.0 180 Ringing"),
        (1.0, "lost SIP/2.0 200 OK"),
        (1.5, "lost SIP/2.0 200 OK"),
        (2.5, "SIP/2.0 200 OK"),
        (4.5, "SIP/2.0 200 OK"),
    ]
    assert pair.lines("a>b") == [
        (0.0, "INVITE"),
        (2.5, "lost ACK"),
        (4.5, "ACK"),
    ]
    oks = [e for e in owner.events if e[1] == 200]
    assert oks == [("response", 200, 2.5), ("response", 200, 4.5)]
    assert pair.b_tu.methods() == ["INVITE", "ACK"]
    assert stx.owner is None and stx.state is State.TERMINATED
    pair.idle()


def test_invite_retransmitted_after_the_2xx_is_absorbed_not_a_second_call() -> None:
    pair = Pair()
    invites = uas_acks_to_transaction(pair)
    invite = req()
    owner = uac_auto_ack(pair, invite)
    pair.a.send_request(invite, pair.to_b, owner, 0.0)
    pair.flush(0.0)
    pair.lose_next("b>a", "SIP/2.0 200")
    invites[0].respond(make_response(invite, 200, to_tag="ok"), 0.1)
    pair.flush(0.1)
    pair.run(100.0)
    # Timer A (a) and the 2xx retransmission (b) both fire at 0.5
    assert (0.5, "INVITE") in pair.lines("a>b")
    assert pair.b_tu.methods() == ["INVITE", "ACK"]  # one call only
    assert len(invites) == 1
    pair.idle()


def test_lost_ack_for_a_non_2xx_is_recovered_by_timer_g() -> None:
    pair = Pair()
    invites = uas_acks_to_transaction(pair)
    invite = req()
    owner = ClientRec()
    pair.a.send_request(invite, pair.to_b, owner, 0.0)
    pair.flush(0.0)
    pair.lose_next("a>b", "ACK")
    invites[0].respond(make_response(invite, 486, to_tag="busy"), 0.0)
    pair.flush(0.0)
    assert invites[0].state is State.COMPLETED
    pair.run(0.5)  # Timer G: the 486 again; the ICT in Completed repeats its ACK
    assert invites[0].state is State.CONFIRMED
    assert owner.events == [("response", 486, 0.0)]
    assert pair.lines("a>b") == [(0.0, "INVITE"), (0.0, "lost ACK"), (0.5, "ACK")]
    pair.run(100.0)
    assert pair.b_tu.methods() == ["INVITE"]
    pair.idle()


def test_lost_non_invite_response_is_recovered_by_timer_e() -> None:
    pair = Pair()
    bye = req("BYE", to_tag="d", cseq=2)
    owner = ClientRec()

    def answer(r: Request, tx: ServerTransaction | None, now: float) -> None:
        assert tx is not None
        tx.respond(make_response(r, 200), now)

    pair.b_tu.react = answer
    pair.lose_next("b>a", "SIP/2.0 200")
    pair.a.send_request(bye, pair.to_b, owner, 0.0)
    pair.flush(0.0)
    assert owner.events == []
    pair.run(100.0)
    assert owner.events == [("response", 200, 0.5)]
    assert pair.b_tu.methods() == ["BYE"]  # the retransmitted BYE was the NIST's
    assert pair.lines("b>a") == [(0.0, "lost SIP/2.0 200 OK"), (0.5, "SIP/2.0 200 OK")]
    pair.idle()


def test_cancel_crossing_the_200() -> None:
    """The caller CANCELs as the callee answers: the CANCEL gets 200 and changes nothing."""
    pair = Pair()
    invites = uas_acks_to_transaction(pair)
    invite = req()
    owner = uac_auto_ack(pair, invite)
    tx = pair.a.send_request(invite, pair.to_b, owner, 0.0)
    pair.flush(0.0)
    [stx] = invites
    rec = stx.owner  # an ACKed transaction lets go of its owner: keep it here
    stx.respond(make_response(invite, 180, to_tag="t"), 0.0)
    pair.flush(0.0)
    # both sent at 1.0, neither seen by the other side yet
    pair.a.cancel(tx, 1.0)
    stx.respond(make_response(invite, 200, to_tag="t"), 1.0)
    pair.flush(1.0)
    assert isinstance(rec, ServerRec) and rec.cancels == []
    assert [e[1] for e in owner.events] == [180, 200]
    assert (1.0, "CANCEL") in pair.lines("a>b")
    assert pair.lines("b>a").count((1.0, "SIP/2.0 200 OK")) == 2  # to the CANCEL and INVITE
    pair.run(100.0)
    pair.idle()


def test_a_whole_call_over_tcp_leaves_nothing_behind() -> None:
    pair = Pair("tcp")
    invites = uas_acks_to_transaction(pair)
    invite = req(transport="TCP")
    owner = uac_auto_ack(pair, invite)
    pair.a.send_request(invite, pair.to_b, owner, 0.0)
    pair.flush(0.0)
    invites[0].respond(make_response(invite, 100), 0.0)
    invites[0].respond(make_response(invite, 200, to_tag="ok"), 0.1)
    pair.flush(0.1)
    pair.run(1000.0)
    assert pair.a.retransmissions == pair.b.retransmissions == 0
    pair.idle()


# =========================================================================================
# helpers of the module
# =========================================================================================


def test_make_response_copies_the_headers_and_adds_a_tag() -> None:
    invite = req(routes=("<sip:p;lr>",))
    r = make_response(invite, 180, to_tag="abc", headers=[("Contact", "<sip:b@h>")], body=b"x")
    assert r.status == 180 and r.reason == "Ringing"
    assert r.get_lines("via") == invite.get_lines("via")
    assert r.get("from") == invite.get("from")
    assert r.to.tag == "abc"
    assert r.call_id == invite.call_id and r.get("cseq") == invite.get("cseq")
    assert r.get("contact") == "<sip:b@h>"
    assert r.get("content-length") == "1" and r.body == b"x"
    assert not r.has("route")
    assert make_response(invite, 100, to_tag="abc").to.tag is None  # 100 may go without
    tagged = req(to_tag="have")
    assert make_response(tagged, 200, to_tag="new").to.tag == "have"
    assert make_response(invite, 299).reason == "Unknown"
    assert make_response(invite, 500, "Oops").reason == "Oops"


def test_make_response_mirrors_an_unreadable_to() -> None:
    bad = Request("INVITE", "sip:b@h", [("Via", "SIP/2.0/UDP h;branch=z9hG4bK-x"), ("To", "<<")])
    assert make_response(bad, 400, to_tag="t").get("to") == "<<"


def test_cancel_200_gets_a_fresh_tag_when_the_invite_response_to_is_unreadable() -> None:
    lay, _, owner, stx, invite = serve()
    odd = Response(180, "Ringing", [*make_response(invite, 180).headers[:2], ("To", "<<")])
    stx.respond(odd, 0.0)
    take(lay)
    lay.receive_request(req("CANCEL"), UDP, 0.1)
    [r] = take(lay)
    assert isinstance(r, Response) and r.status == 200 and r.to.tag
    assert len(owner.cancels) == 1


def test_a_terminated_client_transaction_ignores_responses() -> None:
    lay, _, owner, tx, invite = start()
    assert not tx.terminated
    tx.fail(1.0)
    assert tx.terminated
    tx.receive(resp(invite, 200), 2.0)  # held by someone after its end: nothing happens
    assert owner.events == [("timeout", 0, 1.0)]
    assert take(lay) == []


def test_ids_are_unique_and_branches_carry_the_cookie() -> None:
    branches = {new_branch() for _ in range(1000)}
    tags = {new_tag() for _ in range(1000)}
    assert len(branches) == len(tags) == 1000
    assert all(b.startswith(MAGIC_COOKIE) and len(b) > len(MAGIC_COOKIE) for b in branches)


def test_ids_are_random_not_a_counter() -> None:
    """RFC 3261 §19.3, SPEC §8: the Call-IDs, tags and branches we make are what an
    in-dialog request is matched by, so none may tell anything about the next. 100,000
    ids: all distinct, each 80 bits of hex, consecutive ones share no more leading digits
    than chance gives (a counter behind a fixed prefix would share most of them), and
    every hex digit is about equally common in every position."""
    n = 100_000
    ids = [new_tag() for _ in range(n)]
    assert len(set(ids)) == n
    assert all(len(i) == 20 and int(i, 16) >= 0 for i in ids)

    def common(a: str, b: str) -> int:
        k = 0
        while k < len(a) and a[k] == b[k]:
            k += 1
        return k

    shared = [common(a, b) for a, b in itertools.pairwise(ids)]
    # P(k or more equal leading digits) = 16**-k: over 100,000 pairs, k >= 8 would be a
    # one-in-43,000 accident; the mean is 1/15
    assert max(shared) < 8
    assert sum(shared) / len(shared) < 0.1
    # the last digits, where a counter moves fastest, are as uniform as the first
    for pos in (0, 10, 19):
        counts = Counter(i[pos] for i in ids)
        assert len(counts) == 16
        assert max(counts.values()) < n / 16 * 1.1 and min(counts.values()) > n / 16 * 0.9
    # branches are the cookie and one such id
    branches = [new_branch() for _ in range(1000)]
    assert all(
        b.startswith(MAGIC_COOKIE + "-") and len(b) == len(MAGIC_COOKIE) + 21 for b in branches
    )


def test_a_transition_missing_from_the_table_is_refused(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(txm, "_ALLOWED", frozenset())
    lay, _, _, _, invite = start()
    with pytest.raises(txm.IllegalTransitionError):
        lay.receive_response(resp(invite, 180), UDP, 0.1)


def test_many_transactions_leave_nothing_behind() -> None:
    """Memory: after everything has ended no transaction and no timer is left."""
    lay, tu = layer()
    owners = []
    for i in range(50):
        owner = ClientRec()
        owners.append(owner)
        method = "INVITE" if i % 2 else "OPTIONS"
        request = req(method, branch=f"z9hG4bK-c{i}", call_id=f"c{i}")
        tx = lay.send_request(request, UDP, owner, float(i))
        if i % 5 == 0:
            continue  # never answered: Timer B / F
        lay.receive_response(resp(request, 180), UDP, i + 0.1)
        if i % 3 == 0 and method == "INVITE":
            lay.cancel(tx, i + 0.2)  # never answered after the CANCEL: §9.1 timer
            continue
        lay.receive_response(resp(request, 200 if i % 4 else 486), UDP, i + 0.3)
    for i in range(50):
        method = "INVITE" if i % 2 else "OPTIONS"
        request = req(method, branch=f"z9hG4bK-s{i}", call_id=f"s{i}")
        lay.receive_request(request, UDP, float(i))
        stx = tu.requests[-1][1]
        assert stx is not None
        stx.owner = ServerRec()
        if i % 7 == 0:
            continue  # the TU never answers: it drops the transaction at the end
        stx.respond(make_response(request, 200 if i % 3 else 404, to_tag="t"), i + 0.5)
        if i % 3 == 0 and method == "INVITE":
            lay.receive_request(req("ACK", branch=f"z9hG4bK-s{i}", call_id=f"s{i}"), UDP, i + 1)
    take(lay)
    advance(lay, 10_000.0)
    for stx in list(lay.server.values()):
        stx.terminate()
    assert_idle(lay)
    assert sum(1 for o in owners if o.events and o.events[-1][0] == "timeout") >= 10


# =========================================================================================
# the table: every row taken, and the docs drawn from it
# =========================================================================================


def _initial_states() -> dict[str, State]:
    machines = list(dict.fromkeys(m for m, *_ in TRANSITIONS))
    out = {}
    for m in machines:
        targets = {b for mm, _, b, _, _ in TRANSITIONS if mm == m}
        [first] = list(
            dict.fromkeys(a for mm, a, _, _, _ in TRANSITIONS if mm == m and a not in targets)
        )
        out[m] = first
    return out


MACHINE_TITLES = {
    "ICT": "INVITE client transaction (ICT)",
    "NICT": "non-INVITE client transaction (NICT)",
    "IST": "INVITE server transaction (IST)",
    "NIST": "non-INVITE server transaction (NIST)",
}


def render_transitions() -> str:
    """The state diagrams (Mermaid) and tables of ``TRANSITIONS``, as docs/transactions.md
    holds them between its GENERATED markers."""
    initial = _initial_states()
    out: list[str] = []
    for machine, first in initial.items():
        rows = [r for r in TRANSITIONS if r[0] == machine]
        out.append(f"### {MACHINE_TITLES.get(machine, machine)}")
        out.append("")
        out.append("```mermaid")
        out.append("stateDiagram-v2")
        out.append(f"    [*] --> {first.value}")
        for _, a, b, event, section in rows:
            ref = section if section.startswith("RFC") else f"§{section}"
            out.append(f"    {a.value} --> {b.value}: {event} ({ref})")
        out.append(f"    {State.TERMINATED.value} --> [*]")
        out.append("```")
        out.append("")
        out.append("| from | to | event | section |")
        out.append("|---|---|---|---|")
        for _, a, b, event, section in rows:
            cell = event.replace("*", "\\*")  # not emphasis in Markdown
            out.append(f"| {a.value} | {b.value} | {cell} | {section} |")
        out.append("")
    return "\n".join(out)


BEGIN = "<!-- BEGIN GENERATED from sipguard.sip.transaction.TRANSITIONS -->"
END = "<!-- END GENERATED -->"


def _doc_parts(text: str) -> tuple[str, str, str]:
    head, sep, rest = text.partition(BEGIN + "\n")
    assert sep, f"{DOC} lacks the line {BEGIN}"
    body, sep, tail = rest.partition(END)
    assert sep, f"{DOC} lacks the line {END}"
    return head, body, tail


def test_the_docs_hold_exactly_the_diagrams_of_the_table() -> None:
    _, body, _ = _doc_parts(DOC.read_text(encoding="utf-8"))
    assert body == render_transitions(), (
        "docs/transactions.md is out of date: run python -m tests.test_sip_transaction"
    )


def test_the_table_has_no_duplicate_rows_and_only_known_states() -> None:
    keys = [(m, a, b) for m, a, b, _, _ in TRANSITIONS]
    assert len(keys) == len(set(keys))
    assert set(_initial_states()) == set(MACHINE_TITLES)
    for _m, a, b, event, section in TRANSITIONS:
        assert a is not State.TERMINATED and a is not b and event and section


def unexercised_rows() -> list[str]:
    """What the session hook reports once every test here has run: the rows of
    TRANSITIONS no test took, and any transition taken that is not in the table."""
    missing = [r for r in TRANSITIONS if (r[0], r[1], r[2]) not in FIRED]
    unknown = FIRED - {(m, a, b) for m, a, b, _, _ in TRANSITIONS}
    return [f"row never exercised: {r}" for r in missing] + [
        f"transition not in the table: {u}" for u in sorted(unknown, key=str)
    ]


def _write_docs() -> None:
    head, _, tail = _doc_parts(DOC.read_text(encoding="utf-8"))
    DOC.write_text(head + BEGIN + "\n" + render_transitions() + END + tail, encoding="utf-8")


if __name__ == "__main__":
    _write_docs()

"""Issue 13, second review of the i13fix merge (8f09b87): what the four fixes left open.

In memory (``testkit.callsim``), as tests/test_attack_dialog_hijack.py: the attacker is
another program at a peer's address on a second TCP connection, or another trunk. Each
test here FAILS on 8f09b87 (see its docstring).
"""

from __future__ import annotations

from sipguard.b2bua.outgoing import MAX_FORKS
from sipguard.metrics import Metrics
from sipguard.sip.message import Request, Response
from sipguard.sip.transaction import Flow
from testkit.callsim import (
    CALLER,
    CONFIG,
    PEER2,
    SDP,
    SDP_CALLEE,
    T1,
    Established,
    Wire,
    config_text,
    establish,
    in_dialog,
    invite,
    requests,
    response_to,
)


def statuses(msgs: list[Request | Response]) -> list[int]:
    return [m.status for m in msgs if isinstance(m, Response)]


def active(w: Wire) -> float:
    assert w.metrics is not None
    return w.metrics.registry.get_sample_value("sipguard_active_calls") or 0.0


def cancel_without_to_tag(req: bytes) -> bytes:
    """A CANCEL as a forger writes it from a request it saw the branch of (or guessed:
    a counter): Request-URI, Via, From, Call-ID and CSeq number copied, To without tag."""
    head = req.split(b"\r\n\r\n")[0].decode()
    lines = head.split("\r\n")
    uri = lines[0].split(" ", 2)[1]
    keep = []
    for line in lines[1:]:
        name = line.split(":", 1)[0].strip().lower()
        if name in ("via", "from", "call-id"):
            keep.append(line)
        elif name == "to":
            keep.append(line.split(";tag=")[0])
        elif name == "cseq":
            keep.append(f"CSeq: {line.split(':', 1)[1].split()[0]} CANCEL")
    text = f"CANCEL {uri} SIP/2.0\r\n" + "\r\n".join(keep)
    return (text + "\r\nMax-Forwards: 70\r\nContent-Length: 0\r\n\r\n").encode()


def test_rr_cancel_of_a_reinvite_on_a_second_connection_reveals_no_to_tag() -> None:
    """FAILS on 8f09b87 (medium, finding 1 again for re-INVITEs): ``stx.peer`` is set only
    on the call's first INVITE (call.py:131), so for a re-INVITE's server transaction
    ``B2BUA.cancel_allowed`` (core.py:419) still falls back to comparing (listen entry,
    host). A CANCEL copying the caller's re-INVITE branch (a counter in many UAs) on
    another TCP connection from the caller's address, without To tag, gets 200 with the
    dialog's To tag (``last_to`` of the 100 or the final response), while the same
    CANCEL for the first INVITE gets 481. The docstring's assumption that a re-INVITE's
    CANCEL repeats its To tag holds for the peer, not for the forger."""
    w = Wire(config_text(CONFIG), metrics=Metrics(), caller_transport="tcp")
    w.core.connection_up(1)
    call = establish(w, 1)
    a_tag = call.a_ok.to.tag or ""
    assert a_tag
    reinvite = in_dialog("INVITE", call.a_ok, 2, 1, "z9hG4bK-1-2-0", SDP)
    w.from_caller(reinvite)  # on the caller's connection: relayed to the callee
    (reinv_b,) = requests(w.take_callee(), "INVITE")
    w.take_caller()
    forger = Flow("tcp", 1, *CALLER, conn=2)
    for phase in ("pending", "answered"):
        if phase == "answered":
            w.from_callee(response_to(reinv_b, 200, "OK", None, SDP_CALLEE))
            assert statuses(w.take_caller()) == [200]
            w.from_caller(in_dialog("ACK", call.a_ok, 2, 1, "z9hG4bK-1-2-ack"))
            w.take_callee()
        w.core.receive(cancel_without_to_tag(reinvite), forger, w.now)
        sent = [data for _, data in w.core.outbox]
        w.flush()
        got = w.take_caller()
        assert all(a_tag.encode() not in data for data in sent), (phase, sent)
        assert statuses(got) == [481], phase
    assert active(w) == 1


def test_rr_a_late_2xx_of_the_answered_dialog_from_its_peer_draws_no_bye() -> None:
    """FAILS on 8f09b87 (low; real peers): after Timer M a 2xx comes by
    ``on_stray_response``, now believed from any address of the B-leg's trunk
    (``Peers.from_peer``). ``Call.stray_2xx`` (call.py:405) still takes it as the answered
    dialog's only if it comes from the B-leg's exact host *and port*: the callee's own 2xx
    retransmission (same To tag) from another port (a new TCP connection, §18.2.2) or
    another of its trunk's addresses goes to ``ack_and_bye`` as a "fork", which sends a
    BYE with the live B-leg's own Call-ID and tags: the callee hangs up, the caller stays
    in a call with nobody (sipguard still counts it answered). The tag alone should
    decide (the source is checked already): re-ACK on b.flow, never BYE it."""
    w = Wire(
        config_text(
            CONFIG.replace("sources: [127.0.0.2/32]", "sources: [127.0.0.2/32, 127.0.0.4/32]")
        ),
        metrics=Metrics(),
    )
    call = establish(w, 1)
    w.advance(64 * T1 + 1)  # Timer M: our INVITE client transaction is gone
    w.take_callee()
    again = response_to(call.b_invite, 200, "OK", call.callee_tag, SDP_CALLEE)
    w.from_peer(PEER2, again)  # the callee's second node (or a new connection's port)
    sent = w.take(PEER2) + w.take_callee()
    assert [m.method for m in requests(sent)] in ([], ["ACK"]), [m.method for m in requests(sent)]
    assert active(w) == 1


def test_rr_the_ninth_forks_retransmitted_2xx_is_byed_again_each_time() -> None:
    """FAILS on 8f09b87 (low): past ``MAX_FORKS`` (outgoing.py:299) nothing of a fork is
    kept, so each retransmission of its 2xx is a new fork: a new ACK *and a new BYE* (a
    new client transaction, 32 s, 10 retransmissions over UDP) every time, against
    §13.2.2.4 ("BYE it only once") and the docstring's "bounded state": the callee's
    trunk turns one datagram into about a dozen, for as long as it sends."""
    w = Wire(config_text(CONFIG), metrics=Metrics())
    call: Established = establish(w, 1)
    for i in range(MAX_FORKS):
        w.from_callee(response_to(call.b_invite, 200, "OK", f"fork{i}", SDP_CALLEE))
    w.take_callee()
    late = response_to(call.b_invite, 200, "OK", "fork-late", SDP_CALLEE)
    for _ in range(5):
        w.from_callee(late)
    byes = requests(w.take_callee(), "BYE")
    assert len(byes) <= 1, len(byes)


def test_rr_a_metered_second_address_of_the_callers_trunk_still_ends_its_call() -> None:
    """FAILS on 8f09b87 (low; real peers, a regression of fix 3): ``gate.bound_to``
    (gate.py:174) passes a metered source only if it is the very (listen entry, host) a
    leg was set up with, where ``Peers.from_peer`` accepts any address of the leg's trunk
    (a peer answering or hanging up from another of its ``sources``; a customer behind
    the balancer that sends its BYE straight to the instance, deploy/kamailio). Once that
    address has spent its ``stray_mps``, the real peer's BYE is dropped unread and the
    call is never ended (before the fix any live Call-ID passed). Keep the leg's trunk in
    ``Gate.live`` and pass a source of that trunk: other trunks' calls stay hidden."""
    text = CONFIG.replace("sources: [127.0.0.3/32]", "sources: [127.0.0.3/32, 127.0.0.4/32]")
    w = Wire(config_text(text + "limits: {stray_mps: 2}\n"), metrics=Metrics())
    call = establish(w, 1)
    for i in range(3):  # this second node's junk spends the budget
        junk = in_dialog("BYE", call.a_ok, 30 + i, 1, f"z9hG4bK-junk-{i}").replace(
            call.a_ok.call_id.encode(), f"dead-{i}@x".encode()
        )
        w.from_peer(PEER2, junk.replace(b"127.0.0.3:5062", b"127.0.0.4:5080"))
    w.take(PEER2)
    bye = in_dialog("BYE", call.a_ok, 2, 1, "z9hG4bK-1-bye").replace(
        b"127.0.0.3:5062", b"127.0.0.4:5080"
    )
    w.from_peer(PEER2, bye)  # the caller's trunk, its other address: from_peer says yes
    assert requests(w.take_callee(), "BYE"), "the caller's BYE never reached the callee"


def test_rr_a_late_2xx_of_a_target_given_up_on_is_still_acked_and_byed() -> None:
    """FAILS on 8f09b87 (low; real peers, a regression of fix 2): ``on_stray_response``
    (core.py:397) believes a 2xx only from the B-leg's *current* peer (``b.flow``). A
    trunk may have targets and no sources (loader.py:482); after a failover, the first
    target's 2xx that comes once its INVITE transaction has ended (Timer B, then a slow
    answer) is from no source of the trunk: dropped, never ACKed nor BYEd (§13.2.2.4), so
    that target keeps an answered dialog (and retransmits its 2xx for 64*T1). Believe
    it also from the flows the B-leg INVITE was sent to (``Outgoing`` keeps them, at most
    targets + MAX_RETRIES)."""
    cfg = CONFIG.replace(
        '    sources: [127.0.0.2/32]\n    trusted: true\n    targets: ["sip:127.0.0.2:5080"]',
        '    trusted: true\n    targets: ["sip:127.0.0.4:5080", "sip:127.0.0.2:5080"]',
    )
    w = Wire(config_text(cfg), metrics=Metrics())
    w.from_caller(invite(1))
    (first,) = requests(w.take(PEER2), "INVITE")
    w.advance(3.5)  # target_timeout: the second target is tried
    second = requests(w.take_callee(), "INVITE")[0]  # (and its retransmission)
    w.from_callee(response_to(second, 200, "OK", "c1", SDP_CALLEE))
    (ok,) = [m for m in w.take_caller() if isinstance(m, Response) and m.status == 200]
    w.from_caller(in_dialog("ACK", ok, 1, 1, "z9hG4bK-1-ack"))
    w.advance(40.0)  # the first target's INVITE transaction is over
    w.take(PEER2)
    w.take_callee()
    w.from_peer(PEER2, response_to(first, 200, "OK", "late1", SDP_CALLEE, contact=PEER2))
    assert [m.method for m in requests(w.take(PEER2))] == ["ACK", "BYE"]

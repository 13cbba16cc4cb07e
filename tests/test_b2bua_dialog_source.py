"""A dialog is bound to the peer it was set up with (SPEC §8, RFC 3261 §12.2.2, §9.2).

In memory (``tests/callsim``): a live call's exact Call-ID and tags, sent from an address
that matches no trunk, from another trunk's address, and over another connection of the
right address, get the ``481`` any dialog-less request gets, reach nobody, change
nothing and are counted; the same from the leg's own peer still works, also after a
target refresh and after its connection has closed.
"""

from __future__ import annotations

from sipguard.sip.message import Response
from sipguard.sip.transaction import Flow
from testkit.callsim import (
    CALLEE,
    CALLER,
    PEER2,
    SDP,
    STRANGER,
    T1,
    Established,
    Wire,
    callee_request,
    cancel_of,
    establish,
    in_dialog,
    invite,
    requests,
    response_to,
)
from testkit.hijack import EVIL_SDP, active, refused, statuses, wire


def rewrite_via(data: bytes, addr: tuple[str, int]) -> bytes:
    """The same request as sent from ``addr`` (its Via names it, as a forger's would)."""
    h, p = addr
    return data.replace(f"{CALLER[0]}:{CALLER[1]}".encode(), f"{h}:{p}".encode()).replace(
        f"{CALLEE[0]}:{CALLEE[1]}".encode(), f"{h}:{p}".encode()
    )


def caller_bye(call: Established, branch: str = "bye") -> bytes:
    return in_dialog("BYE", call.a_ok, 2, call.n, f"z9hG4bK-{call.n}-{branch}")


def callee_reinvite(call: Established, cseq: int = 2) -> bytes:
    return callee_request("INVITE", call.b_invite, call.callee_tag, cseq, call.n, body=EVIL_SDP)


def assert_untouched(w: Wire, before: float) -> None:
    """Nothing reached either peer, the call is still up, and the refusal was counted."""
    assert w.take_caller() == []
    assert w.take_callee() == []
    assert active(w) == 1
    assert refused(w) == before + 1
    assert [r for r in w.core.cdr_out if r.kind == "end"] == []


def test_a_forged_bye_or_reinvite_from_a_source_of_no_trunk_is_a_403() -> None:
    """A source that matches no trunk gets 403 whatever it sends (SPEC §8), the live
    call's exact ids included: the same answer as without them."""
    w = wire()
    call = establish(w, 1)
    for data in (caller_bye(call), callee_reinvite(call)):
        before = refused(w)
        w.from_peer(STRANGER, rewrite_via(data, STRANGER))
        assert statuses(w.take(STRANGER)) == [403]
        assert_untouched(w, before)


def test_a_forged_bye_or_reinvite_from_another_trunks_address_is_a_481() -> None:
    w = wire()
    call = establish(w, 1)
    for data in (caller_bye(call), callee_reinvite(call)):
        before = refused(w)
        w.from_peer(PEER2, rewrite_via(data, PEER2))
        assert statuses(w.take(PEER2)) == [481]
        assert_untouched(w, before)


def test_a_forged_ack_with_sdp_is_dropped_silently() -> None:
    w = wire()
    call = establish(w, 1)
    before = refused(w)
    ack = in_dialog("ACK", call.a_ok, 1, 1, "z9hG4bK-forged-ack", body=EVIL_SDP)
    w.from_peer(STRANGER, rewrite_via(ack, STRANGER))
    assert w.take(STRANGER) == []
    assert_untouched(w, before)


def test_the_real_peers_end_the_call_and_the_cdr_says_who() -> None:
    w = wire()
    call = establish(w, 1)
    w.from_peer(
        STRANGER, rewrite_via(callee_request("BYE", call.b_invite, "callee1", 2, 1), STRANGER)
    )
    w.take(STRANGER)
    w.from_caller(caller_bye(call))
    (bye,) = requests(w.take_callee(), "BYE")
    w.from_callee(response_to(bye, 200, "OK", None))
    assert statuses(w.take_caller()) == [200]
    (end,) = [r for r in w.core.cdr_out if r.kind == "end"]
    assert end.end_reason == "caller_bye"
    assert active(w) == 0


def test_the_callee_ends_the_call_after_a_target_refresh() -> None:
    """RFC 3261 §12.2.1.1: a re-INVITE with a new Contact moves the leg's remote target;
    the peer is still the one the leg was set up with, and its BYE is believed."""
    w = wire()
    call = establish(w, 1)
    moved = callee_request("INVITE", call.b_invite, call.callee_tag, 2, 1, body=SDP).replace(
        b"Contact: <sip:127.0.0.2:5080>", b"Contact: <sip:moved@127.0.0.2:5099>"
    )
    w.from_callee(moved)
    (reinvite,) = requests(w.take_caller(), "INVITE")
    w.from_caller(response_to(reinvite, 200, "OK", None, SDP, contact=CALLER))
    (ok,) = [m for m in w.take_callee() if isinstance(m, Response) and m.status == 200]
    w.from_callee(callee_request("ACK", call.b_invite, call.callee_tag, 2, 1))
    w.take_caller()
    w.from_callee(callee_request("BYE", call.b_invite, call.callee_tag, 3, 1))
    (bye,) = requests(w.take_caller(), "BYE")
    w.from_caller(response_to(bye, 200, "OK", None, contact=CALLER))
    (end,) = [r for r in w.core.cdr_out if r.kind == "end"]
    assert end.end_reason == "callee_bye"
    assert ok.status == 200


def test_a_forged_cancel_copying_the_invites_branch_is_a_481_and_the_call_goes_on() -> None:
    w = wire()
    data = invite(1)
    w.from_caller(data)
    (b_inv,) = requests(w.take_callee(), "INVITE")
    w.from_callee(response_to(b_inv, 180, "Ringing", "callee1"))
    w.take_caller()
    cancel = (
        data.split(b"\r\n\r\n")[0]
        .replace(b"INVITE sip:", b"CANCEL sip:")
        .replace(b"CSeq: 1 INVITE", b"CSeq: 1 CANCEL")
        .replace(b"Content-Type: application/sdp\r\n", b"")
        .split(b"Content-Length")[0]
        + b"Content-Length: 0\r\n\r\n"
    )
    # the Via still names the caller, as a forger copies it: a CANCEL matches its INVITE
    # only from the INVITE's source (RFC 3261 §17.2.3 scoped to it), so this one matches
    # nothing; from another trunk it gets the 481 of a CANCEL for no INVITE, from a source
    # of no trunk the 403 of everything else
    w.from_peer(PEER2, cancel)
    assert statuses(w.take(PEER2)) == [481]  # back to where it came from (RFC 3581)
    w.from_peer(STRANGER, cancel)
    assert statuses(w.take(STRANGER)) == [403]
    assert w.take_caller() == []
    assert w.take_callee() == []  # no CANCEL of the B-leg
    w.from_caller(cancel)  # the caller's own CANCEL still works
    assert sorted(statuses(w.take_caller())) == [200, 487]
    assert requests(w.take_callee(), "CANCEL")


def test_over_tcp_only_the_legs_open_connection_speaks_for_its_peer() -> None:
    """The same address but another connection (another port) is not the caller while
    the caller's own connection is open; once it has closed, the caller may reconnect."""
    w = wire("tcp")
    w.core.connection_up(1)
    call = establish(w, 1)
    bye = caller_bye(call)
    before = refused(w)
    w.core.receive(bye, Flow("tcp", 1, *CALLER, conn=2), w.now)
    w.flush()
    assert statuses(w.take_caller()) == [481]  # on connection 2, to the forger
    assert_untouched(w, before)
    w.core.connection_down(1)
    w.core.receive(caller_bye(call, "bye2"), Flow("tcp", 1, *CALLER, conn=3), w.now)
    w.flush()
    (bye_b,) = requests(w.take_callee(), "BYE")
    w.from_callee(response_to(bye_b, 200, "OK", None))
    (end,) = [r for r in w.core.cdr_out if r.kind == "end"]
    assert end.end_reason == "caller_bye"


def test_once_answered_a_cancel_is_still_its_callers_alone_and_changes_nothing() -> None:
    """RFC 3261 §9.2: a CANCEL for an INVITE that has its final response has no effect,
    and its 200 carries the To tag of the INVITE's responses: the caller's, which knows
    it. The INVITE's transaction outlives the ACK, and the call (Timer L); all that time,
    a CANCEL with its branch on another connection from the caller's address gets the
    481 of no INVITE, counted, and no To tag."""
    w = wire("tcp")
    w.core.connection_up(1)
    call = establish(w, 1)
    a_tag = call.a_ok.to.tag
    assert a_tag
    forged = Flow("tcp", 1, *CALLER, conn=2)
    before = refused(w)
    w.core.receive(cancel_of(1), forged, w.now)
    w.flush()
    assert statuses(w.take_caller()) == [481]
    assert_untouched(w, before)
    w.from_caller(cancel_of(1))  # the caller's own
    (ok,) = [m for m in w.take_caller() if isinstance(m, Response)]
    assert (ok.status, ok.to.tag) == (200, a_tag)
    assert w.take_callee() == [] and active(w) == 1
    w.from_caller(caller_bye(call))  # the call ends; its INVITE transaction is kept
    (bye,) = requests(w.take_callee(), "BYE")
    w.from_callee(response_to(bye, 200, "OK", None))
    w.take_caller()
    w.advance(1.0)  # the 200 to the caller's CANCEL is gone (Timer J), Timer L is not
    assert [tx.is_invite for tx in w.core.layer.server.values()] == [True]
    before = refused(w)
    w.core.receive(cancel_of(1), forged, w.now)
    w.flush()
    (no,) = [m for m in w.take_caller() if isinstance(m, Response)]
    assert no.status == 481 and a_tag not in no.to_bytes().decode()
    assert refused(w) == before + 1


def test_a_2xx_of_our_invite_is_believed_only_from_the_b_legs_peer() -> None:
    """A 2xx that matches no transaction of ours (§13.2.2.4) is found by the B-leg's
    Call-ID and From tag alone: from another trunk it is dropped, counted, and draws
    nothing (no ACK, no BYE towards an address that may be forged); from the callee the
    same 2xx of another fork is ACKed and BYEd."""
    w = wire()
    call = establish(w, 1)
    w.advance(64 * T1 + 1)  # our INVITE client transaction is gone (Timer M)
    before = refused(w)
    forged = response_to(call.b_invite, 200, "OK", "fork2", SDP, contact=PEER2)
    w.from_peer(PEER2, rewrite_via(forged, PEER2))
    w.advance(5.0)
    assert w.take(PEER2) == []
    assert_untouched(w, before)
    w.from_callee(response_to(call.b_invite, 200, "OK", "fork2", SDP))
    assert [m.method for m in requests(w.take_callee())] == ["ACK", "BYE"]
    assert refused(w) == before + 1


def test_a_refused_reinvite_draws_exactly_one_response() -> None:
    """SPEC §8, no amplification: the 481 is sent without a transaction, so it is not
    retransmitted towards a source that may be forged (Timer G would send it 11 times)."""
    w = wire()
    call = establish(w, 1)
    for peer in (STRANGER, PEER2):
        w.from_peer(peer, rewrite_via(callee_reinvite(call), peer))
    w.advance(40.0)
    assert statuses(w.take(STRANGER)) == [403]
    assert statuses(w.take(PEER2)) == [481]
    assert w.core.layer.server == {}


def test_a_forger_using_the_callers_next_branch_cannot_swallow_its_bye() -> None:
    """A caller's next branch may be predictable (a counter): a request from elsewhere
    with it makes no transaction the caller's real BYE would be taken as a copy of."""
    w = wire()
    call = establish(w, 1)
    bye = caller_bye(call)  # the Via names the caller, the branch is the caller's next
    w.from_peer(PEER2, bye)
    assert statuses(w.take(PEER2)) == [481]
    w.from_caller(bye)
    (bye_b,) = requests(w.take_callee(), "BYE")
    w.from_callee(response_to(bye_b, 200, "OK", None))
    assert statuses(w.take_caller()) == [200]
    assert active(w) == 0


def test_a_request_with_another_remote_tag_is_not_of_the_dialog() -> None:
    """RFC 3261 §12.2.2: the remote tag is part of the dialog's id."""
    w = wire()
    call = establish(w, 1)
    info = callee_request("INFO", call.b_invite, "another-fork", 2, 1)
    w.from_callee(info)
    assert statuses(w.take_callee()) == [481]
    assert w.take_caller() == []


def test_another_trunk_cannot_take_over_a_challenged_b_leg() -> None:
    """The retry of a challenged INVITE goes on the same B-leg (RFC 3261 §22.2), matched
    by the caller's Call-ID and From tag, which are the caller's to choose: only the
    caller that was challenged continues that leg."""
    w = wire()
    w.from_caller(invite(1))
    (b1,) = requests(w.take_callee(), "INVITE")
    chal = 'Proxy-Authenticate: Digest realm="pbx", nonce="n1"\r\n'
    w.from_callee(response_to(b1, 407, "Proxy Authentication Required", "t", extra=chal))
    w.take_callee()
    w.take_caller()
    cred = 'Proxy-Authorization: Digest username="x", realm="pbx", nonce="n1", response="0"\r\n'
    w.from_peer(PEER2, invite(1, headers=cred, cseq=2, addr=PEER2, from_user="+31401234567"))
    (other,) = requests(w.take_callee(), "INVITE")
    assert other.call_id != b1.call_id  # a call of its own, not the caller's leg
    w.from_caller(invite(1, headers=cred, cseq=2))
    (retry,) = requests(w.take_callee(), "INVITE")
    assert (retry.call_id, retry.from_.tag) == (b1.call_id, b1.from_.tag)

"""Issue 13 review: an outsider who knows SIP tries to end, redirect or learn about another
caller's call (in memory, ``testkit.callsim``).

The attacker sits at another trunk's address (127.0.0.4, trunk ``other``), or at the
caller's own address on a second TCP connection, and is given a live call's exact
Call-ID and tags (both legs'), and where said, the branch of the caller's INVITE (a
counter in many user agents). Each attack must reach neither peer, leave the call and its
CDR as they were, and draw no response that tells the dialog apart from no dialog.

Two tests here fail on the reviewed code (see their docstrings): a CANCEL that reveals
the dialog's To tag, and a 2xx from anywhere that makes sipguard ACK and BYE towards it.
"""

from __future__ import annotations

from sipguard.b2bua.call import Call
from sipguard.metrics import Metrics
from sipguard.sip.message import Request, Response
from sipguard.sip.transaction import Flow
from testkit.callsim import (
    CALLER,
    CONFIG,
    PEER2,
    SDP,
    SDP_CALLEE,
    Established,
    Wire,
    callee_request,
    cancel_of,
    config_text,
    establish,
    in_dialog,
    requests,
    response_to,
    start_call,
)

OTHER_TRUNK = """
  other:
    sources: [127.0.0.4/32]
    route_to: pbx
    allowed_cli: ["+3140*"]
    default_cli: "+31401234000"
"""
EVIL_SDP = SDP.replace(b"127.0.0.3", b"198.51.100.66")


def wire(transport: str = "udp") -> Wire:
    return Wire(config_text(CONFIG + OTHER_TRUNK), metrics=Metrics(), caller_transport=transport)


def refused(w: Wire) -> float:
    assert w.metrics is not None
    value = w.metrics.registry.get_sample_value(
        "sipguard_rejected_total", {"reason": "dialog_source"}
    )
    return value or 0.0


def active(w: Wire) -> float:
    assert w.metrics is not None
    return w.metrics.registry.get_sample_value("sipguard_active_calls") or 0.0


def statuses(msgs: list[Request | Response]) -> list[int]:
    return [m.status for m in msgs if isinstance(m, Response)]


def the_call(w: Wire) -> Call:
    (call,) = w.core.table.calls()
    return call


def untouched(w: Wire) -> None:
    """Nothing reached either peer, the call is up, no CDR end record."""
    assert w.take_caller() == []
    assert w.take_callee() == []
    assert active(w) == 1
    assert [r for r in w.core.cdr_out if r.kind == "end"] == []


def as_peer2(data: bytes) -> bytes:
    """The same message as written at PEER2 (its Via names PEER2, as a forger's would)."""
    return data.replace(b"127.0.0.3:5062", b"127.0.0.4:5080").replace(
        b"127.0.0.2:5080", b"127.0.0.4:5080"
    )


def caller_req(
    call: Established, method: str, cseq: int, body: bytes = b"", extra: str = ""
) -> bytes:
    return in_dialog(method, call.a_ok, cseq, call.n, f"z9hG4bK-f-{method}-{cseq}", body, extra)


def callee_req(
    call: Established, method: str, cseq: int, body: bytes = b"", extra: str = ""
) -> bytes:
    return callee_request(method, call.b_invite, call.callee_tag, cseq, call.n, body, extra)


# -- attacks that fail (the fix holds) ------------------------------------------------------


def test_attack_every_in_dialog_method_from_another_trunk_is_a_481_and_changes_nothing() -> None:
    """UPDATE, INFO, PRACK, OPTIONS, MESSAGE, BYE and re-INVITE, with both legs' exact
    ids, from another trunk's address: the 481 of no dialog, each counted, nothing moves."""
    w = wire()
    call = establish(w, 1)
    forged = []
    for i, method in enumerate(("UPDATE", "INFO", "PRACK", "OPTIONS", "MESSAGE", "BYE", "INVITE")):
        body = EVIL_SDP if method in ("UPDATE", "INVITE") else b""
        extra = "RAck: 1 1 INVITE\r\n" if method == "PRACK" else ""
        forged.append(caller_req(call, method, 10 + i, body, extra))
        forged.append(callee_req(call, method, 10 + i, body, extra))
    for data in forged:
        before = refused(w)
        w.from_peer(PEER2, as_peer2(data))
        assert statuses(w.take(PEER2)) == [481], data
        assert refused(w) == before + 1
        untouched(w)
    # the real caller still ends it, and the CDR says who
    w.from_caller(caller_req(call, "BYE", 2))
    (bye,) = requests(w.take_callee(), "BYE")
    w.from_callee(response_to(bye, 200, "OK", None))
    (end,) = [r for r in w.core.cdr_out if r.kind == "end"]
    assert end.end_reason == "caller_bye"


def test_attack_the_481_to_a_live_dialog_is_the_481_to_no_dialog() -> None:
    """The refusal is byte for byte what a request for no dialog gets (Call-ID and tags
    aside): no oracle for which calls exist."""
    w = wire()
    call = establish(w, 1)
    real = as_peer2(caller_req(call, "BYE", 7))
    fake = real.replace(call.a_ok.to.tag.encode(), b"0123456789abcdef0123")
    w.from_peer(PEER2, real)
    (r1,) = w.others.pop(PEER2)
    w.from_peer(PEER2, fake)
    (r2,) = w.others.pop(PEER2)
    assert r1.replace(call.a_ok.to.tag.encode(), b"0123456789abcdef0123") == r2
    untouched(w)


def test_attack_swapped_or_guessed_tags_from_the_real_peer_are_no_dialog() -> None:
    w = wire()
    call = establish(w, 1)
    a_tag = call.a_ok.to.tag or ""
    caller_tag = call.a_ok.from_.tag or ""
    bye = caller_req(call, "BYE", 5)
    swapped = (
        bye.replace(f"tag={a_tag}".encode(), b"tag=SWAP")
        .replace(f"tag={caller_tag}".encode(), f"tag={a_tag}".encode())
        .replace(b"tag=SWAP", f"tag={caller_tag}".encode())
    )
    stale = bye.replace(a_tag.encode(), (a_tag[:-1] + ("0" if a_tag[-1] != "0" else "1")).encode())
    for data in (swapped, stale):
        w.from_caller(data)
        assert statuses(w.take_caller()) == [481]
        assert w.take_callee() == []
        assert active(w) == 1


def test_attack_cancel_on_a_second_tcp_connection_while_ringing_is_a_481() -> None:
    """The caller's own INVITE branch and Via, copied on another connection from the
    caller's address: not the caller's to cancel while its connection is open."""
    w = wire("tcp")
    w.core.connection_up(1)
    b_inv = start_call(w, 1)
    w.from_callee(response_to(b_inv, 180, "Ringing", "callee1"))
    w.take_caller()
    before = refused(w)
    w.core.receive(cancel_of(1), Flow("tcp", 1, *CALLER, conn=2), w.now)
    w.flush()
    assert statuses(w.take_caller()) == [481]
    assert refused(w) == before + 1
    assert w.take_callee() == []  # no CANCEL of the B-leg
    assert active(w) == 1


def test_attack_forged_responses_without_our_branch_change_nothing() -> None:
    """A 200 or 481 "to" the BYE or re-INVITE sipguard may have out, with the B-leg's
    exact ids but a branch the forger cannot know, from another trunk: dropped."""
    w = wire()
    call = establish(w, 1)
    w.from_caller(caller_req(call, "INVITE", 2, SDP))  # a re-INVITE out on the B-leg
    (reinv,) = requests(w.take_callee(), "INVITE")
    w.take_caller()
    for status in (481, 408, 500):
        guessed = response_to(reinv, status, "X", None).replace(
            (reinv.top_via.branch or "").encode(), b"z9hG4bK-00000000000000000000"
        )
        w.from_peer(PEER2, as_peer2(guessed))
        assert w.take(PEER2) == []
    assert w.take_caller() == []
    assert active(w) == 1
    # the real callee's answer still goes through
    w.from_callee(response_to(reinv, 200, "OK", None, SDP_CALLEE))
    assert statuses(w.take_caller()) == [200]


# -- findings: these fail on the reviewed code -----------------------------------------------


def test_attack_cancel_after_the_ack_on_a_second_connection_reveals_no_to_tag() -> None:
    """FAILS on ca01030: once the caller's ACK came, the INVITE server transaction has no
    owner (``ServerTransaction.ack_received`` in Accepted), so ``B2BUA.cancel_allowed``
    falls back to comparing (listen entry, host) only. A CANCEL copying the INVITE's
    branch on another TCP connection from the caller's address (another program there)
    gets ``200`` with the dialog's To tag, where the ringing call's gets 481: the live
    dialog's secret tag and its existence, to the one attacker the issue names."""
    w = wire("tcp")
    w.core.connection_up(1)
    call = establish(w, 1)
    a_tag = call.a_ok.to.tag or ""
    assert a_tag
    w.take_caller()
    w.core.receive(cancel_of(1), Flow("tcp", 1, *CALLER, conn=2), w.now)
    sent = list(w.core.outbox)
    w.flush()
    got = w.take_caller()
    assert all(a_tag.encode() not in data for _, data in sent), sent
    assert statuses(got) == [481]
    untouched(w)


def test_attack_a_2xx_from_another_trunk_draws_no_ack_and_no_bye() -> None:
    """FAILS on ca01030: a 2xx to "our INVITE" that matches no client transaction goes to
    ``B2BUA.on_stray_response``, which finds the call by the B-leg's Call-ID and From tag
    alone and never asks where it came from; ``Call.stray_2xx`` then ACKs it and BYEs it
    towards its source (``Outgoing.ack_and_bye``). From another trunk's address, with the
    live call's ids (the real callee's tag or a new one): sipguard sends an ACK and a BYE
    with the B-leg's dialog to the forger, each new To tag keeps one more fork in
    ``Outgoing.forks`` (unbounded), and over UDP each BYE is retransmitted (Timer E): many
    datagrams to an address the forger may have spoofed, for one."""
    w = wire()
    call = establish(w, 1)
    for tag in ("callee1", *(f"evil{i}" for i in range(20))):
        forged = response_to(call.b_invite, 200, "OK", tag, SDP_CALLEE, contact=PEER2)
        # a branch of its own: ours are unguessable, and none is needed on this path
        forged = forged.replace(
            (call.b_invite.top_via.branch or "").encode(), b"z9hG4bK-00000000000000000000"
        )
        w.from_peer(PEER2, as_peer2(forged))
    w.advance(5.0)
    sent = w.take(PEER2)
    assert [m.method for m in requests(sent)] == [], len(sent)
    assert not the_call(w).out.forks
    untouched(w)


def test_attack_a_metered_source_cannot_tell_live_call_ids_from_dead_ones() -> None:
    """FAILS on ca01030 (low): ``Gate.enter`` lets a metered source's message through when
    its raw Call-ID is in ``Gate.live`` (the Call-IDs of both legs of every call, from any
    trunk), so once an untrusted trunk has spent its ``stray_mps``, a request naming
    someone else's live Call-ID is read and answered 481 while one naming a dead Call-ID
    gets silence: which Call-IDs are in a call now (an A-leg's is its caller's choice,
    often a counter). Such a source should pass only with a Call-ID of its own calls."""
    w = Wire(
        config_text(CONFIG + OTHER_TRUNK + "limits: {stray_mps: 2}\n"),
        metrics=Metrics(),
    )
    call = establish(w, 1)
    live_id = call.a_ok.call_id  # the caller's, e.g. SIPp's "<n>-<pid>@<ip>"

    def bye(call_id: str, i: int) -> bytes:
        return (
            as_peer2(caller_req(call, "BYE", 20 + i))
            .replace(call.a_ok.call_id.encode(), call_id.encode())
            .replace(b"tag=" + (call.a_ok.to.tag or "").encode(), b"tag=0123456789abcdef0123")
        )

    for i in range(3):  # spend the budget of strays
        w.from_peer(PEER2, bye(f"dead-{i}@127.0.0.3", i))
    w.take(PEER2)
    w.from_peer(PEER2, bye("2-sim@127.0.0.3", 5))  # a Call-ID in no call
    dead = statuses(w.take(PEER2))
    w.from_peer(PEER2, bye(live_id, 6))  # the live call's
    live = statuses(w.take(PEER2))
    assert dead == live, (dead, live)
    untouched(w)


def _untemper(y: int) -> int:
    """The MT19937 state word behind one 32-bit output (the tempering undone)."""
    y ^= y >> 18
    y ^= (y << 15) & 0xEFC60000
    t = y
    for _ in range(5):
        t = y ^ ((t << 7) & 0x9D2C5680)
    y = t & 0xFFFFFFFF
    t = y
    for _ in range(2):
        t = y ^ (t >> 11)
    return t & 0xFFFFFFFF


def test_attack_the_cdr_id_of_the_next_call_cannot_be_told_from_earlier_ones() -> None:
    """FAILS on ca01030 (low): ``cdr.record.make_call_id`` draws its 96 bits from
    ``random.Random`` (MT19937, seeded once from the OS): 208 ids seen (a CDR export, the
    logs) give the generator's whole state, and every later id follows. The CDR id is
    also each call's rtpengine session (``call-id`` of the ng commands, with the fixed
    tags ``TAG_A``/``TAG_B``): whoever can reach the control socket could delete or
    re-offer the media of calls not made yet. The same 96 bits from ``secrets`` (or
    ``sip.ids.IdSource``) cost a slice of one batched read."""
    import random

    from sipguard.cdr.record import make_call_id

    seen = [make_call_id("0badcafe") for _ in range(208)]
    words: list[int] = []
    for cdr_id in seen:
        bits = int(cdr_id[8:], 16)  # getrandbits(96): the first output is the low word
        words += [bits & 0xFFFFFFFF, (bits >> 32) & 0xFFFFFFFF, bits >> 64]
    clone = random.Random()
    clone.setstate((3, (*(_untemper(w) for w in words), 624), None))
    predicted = f"0badcafe{clone.getrandbits(96):024x}"
    assert make_call_id("0badcafe") != predicted

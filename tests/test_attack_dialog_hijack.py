"""Issue 13 review: an outsider who knows SIP tries to end, redirect or learn about another
caller's call (in memory, ``testkit.callsim``).

The attacker sits at another trunk's address (127.0.0.4, trunk ``other``), or at the
caller's own address on a second TCP connection, and is given a live call's exact
Call-ID and tags (both legs'), and where said, the branch of the caller's INVITE (a
counter in many user agents). Each attack must reach neither peer, leave the call and its
CDR as they were, and draw no response that tells the dialog apart from no dialog.

The last two sections check the findings of the first review (ca01030: a CANCEL that
revealed the dialog's To tag, a 2xx from anywhere that made sipguard ACK and BYE towards
it, the gate's oracle of live Call-IDs, predictable CDR ids) and of the second review of
their fixes (8f09b87, the ``test_rr_`` tests: a re-INVITE's CANCEL, late 2xx, forks past
``MAX_FORKS``, a trunk's other addresses, a target given up on); all are fixed.
"""

from __future__ import annotations

from sipguard.b2bua.call import Call
from sipguard.b2bua.outgoing import MAX_FORKS
from sipguard.metrics import Metrics
from sipguard.sip.message import Response
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
    callee_request,
    cancel_of,
    config_text,
    establish,
    in_dialog,
    invite,
    requests,
    response_to,
    start_call,
)
from testkit.hijack import (
    EVIL_SDP,
    OTHER_TRUNK,
    active,
    cancel_without_to_tag,
    refused,
    statuses,
    wire,
)


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


# -- findings of the first review (ca01030), fixed ------------------------------------------


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


# -- findings of the second review (8f09b87), fixed -----------------------------------------


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

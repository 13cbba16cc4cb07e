"""The B2BUA call flows of the drachtio SIPp scenarios, each passing through sipguard.

Every test runs one SIPp UAC on the caller address (127.0.0.3, trunk ``customers``)
against sipguard (127.0.0.1), which bridges to one SIPp UAS on the callee address
(127.0.0.2, trunk ``pbx``), as drachtio's own tests run a UAC against the system under
test and a UAS behind it (``../shared/corpus/sipp-scenarios/README.md``).

The corpus files are used in place, read-only. Where a file cannot be used as it is, a
fixed or new scenario lives in ``tests/data/sipp/`` and its header comment says why; the
full list of pairs, and of the scenarios that do not fit a B2BUA, with the reasons, is
``tests/data/sipp/PAIRS.md``.

Each test checks, besides both SIPp scenarios passing:

* the final responses the caller got to its INVITEs (a 3xx is never relayed);
* topology hiding: no header the callee receives names the caller's address or carries
  the caller's Call-ID or tags, and no header the caller receives names the callee's
  address (SPEC §3, issue 3 item 5);
* the CDR records sipguard wrote once stopped with SIGTERM (status, end reason);
* that sipguard logged no internal error (a traceback is a bug, whatever the flow).
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from testkit.sipp import (
    CALLEE_IP,
    CALLER_IP,
    CORPUS,
    DATA,
    Setup,
    Sipguard,
    Sipp,
    SippResult,
    free_port,
    read_cdrs,
    running,
    sipp_available,
    uac,
    uas,
    write_config,
)

pytestmark = [
    pytest.mark.sipp,
    pytest.mark.skipif(not sipp_available(), reason="SIPp (sip-tester) is not installed"),
]

SRF = CORPUS / "drachtio-srf"
SERVER = CORPUS / "drachtio-server"

# where a 302 may send sipguard: inside the pbx trunk's sources (127.0.0.2/32) or not
OUTSIDE_SOURCES = "127.0.0.9"


@dataclass
class Run:
    """What one pair produced, for the extra checks."""

    setup: Setup
    caller: SippResult
    callee: SippResult | None
    callee2: SippResult | None
    sipguard_log: str
    cdrs: list[dict[str, Any]]


@dataclass(frozen=True)
class Pair:
    """One UAC scenario and the UAS it pairs with, and what sipguard must do between them."""

    id: str
    flow: str
    uac: Path
    uas: Path | str | None
    uac_args: tuple[str, ...] = ()
    uas_args: tuple[str, ...] = ()
    config: dict[str, Any] = field(default_factory=dict)
    # the final statuses the caller must receive for its INVITEs, in order; None: any
    # single failure (>= 400)
    finals: tuple[int, ...] | None = (200,)
    uas_must_pass: bool = True
    uac_must_pass: bool = True
    # the end records, in order of their end time: (status, end_reason)
    cdr_ends: tuple[tuple[int, str], ...] | None = ((200, "caller_bye"),)
    timeout: int = 20
    redirect_uas: bool = False  # a second UAS for a 302 to follow
    tcp: bool = False  # both SIPp sides on TCP, and a TCP target
    uas_status: tuple[int, str] | None = None  # for uas-fail.xml: the status line to send
    uas_extra: tuple[str, ...] = ()  # for uas-fail.xml: header lines added to that response
    check: Callable[[Run], None] | None = None


# -- extra checks for single pairs ---------------------------------------------------------


def _late_offer_answer_in_b_ack(run: Run) -> None:
    """Late offer: the caller's answer (in its ACK) reaches the callee in the B-leg ACK."""
    assert run.callee is not None
    acks = [m for m in run.callee.traced() if m.direction == "received" and m.method == "ACK"]
    assert acks, "the callee got no ACK"
    assert "m=audio" in acks[0].body, f"the B-leg ACK carries no SDP answer:\n{acks[0].head()}"


def _callee_acked_then_byed(run: Run) -> None:
    """The callee got our ACK for its 200 and then the caller's BYE (whatever it dropped)."""
    assert run.callee is not None
    got = [m.method for m in run.callee.traced() if m.direction == "received" and m.method]
    assert "ACK" in got and "BYE" in got, f"the callee received {got}"
    assert got.index("ACK") < got.index("BYE"), f"the callee received {got}"


def _reliable_180_to_caller(run: Run) -> None:
    """The caller asked for 100rel: the 180 it gets is reliable, with sipguard's RSeq."""
    got = [m for m in run.caller.traced() if m.direction == "received" and m.status == 180]
    assert got, "the caller got no 180"
    assert "100rel" in got[0].header("require").lower(), got[0].head()
    assert got[0].header("rseq"), got[0].head()


def _no_update_lost(run: Run) -> None:
    """The UPDATE sent by one side reached the other side."""
    assert run.callee is not None
    seen = [
        m
        for r in (run.caller, run.callee)
        for m in r.traced()
        if m.direction == "received" and m.method == "UPDATE"
    ]
    assert seen, "no UPDATE was relayed"


def _no_response_to_ack(run: Run) -> None:
    """A request that is an ACK is never answered, however malformed (RFC 3261 s. 17)."""
    assert run.callee is not None
    traced = run.callee.traced()
    acks = {
        (m.header("via"), m.header("call-id"))
        for m in traced
        if m.direction == "sent" and m.method == "ACK"
    }
    answered = [
        m
        for m in traced
        if m.direction == "received"
        and m.status is not None
        and (m.header("via"), m.header("call-id")) in acks
    ]
    assert not answered, "sipguard answered an ACK:\n" + "\n\n".join(m.head() for m in answered)


def _no_x_custom_to_caller(run: Run) -> None:
    """Towards the untrusted caller, X- headers and Server details are dropped (SPEC s. 3)."""
    finals = [m for m in run.caller.traced() if m.direction == "received" and m.status == 480]
    assert finals
    head = finals[0].head()
    assert "X-Custom" not in head, head
    assert "10.1.2.3" not in head, head


def _redirect_followed(run: Run) -> None:
    assert run.callee2 is not None
    assert run.callee2.successful == 1, run.callee2.describe()


PAIRS: list[Pair] = [
    # -- basic calls (the baseline every other flow varies) -------------------------------------
    Pair(
        "basic-call",
        "basic",
        SRF / "uac.xml",
        SRF / "uas.xml",
        uac_args=("-d", "200"),
    ),
    Pair(
        "basic-call-tcp",
        "basic",
        SERVER / "uac.xml",
        SERVER / "uas-tcp.xml",
        uac_args=("-d", "200"),
        tcp=True,
    ),
    Pair(
        "display-name-from",
        "basic",
        SRF / "uac-displayname-from.xml",
        SERVER / "uas-success.xml",
        uac_args=("-d", "200"),
    ),
    Pair(
        "utf8",
        "basic",
        SERVER / "uac-utf8.xml",
        SERVER / "uas-success.xml",
        uac_args=("-d", "200"),
    ),
    Pair(
        "long-sdp",
        "basic",
        SERVER / "uac-long-sdp.xml",
        SERVER / "uas-success.xml",
        uac_args=("-d", "200"),
    ),
    Pair(
        "preloaded-route-to-sipguard",
        "basic",
        SERVER / "uac-preloaded-route.xml",
        SERVER / "uas-success.xml",
        uac_args=("-d", "200"),
    ),
    Pair(
        "183-then-180-then-200",
        "provisional",
        SERVER / "uac.xml",
        SERVER / "uas-183-180-200.xml",
        uac_args=("-d", "200"),
    ),
    Pair(
        "slow-answer-after-100",
        "provisional",
        SERVER / "uac.xml",
        SERVER / "uas-slow-response.xml",
        uac_args=("-d", "200"),
    ),
    Pair(
        "no-provisional-target-timeout",
        "failure",
        DATA / "uac-expect-failure.xml",
        # no 1xx at all, then a 200 after 4 s: past target_timeout (3 s)
        DATA / "uas-invite-delay-then-ack-bye.xml",
        finals=None,
        cdr_ends=None,
    ),
    Pair(
        "no-ack-from-caller-ends-call",
        "missing ACK",
        SERVER / "uac-drop-all-200.xml",
        SERVER / "uas-success.xml",
        # 64*T1 without the caller's ACK ends the call (RFC 3261 s. 13.3.1.4); T1 = 0.1 s
        config={"sip": {"t1": 0.1}},
        finals=(200,),  # SIPp traces the 200s, then drops them (lost="100")
        cdr_ends=((200, "timeout"),),
    ),
    Pair(
        "options-to-sipguard",
        "OPTIONS",
        SERVER / "uac-options-expect-200.xml",
        None,
        finals=(),
        cdr_ends=(),
    ),
    # -- CANCEL / 487 ------------------------------------------------------------------------
    Pair(
        "cancel-after-180",
        "CANCEL/487",
        SRF / "uac-cancel.xml",
        SRF / "uas-cancel.xml",
        finals=(487,),
        cdr_ends=((487, "cancel"),),
    ),
    Pair(
        "cancel-after-183",
        "CANCEL/487",
        SERVER / "uac-cancel.xml",
        SERVER / "uas-cancel.xml",
        finals=(487,),
        cdr_ends=((487, "cancel"),),
    ),
    # -- CANCEL crossing 200 (RFC 5407) ----------------------------------------------------------
    Pair(
        "cancel-crosses-200",
        "CANCEL/200 race",
        SERVER / "uac-cancel.xml",
        SERVER / "uas-ackbye.xml",
        finals=(487,),
        cdr_ends=((487, "cancel"),),
    ),
    Pair(
        "no-ack-then-cancel-then-bye",
        "CANCEL/200 race",
        DATA / "uac-drop-200-then-cancel.xml",
        SERVER / "uas-drop-one-200.xml",
        finals=(200,),
        cdr_ends=((200, "caller_bye"),),
        # that callee drops each ACK it gets with a 50% chance (lost="50"): when all of
        # ours (one per 200 it repeats) are dropped before the caller's BYE comes through,
        # SIPp aborts on the BYE (1 run in 8 or so). The callee's verdict is chance; the
        # caller's, the BYE reaching the callee and the CDR are checked
        uas_must_pass=False,
        check=_callee_acked_then_byed,
    ),
    # -- early and racing BYE ------------------------------------------------------------------
    Pair(
        "early-bye-from-callee",
        "early BYE",
        DATA / "uac-cancel-after-pause.xml",
        DATA / "uas-bad-bye-then-cancel.xml",
        uac_args=("-d", "5500"),
        finals=(487,),
        cdr_ends=((487, "cancel"),),
    ),
    Pair(
        "bye-from-callee-10ms-after-ack",
        "racing BYE",
        SERVER / "uac-recv-bye.xml",
        SERVER / "uas-bye.xml",
        cdr_ends=((200, "callee_bye"),),
    ),
    Pair(
        "reinvite-then-bye-from-callee",
        "racing BYE",
        DATA / "uac-recv-reinvite-bye.xml",
        DATA / "uas-reinvite-bye.xml",
        cdr_ends=((200, "callee_bye"),),
        # a true race: if the caller's 200 to the re-INVITE reaches sipguard before the
        # callee's BYE, the 200 is relayed (and must be ACKed by the callee); after it, the
        # re-INVITE gets 487 (§15.1.2). Both are right, and a SIPp scenario cannot take
        # both, so only the caller side, the CDR and the log are checked here; the 487
        # path is tested deterministically in tests/test_b2bua_in_dialog.py. The callee
        # waits 300 ms after the ACK, so that the caller's ACK is in: a re-INVITE before
        # it is held (§14.1), and the BYE then ends the call before it is relayed
        uas_must_pass=False,
    ),
    Pair(
        "reinvite-then-bye-from-caller",
        "racing BYE",
        DATA / "uac-reinvite-bye-race.xml",
        DATA / "uas-reinvite-bye-race.xml",
        cdr_ends=((200, "caller_bye"),),
    ),
    # -- re-INVITE both ways ------------------------------------------------------------------
    Pair(
        "reinvite-from-caller",
        "re-INVITE",
        SERVER / "uac-refresh.xml",
        SERVER / "uas-success-reinvite.xml",
        uac_args=("-d", "500"),
    ),
    Pair(
        "reinvite-without-sdp-from-caller",
        "re-INVITE",
        SRF / "uac-send-reinvite-no-sdp.xml",
        DATA / "uas-recv-reinvite-no-sdp.xml",
        cdr_ends=((200, "callee_bye"),),
    ),
    Pair(
        "reinvite-from-callee",
        "re-INVITE",
        SRF / "uac-recv-reinvite.xml",
        DATA / "uas-reinvite-good-ack.xml",
        # both scenarios wait for a BYE, as drachtio's application sent one to each:
        # sipguard's maximum call duration ends the call instead
        config={"sip": {"max_call_duration": 3}},
        cdr_ends=((200, "max_duration"),),
    ),
    Pair(
        "reinvite-from-callee-before-caller-ack",
        "re-INVITE",
        SRF / "uac-delayed-ack.xml",
        DATA / "uas-reinvite-good-ack.xml",
    ),
    Pair(
        "malformed-ack-from-callee-not-answered",
        "re-INVITE",
        SRF / "uac-recv-reinvite.xml",
        DATA / "uas-reinvite.xml",  # its ACK is "ACK sip:sip:HOST:PORT" with "CSeq: 2 INVITE"
        config={"sip": {"max_call_duration": 3}},
        uac_must_pass=False,  # how the caller's 200 gets ACKed then is sipguard's choice
        cdr_ends=((200, "max_duration"),),
        check=_no_response_to_ack,
    ),
    Pair(
        "four-reinvites-from-caller",
        "re-INVITE",
        SERVER / "uac-overlapping.xml",
        SRF / "uas-reinvite-overlap.xml",
        # neither side hangs up: the call is ended by sipguard's SIGTERM shutdown
        cdr_ends=((200, "shutdown"),),
    ),
    # -- UPDATE --------------------------------------------------------------------------------
    Pair(
        "update-from-callee-confirmed",
        "UPDATE",
        SERVER / "uac-recv-bye.xml",
        DATA / "uas-update-with-sdp.xml",
        uac_args=("-aa",),  # the caller answers the UPDATE with SIPp's automatic 200
        config={"sip": {"max_call_duration": 3}},
        cdr_ends=((200, "max_duration"),),
        check=_no_update_lost,
    ),
    Pair(
        "update-from-caller-early",
        "UPDATE",
        SERVER / "uac-update-during-invite.xml",
        SERVER / "uas-183-recv-update.xml",
        uas_args=("-aa",),  # the callee answers the UPDATE with SIPp's automatic 200
        check=_no_update_lost,
    ),
    Pair(
        "update-from-callee-early-after-prack",
        "UPDATE, PRACK",
        SERVER / "uac.xml",
        DATA / "uas-183-send-update.xml",
        uac_args=("-aa", "-d", "500"),
        check=_no_update_lost,
    ),
    # -- PRACK (RFC 3262) ---------------------------------------------------------------------
    Pair(
        "prack-srf",
        "PRACK",
        DATA / "uac-prack.xml",
        SRF / "uas-prack.xml",
        check=_reliable_180_to_caller,
    ),
    Pair(
        "prack-server",
        "PRACK",
        DATA / "uac-prack.xml",
        SERVER / "uas-prack.xml",
        check=_reliable_180_to_caller,
    ),
    # -- 401/407 -------------------------------------------------------------------------------
    Pair(
        "auth-407-on-invite",
        "401/407",
        DATA / "uac-auth.xml",
        SRF / "uas-auth.xml",
        finals=(407, 200),
        cdr_ends=((407, "rejected"), (200, "caller_bye")),
    ),
    Pair(
        "auth-407-on-invite-and-reinvite",
        "401/407",
        DATA / "uac-auth-reinvite.xml",
        DATA / "uas-reinvite-with-auth.xml",
        finals=(407, 200),  # the initial INVITE and its retry; re-INVITEs are the scenario's
        cdr_ends=((407, "rejected"), (200, "caller_bye")),
    ),
    Pair(
        "auth-407-without-challenge",
        "401/407",
        DATA / "uac-expect-failure.xml",
        SRF / "uas-407-no-auth-header.xml",
        finals=None,
        uas_must_pass=False,  # it waits for a retry the caller cannot make
        cdr_ends=None,
    ),
    Pair(
        "auth-407-on-bye",
        "401/407",
        DATA / "uac-auth.xml",
        SRF / "uas-bye-with-auth.xml",
        finals=(407, 200),
        uas_must_pass=False,  # sipguard cannot answer a challenge to its own BYE
        cdr_ends=((407, "rejected"), (200, "caller_bye")),
    ),
    # -- late offer ----------------------------------------------------------------------------
    Pair(
        "late-offer",
        "late offer",
        SRF / "uac-nosdp.xml",
        SERVER / "uas-success.xml",
        check=_late_offer_answer_in_b_ack,
    ),
    # -- session timers (RFC 4028) ----------------------------------------------------------
    Pair(
        "session-timer-caller-hangs-up",
        "session timer",
        SERVER / "uac-session-expires-no-refresher-default.xml",
        SERVER / "uas-success.xml",
    ),
    Pair(
        "session-timer-refresher-uac-expires",
        "session timer",
        SERVER / "uac-session-expires.xml",
        SERVER / "uas-success.xml",
        cdr_ends=((200, "session_timeout"),),
        timeout=100,
    ),
    Pair(
        "session-timer-no-refresher-expires",
        "session timer",
        SERVER / "uac-session-expires-no-refresher.xml",
        SERVER / "uas-success.xml",
        cdr_ends=((200, "session_timeout"),),
        timeout=100,
    ),
    # -- 302 from the callee ----------------------------------------------------------------
    Pair(
        "redirect-inside-sources",
        "302",
        SERVER / "uac.xml",
        DATA / "uas-302.xml",
        uac_args=("-d", "500"),
        redirect_uas=True,
        check=_redirect_followed,
    ),
    Pair(
        "redirect-outside-sources",
        "302",
        DATA / "uac-expect-failure.xml",
        DATA / "uas-302.xml",
        uas_args=("-key", "redirect_host", OUTSIDE_SOURCES, "-key", "redirect_port", "5099"),
        finals=None,
        cdr_ends=None,
    ),
    # -- busy and failure codes ----------------------------------------------------------------
    Pair(
        "busy-486",
        "failure",
        SERVER / "uac-expect-486.xml",
        SERVER / "uas-fail-486.xml",
        finals=(486,),
        cdr_ends=((486, "rejected"),),
    ),
    Pair(
        "unavailable-480",
        "failure",
        SRF / "uac-expect-480.xml",
        DATA / "uas-fail.xml",
        uas_status=(480, "Temporarily Unavailable"),
        finals=(480,),
        cdr_ends=((480, "rejected"),),
    ),
    Pair(
        "unavailable-480-x-header-to-trusted-callee",
        "failure, headers",
        DATA / "uac-expect-480-send-x-custom.xml",
        SERVER / "uas-fail-480.xml",  # checks that the caller's X-Custom reached it
        finals=(480,),
        cdr_ends=((480, "rejected"),),
    ),
    Pair(
        "unavailable-480-x-header-allowlisted-to-caller",
        "failure, headers",
        SERVER / "uac-expect-480.xml",  # checks that the callee's X-Custom reached it
        DATA / "uas-fail.xml",
        uas_status=(480, "Temporarily Unavailable"),
        uas_extra=("X-Custom: custom header value",),
        config={"trunks": {"customers": {"header_allowlist": ["X-Custom"]}}},
        finals=(480,),
        cdr_ends=((480, "rejected"),),
    ),
    Pair(
        "unavailable-480-x-header-dropped-towards-untrusted-caller",
        "failure, headers",
        DATA / "uac-expect-failure.xml",
        DATA / "uas-fail.xml",
        uas_status=(480, "Temporarily Unavailable"),
        uas_extra=("X-Custom: custom header value", "Server: PBX 1.0 at 10.1.2.3"),
        finals=(480,),
        cdr_ends=((480, "rejected"),),
        check=_no_x_custom_to_caller,
    ),
    Pair(
        "not-found-404",
        "failure",
        SRF / "uac-expect-404.xml",
        SRF / "uas-404.xml",
        finals=(404,),
        cdr_ends=((404, "rejected"),),
    ),
    Pair(
        "server-error-500",
        "failure",
        SERVER / "uac-expect-500.xml",
        DATA / "uas-fail.xml",
        uas_status=(500, "Server Internal Error"),
        finals=(500,),
        cdr_ends=((500, "rejected"),),
    ),
    Pair(
        "unavailable-503-srf",
        "failure",
        SRF / "uac-expect-503.xml",
        DATA / "uas-fail.xml",
        uas_status=(503, "Service Unavailable"),
        finals=(503,),
        cdr_ends=((503, "rejected"),),
    ),
    Pair(
        "unavailable-503-server",
        "failure",
        SERVER / "uac-expect-503.xml",
        DATA / "uas-fail.xml",
        uas_status=(503, "Service Unavailable"),
        finals=(503,),
        cdr_ends=((503, "rejected"),),
    ),
    Pair(
        "decline-603",
        "failure",
        SRF / "uac-spammer-expect-603.xml",
        DATA / "uas-fail.xml",
        uas_status=(603, "Decline"),
        finals=(603,),
        cdr_ends=((603, "rejected"),),
    ),
    Pair(
        "invite-without-contact-400",
        "failure",
        SRF / "uac-expect-400-no-contact-header.xml",
        None,  # sipguard itself must refuse it; nothing reaches a callee
        finals=(400,),
        cdr_ends=(),
    ),
]

# flows whose figures would make the suite slow: run them with -m "sipp and slow" too
SLOW = {"session-timer-refresher-uac-expires", "session-timer-no-refresher-expires"}

# sipguard bugs reported to the lead; strict, so that the mark fails once they are fixed
XFAIL: dict[str, str] = {}


def _params() -> list[Any]:
    out = []
    for p in PAIRS:
        marks: list[Any] = [pytest.mark.timeout(p.timeout + 60)]
        if p.id in SLOW:
            marks.append(pytest.mark.slow)
        if p.id in XFAIL:
            marks.append(pytest.mark.xfail(strict=True, reason=XFAIL[p.id]))
        out.append(pytest.param(p, id=p.id, marks=marks))
    return out


def _fail_uas(
    template: Path, status: tuple[int, str], extra: tuple[str, ...], workdir: Path
) -> Path:
    """uas-fail.xml with another status line (SIPp reads the status when it loads it)."""
    text = template.read_text(encoding="latin-1")
    line = "SIP/2.0 500 Server Internal Error"
    assert line in text
    text = text.replace(line, f"SIP/2.0 {status[0]} {status[1]}")
    if extra:
        text = text.replace(
            '      Content-Length: 0\n\n    ]]>\n  </send>\n\n  <recv request="ACK"',
            "".join(f"      {h}\n" for h in extra)
            + '      Content-Length: 0\n\n    ]]>\n  </send>\n\n  <recv request="ACK"',
        )
        assert all(h in text for h in extra)
    path = workdir / f"uas-fail-{status[0]}.xml"
    path.write_text(text, encoding="latin-1")
    return path


def run_pair(pair: Pair, workdir: Path) -> Run:
    setup = write_config(
        workdir, target_transport="tcp" if pair.tcp else "udp", overrides=pair.config
    )
    sipguard = Sipguard(setup)
    procs: list[Sipguard | Sipp] = [sipguard]
    callee = callee2 = None
    uas_args = list(pair.uas_args)
    if pair.redirect_uas:
        port2 = free_port(CALLEE_IP)
        uas_args += ["-key", "redirect_host", CALLEE_IP, "-key", "redirect_port", str(port2)]
        callee2 = Sipp(
            "uas2",
            "uas",
            workdir=workdir,
            local_ip=CALLEE_IP,
            local_port=port2,
            calls=1,
            timeout_s=pair.timeout + 10,
        )
        procs.append(callee2)
    if pair.uas is not None:
        scenario = pair.uas
        if pair.uas_status is not None:
            assert isinstance(scenario, Path)
            scenario = _fail_uas(scenario, pair.uas_status, pair.uas_extra, workdir)
        callee = uas(
            setup,
            scenario=scenario,
            calls=1,
            timeout_s=pair.timeout + 10,
            tcp=pair.tcp,
            extra=uas_args,
        )
        procs.append(callee)
    caller = uac(
        setup, scenario=pair.uac, calls=1, timeout_s=pair.timeout, tcp=pair.tcp, extra=pair.uac_args
    )
    with running(*procs):
        sipguard.start()
        for p in (callee2, callee):
            if p is not None:
                p.start()
                p.wait_listening()
        caller_result = caller.run()
        callee_result = callee.wait(10 if pair.uas_must_pass else 1) if callee else None
        callee2_result = callee2.wait(5) if callee2 else None
        sipguard.stop()
    return Run(
        setup=setup,
        caller=caller_result,
        callee=callee_result,
        callee2=callee2_result,
        sipguard_log=sipguard.log_path.read_text(errors="replace"),
        cdrs=read_cdrs(setup.cdr_dir),
    )


def _context(run: Run) -> str:
    parts = [run.caller.describe()]
    if run.callee is not None:
        parts.append(run.callee.describe())
    if run.callee2 is not None:
        parts.append(run.callee2.describe())
    parts.append("--- sipguard log:\n" + "\n".join(run.sipguard_log.splitlines()[-60:]))
    parts.append(f"--- CDRs: {run.cdrs}")
    return "\n".join(parts)


_CALLER_TAG = re.compile(r"SIPpTag00\d+")


def _check_topology_hiding(run: Run) -> None:
    caller_call_ids = {
        m.header("call-id") for m in run.caller.traced() if m.direction == "sent"
    } - {""}
    if run.callee is not None:
        for m in run.callee.traced():
            if m.direction != "received":
                continue
            head = m.head()
            assert CALLER_IP not in head, f"the caller's address reached the callee:\n{head}"
            assert m.header("call-id") not in caller_call_ids, f"A-leg Call-ID on B:\n{head}"
            assert not _CALLER_TAG.search(head), f"the caller's tag reached the callee:\n{head}"
    for m in run.caller.traced():
        if m.direction == "received":
            head = m.head()
            assert CALLEE_IP not in head, f"the callee's address reached the caller:\n{head}"


@pytest.mark.parametrize("pair", _params())
def test_flow_through_sipguard(pair: Pair, tmp_path: Path) -> None:
    run = run_pair(pair, tmp_path)
    context = _context(run)

    assert "Traceback" not in run.sipguard_log, f"sipguard logged an internal error\n{context}"
    if pair.uac_must_pass:
        assert run.caller.successful == 1 and run.caller.failed == 0, context
    if pair.uas_must_pass and run.callee is not None:
        assert run.callee.successful == 1 and run.callee.failed == 0, context

    finals = run.caller.invite_finals()
    assert not [s for s in finals if 300 <= s < 400], f"a 3xx was relayed: {finals}\n{context}"
    if pair.finals is None:
        assert len(finals) == 1 and finals[0] >= 400, f"finals {finals}\n{context}"
    else:
        assert tuple(finals) == pair.finals, f"finals {finals}\n{context}"

    _check_topology_hiding(run)

    ends = sorted((r for r in run.cdrs if r["kind"] == "end"), key=lambda r: r["end"])
    starts = [r for r in run.cdrs if r["kind"] == "start"]
    if pair.cdr_ends is not None:
        got = tuple((r["status"], r["end_reason"]) for r in ends)
        assert got == pair.cdr_ends, f"CDR end records {got}\n{context}"
    else:
        assert ends, f"no CDR end record\n{context}"
        assert all(not 300 <= r["status"] < 400 for r in ends), context
    answered = {r["id"] for r in ends if r["answer"] is not None}
    assert {r["id"] for r in starts} == answered, f"start records do not match\n{context}"

    if pair.check is not None:
        pair.check(run)


def test_every_pair_is_listed_in_pairs_md() -> None:
    """PAIRS.md (the list for readers) names every pair the test runs."""
    text = (DATA / "PAIRS.md").read_text()
    missing = [p.id for p in PAIRS if f"`{p.id}`" not in text]
    assert not missing, f"pairs missing from tests/data/sipp/PAIRS.md: {missing}"

"""Media anchoring end to end (issue 16): SIPp caller and callee exchanging real RTP
through Debian's rtpengine, driven by sipguard over the ng protocol, all on loopback.

The caller (SIPp, 127.0.0.3, trunk ``customers`` with ``media: anchor``) and the callee
(SIPp, 127.0.0.2, trunk ``pbx``) each play drachtio-srf's ``g711a.pcap`` towards the
address the other side's SDP gave them, which must be rtpengine's (127.0.0.10). Checked:

* every byte the callee received (headers and SDP) holds no address of the caller, and
  every byte the caller received none of the callee's;
* rtpengine's own ``query`` shows RTP received from both sides (so relayed both ways):
  SIPp cannot count the RTP it receives;
* the rtpengine session is gone once the call is over (``list``);
* a call without RTP is ended by sipguard after ``rtpengine.media_timeout`` with BYE on
  both legs and ``end_reason: media_timeout``;
* with every relay down, ``when_down: refuse`` answers 503 and ``pass`` carries the call
  unanchored (counted); an emergency call goes through either way; one dead relay of two
  is skipped.

rtpengine and SIPp missing fail these tests (never skip in CI): ``./dev.sh test``
installs both.
"""

from __future__ import annotations

import dataclasses
import shutil
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from testkit.rtpengine import (
    RTPENGINE_IP,
    Rtpengine,
    dead_relay,
    relayed_packets,
    rtpengine_factory,  # noqa: F401 - fixture
)
from testkit.sipp import (
    CALLEE_IP,
    CALLER_IP,
    CORPUS,
    DATA,
    Setup,
    Sipguard,
    SippResult,
    metric_sum,
    read_cdrs,
    running,
    sipp_available,
    uac,
    uas,
    write_config,
)

pytestmark = [
    pytest.mark.sipp,
    pytest.mark.rtpengine,
    pytest.mark.skipif(not sipp_available(), reason="SIPp (sip-tester) is not installed"),
]

MEDIA = DATA / "media"
PCAP = CORPUS / "drachtio-srf" / "pcap" / "g711a.pcap"


def setup_for(tmp_path: Path, control: list[str], **relay: Any) -> Setup:
    setup = write_config(
        tmp_path,
        overrides={
            "rtpengine": {"control": control, **relay},
            "trunks": {
                "customers": {"media": "anchor", "emergency_route_to": "pbx"},
            },
        },
    )
    shutil.copy(PCAP, setup.workdir / "g711a.pcap")  # play_pcap_audio reads it from cwd
    return setup


def received(result: SippResult) -> list[str]:
    """Everything a SIPp side received, start line, headers and body."""
    return [m.head() + "\n" + m.body for m in result.traced() if m.direction == "received"]


def assert_never_named(result: SippResult, ip: str) -> None:
    got = received(result)
    assert got, "nothing received"
    for text in got:
        assert ip not in text, f"{ip} reached the other side:\n{text}"


def wait_for(fn: Any, timeout: float, step: float = 0.2) -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = fn()
        if value:
            return value
        time.sleep(step)
    return fn()


def test_rtp_flows_both_ways_through_rtpengine_and_no_address_crosses(
    tmp_path: Path,
    rtpengine_factory: Callable[..., Rtpengine],  # noqa: F811
) -> None:
    rtpengine = rtpengine_factory()
    setup = setup_for(tmp_path, [rtpengine.control])
    sg = Sipguard(setup)
    callee = uas(setup, scenario=MEDIA / "uas-pcap.xml", timeout_s=30)
    caller = uac(setup, scenario=MEDIA / "uac-pcap.xml", timeout_s=30)
    with running(sg, callee, caller):
        sg.start()
        callee.start()
        callee.wait_listening()
        caller.start()
        calls = wait_for(rtpengine.list_calls, 5.0)
        assert len(calls) == 1, calls

        def both_ways() -> dict[str, int] | None:
            got = relayed_packets(rtpengine.query(calls[0]))
            return got if len(got) == 2 and all(n > 20 for n in got.values()) else None

        assert wait_for(both_ways, 4.0), rtpengine.query(calls[0])
        a, b = caller.wait(), callee.wait()
        assert a.returncode == 0, a.describe()
        assert b.returncode == 0, b.describe()
        assert wait_for(lambda: rtpengine.list_calls() == [], 3.0), rtpengine.list_calls()
        metrics = sg.metrics()
    assert_never_named(b, CALLER_IP)
    assert_never_named(a, CALLEE_IP)
    (invite,) = [m for m in b.traced() if m.direction == "received" and m.method == "INVITE"]
    assert f"c=IN IP4 {RTPENGINE_IP}" in invite.body
    assert metric_sum(metrics, "sipguard_media_unanchored_total") == 0
    ends = [r for r in read_cdrs(setup.cdr_dir) if r.get("kind", r.get("type")) != "start"]
    assert ends and ends[-1]["end_reason"] == "caller_bye"


def test_a_call_without_rtp_is_ended_by_the_media_timeout(
    tmp_path: Path,
    rtpengine_factory: Callable[..., Rtpengine],  # noqa: F811
) -> None:
    rtpengine = rtpengine_factory()
    setup = setup_for(tmp_path, [rtpengine.control], media_timeout=2)
    sg = Sipguard(setup)
    callee = uas(setup, timeout_s=20)  # SIPp's built-in uas: no RTP, waits for a BYE
    caller = uac(setup, scenario=MEDIA / "uac-silent.xml", timeout_s=20)
    with running(sg, callee, caller):
        sg.start()
        callee.start()
        callee.wait_listening()
        started = time.monotonic()
        caller.start()
        a, b = caller.wait(), callee.wait()
        took = time.monotonic() - started
        assert a.returncode == 0, a.describe()  # it got sipguard's BYE
        assert b.returncode == 0, b.describe()
        assert 2.0 <= took < 8.0, took
        assert wait_for(lambda: rtpengine.list_calls() == [], 3.0), rtpengine.list_calls()
        sg.stop()
    ends = [r for r in read_cdrs(setup.cdr_dir) if r.get("end_reason")]
    assert ends[-1]["end_reason"] == "media_timeout", ends


@pytest.mark.parametrize("when_down", ["refuse", "pass"])
def test_every_relay_down(tmp_path: Path, when_down: str) -> None:
    with dead_relay() as (host, port):
        setup = setup_for(tmp_path, [f"udp:{host}:{port}"], when_down=when_down)
        sg = Sipguard(setup)
        callee = uas(setup, timeout_s=20)
        scenario = CORPUS / "drachtio-srf" / "uac-expect-503.xml"
        caller = uac(setup, scenario=scenario if when_down == "refuse" else "uac", timeout_s=20)
        with running(sg, callee, caller):
            sg.start()
            callee.start()
            callee.wait_listening()
            a = caller.run()
            assert a.returncode == 0, a.describe()
            metrics = sg.metrics()
            if when_down == "refuse":
                (final,) = [m for m in a.traced() if m.direction == "received" and m.status == 503][
                    :1
                ]
                assert "retry-after" not in final.head().lower()
                assert not [m for m in callee.stop().traced() if m.method == "INVITE"]
            else:
                assert metric_sum(metrics, "sipguard_media_unanchored_total") == 1
                assert callee.wait().returncode == 0


def test_an_emergency_call_goes_through_with_every_relay_down(tmp_path: Path) -> None:
    with dead_relay() as (host, port):
        setup = setup_for(tmp_path, [f"udp:{host}:{port}"], when_down="refuse")
        sg = Sipguard(setup)
        callee = uas(setup, timeout_s=20)
        caller = uac(setup, service="112", timeout_s=20)
        with running(sg, callee, caller):
            sg.start()
            callee.start()
            callee.wait_listening()
            a = caller.run()
            assert a.returncode == 0, a.describe()
            assert callee.wait().returncode == 0


def test_one_dead_relay_of_two_is_skipped(
    tmp_path: Path,
    rtpengine_factory: Callable[..., Rtpengine],  # noqa: F811
) -> None:
    rtpengine = rtpengine_factory()
    with dead_relay() as (host, port):
        setup = setup_for(tmp_path, [f"udp:{host}:{port}", rtpengine.control])
        sg = Sipguard(setup)
        callee = uas(setup, calls=3, timeout_s=20)
        caller = uac(setup, calls=3, timeout_s=20)
        with running(sg, callee, caller):
            sg.start()
            callee.start()
            callee.wait_listening()
            a = caller.run()
            assert a.returncode == 0 and a.successful == 3, a.describe()
            b = callee.wait()
            assert b.returncode == 0, b.describe()
            metrics = sg.metrics()
    assert_never_named(b, CALLER_IP)
    assert metric_sum(metrics, "sipguard_media_unanchored_total") == 0


# -- the call flows of the SIPp scenario pairs, anchored ----------------------------------

ANCHORED_FLOWS = (
    "183-then-180-then-200",
    "cancel-after-183",
    "reinvite-from-caller",
    "reinvite-without-sdp-from-caller",
    "reinvite-from-callee",
    "update-from-callee-confirmed",
    "update-from-caller-early",
    "update-from-callee-early-after-prack",
    "prack-srf",
    "prack-server",
    "late-offer",
)


@pytest.mark.parametrize("flow", ANCHORED_FLOWS)
def test_the_scenario_flows_anchored(
    flow: str,
    tmp_path: Path,
    rtpengine_factory: Callable[..., Rtpengine],  # noqa: F811
) -> None:
    """The flows of ``test_sipp_scenarios.py`` (re-INVITE, UPDATE, PRACK, late offer...)
    with ``media: anchor``: both sides pass, and no byte either side receives, SDP
    included, names the other side's address; rtpengine held the session and lost it
    at the end."""
    from tests import test_sipp_scenarios as scenarios

    rtpengine = rtpengine_factory()
    (pair,) = [p for p in scenarios.PAIRS if p.id == flow]
    config = {
        **pair.config,
        "rtpengine": {"control": [rtpengine.control]},
        "trunks": {"customers": {"media": "anchor"}},
    }
    run = scenarios.run_pair(dataclasses.replace(pair, config=config), tmp_path)
    context = scenarios._context(run)
    assert "Traceback" not in run.sipguard_log, context
    assert run.caller.successful == 1 and run.caller.failed == 0, context
    assert run.callee is not None
    assert run.callee.successful == 1 and run.callee.failed == 0, context
    if pair.check is not None:
        pair.check(run)
    assert_never_named(run.callee, CALLER_IP)
    assert_never_named(run.caller, CALLEE_IP)
    log = rtpengine.log()
    assert "Received command 'offer'" in log, log[-2000:]
    assert rtpengine.list_calls() == []


def test_an_offer_in_a_reliable_183_answered_in_the_prack_is_anchored(
    tmp_path: Path,
    rtpengine_factory: Callable[..., Rtpengine],  # noqa: F811
) -> None:
    """Late offer with 100rel: the callee offers in its reliable 183, the caller answers
    in its PRACK; each side's scenario checks that what it got names the relay."""
    rtpengine = rtpengine_factory()
    setup = setup_for(tmp_path, [rtpengine.control])
    sg = Sipguard(setup)
    callee = uas(setup, scenario=MEDIA / "uas-offer-in-183.xml", timeout_s=20)
    caller = uac(setup, scenario=MEDIA / "uac-late-offer-prack.xml", timeout_s=20)
    with running(sg, callee, caller):
        sg.start()
        callee.start()
        callee.wait_listening()
        a = caller.run()
        b = callee.wait()
        assert a.returncode == 0, a.describe()
        assert b.returncode == 0, b.describe()
        assert wait_for(lambda: rtpengine.list_calls() == [], 3.0), rtpengine.list_calls()
    assert_never_named(b, CALLER_IP)
    assert_never_named(a, CALLEE_IP)
    (prack,) = [m for m in b.traced() if m.direction == "received" and m.method == "PRACK"]
    assert f"c=IN IP4 {RTPENGINE_IP}" in prack.body

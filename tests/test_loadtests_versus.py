"""testkit/versus_kamailio.py: the two Kamailio configurations of ``loadtests/kamailio/``
start from Debian's kamailio and each carries one withheld call of the comparison's
caller to the callee and back (issue 19); the privacy one does the privacy job, the
minimal one none; and the summary's ratios.

Kamailio missing fails these tests (``./dev.sh test`` installs it, ``TEST_DEBS``), as
:func:`testkit.kamailio.require_kamailio` says.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from testkit.kamailio import require_kamailio
from testkit.load import LoadResult, peer_setup
from testkit.sipp import CALLER_IP, running, sipp_available, uac, uas
from testkit.versus_kamailio import (
    CONFIGS,
    SIPGUARD,
    UAC_WITHHELD,
    WITHHELD,
    Run,
    kamailio_element,
    record_route_uas,
    summary,
)

CALLER = "+31201234567"

needs_sipp = pytest.mark.skipif(not sipp_available(), reason="SIPp (sip-tester) is not installed")


@needs_sipp
@pytest.mark.parametrize("label", list(CONFIGS))
def test_each_configuration_carries_a_withheld_call(label: str, tmp_path: Path) -> None:
    require_kamailio()
    setup = peer_setup(tmp_path)
    element = kamailio_element(CONFIGS[label], setup, pin=False)
    callee = uas(setup, scenario=record_route_uas(tmp_path / "scenarios"), calls=1, timeout_s=15)
    caller = uac(setup, scenario=UAC_WITHHELD, service=WITHHELD, calls=1, hold_ms=100, timeout_s=15)
    with running(callee):
        element.start()
        try:
            callee.start()
            callee.wait_listening()
            result = caller.run()
            callee_result = callee.wait(10)
            status = element.status()
        finally:
            element.stop()
    log = element.kamailio.log_tail()
    assert result.successful == 1 and result.failed == 0, result.describe() + log
    assert callee_result.returncode == 0, callee_result.describe() + log
    assert status["VmRSS"] > 1024 and status["VmHWM"] >= status["VmRSS"], status
    got = {m.method: m for m in callee_result.traced() if m.direction == "received"}
    assert set(got) >= {"INVITE", "ACK", "BYE"}, callee_result.ladder()
    invite, bye = got["INVITE"], got["BYE"]
    sent_call_id = next(m.header("call-id") for m in result.traced() if m.method == "INVITE")
    # both record-route: the ACK and BYE crossed the proxy on their way to the callee
    assert invite.header("record-route"), invite.head()
    if label == "kamailio minimal":  # forwards what it got
        assert invite.start_line.startswith(f"INVITE sip:{WITHHELD}@"), invite.start_line
        assert CALLER in invite.header("from")
        assert invite.header("call-id") == sent_call_id
        return
    # the privacy proxy: the CLIR code gone, the caller anonymous, nothing of its side
    assert invite.start_line.startswith("INVITE sip:0201234567@"), invite.start_line
    assert invite.header("privacy") == "id", invite.head()
    for m in (invite, bye):
        assert "anonymous@anonymous.invalid" in m.header("from"), m.head()
        assert CALLER not in m.head() and CALLER_IP not in m.head(), m.head()
        assert m.header("call-id") != sent_call_id, m.head()  # topoh masked it
    # and the caller sees its own From and Call-ID back (uac's restore, topoh's unmask)
    ok = next(m for m in result.traced() if m.status == 200 and "INVITE" in m.header("cseq"))
    assert CALLER in ok.header("from") and ok.header("call-id") == sent_call_id, ok.head()


def result(
    cpu_per_1k: float, p99: float, failed: int = 0, speed: float | None = None
) -> LoadResult:
    r = LoadResult(1000.0, 20.0, 1000, "udp", attempted=1000, succeeded=1000 - failed)
    r.failed, r.cpu_s_per_1k, r.setup_p99_ms, r.speed_ms = failed, cpu_per_1k, p99, speed
    return r


def test_the_summary_divides_each_runs_cpu_by_the_machines_speed_in_it() -> None:
    """The host slowed (the fixed work cost 1.5 ms, not 1.0) during sipguard's second
    run: its CPU per call rose with it, and the figure per machine speed does not."""
    minimal, _ = CONFIGS
    runs = [
        Run(SIPGUARD, 0, result(0.3, 4, speed=1.0)),
        Run(minimal, 0, result(0.3, 4, speed=1.0)),
        Run(SIPGUARD, 1, result(0.45, 4, speed=1.5)),
        Run(minimal, 1, result(0.3, 4, speed=1.0)),
    ]
    (line,) = [x for x in summary(runs) if minimal in x]
    assert "CPU per call 1.25 (1.00-1.50)" in line
    assert "CPU per call / machine speed 1.00 (1.00-1.00)" in line


def test_the_summary_gives_ratios_of_the_medians_and_the_range_of_the_pairs() -> None:
    minimal, privacy = CONFIGS
    runs = [
        Run(SIPGUARD, 0, result(0.8, 10)),
        Run(minimal, 0, result(0.4, 4)),
        Run(privacy, 0, result(0.8, 20, failed=5)),
        Run(SIPGUARD, 1, result(1.2, 12)),
        Run(minimal, 1, result(0.5, 4)),
        Run(privacy, 1, result(1.0, 40, failed=7)),
        Run(SIPGUARD, 2, result(1.0, 14)),
        Run(minimal, 2, result(0.5, 8)),
        Run(privacy, 2, result(0.9, 30, failed=6)),
    ]
    lines = summary(runs)
    assert lines == [
        "1000 calls/s, sipguard / kamailio minimal (medians of 3 runs each): "
        "CPU per call 2.00 (2.00-2.40), p99 setup 3.00 (1.75-3.00); "
        "failed calls 0.00% vs 0.00%",
        "1000 calls/s, sipguard / kamailio privacy (medians of 3 runs each): "
        "CPU per call 1.11 (1.00-1.20), p99 setup 0.40 (0.30-0.50); "
        "failed calls 0.00% vs 0.60%",
    ]

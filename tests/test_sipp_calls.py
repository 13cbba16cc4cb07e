"""SIPp's built-in ``uac`` → sipguard → SIPp's built-in ``uas``: 1,000 calls, no failure.

Issue 3 ("What it must show"): 1,000 calls over UDP and again over TCP, with zero failed
calls, on loopback (caller 127.0.0.3, sipguard 127.0.0.1, callee 127.0.0.2), with privacy
enforcement and file CDRs on as in production. sipguard is then stopped with SIGTERM and
its CDR files must hold one ``start`` and one ``end`` record per call, each ``end`` with
the hold time as its duration.

No timing is asserted except the CDR durations, which are what billing charges.
"""

from __future__ import annotations

import subprocess
import sys
from collections import Counter
from pathlib import Path

import pytest

from testkit.load import row, run_load
from testkit.sipp import (
    Sipguard,
    read_cdrs,
    running,
    sipp_available,
    uac,
    uas,
    udp_drops,
    write_config,
)

pytestmark = [
    pytest.mark.sipp,
    pytest.mark.skipif(not sipp_available(), reason="SIPp (sip-tester) is not installed"),
    pytest.mark.timeout(90),
]

REPO = Path(__file__).resolve().parents[1]
CALLS = 1000
RATE = 200  # calls per second
HOLD_MS = 100  # ACK -> BYE
DURATION_SLACK_MS = 50


@pytest.mark.parametrize("transport", ["udp", "tcp"])
def test_thousand_calls_through_sipguard(tmp_path: Path, transport: str) -> None:
    tcp = transport == "tcp"
    setup = write_config(tmp_path, target_transport=transport)
    # pinned as in SIPP-NOTES (gotcha 1) where there are two cores; nothing is timed here
    sipguard = Sipguard(setup, cpus=(1,))
    callee = uas(setup, calls=CALLS, timeout_s=40, tcp=tcp, trace_msg=False, cpus=(0,))
    caller = uac(
        setup,
        calls=CALLS,
        rate=RATE,
        hold_ms=HOLD_MS,
        timeout_s=25,
        tcp=tcp,
        trace_msg=False,
        cpus=(0,),
    )
    with running(callee, sipguard):
        sipguard.start()
        callee.start()
        callee.wait_listening()
        result = caller.run()
        callee_result = callee.wait(10)
        exit_code = sipguard.stop()
    context = (
        f"{result.describe()}\n--- callee:\n{callee_result.describe()}\n"
        f"--- sipguard log:\n{sipguard.log_tail()}\n--- UDP drops: {udp_drops()}"
    )

    assert result.successful == CALLS, context
    assert result.failed == 0, context
    assert result.returncode == 0, context
    assert callee_result.successful == CALLS, context
    assert exit_code == 0, context

    records = read_cdrs(setup.cdr_dir)
    kinds = Counter(r["kind"] for r in records)
    assert kinds == {"start": CALLS, "end": CALLS}, kinds
    ends = [r for r in records if r["kind"] == "end"]
    assert len({r["id"] for r in ends}) == CALLS
    assert {r["id"] for r in ends} == {r["id"] for r in records if r["kind"] == "start"}
    for r in ends:
        assert r["status"] == 200, r
        assert r["end_reason"] == "caller_bye", r
        assert r["trunk_in"] == "customers" and r["trunk_out"] == "pbx", r
        assert r["callee"] == "+31201234567", r
        assert r["presentation"] == "allowed", r
        assert r["emergency"] is False, r
        assert r["answer"] is not None, r
    durations = sorted(r["duration_ms"] for r in ends)
    off = [d for d in durations if abs(d - HOLD_MS) > DURATION_SLACK_MS]
    assert not off, (
        f"{len(off)} CDR durations outside {HOLD_MS}±{DURATION_SLACK_MS} ms: "
        f"min {durations[0]} median {durations[len(durations) // 2]} max {durations[-1]}"
    )


def test_load_runner_smoke(tmp_path: Path) -> None:
    """The load runner's own code path (``testkit.load``, under ``loadtests/run.py``),
    briefly: 300 calls at 100/s and 15 emergency calls beside them, none may fail; and
    its command line starts.

    The figures it prints (calls/s, setup times, CPU, RSS) are measurements, never
    asserted here.
    """
    # with 112 calls beside the load, as goodput runs place them (their own caller)
    result = run_load(100, 3, 200, workdir=tmp_path, quiet=True, emergency_rate=5)
    assert result.attempted == 300, result
    assert result.succeeded == 300, result
    assert result.failed == 0, result
    assert result.emergency_attempted == result.emergency_succeeded == 15, result
    assert result.cdr_end_records == 315, result  # the load's and the emergency calls'
    assert result.setup_p50_ms is not None and result.cpu_s > 0 and result.peak_rss_kb > 0
    assert row(result)  # the table line renders
    cli = subprocess.run(
        [sys.executable, str(REPO / "loadtests" / "run.py"), "--help"],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert cli.returncode == 0 and "--versus-sippy" in cli.stdout, cli.stderr

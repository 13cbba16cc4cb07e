"""CDRs under SIPp load (issue 5): none lost by a crash, durations as billed.

* SIGKILL in the middle of a load run, then a restart on the same CDR directory: every
  call that was answered (has a ``start`` record) has exactly one ``end`` record, the
  calls the crash cut with ``end_reason: crash_recovered``, and no ``(id, kind)`` twice.
* A normal run of N calls held H ms: as many end records as SIPp made call attempts, the
  answered ones lasting H ± 50 ms.

On loopback: the caller (SIPp uac) on 127.0.0.3, sipguard on 127.0.0.1, the callee (SIPp
uas) on 127.0.0.2. Every process is bounded and stopped by its PID.
"""

from __future__ import annotations

import os
import signal
import time
from collections import Counter
from datetime import datetime
from pathlib import Path
from typing import Any

import pytest

from testkit.sipp import (
    Sipguard,
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
    pytest.mark.timeout(90),
]

DURATION_SLACK_MS = 50


def ts(text: str) -> float:
    return datetime.fromisoformat(text.replace("Z", "+00:00")).timestamp()


def check_unique(records: list[dict[str, Any]]) -> None:
    keys = Counter((r["id"], r["kind"]) for r in records)
    doubled = {k: n for k, n in keys.items() if n > 1}
    assert not doubled, f"(id, kind) written more than once: {doubled}"


def test_sigkill_mid_load_every_answered_call_gets_one_end_record(tmp_path: Path) -> None:
    rate, hold_ms, calls = 40, 2000, 240
    setup = write_config(tmp_path)
    sg = Sipguard(setup, cpus=(1,))  # pinned as in SIPP-NOTES (gotcha 1)
    callee = uas(setup, calls=calls, timeout_s=30, trace_msg=False, cpus=(0,))
    caller = uac(
        setup, calls=calls, rate=rate, hold_ms=hold_ms, timeout_s=30, trace_msg=False, cpus=(0,)
    )
    with running(callee, caller, sg):
        sg.start()
        callee.start()
        callee.wait_listening()
        caller.start()
        time.sleep(3.5)  # about 140 calls set up, 60 of them ended, 80 held
        killed_at = time.time()
        os.kill(sg.pid, signal.SIGKILL)
        assert sg.proc is not None
        sg.proc.wait(5)
        log_before = sg.log_tail(20)
        sg.stop()
        caller.stop()
        callee.stop()
    before = read_cdrs(setup.cdr_dir)

    # the restart closes what the crash left open, then stops cleanly
    again = Sipguard(setup)
    with running(again):
        again.start()
        exit_code = again.stop()
    assert exit_code == 0, again.log_tail()
    records = read_cdrs(setup.cdr_dir)
    ctx = f"--- before the kill:\n{log_before}\n--- restart:\n{again.log_tail(30)}"

    check_unique(records)
    starts = {r["id"]: r for r in records if r["kind"] == "start"}
    ends: dict[str, list[dict[str, Any]]] = {}
    for r in records:
        if r["kind"] == "end":
            ends.setdefault(r["id"], []).append(r)
    assert len(starts) >= 60, (len(starts), ctx)
    missing = [i for i in starts if i not in ends]
    assert not missing, f"{len(missing)} answered calls without an end record\n{ctx}"

    recovered = [e[0] for e in ends.values() if e[0]["end_reason"] == "crash_recovered"]
    before_ids = {r["id"] for r in before if r["kind"] == "end"}
    # the calls held at the kill were cut: some dozens of them
    assert len(recovered) >= 20, (
        len(recovered),
        Counter(e[0]["end_reason"] for e in ends.values()),
    )
    for r in recovered:
        assert r["id"] in starts and r["id"] not in before_ids, r
        start = starts[r["id"]]
        assert r["status"] == 200 and r["answer"] == start["answer"], (r, start)
        assert r["caller"] == start["caller"] and r["callee"] == start["callee"], (r, start)
        # ended at the last moment the proxy was known alive: before the kill, at most a
        # heartbeat interval earlier, never before the answer
        assert ts(r["answer"]) <= ts(r["end"]) <= killed_at + 0.5, (r, killed_at)
        assert ts(r["end"]) >= killed_at - 3.0, (r, killed_at)
        assert r["duration_ms"] >= 0
    # every other end record is one the first run wrote itself
    for e in ends.values():
        if e[0]["end_reason"] != "crash_recovered":
            assert e[0]["id"] in before_ids, e
            if e[0]["id"] in starts:
                assert e[0]["end_reason"] == "caller_bye", e


def test_end_records_match_call_attempts_and_durations_under_load(tmp_path: Path) -> None:
    rate, hold_ms, calls = 50, 700, 150
    setup = write_config(tmp_path)
    sg = Sipguard(setup, cpus=(1,))  # pinned as in SIPP-NOTES (gotcha 1)
    callee = uas(setup, calls=calls, timeout_s=30, trace_msg=False, cpus=(0,))
    caller = uac(
        setup, calls=calls, rate=rate, hold_ms=hold_ms, timeout_s=30, trace_msg=False, cpus=(0,)
    )
    with running(callee, caller, sg):
        sg.start()
        callee.start()
        callee.wait_listening()
        result = caller.run()
        exit_code = sg.stop()
    ctx = f"{result.describe()}\n{sg.log_tail(40)}"
    assert exit_code == 0, ctx
    assert result.created == calls, ctx
    records = read_cdrs(setup.cdr_dir)
    check_unique(records)
    ends = [r for r in records if r["kind"] == "end"]
    assert len(ends) == result.created, (len(ends), ctx)
    answered = [r for r in ends if r["answer"] is not None]
    assert len(answered) == result.successful, ctx
    assert {r["id"] for r in answered} == {r["id"] for r in records if r["kind"] == "start"}
    durations = sorted(r["duration_ms"] for r in answered)
    off = [d for d in durations if abs(d - hold_ms) > DURATION_SLACK_MS]
    assert not off, (
        f"{len(off)} durations outside {hold_ms}±{DURATION_SLACK_MS} ms: min {durations[0]} "
        f"median {durations[len(durations) // 2]} max {durations[-1]}"
    )

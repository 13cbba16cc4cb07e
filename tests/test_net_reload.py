"""``SIGHUP`` reloads sipguard's configuration (SPEC §4, issue 4 item 6), end to end.

A running sipguard gets a changed file and ``SIGHUP``: new calls follow the new policy, a
call in progress keeps the one it started with. Then a broken file and ``SIGHUP``: the
log has the one-line ``FILE:LINE: field: message`` error, the reload is counted as an
error, and new calls still follow the last good policy. Calls are SIPp scenarios of
``tests/data/sipp/privacy/`` (caller on 127.0.0.3, sipguard on 127.0.0.1, callee on
127.0.0.2), as in ``tests/test_sipp_privacy.py``.
"""

from __future__ import annotations

import copy
import os
import re
import signal
import time
from collections.abc import Callable
from pathlib import Path

import pytest
import yaml

from sipguard.config.loader import ConfigError, load_config
from testkit.privacy import (
    CALLER,
    DIALLED,
    PBX_IP,
    PRIV,
    Bench,
    Placed,
    assert_answered,
    assert_cdr,
    assert_presented,
    assert_withheld,
    end_records,
    presentation_counts,
)
from testkit.sipp import CALLER_IP, Sipp, free_port, metric_sum, running, sipp_available

pytestmark = [
    pytest.mark.sipp,
    pytest.mark.skipif(not sipp_available(), reason="SIPp (sip-tester) is not installed"),
    pytest.mark.timeout(90),
]


def _wait_for(what: str, check: Callable[[], bool], timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if check():
            return
        time.sleep(0.05)
    raise AssertionError(f"timed out waiting for {what}")


def _write(path: Path, text: str) -> None:
    """Replace the file at once, as an operator's tooling would (no half-written file)."""
    tmp = path.with_suffix(".tmp")
    tmp.write_text(text)
    os.replace(tmp, path)


def _reloads(bench: Bench, result: str) -> float:
    return metric_sum(bench.metrics(), "sipguard_config_reloads_total", result=result)


def _sighup(bench: Bench, result: str) -> None:
    """Send SIGHUP and wait until sipguard has counted one more reload with ``result``."""
    before = _reloads(bench, result)
    os.kill(bench.sipguard.pid, signal.SIGHUP)
    _wait_for(f"a reload counted as {result!r}", lambda: _reloads(bench, result) == before + 1)


def _start_long_call(bench: Bench, hold_ms: int) -> tuple[Sipp, Sipp]:
    """A call held ``hold_ms`` after its ACK, in the background: (caller, callee)."""
    callee = Sipp(
        "long-callee",
        PRIV / "uas-presented.xml",
        workdir=bench.workdir,
        local_ip=PBX_IP,
        local_port=bench.ports["pbx"],
        calls=1,
        timeout_s=15,
    )
    caller = Sipp(
        "long-caller",
        PRIV / "uac-call.xml",
        workdir=bench.workdir,
        local_ip=CALLER_IP,
        local_port=free_port(CALLER_IP),
        remote=bench.setup.sipguard_addr,
        calls=1,
        timeout_s=15,
        service=DIALLED,
        extra=["-key", "caller", CALLER, "-d", str(hold_ms)],
    )
    callee.start()
    callee.wait_listening()
    caller.start()
    return caller, callee


def _acked(callee: Sipp) -> bool:
    return any(m.direction == "received" and m.method == "ACK" for m in callee.result().traced())


def test_sighup_reload_good_then_broken_file(tmp_path: Path) -> None:
    bench = Bench(tmp_path)
    path = bench.setup.config_path
    good = copy.deepcopy(bench.setup.config)
    with bench:
        # 1. the caller's number is presented
        first = bench.call("uac-call.xml", "uas-presented.xml", caller=CALLER)
        assert_answered(first)
        assert_presented(first, number=CALLER)

        # 2. a call in progress across the reload; the new file withholds the caller
        long_caller, long_callee = _start_long_call(bench, hold_ms=2000)
        with running(long_caller, long_callee):
            _wait_for("the long call to be answered", lambda: _acked(long_callee))
            changed = copy.deepcopy(good)
            changed["trunks"]["customers"]["restricted_numbers"].append(CALLER)
            _write(path, yaml.safe_dump(changed, sort_keys=False))
            _sighup(bench, "ok")
            active = metric_sum(bench.metrics(), "sipguard_active_calls")
            assert active == 1, "the long call ended before the reload: make it longer"
            long_result = long_caller.wait(15)
            long_callee_result = long_callee.wait(5)
        long_call = Placed(long_result, long_callee_result)
        assert_answered(long_call)
        assert_presented(long_call, number=CALLER)
        byes = [m for m in long_call.received() if m.method == "BYE"]
        assert byes, long_call.context()
        # the dialog keeps its identity: the BYE after the reload has the presented From
        assert byes[0].header("from") == long_call.invite().header("from"), long_call.context()

        # 3. a new call follows the new policy
        second = bench.call("uac-call.xml", "uas-withheld-trusted.xml", caller=CALLER)
        assert_answered(second)
        assert_withheld(second, number=CALLER, trusted=True)

        # 4. broken files are refused, each with one line FILE:LINE: field: message; they
        # would present the caller again if they were taken
        errors = []
        broken_route = copy.deepcopy(good)
        broken_route["trunks"]["customers"]["route_to"] = "nowhere"
        broken_texts = [
            yaml.safe_dump(broken_route, sort_keys=False),
            yaml.safe_dump(good, sort_keys=False) + "limits: {max_calls: [\n",
        ]
        for text in broken_texts:
            _write(path, text)
            with pytest.raises(ConfigError) as info:
                load_config(str(path))
            errors.append(str(info.value))
            _sighup(bench, "error")
            _wait_for(
                "the reload error in the log",
                lambda: str(info.value) in bench.sipguard.log_path.read_text(errors="replace"),
            )
        assert bench.sipguard.healthy()

        # 5. a new call still follows the last good policy
        third = bench.call("uac-call.xml", "uas-withheld-trusted.xml", caller=CALLER)
        assert_answered(third)
        assert_withheld(third, number=CALLER, trusted=True)

        metrics = bench.metrics()

    assert metric_sum(metrics, "sipguard_config_reloads_total", result="ok") == 1, metrics
    assert metric_sum(metrics, "sipguard_config_reloads_total", result="error") == 2, metrics
    assert presentation_counts(metrics) == {
        ("allowed", "default"): 2,
        ("restricted", "restricted_default"): 2,
    }, metrics

    # the error lines: FILE:LINE: field: message, each on a line of its own
    assert re.fullmatch(
        rf"{re.escape(str(path))}:\d+: trunks\.customers\.route_to: .+", errors[0]
    ), errors[0]
    assert re.fullmatch(rf"{re.escape(str(path))}:\d+: \(yaml\): .+", errors[1]), errors[1]
    log_lines = bench.log.splitlines()
    for error in errors:
        lines = [line for line in log_lines if error in line]
        assert len(lines) == 1, (error, bench.log)
        assert lines[0].endswith(error), lines[0]
    assert "Traceback" not in bench.log, bench.log

    # CDRs: the call in progress kept the presentation it started with
    ends = end_records(bench)
    assert [r["presentation"] for r in ends] == [
        "allowed",
        "allowed",
        "restricted",
        "restricted",
    ], ends
    for r in ends:
        assert_cdr(r, caller=CALLER, presentation=r["presentation"])
    assert all(r["end_reason"] == "caller_bye" for r in ends), ends


def test_reload_adding_a_listen_entry_keeps_calls_working(tmp_path: Path) -> None:
    """A valid file that adds a ``listen`` entry (in front of the others) and ``SIGHUP``:
    sipguard refuses the reload with a one-line error (sockets change only with a restart)
    and goes on routing calls on the sockets it has."""
    # a short target timeout: the broken call fails in about a second, not eight
    bench = Bench(tmp_path, {"sip": {"target_timeout": 1.0}})
    path = bench.setup.config_path
    changed = copy.deepcopy(bench.setup.config)
    extra = {"transport": "tcp", "address": "127.0.0.1", "port": free_port("127.0.0.1")}
    changed["listen"] = [extra, *changed["listen"]]
    with bench:
        _write(path, yaml.safe_dump(changed, sort_keys=False))
        os.kill(bench.sipguard.pid, signal.SIGHUP)
        _wait_for("the reload to be refused", lambda: _reloads(bench, "error") == 1)
        assert _reloads(bench, "ok") == 0
        call = bench.call("uac-refused.xml", "uas-presented.xml", caller=CALLER)
    assert "listen: the listening sockets change only with a restart" in bench.log
    assert call.finals == [200], call.context() + "\n" + bench.log
    assert_answered(call)

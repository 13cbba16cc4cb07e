"""``log_format: text | json`` (SPEC §5): the formatter alone, the configuration field, and
a real sipguard carrying a few SIPp calls with each format (numbers masked at INFO)."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import pytest

from sipguard.cli import main
from sipguard.net.logs import CALL_LINE, JsonFormatter, event_name
from testkit.sipp import Sipguard, read_cdrs, running, sipp_available, uac, uas, write_config

CALLS = 5
# SIPp's From is no number: the untrusted customers trunk puts its default_cli in its place
CALLER = "+31201234000"
MASKED = "+3120123****"


def record(msg: str, args: tuple[object, ...], **extra: object) -> logging.LogRecord:
    rec = logging.LogRecord("sipguard.b2bua", logging.INFO, __file__, 1, msg, args, None)
    for k, v in extra.items():
        setattr(rec, k, v)
    return rec


def test_the_call_line_gives_its_call_id_trunks_and_masked_caller() -> None:
    args = ("0a1b2c3d-x", "customers", "pbx", MASKED, "allowed", "default", " emergency")
    line = JsonFormatter().format(record(CALL_LINE, args))
    assert "\n" not in line
    doc = json.loads(line)
    assert doc["ts"].endswith("Z") and len(doc["ts"]) == len("2026-12-03T23:45:01.123Z")
    assert doc["level"] == "info"
    assert doc["logger"] == "sipguard.b2bua"
    assert doc["event"] == "call"
    assert doc["msg"].startswith("call 0a1b2c3d-x customers -> pbx caller=+3120123****")
    assert (doc["call_id"], doc["trunk"], doc["trunk_out"]) == ("0a1b2c3d-x", "customers", "pbx")
    assert (doc["caller"], doc["emergency"]) == (MASKED, True)


def test_keys_passed_with_extra_are_written_and_others_are_not() -> None:
    rec = record("target %s failed", ("x",), call_id="c1", trunk="pbx", event="target_down", ip="1")
    doc = json.loads(JsonFormatter().format(rec))
    assert (doc["event"], doc["call_id"], doc["trunk"]) == ("target_down", "c1", "pbx")
    assert "ip" not in doc


@pytest.mark.parametrize(
    ("template", "event"),
    [
        ("cannot connect to %s %s:%d: %s", "cannot_connect_to"),
        ("cdr: spool full; refusing new calls until records can be stored", "cdr.spool_full"),
        ("dns: %s resolves again", "dns.resolves_again"),
        ("TLS peer %s:%d is not %s: its certificate holds %s; closing", "tls_peer"),
        (CALL_LINE, "call"),
        ("reload refused, keeping the running configuration: %s", "reload_refused"),
        ("sipguard running (pid %d, %s)", "sipguard_running"),
        ("stopped", "stopped"),
    ],
)
def test_the_event_name_is_the_templates_first_words(template: str, event: str) -> None:
    assert event_name(template) == event


def test_a_bad_log_format_is_a_config_error(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    setup = write_config(tmp_path, overrides={"log_format": "xml"})
    text = setup.config_path.read_text()
    line = text.splitlines().index("log_format: xml") + 1
    assert main(["check-config", "-c", str(setup.config_path)]) == 2
    err = capsys.readouterr().err.strip()
    assert err == f"{setup.config_path}:{line}: log_format: expected one of text, json, got 'xml'"


@pytest.mark.sipp
@pytest.mark.skipif(not sipp_available(), reason="SIPp (sip-tester) is not installed")
@pytest.mark.timeout(60)
@pytest.mark.parametrize("fmt", ["text", "json"])
def test_sipguard_logs_calls_in_the_format_asked_for(tmp_path: Path, fmt: str) -> None:
    setup = write_config(tmp_path, overrides={"log_format": fmt, "log_level": "info"})
    sipguard = Sipguard(setup)
    callee = uas(setup, calls=CALLS, timeout_s=20, trace_msg=False)
    caller = uac(setup, calls=CALLS, rate=50, hold_ms=50, timeout_s=15, trace_msg=False)
    with running(callee, sipguard):
        sipguard.start()
        callee.start()
        callee.wait_listening()
        result = caller.run()
        callee.wait(10)
        assert sipguard.stop() == 0
    log = sipguard.log_path.read_text()
    assert result.successful == CALLS, result.describe() + log
    assert CALLER not in log  # masked at INFO, in either format
    ids = {r["id"] for r in read_cdrs(setup.cdr_dir)}
    if fmt == "text":
        calls = [x for x in log.splitlines() if " INFO sipguard.b2bua call " in x]
        assert len(calls) == CALLS, log
        assert all(f"caller={MASKED}" in x for x in calls)
        return
    docs = [json.loads(x) for x in log.splitlines()]  # every line is one JSON object
    assert all({"ts", "level", "logger", "event", "msg"} <= d.keys() for d in docs)
    assert {"sipguard_running", "listening_on", "stopped"} <= {d["event"] for d in docs}
    calls = [d for d in docs if d["event"] == "call"]
    assert len(calls) == CALLS, log
    for d in calls:
        assert d["level"] == "info"
        assert (d["trunk"], d["trunk_out"], d["caller"]) == ("customers", "pbx", MASKED)
        assert d["call_id"] in ids  # sipguard's own id: the one its CDRs carry

"""The Prometheus configuration, alert rules and Grafana dashboard under ``docker/``.

* ``promtool check config``, ``check rules`` and ``test rules`` (alerts_test.yml: a case
  for each alert);
* the dashboard is well formed and names only metrics sipguard exports;
* Debian's ``prometheus`` on loopback (private storage, 1 s scrapes, alerts.yml loaded)
  scrapes a real sipguard carrying SIPp calls, 112 calls beyond a small emergency
  capacity and an INVITE from an unknown address; then every dashboard query must parse
  and return series, every alert expression must parse, every metric it names must
  have series, and every rule must evaluate without error.

Every process is started here and stopped by its PID.
"""

from __future__ import annotations

import json
import re
import shutil
import socket
import subprocess
import time
import urllib.error
import urllib.parse
import urllib.request
from pathlib import Path
from typing import Any

import pytest
import yaml

from sipguard.metrics import Metrics
from testkit.sipp import (
    SIPGUARD_IP,
    Sipguard,
    child_setup,
    free_port,
    running,
    sipp_available,
    stop_pid,
    uac,
    uas,
    write_config,
)

REPO = Path(__file__).resolve().parents[1]
PROM_DIR = REPO / "docker" / "prometheus"
DASHBOARD = REPO / "docker" / "grafana" / "dashboards" / "sipguard.json"
PROMTOOL = shutil.which("promtool") or "/usr/bin/promtool"
PROMETHEUS = shutil.which("prometheus") or "/usr/bin/prometheus"
RATE_INTERVAL = "15s"  # what Grafana's $__rate_interval is with 1 s scrapes, about

needs_promtool = pytest.mark.skipif(
    not Path(PROMTOOL).exists(), reason="promtool (Debian package prometheus) is not installed"
)


def promtool(*args: str, cwd: Path = PROM_DIR) -> str:
    done = subprocess.run(
        [PROMTOOL, *args], cwd=cwd, capture_output=True, text=True, timeout=60, check=False
    )
    assert done.returncode == 0, done.stdout + done.stderr
    return done.stdout + done.stderr


def alert_rules() -> list[dict[str, Any]]:
    doc = yaml.safe_load((PROM_DIR / "alerts.yml").read_text())
    return [r for g in doc["groups"] for r in g["rules"]]


def panel_queries() -> list[tuple[str, str]]:
    """(panel title, query) for every target of every panel, as Prometheus gets it."""
    dash = json.loads(DASHBOARD.read_text())
    return [
        (p["title"], t["expr"].replace("$__rate_interval", RATE_INTERVAL))
        for p in dash["panels"]
        for t in p["targets"]
    ]


def metric_names(expr: str) -> set[str]:
    return set(re.findall(r"\b(sipguard_[a-z_]+)\b", expr)) | (
        {"up"} if re.search(r"\bup\{", expr) else set()
    )


def exported_names() -> set[str]:
    """Every series name sipguard's registry can export (histograms with their suffixes)."""
    out = set()
    for family in Metrics().registry.collect():
        for suffix in ("", "_total", "_bucket", "_count", "_sum"):
            out.add(family.name + suffix)
    return out


# -- without a server -------------------------------------------------------------------


@needs_promtool
def test_promtool_checks_the_config_the_rules_and_their_unit_tests() -> None:
    assert "SUCCESS" in promtool("check", "config", "prometheus.yml")
    out = promtool("check", "rules", "alerts.yml")
    assert f"SUCCESS: {len(alert_rules())} rules found" in out
    assert "SUCCESS" in promtool("test", "rules", "alerts_test.yml")


def test_every_alert_has_a_runbook_and_a_unit_test() -> None:
    tests = yaml.safe_load((PROM_DIR / "alerts_test.yml").read_text())
    fired = {
        case["alertname"]
        for t in tests["tests"]
        for case in t["alert_rule_test"]
        if case.get("exp_alerts")
    }
    for rule in alert_rules():
        assert rule["annotations"]["runbook"].strip(), rule["alert"]
        assert rule["annotations"]["summary"].strip(), rule["alert"]
        assert rule["labels"]["severity"] in ("warning", "critical"), rule["alert"]
        assert rule["alert"] in fired, f"no promtool case where {rule['alert']} fires"


def test_the_dashboard_and_the_alerts_name_only_metrics_sipguard_exports() -> None:
    dash = json.loads(DASHBOARD.read_text())
    ids = [p["id"] for p in dash["panels"]]
    assert len(ids) == len(set(ids))
    titles = " | ".join(p["title"] for p in dash["panels"])
    for wanted in (
        "Calls per second by trunk",
        "Active calls",
        "Call setup time",
        "Presented vs withheld by reason",
        "Emergency calls",
        "Rejections by reason",
        "CDR sink health",
        "Overload state",
        "Event-loop lag",
    ):
        assert wanted in titles
    for p in dash["panels"]:
        assert p["targets"], p["title"]
        assert p["datasource"]["uid"] == "${datasource}", p["title"]
    exported = exported_names() | {"up"}
    exprs = [q for _, q in panel_queries()] + [r["expr"] for r in alert_rules()]
    for expr in exprs:
        assert metric_names(expr), expr
        assert metric_names(expr) <= exported, (expr, metric_names(expr) - exported)


# -- Prometheus against a running sipguard ----------------------------------------------


class Prometheus:
    def __init__(self, workdir: Path, target: str, rules: Path) -> None:
        self.port = free_port()
        self.workdir = workdir
        workdir.mkdir(parents=True, exist_ok=True)
        config = {
            "global": {"scrape_interval": "1s", "evaluation_interval": "1s"},
            "rule_files": [str(rules)],
            "scrape_configs": [{"job_name": "sipguard", "static_configs": [{"targets": [target]}]}],
        }
        (workdir / "prometheus.yml").write_text(yaml.safe_dump(config))
        self.log = workdir / "prometheus.log"
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self, timeout: float = 20.0) -> None:
        with self.log.open("wb") as log:
            self.proc = subprocess.Popen(
                [
                    PROMETHEUS,
                    f"--config.file={self.workdir / 'prometheus.yml'}",
                    f"--storage.tsdb.path={self.workdir / 'data'}",
                    f"--web.listen-address={SIPGUARD_IP}:{self.port}",
                    "--storage.tsdb.retention.time=1h",
                    "--log.level=warn",
                ],
                cwd=self.workdir,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                preexec_fn=child_setup(None),  # noqa: PLW1509 - dies with the test
            )
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            assert self.proc.poll() is None, self.log.read_text()
            try:
                with urllib.request.urlopen(self.url("/-/ready"), timeout=1.0) as r:
                    if r.status == 200:
                        return
            except (urllib.error.URLError, OSError):
                pass
            time.sleep(0.1)
        raise AssertionError(f"prometheus not ready in {timeout}s:\n{self.log.read_text()}")

    def stop(self) -> None:
        if self.proc is not None:
            stop_pid(self.proc, grace=10.0)

    def url(self, path: str) -> str:
        return f"http://{SIPGUARD_IP}:{self.port}{path}"

    def get(self, path: str, **params: str) -> dict[str, Any]:
        query = f"?{urllib.parse.urlencode(params)}" if params else ""
        try:
            with urllib.request.urlopen(self.url(path + query), timeout=10.0) as r:
                return dict(json.load(r))
        except urllib.error.HTTPError as exc:  # a query that does not parse: 400 with JSON
            return dict(json.load(exc))

    def query(self, expr: str) -> dict[str, Any]:
        return self.get("/api/v1/query", query=expr)


def unknown_source_invite(sip_port: int) -> None:
    """An INVITE from an address no trunk holds: 403, reason unknown_source (ACKed)."""
    head = (
        "SIP/2.0/UDP 127.0.0.4:5099;branch=z9hG4bK-ops-1",
        "<sip:scan@127.0.0.4>;tag=1",
        "ops-unknown-1@127.0.0.4",
    )

    def request(method: str, to: str) -> bytes:
        return (
            f"{method} sip:0201234567@{SIPGUARD_IP}:{sip_port} SIP/2.0\r\n"
            f"Via: {head[0]}\r\nFrom: {head[1]}\r\nTo: {to}\r\nCall-ID: {head[2]}\r\n"
            f"CSeq: 1 {method}\r\nMax-Forwards: 70\r\nContact: <sip:scan@127.0.0.4:5099>\r\n"
            "Content-Length: 0\r\n\r\n"
        ).encode()

    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.bind(("127.0.0.4", 0))
        s.settimeout(2.0)
        s.sendto(request("INVITE", "<sip:0201234567@127.0.0.1>"), (SIPGUARD_IP, sip_port))
        answer = s.recv(4096).decode()
        assert answer.startswith("SIP/2.0 403"), answer
        to = next(x for x in answer.split("\r\n") if x.lower().startswith("to:"))
        s.sendto(request("ACK", to.split(":", 1)[1].strip()), (SIPGUARD_IP, sip_port))


@pytest.mark.sipp
@pytest.mark.skipif(not sipp_available(), reason="SIPp (sip-tester) is not installed")
@pytest.mark.skipif(
    not Path(PROMETHEUS).exists(), reason="prometheus (Debian package) is not installed"
)
@pytest.mark.timeout(150)
def test_prometheus_evaluates_every_panel_and_alert_against_sipguard_under_load(
    tmp_path: Path,
) -> None:
    # an emergency capacity of 2: the 112 calls held 2 s at 10/s are partly refused
    setup = write_config(
        tmp_path,
        overrides={
            "limits": {"emergency_max_calls": 2},
            # the trunk may take the whole reserve: the global limit is what refuses here
            "trunks": {"customers": {"limits": {"emergency_max_calls": 2, "emergency_cps": 100}}},
        },
    )
    sipguard = Sipguard(setup)
    prom = Prometheus(
        tmp_path / "prometheus", f"{SIPGUARD_IP}:{setup.metrics_port}", PROM_DIR / "alerts.yml"
    )
    callee = uas(setup, calls=100000, timeout_s=60, trace_msg=False)
    calls = uac(setup, calls=750, rate=50, hold_ms=1000, timeout_s=45, trace_msg=False)
    sos = uac(
        setup, "sos", calls=20, rate=10, hold_ms=2000, timeout_s=30, trace_msg=False, service="112"
    )
    with running(callee, calls, sos, sipguard, prom):
        sipguard.start()
        prom.start()
        callee.start()
        callee.wait_listening()
        calls.start()
        sos.start()
        unknown_source_invite(setup.sip_port)
        time.sleep(12)  # rates over 15 s windows of 1 s scrapes; calls ended; rules evaluated
        up = prom.query('up{job="sipguard"}')["data"]["result"]
        assert up and up[0]["value"][1] == "1", (up, prom.log.read_text())
        panels = {q: (title, prom.query(q)) for title, q in panel_queries()}
        alerts = {r["alert"]: prom.query(r["expr"]) for r in alert_rules()}
        names = {n for r in alert_rules() for n in metric_names(r["expr"])}
        present = {n: prom.query(f'count({{__name__="{n}"}})') for n in names}
        rules = prom.get("/api/v1/rules")
        result = calls.wait(40)
    context = f"{result.describe()}\n--- sipguard:\n{sipguard.log_tail()}"

    bad = [
        f"{title}: {q}: {r.get('error') or 'no series'}"
        for q, (title, r) in panels.items()
        if r["status"] != "success" or not r["data"]["result"]
    ]
    assert not bad, "\n".join(bad) + "\n" + context
    bad = [f"{a}: {r.get('error')}" for a, r in alerts.items() if r["status"] != "success"]
    assert not bad, bad
    missing = [n for n, r in present.items() if not r["data"]["result"]]
    assert not missing, missing
    evaluated = [r for g in rules["data"]["groups"] for r in g["rules"]]
    assert {r["name"] for r in evaluated} == {r["alert"] for r in alert_rules()}
    assert all(r["health"] == "ok" for r in evaluated), evaluated
    assert result.successful == 750 and result.failed == 0, context

"""sipguard runs without the cyclic garbage collector: nothing it does leaves a cycle.

``tests/test_net_gc.py`` checks the sans-IO core. This runs the whole process (uvloop, the
transports, the CDR thread, the metrics server) under SIPp with the guard made to collect
every second (a ``sitecustomize`` on ``PYTHONPATH`` sets its bounds to 0), then reads what
the collections found from the metrics: nothing, over UDP and over TCP.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from testkit.sipp import (
    Sipguard,
    metric_sum,
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

CALLS = 400
RATE = 100

SITECUSTOMIZE = """
import sipguard.net.server as server

server.GC_OBJECTS_PER_ITEM = 0
server.GcGuard.__init__.__defaults__ = (0,)
"""


@pytest.mark.parametrize("transport", ["udp", "tcp"])
def test_no_reference_cycles_under_load(
    tmp_path: Path, transport: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    site = tmp_path / "site"
    site.mkdir()
    (site / "sitecustomize.py").write_text(SITECUSTOMIZE)
    monkeypatch.setenv("PYTHONPATH", str(site))
    tcp = transport == "tcp"
    setup = write_config(tmp_path / "run", target_transport=transport)
    sipguard = Sipguard(setup, cpus=(1,))
    callee = uas(setup, calls=CALLS, timeout_s=40, tcp=tcp, trace_msg=False, cpus=(0,))
    caller = uac(
        setup, calls=CALLS, rate=RATE, hold_ms=200, timeout_s=25, tcp=tcp, trace_msg=False,
        cpus=(0,),
    )  # fmt: skip
    with running(callee, sipguard):
        sipguard.start()
        callee.start()
        callee.wait_listening()
        result = caller.run()
        callee.wait(10)
        metrics = sipguard.metrics()
        sipguard.stop()
    assert result.successful == CALLS, result.describe()
    # the guard ran (every second, as the bounds are 0) and found nothing to free
    assert metric_sum(metrics, "sipguard_gc_collections_total") >= 2
    assert metric_sum(metrics, "sipguard_gc_unreachable_objects_total") == 0

"""Load shedding in the running process: a burst that waits in the receive queue.

sipguard is stopped (``SIGSTOP``) while a burst of new calls arrives, the way a busy
host or a long pause leaves datagrams waiting, then continued. Its probe reads the
queue before the loop reads the burst: part of the new calls get ``503`` without
``Retry-After`` (SPEC §8), the emergency calls in the burst go on, and the metrics say
so. The process is stopped by its PID.
"""

from __future__ import annotations

import os
import re
import signal
import time
from pathlib import Path

import pytest

from testkit.rawsip import (
    SDP,
    UdpPeer,
    header,
    scrape_samples,
    sip_request,
    sipguard_addr,
    status_of,
)
from testkit.sipp import Sipguard, running, sipp_available, write_config

pytestmark = [
    pytest.mark.sipp,
    pytest.mark.skipif(not sipp_available(), reason="SIPp (sip-tester) is not installed"),
    pytest.mark.timeout(60),
]

BURST = 60  # new calls, of which every sixth is an emergency call


def test_a_burst_waiting_in_the_queue_is_shed_but_not_its_emergency_calls(
    tmp_path: Path,
) -> None:
    setup = write_config(tmp_path, overrides={"limits": {"overload_queue_kb": 16}})
    sg = Sipguard(setup)
    caller = UdpPeer()
    callee = UdpPeer("127.0.0.2", setup.callee_port)  # the pbx trunk's target
    dest = sipguard_addr(setup)
    invites: dict[str, bool] = {}  # Call-ID -> emergency
    with running(sg):
        sg.start()
        assert sg.proc is not None
        os.kill(sg.pid, signal.SIGSTOP)
        try:
            for n in range(BURST):
                emergency = n % 6 == 5
                call_id = f"burst-{n}@test"
                invites[call_id] = emergency
                caller.send(
                    sip_request(
                        "INVITE",
                        local=caller.local,
                        call_id=call_id,
                        user="112" if emergency else "0201234567",
                        body=SDP,
                    ),
                    dest,
                )
            time.sleep(0.2)  # past the probe's interval: its reading is due first
        finally:
            os.kill(sg.pid, signal.SIGCONT)
        answers = caller.recv_all(2.0)
        forwarded = callee.recv_all(0.5)
        samples = scrape_samples(sg)
    caller.close()
    callee.close()

    refused = {header(a, "Call-ID") for a in answers if status_of(a) == 503 and header(a, "CSeq")}
    retry_after = [a for a in answers if status_of(a) == 503 and header(a, "Retry-After")]
    assert not retry_after, retry_after[0]
    emergency_ids = {c for c, e in invites.items() if e}
    assert refused, f"nothing was shed:\n{sg.log_tail(30)}"
    assert refused <= set(invites) - emergency_ids, "an emergency call was shed"
    assert len(refused) < BURST - len(emergency_ids), "every call was shed"
    # every emergency call and every admitted call went on to the callee (B-leg Call-IDs
    # are sipguard's own; its retransmissions count once)
    b_invites = {header(f, "Call-ID"): f for f in forwarded if f.startswith(b"INVITE ")}
    assert len(b_invites) == BURST - len(refused), (len(b_invites), len(refused))
    emergency_out = [f for f in b_invites.values() if f.startswith(b"INVITE sip:112@")]
    assert len(emergency_out) == len(emergency_ids)

    def value(name: str, **labels: str) -> float:
        return sum(v for n, lab, v in samples if n == name and labels.items() <= lab.items())

    assert value("sipguard_rejected_total", reason="overload") == len(refused)
    # one line said it, with what it had shed by then (a line per 10 s at most)
    (said,) = re.findall(r"overload: (\d+) new calls shed \((\d+) since start\)", sg.log_tail(1000))
    assert said[0] == said[1] and 0 < int(said[0]) <= len(refused), said

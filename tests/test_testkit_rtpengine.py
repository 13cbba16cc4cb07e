"""The rtpengine harness itself: two instances side by side, stopped by PID; a dead relay."""

from __future__ import annotations

import os
from collections.abc import Callable

import pytest

from testkit.rtpengine import (
    NgError,
    Rtpengine,
    dead_relay,
    ng_request,
    rtpengine,  # noqa: F401 - fixture
    rtpengine_factory,  # noqa: F401 - fixture
)

pytestmark = pytest.mark.rtpengine


def test_two_instances_answer_and_stop_by_pid(
    rtpengine_factory: Callable[..., Rtpengine],  # noqa: F811
) -> None:
    one = rtpengine_factory()
    two = rtpengine_factory()
    assert one.ng_port != two.ng_port
    assert (one.port_min, one.port_max) != (two.port_min, two.port_max)
    assert one.ping() and two.ping()
    assert one.pidfile.read_text().strip() == str(one.proc.pid if one.proc else -1)
    pid = one.proc.pid if one.proc else -1
    one.stop()
    with pytest.raises(ProcessLookupError):
        os.kill(pid, 0)
    assert not one.ping()
    assert two.ping()


def test_list_and_query_see_a_call(rtpengine: Rtpengine) -> None:  # noqa: F811
    sdp = (
        "v=0\r\no=- 1 1 IN IP4 127.0.0.3\r\ns=-\r\nc=IN IP4 127.0.0.3\r\nt=0 0\r\n"
        "m=audio 6000 RTP/AVP 8\r\n"
    )
    offer = rtpengine.ng({"command": "offer", "call-id": "k1", "from-tag": "a", "sdp": sdp})
    assert offer["result"] == "ok"
    assert rtpengine.list_calls() == ["k1"]
    assert rtpengine.query("k1")["result"] == "ok"
    assert rtpengine.delete("k1", "a")["result"] == "ok"
    assert rtpengine.list_calls() == []
    assert rtpengine.query("k1")["result"] == "error"


def test_dead_relay_never_answers() -> None:
    with dead_relay() as addr, pytest.raises(NgError):
        ng_request(addr, {"command": "ping"}, timeout=0.3, tries=2)

"""The rtpengine harness itself: two instances side by side, stopped by PID; a dead relay."""

from __future__ import annotations

import os
import socket
from collections.abc import Callable

import pytest

from testkit.rtpengine import (
    NgError,
    Rtpengine,
    dead_ng,  # noqa: F401 - fixture
    dead_relay,
    ng_request,
    relayed_packets,
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


def test_dead_relay_never_answers(dead_ng: tuple[str, int]) -> None:  # noqa: F811
    with dead_relay() as addr, pytest.raises(NgError):
        ng_request(addr, {"command": "ping"}, timeout=0.3, tries=2)
    with pytest.raises(NgError):
        ng_request(dead_ng, {"command": "ping"}, timeout=0.2, tries=1)


def _port(sdp: str) -> int:
    (line,) = [x for x in sdp.split("\r\n") if x.startswith("m=audio ")]
    return int(line.split()[1])


def _rtp(seq: int) -> bytes:
    # RTP v2, PCMA (8), sequence, timestamp, SSRC; 160 bytes of A-law silence
    return (
        bytes([0x80, 8])
        + seq.to_bytes(2, "big")
        + (seq * 160).to_bytes(4, "big")
        + (b"\x12\x34\x56\x78" + b"\xd5" * 160)
    )


def test_relayed_packets_counts_rtp_per_direction(rtpengine: Rtpengine) -> None:  # noqa: F811
    caller = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    callee = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    try:
        caller.bind(("127.0.0.3", 0))
        callee.bind(("127.0.0.2", 0))
        a_port, b_port = caller.getsockname()[1], callee.getsockname()[1]

        def sdp(ip: str, port: int) -> str:
            return (
                f"v=0\r\no=- 1 1 IN IP4 {ip}\r\ns=-\r\nc=IN IP4 {ip}\r\nt=0 0\r\n"
                f"m=audio {port} RTP/AVP 8\r\na=rtpmap:8 PCMA/8000\r\n"
            )

        ids = {"call-id": "rtp-1", "from-tag": "a"}
        offer = rtpengine.ng({"command": "offer", **ids, "sdp": sdp("127.0.0.3", a_port)})
        answer = rtpengine.ng(
            {"command": "answer", **ids, "to-tag": "b", "sdp": sdp("127.0.0.2", b_port)}
        )
        # each side sends to the relay's port that the SDP it was given names
        to_callee = (rtpengine.ip, _port(str(answer["sdp"])))  # in the answer the caller got
        to_caller = (rtpengine.ip, _port(str(offer["sdp"])))  # in the offer the callee got
        callee.settimeout(2.0)
        caller.settimeout(2.0)
        for seq in range(5):
            caller.sendto(_rtp(seq), to_callee)
            data, src = callee.recvfrom(2048)
            assert src == to_caller and data[12:] == _rtp(seq)[12:]  # from the relay
        for seq in range(3):
            callee.sendto(_rtp(100 + seq), to_caller)
            data, src = caller.recvfrom(2048)
            assert src == to_callee
        counts = relayed_packets(rtpengine.query("rtp-1"))
        assert counts == {"a": 5, "b": 3}
    finally:
        caller.close()
        callee.close()

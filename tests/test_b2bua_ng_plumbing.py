"""The core's side of the ng client: built from the configuration, its datagrams in
``media_outbox``, its replies through ``media_receive``, its deadline in the core's."""

from __future__ import annotations

from sipguard.b2bua.core import B2BUA
from sipguard.media.bencode import encode
from testkit.callsim import default_config

RELAY = ("127.0.0.1", 2223)
CONTROL = "rtpengine: {control: ['udp:127.0.0.1:2223']}\n"


def test_no_control_no_client() -> None:
    core = B2BUA(default_config())
    assert core.media_ng is None
    assert core.next_deadline() is None
    core.media_receive(b"abc d6:result2:oke", RELAY, 0.0)  # ignored
    core.handle_timer(1.0)
    assert core.media_outbox == []


def test_requests_replies_and_the_one_deadline() -> None:
    core = B2BUA(default_config(CONTROL))
    ng = core.media_ng
    assert ng is not None and ng.outbox is core.media_outbox
    got: list[tuple[dict[str, object] | None, float]] = []
    assert ng.request({"command": "ping"}, 10.0, lambda r, now: got.append((r, now)))
    [(addr, data)] = core.media_outbox
    assert addr == RELAY
    core.media_outbox.clear()
    assert core.next_deadline() == 10.5  # no SIP timer: the ng client's
    core.handle_timer(10.5)  # the retransmission
    assert core.media_outbox == [(RELAY, data)]
    core.media_receive(data.split(b" ")[0] + b" " + encode({"result": "pong"}), RELAY, 10.6)
    assert got == [({"result": "pong"}, 10.6)]
    assert core.next_deadline() is None


def test_reload_changes_the_relays_of_the_same_client() -> None:
    core = B2BUA(default_config(CONTROL))
    ng = core.media_ng
    assert ng is not None
    core.reload(default_config("rtpengine: {control: ['udp:[::1]:2224']}\n"))
    assert core.media_ng is ng and ng.controls == (("::1", 2224),)
    core.reload(default_config())  # control emptied: requests in flight may still end
    assert core.media_ng is ng and not ng.up
    fresh = B2BUA(default_config())
    fresh.reload(default_config(CONTROL))  # configured by a reload: built then
    assert fresh.media_ng is not None and fresh.media_ng.outbox is fresh.media_outbox

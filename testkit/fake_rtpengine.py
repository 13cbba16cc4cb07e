"""A small rtpengine in memory for the call-flow tests: the ng protocol on datagrams.

It answers what sipguard's real ng client (:mod:`sipguard.media.ng`) sends as rtpengine
would, without sockets: ``offer`` and ``answer`` return the SDP with the relay's address
in ``o=`` and ``c=`` (as ``replace: [origin, session-connection]`` asks), a port of its
own in each ``m=`` line and no ICE attributes (``ICE: remove``); ``delete``, ``query``
(``totals`` with the packets a test says were relayed), ``list`` and ``ping``. An
unknown call is ``error`` / ``Unknown call-id``.

A test chooses how it behaves: ``down`` (no reply at all, as a relay whose host is
gone), ``hold`` (replies kept in :attr:`held` until :meth:`FakeRtpengine.release`),
``fail`` (every offer/answer answered ``error``). Every command it got is in
:attr:`commands`. Used through :class:`testkit.callsim.Wire` (its ``relay``).

The real rtpengine is tested in ``tests/test_sipp_media.py``; this one only stands in for
it where a test needs a fake clock, lost replies or exact orderings.
"""

from __future__ import annotations

import itertools
import re
from dataclasses import dataclass, field

from sipguard.media.bencode import decode_dict, encode

RELAY_IP = "127.0.0.10"
CONTROL = ("127.0.0.9", 2223)
CONTROL_CONFIG = 'rtpengine: {control: ["udp:127.0.0.9:2223"], when_down: %s}\n'

_ICE = re.compile(rb"^a=(candidate|ice-[a-z0-9-]+|end-of-candidates|remote-candidates)")


def rewrite(sdp: bytes, ip: str, ports: itertools.count[int]) -> bytes:
    """``sdp`` as rtpengine hands it on: its address, its ports, no ICE."""
    out: list[bytes] = []
    addr = ip.encode()
    for raw in sdp.split(b"\n"):
        line = raw.rstrip(b"\r")
        if not line:
            continue
        if line.startswith(b"o="):
            parts = line.split(b" ")
            if len(parts) == 6:
                parts[5] = addr
            line = b" ".join(parts)
        elif line.startswith(b"c="):
            line = b"c=IN IP4 " + addr
        elif line.startswith(b"m="):
            parts = line.split(b" ")
            parts[1] = str(next(ports)).encode()
            line = b" ".join(parts)
        elif _ICE.match(line):
            continue
        out.append(line)
    return b"\r\n".join(out) + b"\r\n"


@dataclass
class FakeRtpengine:
    ip: str = RELAY_IP
    down: bool = False
    hold: bool = False
    fail: bool = False
    commands: list[dict[str, object]] = field(default_factory=list)
    calls: dict[str, set[str]] = field(default_factory=dict)  # call-id -> tags
    packets: dict[str, int] = field(default_factory=dict)  # call-id -> packets relayed
    held: list[bytes] = field(default_factory=list)
    _ports: itertools.count[int] = field(default_factory=lambda: itertools.count(30000, 2))

    def handle(self, data: bytes) -> bytes | None:
        """One ng datagram in; the reply to send back (None: none, or held)."""
        if self.down:
            return None
        cookie, _, rest = data.partition(b" ")
        cmd = decode_dict(rest)
        self.commands.append(cmd)
        reply = encode(self._reply(cmd))
        out = cookie + b" " + reply
        if self.hold:
            self.held.append(out)
            return None
        return out

    def release(self) -> list[bytes]:
        held, self.held = self.held, []
        return held

    def named(self, command: str) -> list[dict[str, object]]:
        return [c for c in self.commands if c.get("command") == command]

    def _reply(self, cmd: dict[str, object]) -> dict[str, object]:
        name = cmd.get("command")
        call_id = str(cmd.get("call-id", ""))
        if name == "ping":
            return {"result": "pong"}
        if name == "list":
            return {"result": "ok", "calls": list(self.calls)}
        if name in ("offer", "answer"):
            if self.fail:
                return {"result": "error", "error-reason": "Ran out of ports"}
            if name == "answer" and call_id not in self.calls:
                return {"result": "error", "error-reason": "Unknown call-id"}
            tags = self.calls.setdefault(call_id, set())
            for key in ("from-tag", "to-tag"):
                if isinstance(cmd.get(key), str):
                    tags.add(str(cmd[key]))
            sdp = cmd.get("sdp")
            body = sdp.encode("utf-8", "surrogateescape") if isinstance(sdp, str) else b""
            return {"result": "ok", "sdp": rewrite(body, self.ip, self._ports)}
        if call_id not in self.calls:
            return {"result": "error", "error-reason": "Unknown call-id"}
        if name == "delete":
            del self.calls[call_id]
            self.packets.pop(call_id, None)
            return {"result": "ok"}
        if name == "query":
            n = self.packets.get(call_id, 0)
            return {
                "result": "ok",
                "totals": {
                    "RTP": {"packets": n, "bytes": n * 172, "errors": 0},
                    "RTCP": {"packets": 0, "bytes": 0, "errors": 0},
                },
            }
        return {"result": "error", "error-reason": "Unrecognized command"}

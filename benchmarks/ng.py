"""CPU per rtpengine ng request of the sans-IO client, in microseconds.

Run: ``.venv/bin/python benchmarks/ng.py`` (``--quick`` for a shorter run); with
``PYTHONPATH=build/native`` it measures the compiled modules (``tools/build_native.py``).

One round is what an anchored call costs sipguard per ng command, without the socket:
:meth:`NgClient.request` of an ``offer`` (the flags sipguard sends, a G.711 SDP: bencode
and a cookie) and :meth:`NgClient.receive` of rtpengine's reply with its SDP (decode,
match, ``done``). CPU time of this process (``time.process_time``), so other processes
on the machine count little; the median of 5 runs.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

# appended, not first: PYTHONPATH=build/native measures the compiled modules
sys.path.append(str(Path(__file__).resolve().parents[1]))

from sipguard.media import ng as ng_module
from sipguard.media.bencode import encode
from sipguard.media.ng import NgClient

RELAY = ("127.0.0.1", 2223)
SDP = (
    "v=0\r\no=- 3724394400 3724394400 IN IP4 198.51.100.10\r\ns=-\r\n"
    "c=IN IP4 198.51.100.10\r\nt=0 0\r\nm=audio 49170 RTP/AVP 8 0 101\r\n"
    "a=rtpmap:8 PCMA/8000\r\na=rtpmap:0 PCMU/8000\r\na=rtpmap:101 telephone-event/8000\r\n"
    "a=fmtp:101 0-16\r\na=ptime:20\r\na=sendrecv\r\n"
)


def _ignore(reply: dict[str, object] | None, now: float) -> None:
    pass


def run(rounds: int) -> float:
    """Microseconds of CPU per offer request and its reply."""
    client = NgClient([RELAY], max_pending=rounds + 1, max_affinity=rounds + 1)
    body = b" " + encode({"result": "ok", "sdp": SDP.replace("198.51.100.10", "127.0.0.10")})
    flags = ["origin", "session-connection"]
    outbox = client.outbox
    start = time.process_time()
    for i in range(rounds):
        command: dict[str, object] = {
            "command": "offer",
            "call-id": f"bench-{i}",
            "from-tag": "ft",
            "sdp": SDP,
            "replace": flags,
            "ICE": "remove",
        }
        client.request(command, 0.0, _ignore)
        _, data = outbox.pop()
        client.receive(data[:20] + body, RELAY, 0.0)
    return (time.process_time() - start) / rounds * 1e6


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    ap.add_argument("--quick", action="store_true")
    args = ap.parse_args()
    rounds = 2000 if args.quick else 20000
    figures = [run(rounds) for _ in range(5)]
    compiled = (ng_module.__file__ or "").endswith(".so")
    print(
        f"ng offer request+reply: {statistics.median(figures):.1f} us CPU "
        f"({'compiled' if compiled else 'pure Python'}, median of 5 x {rounds})"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())

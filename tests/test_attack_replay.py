"""PROTOS c07-sip and RFC 4475 replayed at a running sipguard while SIPp carries calls.

Issue 15 ("What it must show"): the PROTOS c07-sip cases and the RFC 4475 messages
replayed over UDP and TCP from a trunk of their own while SIPp carries calls through
another trunk: zero failed calls, every request answered or counted, RSS flat across
three replays.

The set-up (all on loopback):

* SIPp ``uac`` on 127.0.0.3 (trunk ``customers``) → sipguard → SIPp ``uas`` on
  127.0.0.2 (trunk ``pbx``), 30 calls/s for the whole test (60 s);
* the replayer on 127.0.0.45:5060 (the port the RFC 4475 messages' Via headers name),
  an untrusted trunk ``replay`` of its own, routed to trunk ``sink``: a UDP peer on
  127.0.0.46 (:class:`testkit.attack.Sink`) that answers every INVITE ``486`` at once,
  so that the replayed INVITEs sipguard admits end at once and never reach SIPp.

Each replay sends every PROTOS case (4,527 INVITEs, each followed by its CANCEL) and every
RFC 4475 message over UDP, paced at 1,000 datagrams/s, then over TCP (one connection per
message, eight at a time) every RFC 4475 message and a fixed sample of PROTOS: every 20th
case (227), all of them would take about a minute more per replay. Three replays.

Checks:

* SIPp: zero failed calls, every call of the caller completed by the callee;
* sipguard alive afterwards, no ``Traceback`` in its log;
* every UDP request answered or counted: a request is answered when some response
  carries its Call-ID and CSeq method (read naively, as a scanner would); the requests
  left unanswered are at most what sipguard counted as malformed
  (``sipguard_parse_errors_total``) or refused without an answer
  (``sipguard_rejected_total``);
* RSS flat: after the third replay, RSS is within 8 MB (or 10%, the larger) of RSS
  after the second. T1 is 0.1 s here, so a replay's transactions are over 6.4 s (64*T1)
  after it, and RSS is read then: what a replay leaves behind is what leaks. The first
  two replays warm sipguard up: its tables and the allocator's arenas reach their
  high-water mark when a replay makes it fall behind (measured: +48 MB from the first
  replay to the second, +1 MB from the second to the third), and Python's RSS does not
  shrink, so the third must reuse that memory. With the default T1 (64*T1 = 32 s) the
  replays overlap and RSS grows by about 55 MB a replay while their state is alive
  (~6 KB per request: measured). A leak of one small object per request (~9,100 a
  replay) shows as a few MB.
"""

from __future__ import annotations

import concurrent.futures
import time
from pathlib import Path

import pytest

from testkit.attack import (
    Collector,
    Sink,
    call_key,
    rss_kb,
    split_stream,
    status_of,
    tcp_exchange,
)
from testkit.corpus import ProtosCase, protos_cases, rfc4475_messages
from testkit.sipp import (
    Sipguard,
    free_port,
    metric_sum,
    running,
    sipp_available,
    uac,
    uas,
    udp_drops,
    write_config,
)


def drops(port: int) -> int | None:
    """Datagrams sipguard's UDP socket dropped (/proc/net/udp)."""
    return udp_drops().get(f"127.0.0.1:{port}")


pytestmark = [
    pytest.mark.sipp,
    pytest.mark.skipif(not sipp_available(), reason="SIPp (sip-tester) is not installed"),
    pytest.mark.timeout(240),
]

REPLAYER = "127.0.0.45"
SINK = "127.0.0.46"
REPLAYS = 3
RATE = 1000  # datagrams per second
TCP_SAMPLE_EVERY = 20
CALL_RATE = 30
CALLS = 1800  # 60 s at 30/s: as long as the three replays
RSS_SLACK_KB = 8 * 1024
T1 = 0.1  # s: transactions end 64*T1 = 6.4 s after their last message


def overrides(sink_port: int) -> dict[str, object]:
    numbering = {"country_code": "31", "national_prefix": "0", "international_prefix": "00"}
    return {
        "sip": {"t1": T1},
        "trunks": {
            "replay": {
                "sources": [f"{REPLAYER}/32"],
                "trusted": False,
                "route_to": "sink",
                "allowed_cli": ["+3120123*"],
                "default_cli": "+31201234000",
                "numbering": numbering,
            },
            "sink": {
                "sources": [f"{SINK}/32"],
                "trusted": True,
                "targets": [f"sip:{SINK}:{sink_port}"],
            },
        },
    }


def udp_datagrams(cases: list[ProtosCase], target: str, port: int, replay: int) -> list[bytes]:
    out: list[bytes] = []
    for case in cases:
        request, cancel = case.filled(REPLAYER, port, target, f"r{replay}")
        out += [request, cancel]
    out += [m.data for m in rfc4475_messages()]
    return out


def tcp_messages(cases: list[ProtosCase], target: str, port: int, replay: int) -> list[bytes]:
    out = []
    for case in cases[::TCP_SAMPLE_EVERY]:
        request, _ = case.filled(REPLAYER, port, target, f"t{replay}")
        out.append(request.replace(b"SIP/2.0/UDP", b"SIP/2.0/TCP", 1))
    out += [m.data for m in rfc4475_messages()]
    return out


def counted(sg: Sipguard) -> float:
    m = sg.metrics()
    return metric_sum(m, "sipguard_parse_errors_total") + metric_sum(m, "sipguard_rejected_total")


def test_protos_and_rfc4475_replayed_during_calls(tmp_path: Path) -> None:
    sink = Sink(SINK)
    setup = write_config(tmp_path, overrides=overrides(sink.addr[1]))
    dest = ("127.0.0.1", setup.sip_port)
    target = f"0201234567@127.0.0.1:{setup.sip_port}"
    collector = Collector(REPLAYER, dest, f"sip:{target}")
    sg = Sipguard(setup, cpus=(1,))
    callee = uas(setup, calls=CALLS, timeout_s=130, trace_msg=False, cpus=(0,))
    caller = uac(
        setup,
        calls=CALLS,
        rate=CALL_RATE,
        hold_ms=200,
        timeout_s=120,
        trace_msg=False,
        cpus=(0,),
        local_port=free_port("127.0.0.3"),
    )
    cases = list(protos_cases())
    report: list[str] = []
    rss: list[int] = []
    unanswered_total = 0
    sent_total = 0
    with running(caller, callee, sg):
        sink.start()
        collector.start()
        try:
            sg.start()
            callee.start()
            callee.wait_listening()
            caller.start()
            counted0 = counted(sg)
            for replay in range(REPLAYS):
                datagrams = udp_datagrams(cases, target, collector.addr[1], replay)
                took = collector.send_paced(datagrams, RATE)
                messages = tcp_messages(cases, target, collector.addr[1], replay)
                with concurrent.futures.ThreadPoolExecutor(8) as pool:
                    tcp = list(
                        pool.map(lambda m: tcp_exchange(m, REPLAYER, dest, wait=1.0), messages)
                    )
                time.sleep(1.5)  # the last answers
                got = collector.take()
                answered = {call_key(d) for d in got if status_of(d) is not None}
                keys = [call_key(d) for d in datagrams]
                unanswered = sum(1 for k in keys if k is None or k not in answered)
                unanswered_total += unanswered
                sent_total += len(datagrams)
                tcp_answered = sum(1 for chunks, _ in tcp if split_stream(b"".join(chunks)))
                time.sleep(64 * T1)  # this replay's transactions are over
                rss.append(rss_kb(sg.pid))
                m = sg.metrics()
                reasons = {
                    k.partition("reason=")[2][1:-2]: int(v)
                    for k, v in m.items()
                    if k.startswith("sipguard_rejected_total{")
                }
                report.append(
                    f"  active calls {metric_sum(m, 'sipguard_active_calls'):.0f}, parse errors "
                    f"{metric_sum(m, 'sipguard_parse_errors_total'):.0f}, rejected {reasons}"
                )
                report.append(
                    f"replay {replay + 1}: UDP {len(datagrams)} requests in {took:.1f} s, "
                    f"{len(got)} datagrams back, {unanswered} requests unanswered; TCP "
                    f"{len(messages)} messages, {tcp_answered} answered; RSS {rss[-1]} kB"
                )
            counted_delta = counted(sg) - counted0
            result = caller.wait(150)
            callee_result = callee.wait(20)
            assert sg.healthy(), sg.log_tail()
        finally:
            collector.stop()
            sink.stop()
        exit_code = sg.stop()
    log = sg.log_path.read_text(errors="replace")
    context = (
        "\n".join(report)
        + f"\ncounted (parse errors + rejected): {counted_delta:.0f}, unanswered {unanswered_total}"
        + f"\n{result.describe()[:3000]}\n--- sipguard log:\n{sg.log_tail(30)}"
        + f"\n--- UDP drops: {drops(setup.sip_port)}"
    )
    print(context)
    assert result.failed == 0, context
    assert result.successful == CALLS, context
    assert callee_result.successful == CALLS, context
    assert "Traceback" not in log, context
    assert exit_code == 0, context
    assert unanswered_total <= counted_delta, context
    assert rss[2] - rss[1] <= max(RSS_SLACK_KB, rss[1] // 10), context

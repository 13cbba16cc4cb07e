"""The I/O driver (``sipguard/net/``) end to end: sipguard as a process, SIPp and raw sockets.

What SPEC §4, §7 and §8 and issue 3 ask of the driver, on loopback (caller 127.0.0.3,
sipguard 127.0.0.1 or ::1, callee 127.0.0.2):

* SIGTERM drains: new calls and OPTIONS get 503, ``/readyz`` says 503, calls in progress
  end normally and sipguard exits 0 with their CDRs written; when the drain time runs
  out, the calls left are ended with BYE on both legs and ``end_reason: shutdown``;
* every metric of SPEC §7 is exported with its labels, and no label value carries a
  number or an address;
* malformed input (garbage, RFC 4475 invalid messages, PROTOS c07-sip cases) over UDP and
  TCP never disturbs a load of valid calls; an oversized datagram is dropped and counted;
* TCP: the idle sweep closes idle connections but never one a call uses; a stream that
  breaks framing is closed and counted;
* IPv6 on ::1; a trunk target given by name (NAPTR/SRV/A) with failover and probing.

Every process is bounded and stopped by its PID.
"""

from __future__ import annotations

import contextlib
import json
import os
import random
import re
import signal
import socket
import tarfile
import threading
import time
import urllib.error
import urllib.request
from collections import Counter
from pathlib import Path
from typing import Any

import dns.flags
import dns.message
import dns.rcode
import dns.rdataclass
import dns.rdatatype
import dns.rrset
import pytest

from sipguard.sip.message import Request, Response, parse_message
from testkit.callsim import callee_request, response_to
from testkit.rawsip import (
    SDP,
    UdpPeer,
    ack_for,
    b_leg_invite,
    header,
    scrape_samples,
    sip_request,
    sipguard_addr,
    status_of,
    tcp_connect,
    tcp_read_message,
    tcp_read_until_closed,
    tcp_transact,
    wait_for,
)
from testkit.sipp import (
    CALLEE_IP,
    CALLER_IP,
    SIPGUARD_IP,
    Setup,
    Sipguard,
    Sipp,
    free_port,
    metric_sum,
    read_cdrs,
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

SHARED = Path(__file__).resolve().parents[2] / "shared" / "corpus"
RFC4475 = SHARED / "rfc4475"
PROTOS = SHARED / "protos-c07-sip"


# -- raw SIP over sockets ----------------------------------------------------------------------


def http_status(sg: Sipguard, path: str) -> int:
    try:
        with urllib.request.urlopen(sg.url(path), timeout=2.0) as r:
            return int(r.status)
    except urllib.error.HTTPError as exc:
        return int(exc.code)


def active_calls(sg: Sipguard) -> float:
    return sg.metrics().get("sipguard_active_calls", -1.0)


def context(sg: Sipguard, *results: Any) -> str:
    parts = [r.describe() for r in results]
    return "\n".join([*parts, f"--- sipguard log:\n{sg.log_tail(60)}"])


# -- 1. SIGTERM drain (SPEC §4) --------------------------------------------------------------


def test_sigterm_drains_calls_in_progress_then_exits(tmp_path: Path) -> None:
    calls, hold_ms = 4, 3000
    setup = write_config(tmp_path, overrides={"drain_seconds": 10})
    sg = Sipguard(setup)
    callee = uas(setup, calls=calls, timeout_s=20)
    caller = uac(setup, calls=calls, rate=20, hold_ms=hold_ms, timeout_s=20)
    peer = UdpPeer()
    with running(callee, caller, sg):
        sg.start()
        callee.start()
        callee.wait_listening()
        caller.start()
        assert wait_for(lambda: active_calls(sg) == calls, 5.0), context(sg)
        assert http_status(sg, "/readyz") == 200
        os.kill(sg.pid, signal.SIGTERM)
        t_term = time.monotonic()
        assert wait_for(lambda: http_status(sg, "/readyz") == 503, 2.0), context(sg)
        assert http_status(sg, "/healthz") == 200

        # a new call: 503 without Retry-After (SPEC §8); acknowledged as §17.1.1.3 says
        invite = sip_request("INVITE", local=peer.local, body=SDP)
        resp = peer.transact(invite, sipguard_addr(setup))
        assert resp is not None and status_of(resp) == 503, (resp, context(sg))
        assert header(resp, "Retry-After") is None, resp
        peer.send(ack_for(invite, resp), sipguard_addr(setup))
        # OPTIONS to sipguard itself: 503, so that a load balancer stops sending
        resp = peer.transact(sip_request("OPTIONS", local=peer.local), sipguard_addr(setup))
        assert resp is not None and status_of(resp) == 503, (resp, context(sg))

        assert sg.proc is not None
        code = sg.proc.wait(15)
        waited = time.monotonic() - t_term
        result = caller.wait(10)
        callee_result = callee.wait(10)
    peer.close()
    ctx = f"{result.describe()}\n{callee_result.describe()}\n{sg.log_tail(60)}"
    assert code == 0, ctx
    assert waited < 10 - 1, f"exited {waited:.1f}s after SIGTERM: it waited for the drain time"
    # it ends without the interpreter's teardown (sipguard.cli), its log written to the end
    assert sg.log_tail(1).endswith("stopped"), ctx
    # the calls in progress ended normally: their BYEs passed
    assert result.successful == calls and result.failed == 0, ctx
    assert callee_result.successful == calls, ctx
    records = read_cdrs(setup.cdr_dir)
    answered = [r for r in records if r["answer"] is not None]
    kinds = Counter(r["kind"] for r in answered)
    assert kinds == {"start": calls, "end": calls}, records
    assert {r["end_reason"] for r in answered if r["kind"] == "end"} == {"caller_bye"}, records
    refused = [r for r in records if r["answer"] is None]
    assert len(refused) == 1 and refused[0]["status"] == 503, refused
    assert refused[0]["end_reason"] == "limit", refused


def test_drain_time_runs_out_calls_ended_with_bye_on_both_legs(tmp_path: Path) -> None:
    calls, hold_ms, drain = 3, 15000, 2.0
    setup = write_config(tmp_path, overrides={"drain_seconds": drain})
    sg = Sipguard(setup)
    callee = uas(setup, calls=calls, timeout_s=20)
    caller = uac(setup, calls=calls, rate=20, hold_ms=hold_ms, timeout_s=20)
    with running(callee, caller, sg):
        sg.start()
        callee.start()
        callee.wait_listening()
        caller.start()
        assert wait_for(lambda: active_calls(sg) == calls, 5.0), context(sg)
        os.kill(sg.pid, signal.SIGTERM)
        t_term = time.monotonic()
        assert sg.proc is not None
        code = sg.proc.wait(10)
        waited = time.monotonic() - t_term
        # both SIPp ends got their BYE and go on to end by themselves
        result = caller.wait(10)
        callee_result = callee.wait(10)
    ctx = f"{result.describe()}\n{callee_result.describe()}\n{sg.log_tail(60)}"
    assert code == 0, ctx
    assert drain - 0.2 <= waited < drain + 3, f"exited {waited:.1f}s after SIGTERM\n{ctx}"
    byes_to_caller = [m for m in result.traced() if m.direction == "received" and m.method == "BYE"]
    byes_to_callee = [
        m for m in callee_result.traced() if m.direction == "received" and m.method == "BYE"
    ]
    assert len({m.header("call-id") for m in byes_to_caller}) == calls, ctx
    assert len({m.header("call-id") for m in byes_to_callee}) == calls, ctx
    records = read_cdrs(setup.cdr_dir)
    kinds = Counter(r["kind"] for r in records)
    assert kinds == {"start": calls, "end": calls}, records
    ends = [r for r in records if r["kind"] == "end"]
    assert {r["end_reason"] for r in ends} == {"shutdown"}, ends
    for r in ends:
        assert r["status"] == 200 and r["answer"] is not None, r
        # ended at the drain deadline, not at the hold time
        assert r["duration_ms"] < hold_ms - 5000, r


# -- 2. the metrics endpoint (SPEC §7) ---------------------------------------------------------

SPEC_METRICS: dict[str, tuple[str, set[str]]] = {
    # name (as exported): (type, label names)
    "sipguard_calls_total": ("counter", {"trunk_in", "trunk_out", "result"}),
    "sipguard_active_calls": ("gauge", set()),
    "sipguard_presentation_total": ("counter", {"decision", "reason"}),
    "sipguard_emergency_calls_total": ("counter", set()),
    "sipguard_sip_messages_total": ("counter", {"direction", "kind"}),
    "sipguard_rejected_total": ("counter", {"reason"}),
    "sipguard_parse_errors_total": ("counter", set()),
    "sipguard_cdr_records_total": ("counter", {"sink", "result"}),
    "sipguard_config_reloads_total": ("counter", {"result"}),
}

# a label value never carries a number or an address (SPEC §6)
PHONE_LIKE = re.compile(r"\d{4,}|\+\d")
IPV4_LIKE = re.compile(r"\d{1,3}(?:\.\d{1,3}){3}")
IPV6_LIKE = re.compile(r"[0-9A-Fa-f]*:[0-9A-Fa-f]*:")


def test_metrics_endpoint_has_every_spec_metric_and_no_identifying_label(tmp_path: Path) -> None:
    calls = 5
    setup = write_config(tmp_path)
    sg = Sipguard(setup)
    callee = uas(setup, calls=calls, timeout_s=20)
    caller = uac(setup, calls=calls, rate=20, hold_ms=100, timeout_s=20)
    peer = UdpPeer()
    dest = sipguard_addr(setup)
    with running(callee, caller, sg):
        sg.start()
        callee.start()
        callee.wait_listening()
        result = caller.run()
        # a refused request, a malformed one, a request with a method of digits, a reload
        resp = peer.transact(sip_request("REGISTER", local=peer.local), dest)
        assert resp is not None and status_of(resp) == 405, resp
        peer.send(b"\x00garbage 127.0.0.3 +31201234567\r\n\r\n", dest)
        odd = sip_request("OPTIONS", local=peer.local).replace(b"OPTIONS", b"X31201234567")
        resp = peer.transact(odd, dest)
        assert resp is not None and status_of(resp) in (400, 501), resp
        os.kill(sg.pid, signal.SIGHUP)
        assert wait_for(
            lambda: metric_sum(sg.metrics(), "sipguard_config_reloads_total", result="ok") == 1,
            5.0,
        ), sg.log_tail()
        assert wait_for(lambda: active_calls(sg) == 0, 5.0)
        assert wait_for(
            lambda: (
                metric_sum(sg.metrics(), "sipguard_cdr_records_total", result="written")
                >= 2 * calls
            ),
            5.0,
        ), sg.log_tail()
        samples = scrape_samples(sg)
    peer.close()
    assert result.successful == calls, context(sg, result)

    by_name: dict[str, list[tuple[dict[str, str], float]]] = {}
    for name, labels, sample in samples:
        by_name.setdefault(name, []).append((labels, sample))
    for name, (_, label_names) in SPEC_METRICS.items():
        assert name in by_name, f"{name} missing from /metrics: {sorted(by_name)}"
        for labels, _ in by_name[name]:
            assert set(labels) == label_names, (name, labels)
    # the histogram: buckets (ending in +Inf), _sum and _count
    buckets = by_name.get("sipguard_call_setup_seconds_bucket", [])
    assert buckets and buckets[-1][0]["le"] == "+Inf", buckets
    assert buckets[-1][1] >= calls, buckets
    assert by_name["sipguard_call_setup_seconds_count"][0][1] >= calls
    assert "sipguard_call_setup_seconds_sum" in by_name

    def value(name: str, **labels: str) -> float:
        return sum(
            v for lab, v in by_name.get(name, []) if all(lab.get(k) == x for k, x in labels.items())
        )

    assert value("sipguard_calls_total", trunk_in="customers", trunk_out="pbx") == calls
    assert value("sipguard_presentation_total", decision="allowed") == calls
    assert value("sipguard_rejected_total", reason="method_not_allowed") == 1
    assert value("sipguard_parse_errors_total") >= 1
    assert value("sipguard_cdr_records_total", sink="file", result="written") == 2 * calls
    assert value("sipguard_config_reloads_total", result="ok") == 1
    assert value("sipguard_active_calls") == 0
    # the process's own figures (the container's load report reads them)
    assert value("process_cpu_seconds_total") > 0
    assert 10 * 2**20 < value("process_resident_memory_bytes") < 2**31
    # messages are counted in both directions: the caller's INVITE in, the callee's out
    for direction in ("in", "out"):
        for kind in ("INVITE", "ACK", "BYE", "2xx"):
            assert value("sipguard_sip_messages_total", direction=direction, kind=kind) >= calls, (
                direction,
                kind,
                by_name["sipguard_sip_messages_total"],
            )
    assert value("sipguard_sip_messages_total", direction="out", kind="1xx") >= calls
    assert value("sipguard_sip_messages_total", direction="out", kind="4xx") >= 1  # the 405
    kinds = {lab["kind"] for lab, _ in by_name["sipguard_sip_messages_total"]}
    assert "X31201234567" not in kinds, kinds

    # no label value anywhere looks like a phone number or an IP address
    for name, labels, _ in samples:
        for key, text in labels.items():
            if key == "le":
                continue
            assert not PHONE_LIKE.search(text), (name, labels)
            assert not IPV4_LIKE.search(text), (name, labels)
            assert not IPV6_LIKE.search(text), (name, labels)


# -- 3. malformed input never hurts the others (SPEC §8) ------------------------------------


def rfc4475_invalid() -> list[tuple[str, str, bytes]]:
    """(name, parser_must, bytes) of the RFC 4475 messages classed ``invalid``."""
    out = []
    rows = (RFC4475 / "index.tsv").read_text().splitlines()
    head = rows[0].split("\t")
    for row in rows[1:]:
        f = dict(zip(head, row.split("\t"), strict=False))
        if f["class"] == "invalid":
            out.append((f["name"], f["parser_must"], (RFC4475 / f["file"]).read_bytes()))
    return out


# what a correct element answers to each invalid *request* that it must reject
RFC4475_STATUS: dict[str, set[int]] = {
    "badvers": {505},
    "mismatch02": {400, 501},
}
RFC4475_RESPONSES = {"scalarlg", "bigcode"}  # responses: dropped, never answered
RFC4475_STREAM_FRAMING = {"clerr", "ncl", "mcl01"}  # over TCP: the connection may close
# over TCP these wait for bytes that never come: clerr (a body shorter than its
# Content-Length) and baddn (the archive's copy ends without the empty line)
RFC4475_NO_ANSWER_ON_TCP = {"clerr", "baddn"}


def protos_cases(step: int, sender: tuple[str, int], to: str) -> list[tuple[bytes, bytes]]:
    """Every ``step``-th PROTOS c07-sip case as (request, teardown CANCEL), placeholders
    filled in as its README says (Content-Length last)."""
    host, port = sender
    out = []
    with tarfile.open(PROTOS / "cases.tar.xz") as tar:
        names = sorted(m.name for m in tar.getmembers() if m.isfile())
        for i, name in enumerate(names):
            if i % step:
                continue
            f = tar.extractfile(name)
            assert f is not None
            raw = f.read()
            pdus = []
            rest = raw
            while rest:
                n, _, rest = rest.partition(b" ")
                pdus.append(rest[: int(n)])
                rest = rest[int(n) :]
            case = name.rsplit("/", 1)[-1]
            filled = []
            for template in pdus:
                pdu = template
                for k, v in (
                    (b"<To>", to.encode()),
                    (b"<From>", f"+31201234567@{host}".encode()),
                    (b"<From-Address>", host.encode()),
                    (b"<From-IP>", host.encode()),
                    (b"<Local-Port>", str(port).encode()),
                    (b"<Branch-ID>", f"x{case}".encode()),
                    (b"<Call-ID>", f"protos{case}".encode()),
                    (b"<CSeq>", b"1"),
                    (b"<Teardown-Method>", b"CANCEL"),
                ):
                    pdu = pdu.replace(k, v)
                _, sep, body = pdu.partition(b"\r\n\r\n")
                pdu = pdu.replace(b"<Content-Length>", str(len(body) if sep else 0).encode())
                filled.append(pdu)
            out.append((filled[0], filled[1] if len(filled) > 1 else b""))
    return out


def garbage(rng: random.Random, n: int) -> list[bytes]:
    out = [
        b"",
        b"\r\n\r\n",
        b"INVITE\r\n\r\n",
        b"SIP/2.0 200\r\n\r\n",
        b"INVITE sip:x SIP/2.0\r\nVia: \r\n\r\n",
        b"OPTIONS sip:127.0.0.1 SIP/2.0\r\n" + b"X: " + b"a" * 3000 + b"\r\n\r\n",
        b"\xff\xfe" * 200,
        sip_request("INVITE", local=(CALLER_IP, 5)).split(b"\r\n\r\n")[0][:-40],  # truncated
    ]
    while len(out) < n:
        out.append(bytes(rng.getrandbits(8) for _ in range(rng.randint(1, 1400))))
    return out


def udp_fuzz(
    dest: tuple[str, int], msgs: list[bytes], results: dict[str, Any], load: Sipp, port: int
) -> None:
    """A burst of ``msgs`` from one socket; then the RFC 4475 messages from a socket each."""
    peer = UdpPeer(port=port)
    try:
        got: list[bytes] = []
        for i, m in enumerate(msgs):
            peer.send(m, dest)
            if i % 10 == 9:
                time.sleep(0.01)  # a burst, but not one that overflows the socket buffers
                got.extend(peer.recv_all(0.0))
        results["udp_overlap"] = load.proc is not None and load.proc.poll() is None
        got.extend(peer.recv_all(1.0))
        results["udp_sent"] = len(msgs)
        results["udp_statuses"] = Counter(status_of(m) for m in got)
        statuses: dict[str, int | None] = {}
        for name, _, data in rfc4475_invalid():
            one = UdpPeer()
            try:
                wait = 0.3 if name in RFC4475_RESPONSES else 2.0
                resp = one.transact(data, dest, timeout=wait)
                statuses[name] = None if resp is None else status_of(resp)
            finally:
                one.close()
        results["rfc4475_udp"] = statuses
    finally:
        peer.close()


def distinct(data: bytes, tag: bytes) -> bytes:
    """The same message as another transaction and call: branch and Call-ID prefixed."""
    data = data.replace(b"branch=z9hG4bK", b"branch=z9hG4bK" + tag)
    return re.sub(rb"(?im)^((?:call-id|i)[ \t]*:[ \t]*)", rb"\g<1>" + tag, data)


def tcp_fuzz(
    dest: tuple[str, int], protos: list[bytes], results: dict[str, Any], load: Sipp
) -> None:
    """RFC 4475 invalid messages and PROTOS cases, each on its own TCP connection."""
    statuses: dict[str, tuple[int | None, bool]] = {}
    t0 = time.monotonic()
    for name, _, data in rfc4475_invalid():
        with socket.create_connection(dest, timeout=2.0, source_address=(CALLER_IP, 0)) as s:
            s.sendall(distinct(data, b"tcp-"))
            got, closed = b"", False
            silent = name in RFC4475_NO_ANSWER_ON_TCP or name in RFC4475_RESPONSES
            deadline = time.monotonic() + (0.3 if silent else 2.0)
            while not closed and time.monotonic() < deadline:
                chunk, closed = tcp_read_until_closed(s, 0.05)
                got += chunk
                if any((status_of(m) or 0) >= 200 for m in re.split(rb"(?=SIP/2\.0 )", got)):
                    break
            finals = [
                st for m in re.split(rb"(?=SIP/2\.0 )", got) if (st := status_of(m)) and st >= 200
            ]
            statuses[name] = (finals[0] if finals else None, closed)
    results["tcp_overlap"] = load.proc is not None and load.proc.poll() is None
    results["rfc4475_tcp"] = statuses
    left_open = 0
    results["tcp_rfc4475_s"] = round(time.monotonic() - t0, 2)
    for data in protos:
        with socket.create_connection(dest, timeout=2.0, source_address=(CALLER_IP, 0)) as s:
            s.sendall(data)
            _, closed = tcp_read_until_closed(s, 0.05)
            left_open += not closed
    results["protos_tcp_left_open"] = left_open


def test_malformed_input_never_disturbs_valid_calls(tmp_path: Path) -> None:
    calls, rate = 250, 50
    max_bytes = 16384
    setup = write_config(tmp_path, overrides={"sip": {"max_message_bytes": max_bytes}})
    sg = Sipguard(setup, cpus=(1,))  # pinned as in SIPP-NOTES (gotcha 1)
    # the fuzz INVITEs that parse become calls too: the callee takes any number of them
    callee = uas(setup, calls=100_000, timeout_s=40, trace_msg=False, cpus=(0,))
    caller = uac(
        setup, calls=calls, rate=rate, hold_ms=200, timeout_s=25, trace_msg=False, cpus=(0,)
    )
    dest = sipguard_addr(setup)
    results: dict[str, Any] = {}
    rng = random.Random(4475)
    # the UDP burst: garbage, and a sample of PROTOS cases (each with its CANCEL)
    fuzz_port = free_port(CALLER_IP)
    burst = garbage(rng, 60)
    for i, (req, teardown) in enumerate(
        protos_cases(15, (CALLER_IP, fuzz_port), f"0201234567@{dest[0]}:{dest[1]}")
    ):
        burst += [req, teardown] if teardown else [req]
        if i % 20 == 0:
            burst += garbage(rng, 3)
    tcp_protos = [
        distinct(req + teardown, b"tcp-")
        for req, teardown in protos_cases(90, (CALLER_IP, 5060), f"0201234567@{dest[0]}")
    ]
    with running(callee, caller, sg):
        sg.start()
        callee.start()
        callee.wait_listening()
        before = sg.metrics()
        caller.start()
        time.sleep(0.5)
        threads = [
            threading.Thread(
                target=udp_fuzz, args=(dest, burst, results, caller, fuzz_port), daemon=True
            ),
            threading.Thread(
                target=tcp_fuzz, args=(dest, tcp_protos, results, caller), daemon=True
            ),
        ]
        for t in threads:
            t.start()
        for t in threads:
            t.join(40)
        result = caller.wait(30)
        assert sg.proc is not None and sg.proc.poll() is None, sg.log_tail()
        assert sg.healthy()
        after = sg.metrics()

        # an oversized datagram: dropped (no answer) and counted
        peer = UdpPeer()
        big = sip_request("OPTIONS", local=peer.local, extra=(("X-Pad", "p" * max_bytes),))
        assert max_bytes < len(big) < 65000
        resp = peer.transact(big, dest, timeout=0.5)
        assert resp is None, resp
        errors_big = sg.metrics().get("sipguard_parse_errors_total", 0)
        # and sipguard still answers
        resp = peer.transact(sip_request("OPTIONS", local=peer.local), dest)
        peer.close()
        assert resp is not None and status_of(resp) == 200, sg.log_tail()
        callee.stop()
    ctx = f"{result.describe()}\n{sg.log_tail(60)}\n{json.dumps(results, default=str)[:4000]}"
    assert all(not t.is_alive() for t in threads), ctx
    assert results["udp_overlap"] and results["tcp_overlap"], "no overlap with the load: " + ctx
    assert result.successful == calls and result.failed == 0, ctx

    parse_errors = after.get("sipguard_parse_errors_total", 0) - before.get(
        "sipguard_parse_errors_total", 0
    )
    assert parse_errors >= 50, ctx
    assert errors_big == after.get("sipguard_parse_errors_total", 0) + 1, ctx
    assert results["udp_statuses"].get(400, 0) >= 20, ctx

    for name, must, _ in rfc4475_invalid():
        st = results["rfc4475_udp"][name]
        st_tcp, closed = results["rfc4475_tcp"][name]
        if name in RFC4475_RESPONSES:
            assert st is None and st_tcp is None, (name, st, st_tcp)
            continue
        want = RFC4475_STATUS.get(name, {400})
        if must == "reject":
            assert st in want, (name, "udp", st)
            if name in RFC4475_STREAM_FRAMING:
                # a broken stream cannot be answered: closed, or still waiting for bytes
                assert st_tcp in want or closed or name in RFC4475_NO_ANSWER_ON_TCP, (
                    name,
                    "tcp",
                    st_tcp,
                    closed,
                )
            else:
                assert st_tcp in want, (name, "tcp", st_tcp)
        else:  # reject-or-liberal: a 400, or the request handled as it is; never silence
            assert st is not None, (name, "udp")
            if name not in RFC4475_NO_ANSWER_ON_TCP:
                assert st_tcp is not None, (name, "tcp")


# -- 4. TCP: the idle sweep and broken framing -----------------------------------------------


def tcp_established() -> set[tuple[tuple[str, int], tuple[str, int]]]:
    """(local, remote) of every established IPv4 TCP connection, from /proc/net/tcp."""
    out = set()
    for line in Path("/proc/net/tcp").read_text().splitlines()[1:]:
        parts = line.split()
        if len(parts) < 4 or parts[3] != "01":
            continue
        ends = []
        for hexaddr in parts[1:3]:
            ip, port = hexaddr.split(":")
            ends.append((socket.inet_ntoa(bytes.fromhex(ip)[::-1]), int(port, 16)))
        out.add((ends[0], ends[1]))
    return out


def sipguard_streams(setup: Setup) -> tuple[set[tuple[str, int]], set[tuple[str, int]]]:
    """sipguard's established connections: (peers on its port, peers it connected to)."""
    accepted, opened = set(), set()
    for local, remote in tcp_established():
        if local == (SIPGUARD_IP, setup.sip_port):
            accepted.add(remote)
        elif local[0] == SIPGUARD_IP and remote == (CALLEE_IP, setup.callee_port):
            opened.add(remote)
    return accepted, opened


def caller_listener() -> socket.socket:
    """A TCP socket on the caller's address where it listens (its Via and Contact port)."""
    listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    listener.bind((CALLER_IP, 0))
    listener.listen(4)
    return listener


def test_a_response_after_its_tcp_connection_closed_goes_to_the_via_sent_by_port(
    tmp_path: Path,
) -> None:
    """RFC 3261 §18.2.2: a response whose request's connection has closed goes over a new
    connection to the source address and the port of the top Via's sent-by (where the
    caller listens), not to the closed connection's ephemeral port."""
    setup = write_config(tmp_path)
    sg = Sipguard(setup).start()
    callee = UdpPeer(CALLEE_IP, setup.callee_port)
    listener = caller_listener()
    sent_by = (CALLER_IP, int(listener.getsockname()[1]))
    with running(sg), contextlib.closing(listener), contextlib.closing(callee.sock):
        conn = tcp_connect(setup)
        ephemeral = conn.getsockname()[1]
        assert ephemeral != sent_by[1]
        conn.sendall(sip_request("INVITE", local=sent_by, transport="TCP", body=SDP))
        req = b_leg_invite(callee, sg)
        trying, _ = tcp_read_until_closed(conn, 0.5)
        assert status_of(trying) == 100, trying
        conn.close()
        # the close has reached sipguard's side (no longer established there), and its
        # loop has had a moment to handle it before the callee's answers come
        assert wait_for(lambda: not sipguard_streams(setup)[0], 5.0), sg.log_tail()
        time.sleep(0.2)
        callee.send(response_to(req, 180, "Ringing", "callee-tag"), sipguard_addr(setup))
        callee.send(response_to(req, 486, "Busy Here", "callee-tag"), sipguard_addr(setup))
        listener.settimeout(5.0)
        back, _ = listener.accept()  # the new connection, to the Via's port
        with contextlib.closing(back):
            assert back.getpeername()[0] == SIPGUARD_IP
            got = b""
            deadline = time.monotonic() + 5.0
            while b"SIP/2.0 486" not in got and time.monotonic() < deadline:
                more, closed = tcp_read_until_closed(back, 0.2)
                got += more
                assert not closed
            # both responses on that one connection, no second one opened
            assert got.startswith(b"SIP/2.0 180") and b"SIP/2.0 486" in got, sg.log_tail()
            listener.settimeout(0.3)
            with pytest.raises(TimeoutError):
                listener.accept()


def tcp_caller_call(
    setup: Setup, sg: Sipguard, callee: UdpPeer, contact: tuple[str, int]
) -> tuple[bytes, Request]:
    """A call from a TCP caller whose Via and Contact name ``contact``, answered by the
    UDP ``callee`` and ACKed; then the caller closes its connection, and sipguard has
    handled that. The caller's INVITE, and the B-leg INVITE as the callee got it."""
    conn = tcp_connect(setup)
    invite = sip_request("INVITE", local=contact, transport="TCP", body=SDP)
    conn.sendall(invite)
    req = b_leg_invite(callee, sg)
    callee.send(response_to(req, 200, "OK", "callee-tag", SDP), sipguard_addr(setup))
    got = tcp_read_message(conn, b"SIP/2.0 200")
    ok = parse_message(got[got.index(b"SIP/2.0 200") :], datagram=True)
    assert isinstance(ok, Response) and ok.contacts, got
    ack = sip_request(
        "ACK",
        local=contact,
        transport="TCP",
        ruri=str(ok.contacts[0].uri),
        call_id=header(invite, "Call-ID"),
        from_tag=(header(invite, "From") or "").rsplit("tag=", 1)[1],
        to_tag=ok.to.tag,
    )
    conn.sendall(ack)
    conn.close()
    # the close has reached sipguard's side (no longer established there), and its loop
    # has had a moment to handle it
    assert wait_for(lambda: not sipguard_streams(setup)[0], 5.0), sg.log_tail()
    time.sleep(0.3)
    return invite, req


def test_a_request_after_the_callers_tcp_connection_closed_goes_to_its_contact_port(
    tmp_path: Path,
) -> None:
    """A BYE towards a caller whose connection has closed goes over a new connection to
    the caller's address and the port of its Contact (the dialog's remote target, RFC
    3261 §12.2.1.1), where it listens, not to the closed connection's ephemeral port."""
    setup = write_config(tmp_path)
    sg = Sipguard(setup).start()
    callee = UdpPeer(CALLEE_IP, setup.callee_port)
    listener = caller_listener()
    contact = (CALLER_IP, int(listener.getsockname()[1]))
    with running(sg), contextlib.closing(listener), contextlib.closing(callee.sock):
        invite, req = tcp_caller_call(setup, sg, callee, contact)
        bye = callee_request("BYE", req, "callee-tag", 2, 1, addr=(CALLEE_IP, setup.callee_port))
        callee.send(bye, sipguard_addr(setup))
        listener.settimeout(5.0)
        try:
            back, _ = listener.accept()  # a new connection, to the port of its Contact
        except TimeoutError:
            pytest.fail(sg.log_tail())
        with contextlib.closing(back):
            got = tcp_read_message(back, b"BYE ")
        assert got.startswith(b"BYE "), (got, sg.log_tail())
        assert header(got, "Call-ID") == header(invite, "Call-ID")


def test_a_request_to_a_caller_that_no_longer_listens_fails_at_once(tmp_path: Path) -> None:
    """The new connection to the caller's Contact port is refused: the request relayed
    there fails at once (a 408 to the callee's re-INVITE), not after Timer B's 32 s."""
    setup = write_config(tmp_path)
    sg = Sipguard(setup).start()
    callee = UdpPeer(CALLEE_IP, setup.callee_port)
    listener = caller_listener()
    contact = (CALLER_IP, int(listener.getsockname()[1]))
    with running(sg), contextlib.closing(callee.sock):
        with contextlib.closing(listener):
            _, req = tcp_caller_call(setup, sg, callee, contact)
        # nothing listens at the caller's Contact any more: a connection there is refused
        reinvite = callee_request(
            "INVITE", req, "callee-tag", 2, 1, body=SDP, addr=(CALLEE_IP, setup.callee_port)
        )
        callee.send(reinvite, sipguard_addr(setup))
        finals: list[int] = []
        deadline = time.monotonic() + 8.0
        while not finals and time.monotonic() < deadline:
            for m in callee.recv_all(0.2):
                st = status_of(m)
                if st is not None and st >= 200 and header(m, "CSeq") == "2 INVITE":
                    finals.append(st)
        assert finals and finals[0] >= 400, sg.log_tail()


# sends batched per loop iteration from the first message (as under load)
BATCHED = {"SIPGUARD_BATCH_SENDS_ABOVE": "0"}


@pytest.mark.parametrize("env", [BATCHED, {}], ids=["batched", "at-once"])
def test_a_burst_of_requests_is_answered_whole_and_in_order(
    tmp_path: Path, env: dict[str, str]
) -> None:
    """Datagrams the loop reads together are answered together (one flush per burst):
    every request of a burst gets its answer, in the order the requests came."""
    setup = write_config(tmp_path)
    sg = Sipguard(setup, env=env).start()
    peer = UdpPeer()
    dest = sipguard_addr(setup)
    n = 200
    with running(sg):
        for burst in range(3):  # and the next bursts too: nothing is left queued
            call_ids = [f"burst-{burst}-{i}@test" for i in range(n)]
            for cid in call_ids:  # sent back to back, no wait: most are read in one go
                peer.send(sip_request("OPTIONS", local=peer.local, call_id=cid), dest)
            got: list[bytes] = []
            deadline = time.monotonic() + 10
            while len(got) < n and time.monotonic() < deadline:
                got += peer.recv_all(0.5)
            assert [status_of(m) for m in got] == [200] * n, sg.log_tail()
            assert [header(m, "Call-ID") for m in got] == call_ids
    peer.close()


@pytest.mark.parametrize("env", [BATCHED, {}], ids=["batched", "at-once"])
def test_tcp_idle_connection_closed_broken_framing_closed_and_counted(
    tmp_path: Path, env: dict[str, str]
) -> None:
    idle = 1.0
    setup = write_config(tmp_path, overrides={"sip": {"tcp_idle_timeout": idle}})
    sg = Sipguard(setup, env=env)
    with running(sg):
        sg.start()
        good = tcp_connect(setup)
        bad = tcp_connect(setup)
        local = good.getsockname()[:2]
        resp = tcp_transact(good, sip_request("OPTIONS", local=local, transport="TCP"))
        assert resp is not None and status_of(resp) == 200, sg.log_tail()
        errors = sg.metrics().get("sipguard_parse_errors_total", 0)

        # a stream without Content-Length cannot be framed: closed at once, and counted
        broken = sip_request("OPTIONS", local=bad.getsockname()[:2], transport="TCP")
        broken = broken.replace(b"Content-Length: 0\r\n", b"")
        bad.sendall(broken)
        got, closed = tcp_read_until_closed(bad, 2.0)
        assert closed, (got, sg.log_tail())
        assert sg.metrics().get("sipguard_parse_errors_total", 0) == errors + 1
        # good messages before the broken one are answered on the connection first
        bad2 = tcp_connect(setup)
        local2 = bad2.getsockname()[:2]
        call_ids = [f"before-error-{i}@test" for i in range(3)]
        good_ones = b"".join(
            sip_request("OPTIONS", local=local2, transport="TCP", call_id=c) for c in call_ids
        )
        broken2 = sip_request("OPTIONS", local=local2, transport="TCP")
        bad2.sendall(good_ones + broken2.replace(b"Content-Length: 0\r\n", b""))
        got, closed = tcp_read_until_closed(bad2, 2.0)
        bad2.close()
        assert closed, (got, sg.log_tail())
        answers = [m for m in re.split(rb"(?=^SIP/2\.0 )", got, flags=re.M) if m]
        assert [status_of(a) for a in answers] == [200] * 3, got
        assert [header(a, "Call-ID") for a in answers] == call_ids, got

        # the other connection goes on
        resp = tcp_transact(good, sip_request("OPTIONS", local=local, transport="TCP"))
        assert resp is not None and status_of(resp) == 200, sg.log_tail()

        # and, once idle with no call on it, it is closed after the idle timeout
        t0 = time.monotonic()
        got, closed = tcp_read_until_closed(good, idle * 4 + 2)
        after = time.monotonic() - t0
        good.close()
        bad.close()
        assert closed, sg.log_tail()
        assert idle * 0.9 <= after <= idle * 3 + 1, after
        assert sg.healthy()


def test_tcp_connection_of_a_live_call_is_never_closed_as_idle(tmp_path: Path) -> None:
    idle, hold_ms = 1.0, 3500
    setup = write_config(
        tmp_path, target_transport="tcp", overrides={"sip": {"tcp_idle_timeout": idle}}
    )
    sg = Sipguard(setup)
    callee = uas(setup, calls=1, timeout_s=20, tcp=True)
    caller = uac(setup, calls=1, hold_ms=hold_ms, timeout_s=20, tcp=True)
    with running(callee, caller, sg):
        sg.start()
        callee.start()
        callee.wait_listening()
        caller.start()
        assert wait_for(lambda: active_calls(sg) == 1, 5.0), context(sg)
        first = sipguard_streams(setup)
        # well past the idle timeout and a few sweeps, the call's connections are there
        time.sleep(idle * 2.5)
        later = sipguard_streams(setup)
        result = caller.wait(15)
        callee_result = callee.wait(10)
    ctx = f"{result.describe()}\n{callee_result.describe()}\n{sg.log_tail(60)}"
    assert result.successful == 1 and result.failed == 0, ctx
    assert callee_result.successful == 1, ctx
    assert len(first[0]) == 1 and len(first[1]) == 1, (first, ctx)
    assert later == first, (first, later, ctx)


# -- 5. IPv6 ----------------------------------------------------------------------------------


def free_port6() -> int:
    """A port free for UDP and TCP on ::1."""
    for _ in range(100):
        with socket.socket(socket.AF_INET6, socket.SOCK_DGRAM) as s:
            s.bind(("::1", 0))
            port = int(s.getsockname()[1])
        try:
            with socket.socket(socket.AF_INET6, socket.SOCK_STREAM) as t:
                t.bind(("::1", port))
        except OSError:
            continue
        return port
    raise RuntimeError("no free port on ::1")


def udp6_bound(port: int) -> bool:
    for line in Path("/proc/net/udp6").read_text().splitlines()[1:]:
        parts = line.split()
        if len(parts) > 1 and parts[1].endswith(f":{port:04X}"):
            return True
    return False


def ipv6_available() -> bool:
    try:
        with socket.socket(socket.AF_INET6, socket.SOCK_DGRAM) as s:
            s.bind(("::1", 0))
        return True
    except OSError:
        return False


@pytest.mark.skipif(not ipv6_available(), reason="no IPv6 loopback")
def test_call_over_ipv6(tmp_path: Path) -> None:
    p_customers, p_pbx, p_callee, p_caller = (free_port6() for _ in range(4))
    setup = write_config(
        tmp_path,
        overrides={
            # caller and callee are both ::1: each trunk gets its own port
            "listen": [
                {
                    "transport": "udp",
                    "address": "::1",
                    "port": p_customers,
                    "trunks": ["customers"],
                },
                {"transport": "udp", "address": "::1", "port": p_pbx, "trunks": ["pbx"]},
            ],
            "trunks": {
                "customers": {"sources": ["::1/128"]},
                "pbx": {"sources": ["::1/128"], "targets": [f"sip:[::1]:{p_callee}"]},
            },
        },
    )
    sg = Sipguard(setup)
    common: dict[str, Any] = {"workdir": tmp_path, "local_ip": "::1", "timeout_s": 15}
    callee = Sipp("uas6", "uas", local_port=p_callee, calls=1, **common)
    caller = Sipp(
        "uac6", "uac", local_port=p_caller, remote=f"[::1]:{p_customers}", calls=1, **common
    )
    with running(callee, caller, sg):
        sg.start()
        callee.start()
        assert wait_for(lambda: udp6_bound(p_callee), 5.0)
        result = caller.run()
        callee_result = callee.wait(10)
        exit_code = sg.stop()
    ctx = f"{result.describe()}\n{callee_result.describe()}\n{sg.log_tail(60)}"
    assert result.successful == 1 and result.failed == 0, ctx
    assert callee_result.successful == 1, ctx
    assert exit_code == 0, ctx
    # the B-leg left from the pbx port, with its own Via and Contact on [::1]
    invite = next(m for m in callee_result.traced() if m.method == "INVITE")
    assert invite.header("via").startswith(f"SIP/2.0/UDP [::1]:{p_pbx};"), invite.head()
    assert f"[::1]:{p_pbx}" in invite.header("contact"), invite.head()
    assert f"[::1]:{p_caller}" not in invite.head(), invite.head()
    records = read_cdrs(setup.cdr_dir)
    assert Counter(r["kind"] for r in records) == {"start": 1, "end": 1}, records
    assert records[-1]["end_reason"] == "caller_bye", records


# -- 6. a trunk target given by name (RFC 3263) ----------------------------------------------


class DnsServer:
    """A tiny authoritative DNS server on 127.0.0.1 (UDP), in a thread.

    ``records``: {(name, type): [rdata text]}; as the one in test_net_dns.py.
    """

    def __init__(self) -> None:
        self.records: dict[tuple[str, str], list[str]] = {}
        self.queries: list[tuple[str, str]] = []
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.sock.bind((SIPGUARD_IP, 0))
        self.sock.settimeout(0.1)
        self.port = int(self.sock.getsockname()[1])
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._serve, daemon=True)

    def add(self, name: str, kind: str, *rdatas: str) -> None:
        self.records[name.lower(), kind] = list(rdatas)

    def _serve(self) -> None:
        while not self._stop.is_set():
            try:
                data, addr = self.sock.recvfrom(4096)
            except (TimeoutError, OSError):
                continue
            try:
                self.sock.sendto(self._answer(data), addr)
            except Exception:  # a bad query must not stop the server
                continue

    def _answer(self, data: bytes) -> bytes:
        query = dns.message.from_wire(data)
        question = query.question[0]
        name = question.name.to_text().lower()
        kind = dns.rdatatype.to_text(question.rdtype)
        self.queries.append((name, kind))
        response = dns.message.make_response(query)
        response.flags |= dns.flags.AA
        if (name, kind) in self.records:
            rrset = dns.rrset.from_text_list(
                question.name, 60, dns.rdataclass.IN, question.rdtype, self.records[name, kind]
            )
            response.answer.append(rrset)
        elif not any(n == name for n, _ in self.records):
            response.set_rcode(dns.rcode.NXDOMAIN)
        return bytes(response.to_wire())

    def __enter__(self) -> DnsServer:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(2)
        self.sock.close()


def dns_setup(tmp_path: Path, zone: DnsServer, **sip: Any) -> Setup:
    return write_config(
        tmp_path,
        overrides={
            "dns": {"servers": [f"{SIPGUARD_IP}:{zone.port}"]},
            "sip": sip,
            "trunks": {"pbx": {"targets": ["sip:pbx.test"]}},
        },
    )


def wait_resolved(sg: Sipguard) -> None:
    assert wait_for(lambda: "dns: sip:pbx.test ->" in sg.log_tail(200), 5.0), sg.log_tail()


def test_target_by_name_naptr_srv_a(tmp_path: Path) -> None:
    with DnsServer() as zone:
        setup = dns_setup(tmp_path, zone)
        zone.add("pbx.test.", "NAPTR", '10 50 "s" "SIP+D2U" "" _sip._udp.pbx.test.')
        zone.add("_sip._udp.pbx.test.", "SRV", f"10 0 {setup.callee_port} uas.pbx.test.")
        zone.add("uas.pbx.test.", "A", CALLEE_IP)
        sg = Sipguard(setup)
        callee = uas(setup, calls=1, timeout_s=15)
        caller = uac(setup, calls=1, timeout_s=15)
        with running(callee, caller, sg):
            sg.start()
            wait_resolved(sg)
            callee.start()
            callee.wait_listening()
            result = caller.run()
            callee_result = callee.wait(10)
    ctx = f"{result.describe()}\n{callee_result.describe()}\n{sg.log_tail(60)}"
    assert result.successful == 1 and result.failed == 0, ctx
    assert callee_result.successful == 1, ctx
    assert {("pbx.test.", "NAPTR"), ("_sip._udp.pbx.test.", "SRV")} <= set(zone.queries)
    assert ("uas.pbx.test.", "A") in zone.queries


def test_target_by_name_fails_over_to_second_srv_and_probes_the_dead_one(tmp_path: Path) -> None:
    dead_port = free_port(CALLEE_IP)  # nothing listens there (until the probe check below)
    with DnsServer() as zone:
        setup = dns_setup(tmp_path, zone, target_timeout=1.0, probe_interval=0.5)
        zone.add("pbx.test.", "NAPTR", '10 50 "s" "SIP+D2U" "" _sip._udp.pbx.test.')
        zone.add(
            "_sip._udp.pbx.test.",
            "SRV",
            f"10 0 {dead_port} dead.pbx.test.",
            f"20 0 {setup.callee_port} uas.pbx.test.",
        )
        zone.add("dead.pbx.test.", "A", CALLEE_IP)
        zone.add("uas.pbx.test.", "A", CALLEE_IP)
        sg = Sipguard(setup)
        callee = uas(setup, calls=1, timeout_s=15)
        caller = uac(setup, calls=1, timeout_s=15)
        probe = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        with running(callee, caller, sg), contextlib.closing(probe):
            sg.start()
            wait_resolved(sg)
            callee.start()
            callee.wait_listening()
            result = caller.run()
            callee_result = callee.wait(10)
            # the dead target is probed with OPTIONS until it answers (the INVITE given up
            # on may still be retransmitted there: no CANCEL before a 1xx, RFC 3261 §9.1)
            probe.bind((CALLEE_IP, dead_port))
            got = []
            deadline = time.monotonic() + 6.0
            while (left := deadline - time.monotonic()) > 0:
                probe.settimeout(left)
                data, addr = probe.recvfrom(65536)
                got.append(data.split(b" ", 1)[0])
                if data.startswith(b"OPTIONS sip:"):
                    break
            assert data.startswith(b"OPTIONS sip:"), got
            assert addr[0] == SIPGUARD_IP
            probe.sendto(
                b"SIP/2.0 200 OK\r\n"
                + b"".join(
                    f"{n}: {header(data, n)}\r\n".encode()
                    for n in ("Via", "From", "To", "Call-ID", "CSeq")
                )
                + b"Content-Length: 0\r\n\r\n",
                addr,
            )
            assert wait_for(lambda: "answers again" in sg.log_tail(100), 3.0), sg.log_tail()
    ctx = f"{result.describe()}\n{callee_result.describe()}\n{sg.log_tail(60)}"
    assert result.successful == 1 and result.failed == 0, ctx
    assert callee_result.successful == 1, ctx
    log = sg.log_tail(200)
    assert f"target udp {CALLEE_IP}:{dead_port} is down" in log, log

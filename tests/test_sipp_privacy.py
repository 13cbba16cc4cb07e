"""End-to-end privacy enforcement through sipguard, with SIPp on both sides (issue 4).

Every test starts its own sipguard (127.0.0.1) with one configuration and places calls
from SIPp UACs with crafted INVITEs to SIPp UASs that stand for the next trunk:

* the caller: trunk ``customers`` (untrusted) on 127.0.0.3, or the Cloud PBX (trunk
  ``pbx``, trusted) on 127.0.0.2, or an unknown source on 127.0.0.9;
* the callee: trunk ``pbx`` (trusted) on 127.0.0.2, trunk ``interconnect`` (untrusted) on
  127.0.0.4, trunk ``emergency`` (trusted, the customers' ``emergency_route_to``) on
  127.0.0.5.

The scenario files are in ``tests/data/sipp/privacy/``. The callee's scenario asserts the
headers that must be there (``<ereg check_it="true">``) and the things that must not be
(``check_it_inverse="true"``); a failed check makes its call fail. The test then searches the
start line and headers of *every* message the callee received (its ``-trace_msg`` log; not
the SDP body, which carries the caller's media address unless media is anchored) for the
caller's number, the caller's IP address, the cell id and the IMEI, as the case requires,
and checks the CDR records and the ``sipguard_presentation_total`` metric.

SPEC.md §1-§3 and §5 are the contract; the sections below follow the list of end-to-end
cases of issue 4 ("What it must show"). ``tests/test_net_reload.py`` uses the same bench.
"""

from __future__ import annotations

import itertools
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from testkit.sipp import (
    CALLEE_IP,
    CALLER_IP,
    DATA,
    Setup,
    Sipguard,
    Sipp,
    SippResult,
    TracedMessage,
    free_port,
    metric_sum,
    read_cdrs,
    running,
    sipp_available,
    write_config,
)

pytestmark = [
    pytest.mark.sipp,
    pytest.mark.skipif(not sipp_available(), reason="SIPp (sip-tester) is not installed"),
    pytest.mark.timeout(90),
]

PRIV = DATA / "privacy"

PBX_IP = CALLEE_IP  # trunk pbx, trusted (also a caller, towards the interconnect)
INTERCONNECT_IP = "127.0.0.4"  # trunk interconnect, untrusted
EMERGENCY_IP = "127.0.0.5"  # trunk emergency, trusted
UNKNOWN_IP = "127.0.0.9"  # no trunk

DIALLED = "0201234567"
CALLEE = "+31201234567"
CALLER = "+31201230011"  # an ordinary subscriber of the customer trunk
RESTRICTED = "+31201230022"  # restricted_numbers: withheld by default
PERMANENT = "+31201230033"  # permanent_numbers: always withheld
SPOOFED = "+31201234999"  # what the spoofed P-Asserted-Identity claims
OUTSIDE = "+31301234567"  # outside allowed_cli
DEFAULT_CLI = "+31201234000"
DOMAIN = "sip.example.net"
NUMBERING = {"country_code": "31", "national_prefix": "0", "international_prefix": "00"}

CELL_ID = "262010000000001"
IMEI = "35209900-176148-1"

WITHHOLD_RAW = "#31#"
WITHHOLD_ESCAPED = "%2331%23"
PRESENT = "*31#"
CLIR_CODES = (WITHHOLD_RAW, WITHHOLD_ESCAPED, PRESENT, "%2A31%23", "*31%23")

ANONYMOUS_FROM = '"Anonymous" <sip:anonymous@anonymous.invalid>'


def presented(number: str) -> str:
    """How sipguard presents a number (SPEC §3, allowed)."""
    return f"<sip:{number}@{DOMAIN};user=phone>"


def digits(number: str) -> str:
    """The national significant part of a +31 number: found in +31…, 0031… and 0… forms."""
    assert number.startswith("+31"), number
    return number[3:]


# -- a sipguard with its trunks, and calls through it --------------------------------------


@dataclass
class Placed:
    """One call: what the caller and the callee saw."""

    caller: SippResult
    callee: SippResult

    @property
    def finals(self) -> list[int]:
        return self.caller.invite_finals()

    def received(self) -> list[TracedMessage]:
        return [m for m in self.callee.traced() if m.direction == "received"]

    def invite(self) -> TracedMessage:
        invites = [m for m in self.received() if m.method == "INVITE"]
        assert invites, f"the callee got no INVITE\n{self.context()}"
        return invites[0]

    def context(self) -> str:
        return f"{self.caller.describe()}\n{self.callee.describe()}"


class Bench:
    """sipguard with the trunks customers, pbx, interconnect and emergency, on test ports.

    ``overrides`` is merged into the configuration as :func:`write_config` does (a
    ``None`` value deletes a key).
    """

    def __init__(self, workdir: Path, overrides: dict[str, Any] | None = None) -> None:
        self.workdir = workdir
        self.ports = {
            "interconnect": free_port(INTERCONNECT_IP),
            "emergency": free_port(EMERGENCY_IP),
        }
        base: dict[str, Any] = {
            "trunks": {
                "customers": {
                    "emergency_route_to": "emergency",
                    "restricted_numbers": [RESTRICTED],
                    "permanent_numbers": [PERMANENT],
                },
                "pbx": {"numbering": NUMBERING},
                "interconnect": {
                    "sources": [f"{INTERCONNECT_IP}/32"],
                    "trusted": False,
                    "targets": [f"sip:{INTERCONNECT_IP}:{self.ports['interconnect']}"],
                    "route_to": "pbx",
                },
                "emergency": {
                    "sources": [f"{EMERGENCY_IP}/32"],
                    "trusted": True,
                    "targets": [f"sip:{EMERGENCY_IP}:{self.ports['emergency']}"],
                },
            }
        }
        self.setup: Setup = write_config(workdir, overrides=_merge(base, overrides or {}))
        self.ports["pbx"] = self.setup.callee_port
        self.addresses = {"pbx": PBX_IP, "interconnect": INTERCONNECT_IP, "emergency": EMERGENCY_IP}
        self.sipguard = Sipguard(self.setup)
        self._n = itertools.count(1)
        self.log = ""
        self.cdrs: list[dict[str, Any]] = []

    def __enter__(self) -> Bench:
        self.sipguard.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def stop(self) -> None:
        """Stop sipguard (SIGTERM: it writes its CDRs), then read its log and CDRs."""
        self.sipguard.stop()
        self.log = self.sipguard.log_path.read_text(errors="replace")
        self.cdrs = read_cdrs(self.setup.cdr_dir)

    def metrics(self) -> dict[str, float]:
        return self.sipguard.metrics()

    def call(
        self,
        uac: str,
        uas: str,
        *,
        caller: str,
        dialled: str = DIALLED,
        to: str = "pbx",
        source: str = CALLER_IP,
        privacy: str | None = None,
        answered: bool = True,
    ) -> Placed:
        """One call from ``source`` with ``uac`` to a fresh ``uas`` on trunk ``to``.

        ``answered=False``: the call must be refused; the callee is stopped by its PID as
        soon as the caller is done, and whatever reached it is in its log.
        """
        n = next(self._n)
        callee = Sipp(
            f"callee{n}-{to}",
            PRIV / uas,
            workdir=self.workdir,
            local_ip=self.addresses[to],
            local_port=self.ports[to],
            calls=1,
            timeout_s=10,
        )
        keys = ["-key", "caller", caller]
        if privacy is not None:
            keys += ["-key", "privacy", privacy]
        caller_sipp = Sipp(
            f"caller{n}",
            PRIV / uac,
            workdir=self.workdir,
            local_ip=source,
            local_port=free_port(source),
            remote=self.setup.sipguard_addr,
            calls=1,
            timeout_s=10,
            service=dialled,
            extra=keys,
        )
        with running(callee):
            callee.start()
            callee.wait_listening()
            caller_result = caller_sipp.run()
            # a callee whose call was not answered is not waited for: stopped by its PID
            put_through = answered and 200 in caller_result.invite_finals()
            callee_result = callee.wait(5) if put_through else callee.stop()
        return Placed(caller_result, callee_result)


def _merge(base: dict[str, Any], over: dict[str, Any]) -> dict[str, Any]:
    out = dict(base)
    for k, v in over.items():
        if isinstance(v, dict) and isinstance(out.get(k), dict):
            out[k] = _merge(out[k], v)
        else:
            out[k] = v
    return out


@pytest.fixture
def bench_factory(tmp_path: Path) -> Iterator[Any]:
    """``make(overrides)`` -> a started :class:`Bench`; every one is stopped at the end."""
    benches: list[Bench] = []

    def make(overrides: dict[str, Any] | None = None) -> Bench:
        bench = Bench(tmp_path / f"bench{len(benches)}", overrides)
        benches.append(bench)
        return bench.__enter__()

    yield make
    for bench in benches:
        bench.sipguard.stop()


# -- checks --------------------------------------------------------------------------------


def assert_answered(call: Placed) -> None:
    """Both SIPp sides passed: the call was answered and every callee check held."""
    assert call.caller.successful == 1 and call.caller.failed == 0, call.context()
    assert call.callee.successful == 1 and call.callee.failed == 0, call.context()
    assert call.finals == [200], call.context()


def assert_refused(call: Placed, status: int) -> None:
    """The caller got ``status`` and nothing at all reached the callee."""
    assert call.finals == [status], call.context()
    got = [m.start_line for m in call.received()]
    assert not got, f"the callee received {got} for a call that had to be refused\n{call.context()}"


def leaks(
    call: Placed, needles: dict[str, str], *, except_headers: Iterable[str] = ()
) -> list[str]:
    """Where one of ``needles`` ({what: text}) appears in the start line or a header of a
    message the callee received (case-insensitive; the body is not searched). Header lines
    named in ``except_headers`` are not searched."""
    skip = {h.lower() for h in except_headers}
    found = []
    for m in call.received():
        lines = [m.start_line] + [f"{n}: {v}" for n, v in m.headers if n.lower() not in skip]
        for line in lines:
            for what, needle in needles.items():
                if needle.lower() in line.lower():
                    found.append(f"{what} ({needle!r}) in {m.start_line.split(' ')[0]}: {line}")
    return found


def assert_no_leak(
    call: Placed, needles: dict[str, str], *, except_headers: Iterable[str] = ()
) -> None:
    found = leaks(call, needles, except_headers=except_headers)
    assert not found, "\n".join(found) + "\n" + call.context()


def caller_needles(number: str, *, withheld: bool = False) -> dict[str, str]:
    """The caller's number and address; on a withheld call also what its user filled in
    (display name, Subject, Organization: RFC 3323 §4.1), which all say "Alice"."""
    out = {"the caller's number": digits(number), "the caller's IP address": CALLER_IP}
    if withheld:
        out["what the caller's user filled in"] = "Alice"
        out["User-Agent"] = "AcmePhone"
    return out


CODE_NEEDLES = {f"CLIR code {c}": c for c in CLIR_CODES}
DEVICE_NEEDLES = {
    "the cell id": CELL_ID,
    "the IMEI": IMEI,
    "the IMEI (TAC)": "35209900",
    "an IMEI URN": "urn:gsma:imei",
    "+sip.instance": "sip.instance",
    "P-Access-Network-Info": "P-Access-Network-Info",
}


def header(call: Placed, name: str) -> list[str]:
    return call.invite().header_all(name)


def assert_withheld(call: Placed, *, number: str, trusted: bool) -> None:
    """SPEC §3, restricted: anonymous From, Privacy: id, PAI only towards a trusted trunk;
    the number, the caller's address and the CLIR code nowhere else."""
    invite = call.invite()
    assert invite.header("from").startswith(ANONYMOUS_FROM + ";tag="), invite.head()
    assert header(call, "privacy") == ["id"], invite.head()
    if trusted:
        assert header(call, "p-asserted-identity") == [presented(number)], invite.head()
    else:
        assert header(call, "p-asserted-identity") == [], invite.head()
    assert_no_leak(
        call,
        caller_needles(number, withheld=True) | CODE_NEEDLES,
        except_headers=("p-asserted-identity",) if trusted else (),
    )


def assert_presented(call: Placed, *, number: str) -> None:
    """SPEC §3, allowed: From and PAI carry the number at the identity domain, user=phone."""
    invite = call.invite()
    assert invite.header("from").startswith(presented(number) + ";tag="), invite.head()
    assert header(call, "p-asserted-identity") == [presented(number)], invite.head()
    privacy = ";".join(header(call, "privacy")).lower()
    assert not {"id", "user", "header"} & set(privacy.replace(" ", "").split(";")), invite.head()
    assert_no_leak(call, CODE_NEEDLES)


def end_records(bench: Bench) -> list[dict[str, Any]]:
    """The ``end`` CDR records, in the order they were written (the calls' order here)."""
    records = bench.cdrs
    ends = [r for r in records if r["kind"] == "end"]
    starts = {r["id"]: r for r in records if r["kind"] == "start"}
    same = ("trunk_in", "trunk_out", "caller", "callee", "presentation", "emergency", "start")
    for r in ends:
        if r["answer"] is not None:
            start = starts.get(r["id"])
            assert start is not None, f"an answered call without a start record: {r}"
            assert {k: start[k] for k in same} == {k: r[k] for k in same}, (start, r)
    assert len(starts) == len([r for r in ends if r["answer"] is not None]), records
    return ends


def assert_cdr(
    record: dict[str, Any],
    *,
    caller: str,
    presentation: str,
    callee: str = CALLEE,
    emergency: bool = False,
    trunk_out: str = "pbx",
    trunk_in: str = "customers",
    status: int = 200,
) -> None:
    expected = {
        "caller": caller,
        "callee": callee,
        "presentation": presentation,
        "emergency": emergency,
        "trunk_in": trunk_in,
        "trunk_out": trunk_out,
        "status": status,
    }
    got = {k: record.get(k) for k in expected}
    assert got == expected, record
    for code in CLIR_CODES:
        assert code not in str(record["callee"]), record


def presentation_counts(metrics: dict[str, float]) -> dict[tuple[str, str], float]:
    out: dict[tuple[str, str], float] = {}
    for key, value in metrics.items():
        if key.startswith("sipguard_presentation_total{") and value:
            labels = dict(
                part.split("=", 1) for part in key[key.index("{") + 1 : -1].split(",") if part
            )
            out[(labels["decision"].strip('"'), labels["reason"].strip('"'))] = value
    return out


# -- 1. per-call withholding: #31# and %2331%23 ---------------------------------------------


@pytest.mark.parametrize("to", ["pbx", "interconnect"])
def test_withhold_code_raw_and_escaped(bench_factory: Any, to: str) -> None:
    """``#31#0201234567`` and ``%2331%230201234567``: the callee sees an anonymous From,
    ``Privacy: id``, PAI only on the trusted trunk, no CLIR code anywhere, and the caller's
    number nowhere but in that PAI."""
    trusted = to == "pbx"
    uas = "uas-withheld-trusted.xml" if trusted else "uas-withheld-untrusted.xml"
    bench = bench_factory({"trunks": {"customers": {"route_to": to}}})
    calls = [
        bench.call("uac-call.xml", uas, caller=CALLER, dialled=code + DIALLED, to=to)
        for code in (WITHHOLD_RAW, WITHHOLD_ESCAPED)
    ]
    for call in calls:
        assert_answered(call)
        assert_withheld(call, number=CALLER, trusted=trusted)
        assert call.invite().start_line.startswith(f"INVITE sip:{DIALLED}@"), call.context()
        assert call.invite().header("to").startswith(f"<sip:{DIALLED}@"), call.context()
    counts = presentation_counts(bench.metrics())
    bench.stop()
    assert counts == {("restricted", "withhold_code"): 2}, counts
    ends = end_records(bench)
    assert len(ends) == 2, bench.cdrs
    for r in ends:
        assert_cdr(r, caller=CALLER, presentation="restricted", trunk_out=to)


# -- 2. Privacy: id ------------------------------------------------------------------------


@pytest.mark.parametrize("privacy", ["id", "user;id"])
def test_privacy_id_withholds(bench_factory: Any, privacy: str) -> None:
    """``Privacy: id`` (and ``user;id``, a token set) from the caller: withheld likewise."""
    bench = bench_factory()
    call = bench.call(
        "uac-call-privacy.xml", "uas-withheld-trusted.xml", caller=CALLER, privacy=privacy
    )
    assert_answered(call)
    assert_withheld(call, number=CALLER, trusted=True)
    counts = presentation_counts(bench.metrics())
    bench.stop()
    assert counts == {("restricted", "privacy_header"): 1}, counts
    (end,) = end_records(bench)
    assert_cdr(end, caller=CALLER, presentation="restricted")


# -- 3. default restriction, shown once with *31# or Privacy: none -------------------------


def test_default_restriction_and_present_once(bench_factory: Any) -> None:
    """A caller in ``restricted_numbers`` is withheld; ``*31#`` or ``Privacy: none`` shows
    the number for that one call, as ``sip:+31…@identity_domain;user=phone``; the next
    call is withheld again."""
    bench = bench_factory()
    withheld = bench.call("uac-call.xml", "uas-withheld-trusted.xml", caller=RESTRICTED)
    shown = bench.call(
        "uac-call.xml", "uas-presented.xml", caller=RESTRICTED, dialled=PRESENT + DIALLED
    )
    shown2 = bench.call(
        "uac-call-privacy.xml", "uas-presented.xml", caller=RESTRICTED, privacy="none"
    )
    again = bench.call("uac-call.xml", "uas-withheld-trusted.xml", caller=RESTRICTED)
    for call in (withheld, shown, shown2, again):
        assert_answered(call)
    assert_withheld(withheld, number=RESTRICTED, trusted=True)
    assert_withheld(again, number=RESTRICTED, trusted=True)
    assert_presented(shown, number=RESTRICTED)
    assert_presented(shown2, number=RESTRICTED)
    assert shown.invite().start_line.startswith(f"INVITE sip:{DIALLED}@"), shown.context()
    counts = presentation_counts(bench.metrics())
    bench.stop()
    assert counts == {
        ("restricted", "restricted_default"): 2,
        ("allowed", "present_code"): 1,
        ("allowed", "privacy_none"): 1,
    }, counts
    ends = end_records(bench)
    assert [r["presentation"] for r in ends] == [
        "restricted",
        "allowed",
        "allowed",
        "restricted",
    ], ends
    for r in ends:
        assert_cdr(r, caller=RESTRICTED, presentation=r["presentation"])


# -- 4. permanent restriction: *31# and Privacy: none ignored -------------------------------


def test_permanent_number_ignores_present_code_and_privacy_none(bench_factory: Any) -> None:
    """A caller in ``permanent_numbers`` (3GPP permanent mode) stays withheld with ``*31#``
    and with ``Privacy: none``."""
    bench = bench_factory()
    code = bench.call(
        "uac-call.xml", "uas-withheld-trusted.xml", caller=PERMANENT, dialled=PRESENT + DIALLED
    )
    none = bench.call(
        "uac-call-privacy.xml", "uas-withheld-trusted.xml", caller=PERMANENT, privacy="none"
    )
    for call in (code, none):
        assert_answered(call)
        assert_withheld(call, number=PERMANENT, trusted=True)
    counts = presentation_counts(bench.metrics())
    bench.stop()
    assert counts == {("restricted", "permanent"): 2}, counts
    for r in end_records(bench):
        assert_cdr(r, caller=PERMANENT, presentation="restricted")


def test_permanent_trunk_ignores_present_code_and_privacy_none(bench_factory: Any) -> None:
    """A trunk with ``presentation: permanent``: every caller stays withheld, ``*31#`` and
    ``Privacy: none`` included; towards the untrusted interconnect without any PAI."""
    bench = bench_factory(
        {"trunks": {"customers": {"presentation": "permanent", "route_to": "interconnect"}}}
    )
    code = bench.call(
        "uac-call.xml",
        "uas-withheld-untrusted.xml",
        caller=CALLER,
        dialled=PRESENT + DIALLED,
        to="interconnect",
    )
    none = bench.call(
        "uac-call-privacy.xml",
        "uas-withheld-untrusted.xml",
        caller=CALLER,
        privacy="none",
        to="interconnect",
    )
    for call in (code, none):
        assert_answered(call)
        assert_withheld(call, number=CALLER, trusted=False)
    counts = presentation_counts(bench.metrics())
    bench.stop()
    assert counts == {("restricted", "permanent"): 2}, counts
    for r in end_records(bench):
        assert_cdr(r, caller=CALLER, presentation="restricted", trunk_out="interconnect")


# -- 5. the 112 override, location to the emergency trunk only -----------------------------


def test_emergency_overrides_restriction_and_keeps_location(bench_factory: Any) -> None:
    """``#31#112`` with ``Privacy: id`` from a caller withheld by default, and
    ``%2331%23112`` from a permanently withheld caller: presented, routed to the emergency
    trunk (127.0.0.5) with the caller's P-Access-Network-Info; the same headers on a
    normal call to the pbx lose the location and the IMEI."""
    bench = bench_factory()
    raw = bench.call(
        "uac-call-device.xml",
        "uas-emergency.xml",
        caller=RESTRICTED,
        dialled=WITHHOLD_RAW + "112",
        privacy="id",
        to="emergency",
    )
    escaped = bench.call(
        "uac-call-device.xml",
        "uas-emergency.xml",
        caller=PERMANENT,
        dialled=WITHHOLD_ESCAPED + "112",
        privacy="id",
        to="emergency",
    )
    normal = bench.call(
        "uac-call-device.xml",
        "uas-no-device.xml",
        caller=RESTRICTED,
        dialled=WITHHOLD_RAW + DIALLED,
        privacy="id",
    )
    for call, number in ((raw, RESTRICTED), (escaped, PERMANENT)):
        assert_answered(call)
        assert_presented(call, number=number)
        assert call.invite().start_line.startswith("INVITE sip:112@"), call.context()
        pani = header(call, "p-access-network-info")
        assert pani == [f"3GPP-E-UTRAN-FDD; utran-cell-id-3gpp={CELL_ID}"], call.context()
        assert_no_leak(call, {"the caller's IP address": CALLER_IP, "the IMEI": IMEI})
    assert_answered(normal)
    assert_withheld(normal, number=RESTRICTED, trusted=True)
    assert_no_leak(normal, DEVICE_NEEDLES)
    metrics = bench.metrics()
    counts = presentation_counts(metrics)
    emergency_calls = metric_sum(metrics, "sipguard_emergency_calls_total")
    bench.stop()
    assert counts == {("allowed", "emergency"): 2, ("restricted", "withhold_code"): 1}, counts
    assert emergency_calls == 2
    ends = end_records(bench)
    assert len(ends) == 3, bench.cdrs
    assert_cdr(
        ends[0],
        caller=RESTRICTED,
        presentation="allowed",
        callee="112",
        emergency=True,
        trunk_out="emergency",
    )
    assert_cdr(
        ends[1],
        caller=PERMANENT,
        presentation="allowed",
        callee="112",
        emergency=True,
        trunk_out="emergency",
    )
    assert_cdr(ends[2], caller=RESTRICTED, presentation="restricted")


# -- 6. a spoofed P-Asserted-Identity from the untrusted trunk ------------------------------


def test_spoofed_pai_from_untrusted_trunk_is_ignored(bench_factory: Any) -> None:
    """The caller claims another subscriber's number in PAI (and Remote-Party-ID): the
    callee sees the number of From, or ``default_cli`` when From carries no number; never
    the spoofed one."""
    bench = bench_factory()
    from_number = bench.call("uac-call-spoofed-pai.xml", "uas-presented.xml", caller=CALLER)
    no_number = bench.call("uac-call-spoofed-pai.xml", "uas-presented.xml", caller="alice")
    assert_answered(from_number)
    assert_answered(no_number)
    assert_presented(from_number, number=CALLER)
    assert_presented(no_number, number=DEFAULT_CLI)
    for call in (from_number, no_number):
        assert_no_leak(call, {"the spoofed number": digits(SPOOFED), "the caller's IP": CALLER_IP})
        assert not header(call, "remote-party-id"), call.context()
    counts = presentation_counts(bench.metrics())
    bench.stop()
    assert counts == {("allowed", "default"): 2}, counts
    ends = end_records(bench)
    assert len(ends) == 2, bench.cdrs
    assert_cdr(ends[0], caller=CALLER, presentation="allowed")
    assert_cdr(ends[1], caller=DEFAULT_CLI, presentation="allowed")


# -- 7. a caller number outside allowed_cli ---------------------------------------------------


def test_cli_outside_allowed_cli_replaced_by_default_cli(bench_factory: Any) -> None:
    """``+31301234567`` is outside ``+3120123*``: ``default_cli`` is presented instead."""
    bench = bench_factory()
    call = bench.call("uac-call.xml", "uas-presented.xml", caller=OUTSIDE)
    assert_answered(call)
    assert_presented(call, number=DEFAULT_CLI)
    assert_no_leak(call, caller_needles(OUTSIDE))
    counts = presentation_counts(bench.metrics())
    bench.stop()
    assert counts == {("allowed", "default"): 1}, counts
    (end,) = end_records(bench)
    assert_cdr(end, caller=DEFAULT_CLI, presentation="allowed")


def test_cli_outside_allowed_cli_rejected_but_not_emergency(bench_factory: Any) -> None:
    """``cli_policy: reject``: 403 to the caller, nothing to the callee; an emergency call
    from the same caller goes on, with ``default_cli``."""
    bench = bench_factory({"trunks": {"customers": {"cli_policy": "reject"}}})
    refused = bench.call("uac-refused.xml", "uas-record.xml", caller=OUTSIDE, answered=False)
    emergency = bench.call(
        "uac-call.xml", "uas-presented.xml", caller=OUTSIDE, dialled="112", to="emergency"
    )
    assert_refused(refused, 403)
    assert_answered(emergency)
    assert_presented(emergency, number=DEFAULT_CLI)
    assert_no_leak(emergency, caller_needles(OUTSIDE))
    metrics = bench.metrics()
    rejected = metric_sum(metrics, "sipguard_rejected_total", reason="cli_not_allowed")
    counts = presentation_counts(metrics)
    bench.stop()
    assert rejected == 1, metrics
    assert counts == {("allowed", "emergency"): 1}, counts
    ends = end_records(bench)
    assert not [r for r in bench.cdrs if r["status"] == 200 and not r["emergency"]], bench.cdrs
    assert_cdr(
        ends[-1],
        caller=DEFAULT_CLI,
        presentation="allowed",
        callee="112",
        emergency=True,
        trunk_out="emergency",
    )


# -- 8. location and device identity never leave the trust domain ---------------------------


def test_device_ids_do_not_reach_the_trusted_pbx(bench_factory: Any) -> None:
    """From the customer trunk with P-Access-Network-Info (cell id), an IMEI in
    ``+sip.instance`` and P-Charging-Vector: none of them reaches the (trusted) pbx, nor the
    caller's address; the call itself presents the number."""
    bench = bench_factory()
    call = bench.call("uac-call-device.xml", "uas-no-device.xml", caller=CALLER, privacy="none")
    assert_answered(call)
    assert_presented(call, number=CALLER)
    assert_no_leak(
        call,
        DEVICE_NEEDLES
        | {"the caller's IP address": CALLER_IP, "P-Charging-Vector": "P-Charging-Vector"},
    )
    counts = presentation_counts(bench.metrics())
    bench.stop()
    assert counts == {("allowed", "privacy_none"): 1}, counts
    (end,) = end_records(bench)
    assert_cdr(end, caller=CALLER, presentation="allowed")


def test_device_ids_do_not_reach_an_untrusted_trunk(bench_factory: Any) -> None:
    """From the trusted pbx (127.0.0.2) to the untrusted interconnect (127.0.0.4): the
    number of its PAI is presented, but not its location, IMEI, charging or visited-network
    headers, nor the User-Agent, nor the pbx's own address or host name."""
    bench = bench_factory({"trunks": {"pbx": {"route_to": "interconnect"}}})
    call = bench.call(
        "uac-pbx-device.xml",
        "uas-no-device.xml",
        caller=CALLER,
        source=PBX_IP,
        to="interconnect",
    )
    assert_answered(call)
    assert_presented(call, number=CALLER)
    assert_no_leak(
        call,
        DEVICE_NEEDLES
        | {
            "the pbx's address": PBX_IP,
            "the pbx's host name": "pbx.operator.example",
            "P-Charging-Vector": "P-Charging-Vector",
            "P-Visited-Network-ID": "P-Visited-Network-ID",
            "User-Agent": "AcmePhone",
        },
    )
    counts = presentation_counts(bench.metrics())
    bench.stop()
    assert counts == {("allowed", "default"): 1}, counts
    (end,) = end_records(bench)
    assert_cdr(end, caller=CALLER, presentation="allowed", trunk_in="pbx", trunk_out="interconnect")


# -- 9. 433 towards a reject_anonymous trunk, never for 112 ----------------------------------


def test_reject_anonymous_433_but_not_emergency(bench_factory: Any) -> None:
    """The pbx and interconnect trunks have ``reject_anonymous: true``, and the pbx takes the
    customers' emergency calls too. Withheld calls get 433 and reach nobody: ``#31#``, a
    caller withheld by default, and ``Privacy: id`` with a ``Priority: psap-callback`` that
    an untrusted trunk cannot claim. Put through: ``#31#112`` with ``Privacy: id``
    (presented), and a PSAP call-back from the trusted pbx (withheld, RFC 7090)."""
    bench = bench_factory(
        {
            "trunks": {
                "pbx": {"reject_anonymous": True, "route_to": "interconnect"},
                "interconnect": {"reject_anonymous": True},
                "customers": {"emergency_route_to": "pbx"},
            }
        }
    )
    refused = [
        bench.call(
            "uac-refused.xml",
            "uas-record.xml",
            caller=CALLER,
            dialled=WITHHOLD_RAW + DIALLED,
            answered=False,
        ),
        bench.call("uac-refused.xml", "uas-record.xml", caller=RESTRICTED, answered=False),
        bench.call(
            "uac-refused-psap-callback.xml", "uas-record.xml", caller=CALLER, answered=False
        ),
    ]
    emergency = bench.call(
        "uac-call-device.xml",
        "uas-emergency.xml",
        caller=RESTRICTED,
        dialled=WITHHOLD_RAW + "112",
        privacy="id",
    )
    callback = bench.call(
        "uac-refused-psap-callback.xml",
        "uas-withheld-untrusted.xml",
        caller=CALLER,
        source=PBX_IP,
        to="interconnect",
    )
    for call in refused:
        assert_refused(call, 433)
    assert_answered(emergency)
    assert_presented(emergency, number=RESTRICTED)
    assert_answered(callback)
    assert_withheld(callback, number=CALLER, trusted=False)
    metrics = bench.metrics()
    rejected = metric_sum(metrics, "sipguard_rejected_total", reason="anonymity_disallowed")
    counts = presentation_counts(metrics)
    bench.stop()
    assert rejected == 3, metrics
    # the two calls put through were decided so; whether a refused call's decision is
    # counted as well is left open (sipguard counts it in sipguard_rejected_total only)
    assert counts.get(("allowed", "emergency")) == 1, counts
    assert counts.get(("restricted", "privacy_header"), 0) >= 1, counts
    answered = [r for r in end_records(bench) if r["answer"] is not None]
    assert len(answered) == 2, bench.cdrs
    assert_cdr(answered[0], caller=RESTRICTED, presentation="allowed", callee="112", emergency=True)
    assert_cdr(
        answered[1],
        caller=CALLER,
        presentation="restricted",
        trunk_in="pbx",
        trunk_out="interconnect",
    )
    for r in end_records(bench):
        if r["answer"] is None:  # a CDR of a refused attempt, if one is written
            assert r["status"] == 433 and r["presentation"] == "restricted", r


# -- 10. an unknown source ---------------------------------------------------------------------


def test_unknown_source_refused_with_403(bench_factory: Any) -> None:
    """An INVITE from 127.0.0.9, in no trunk's sources: 403, counted, routed nowhere."""
    bench = bench_factory()
    call = bench.call(
        "uac-refused.xml", "uas-record.xml", caller=CALLER, source=UNKNOWN_IP, answered=False
    )
    assert_refused(call, 403)
    metrics = bench.metrics()
    rejected = metric_sum(metrics, "sipguard_rejected_total", reason="unknown_source")
    counts = presentation_counts(metrics)
    bench.stop()
    assert rejected == 1, metrics
    assert counts == {}, counts
    assert bench.cdrs == []

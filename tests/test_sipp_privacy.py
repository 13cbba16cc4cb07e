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

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from testkit.privacy import (
    CALLER,
    CELL_ID,
    DEFAULT_CLI,
    DEVICE_NEEDLES,
    DIALLED,
    IMEI,
    OUTSIDE,
    PBX_IP,
    PERMANENT,
    PRESENT,
    RESTRICTED,
    SPOOFED,
    UNKNOWN_IP,
    WITHHOLD_ESCAPED,
    WITHHOLD_RAW,
    Bench,
    assert_answered,
    assert_cdr,
    assert_no_leak,
    assert_presented,
    assert_refused,
    assert_withheld,
    caller_needles,
    digits,
    end_records,
    header,
    presentation_counts,
)
from testkit.sipp import (
    CALLER_IP,
    metric_sum,
    sipp_available,
)

pytestmark = [
    pytest.mark.sipp,
    pytest.mark.skipif(not sipp_available(), reason="SIPp (sip-tester) is not installed"),
    pytest.mark.timeout(90),
]


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

"""The privacy bench of the SIPp tests: sipguard with four trunks, calls placed through it
by SIPp with crafted INVITEs, and the checks of what reached the callee.

The trunks: ``customers`` (untrusted) on 127.0.0.3; the Cloud PBX (``pbx``, trusted) on
127.0.0.2; ``interconnect`` (untrusted) on 127.0.0.4; ``emergency`` (trusted, the
customers' ``emergency_route_to``) on 127.0.0.5; 127.0.0.9 is no trunk's. The scenario
files are in ``tests/data/sipp/privacy/``. Used by ``tests/test_sipp_privacy.py`` (whose
docstring says what is checked and why) and ``tests/test_net_reload.py``.
"""

from __future__ import annotations

import itertools
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

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
    read_cdrs,
    running,
    write_config,
)

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

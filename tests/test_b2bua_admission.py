"""sipguard.b2bua.admission: the refusal order of a new INVITE, as a table.

Each row of :mod:`sipguard.b2bua.admission`'s table is checked with its own fault *and
every later row's fault present at once*: the first refusal in the order wins, so a
row that is checked too late, or not at all, fails here. Emergency calls are then
shown to pass every refusal but the reserve's.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import Any

import pytest

from sipguard.b2bua.admission import Admitted, Capacity, Refused, admit
from sipguard.b2bua.overload import Shedder
from sipguard.config.model import Config, Trunk
from sipguard.sip.message import Request, parse_message
from testkit.callsim import default_config, invite


@dataclasses.dataclass
class Case:
    """A new INVITE and where it came from, to be spoiled by faults."""

    config: Config = dataclasses.field(default_factory=default_config)
    trunk: Trunk | None = None
    data: bytes = dataclasses.field(default_factory=lambda: invite(1))
    merged: bool = False
    tls_names: frozenset[str] = frozenset()
    draining: bool = False
    capacity: Capacity = dataclasses.field(default_factory=Capacity)

    def __post_init__(self) -> None:
        self.trunk = self.config.trunks["customers"]

    def header(self, line: str) -> None:
        self.data = self.data.replace(b"Content-Type:", line.encode() + b"\r\nContent-Type:", 1)

    def run(self) -> Admitted | Refused:
        req = parse_message(self.data)
        assert isinstance(req, Request)
        return admit(
            req,
            self.trunk,
            self.config,
            self.capacity,
            Shedder(),
            1000.0,
            source="127.0.0.3",
            tls_names=self.tls_names,
            merged=self.merged,
            draining=self.draining,
            accepting=True,
        )


def replace_trunk(c: Case, **changes: Any) -> None:
    if c.trunk is not None:  # without a trunk, a trunk's fault cannot be made (nor matter)
        c.trunk = dataclasses.replace(c.trunk, **changes)


def no_trunk(c: Case) -> None:
    c.trunk = None


def max_forwards_zero(c: Case) -> None:
    c.data = c.data.replace(b"Max-Forwards: 70", b"Max-Forwards: 0")


def no_contact(c: Case) -> None:
    c.data = c.data.replace(b"Contact: sip:sipp@127.0.0.3:5062\r\n", b"")


def bad_scheme(c: Case) -> None:
    c.data = c.data.replace(b"INVITE sip:0201234567@", b"INVITE xmpp:0201234567@", 1)


def full(c: Case) -> None:
    c.config = dataclasses.replace(
        c.config, limits=dataclasses.replace(c.config.limits, max_calls=1)
    )
    c.capacity.take("pbx", False)


# (step, status, label, its fault), in the order of the module's table
ROWS: list[tuple[int, int, str, Callable[[Case], None]]] = [
    (1, 403, "unknown_source", no_trunk),
    (2, 403, "tls_name", lambda c: replace_trunk(c, tls_name="sbc.carrier.test")),
    (3, 482, "loop_detected", lambda c: setattr(c, "merged", True)),
    (4, 483, "too_many_hops", max_forwards_zero),
    (5, 400, "bad_request", no_contact),
    (6, 416, "unsupported_uri_scheme", bad_scheme),
    (7, 420, "bad_extension", lambda c: c.header("Require: foo")),
    (
        8,
        403,
        "cli_not_allowed",
        lambda c: replace_trunk(c, cli_policy="reject", allowed_cli=("+3199*",)),
    ),
    (9, 404, "no_route", lambda c: replace_trunk(c, route_to=None)),
    (10, 503, "max_calls", full),
    (
        11,
        422,
        "session_interval_too_small",
        lambda c: c.header("Session-Expires: 60\r\nSupported: timer"),
    ),
    (12, 500, "privacy_unavailable", lambda c: c.header("Privacy: session;critical")),
]


def test_an_unspoilt_invite_is_admitted() -> None:
    verdict = Case().run()
    assert isinstance(verdict, Admitted)
    assert verdict.trunk_out.name == "pbx"


@pytest.mark.parametrize(("step", "status", "label", "fault"), ROWS, ids=[r[2] for r in ROWS])
def test_each_refusal_alone(
    step: int, status: int, label: str, fault: Callable[[Case], None]
) -> None:
    case = Case()
    fault(case)
    verdict = case.run()
    assert isinstance(verdict, Refused), verdict
    assert (verdict.status, verdict.label) == (status, label)
    # from step 8 on it was a call attempt: an end record is due, with its facts
    assert (verdict.end_reason is not None) == (step >= 8)


@pytest.mark.parametrize("first", range(len(ROWS)), ids=[r[2] for r in ROWS])
def test_the_first_refusal_in_the_order_wins(first: int) -> None:
    case = Case()
    for _, _, _, fault in ROWS[first:]:
        fault(case)
    verdict = case.run()
    assert isinstance(verdict, Refused), verdict
    assert verdict.label == ROWS[first][2]


def emergency(case: Case) -> None:
    case.data = invite(1, user="112")


def test_an_emergency_call_passes_every_refusal_but_the_reserve() -> None:
    case = Case()
    emergency(case)
    for _, _, label, fault in ROWS:
        if label in ("max_calls", "session_interval_too_small", "privacy_unavailable"):
            fault(case)
    case.draining = True
    verdict = case.run()
    assert isinstance(verdict, Admitted), verdict
    assert verdict.ident.decision.emergency
    # the reserve is the one cap
    case.config = dataclasses.replace(
        case.config, limits=dataclasses.replace(case.config.limits, emergency_max_calls=1)
    )
    case.capacity.take("customers", True)
    verdict = case.run()
    assert isinstance(verdict, Refused) and verdict.label == "emergency_limit"
    assert verdict.end_reason == "limit"


def test_capacity_counts_per_trunk_and_forgets_trunks_without_calls() -> None:
    cap = Capacity()
    cap.take("a", False)
    cap.take("a", True)
    assert (cap.calls, cap.emergency_calls, cap.trunk_calls) == (2, 1, {"a": 2})
    cap.give_back("a", True)
    cap.give_back("a", False)
    assert (cap.calls, cap.emergency_calls, cap.trunk_calls) == (0, 0, {})


@pytest.mark.parametrize("calls", [0, 1, 2])
@pytest.mark.parametrize("trunk_limits", [{}, {"max_calls": 2}, {"cps": 2}, {"cps": 1}])
@pytest.mark.parametrize("state", ["open", "draining", "spool_full", "max_calls"])
def test_capacity_full_is_a_limit_that_refuses_whatever_is_asked(
    calls: int, trunk_limits: dict[str, int], state: str
) -> None:
    """``Capacity.full`` (the core's refusal of an INVITE unread) says yes only where
    ``limit`` then names a limit for any new call of the trunk but an emergency one, and
    counts nothing itself: the trunk's calls of this second are still there for ``limit``."""
    config = default_config("limits: {max_calls: 2}\n" if state == "max_calls" else "")
    t = config.trunks["customers"]
    trunk = dataclasses.replace(t, limits=dataclasses.replace(t.limits, **trunk_limits))
    cap = Capacity()
    shedder = Shedder()
    taken = 0
    for _ in range(calls):  # calls up, each one of this second's new calls too
        if cap.limit(config, trunk, False, 1000.5, "h", shedder, draining=False, accepting=True):
            break  # the trunk's one call a second
        cap.take(trunk.name, False)
        taken += 1
    draining, accepting = state == "draining", state != "spool_full"
    full = cap.full(config, trunk, 1000.5, draining=draining, accepting=accepting)
    assert cap.full(config, trunk, 1000.5, draining=draining, accepting=accepting) == full
    limit = cap.limit(
        config, trunk, False, 1000.5, "h", shedder, draining=draining, accepting=accepting
    )
    assert full == (limit is not None)
    assert cap.full(config, trunk, 1001.0, draining=False, accepting=True) == (
        (state == "max_calls" and taken >= 2) or trunk_limits.get("max_calls", 99) <= taken
    )

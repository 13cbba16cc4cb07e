"""A bug of ours while a message is handled ends that call cleanly; the others go on.

The bug is made by replacing a method of the pure-Python ``Call``; against the compiled
build (``tests/test_tools_native.py``), whose classes cannot be patched, it is skipped.
"""

from __future__ import annotations

import pytest

from sipguard.b2bua import call as call_module
from sipguard.b2bua.call import Call
from testkit.callsim import SDP_CALLEE, Wire, basic_call, invite, requests, response_to, responses

pytestmark = pytest.mark.skipif(
    call_module.__file__ is None or not call_module.__file__.endswith(".py"),
    reason="compiled (mypyc): a compiled class's methods cannot be replaced",
)


def test_an_internal_error_on_the_answer_ends_the_call_and_frees_its_slot(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    w = Wire()
    w.from_caller(invite(1))
    (b_inv,) = requests(w.take_callee(), "INVITE")

    def broken(self: Call, resp: object, now: float) -> None:
        raise RuntimeError("a bug")

    with monkeypatch.context() as m:
        m.setattr(Call, "_answered", broken)
        w.from_callee(response_to(b_inv, 200, "OK", "t1", SDP_CALLEE))
    finals = [r.status for r in responses(w.take_caller()) if r.status >= 200]
    assert finals == [500]
    assert w.core.calls == 0
    assert [(r.kind, r.end_reason, r.status) for r in w.core.cdr_out] == [("end", "rejected", 500)]
    w.core.cdr_out.clear()
    basic_call(w, 2)  # the next call is not affected
    assert [r.kind for r in w.core.cdr_out] == ["start", "end"]


def test_an_internal_error_on_a_new_invite_is_answered_500_with_a_to_tag(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    w = Wire()

    def broken(self: Call, now: float) -> None:
        raise RuntimeError("a bug")

    with monkeypatch.context() as m:
        m.setattr(Call, "start_b", broken)
        w.from_caller(invite(1))
    finals = [r for r in responses(w.take_caller()) if r.status >= 200]
    assert [r.status for r in finals] == [500]
    assert finals[0].to.tag  # RFC 3261 §8.2.6.2
    assert w.core.calls == 0
    assert [r.kind for r in w.core.cdr_out] == ["end"]


def test_an_internal_error_while_a_call_ends_still_frees_its_slot(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    w = Wire()
    w.core.cdr_out.clear()

    def broken(self: Call, now: float) -> None:
        raise RuntimeError("a bug")

    with monkeypatch.context() as m:
        m.setattr(Call, "_release", broken)
        basic_call(w, 1)
    assert w.core.calls == 0
    assert w.core.dialogs == {}
    assert [r.kind for r in w.core.cdr_out] == ["start", "end"]

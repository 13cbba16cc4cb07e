"""A bug of ours while a message is handled ends that call cleanly; the others go on.

The bug is made by replacing a method of the pure-Python ``Call`` (so this file is not
among those run against the compiled build, whose classes cannot be patched).
"""

from __future__ import annotations

import pytest

from sipguard.b2bua.call import Call
from tests.callsim import SDP_CALLEE, Wire, basic_call, invite, requests, response_to, responses


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

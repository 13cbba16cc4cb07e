"""When the driver batches its sends per loop iteration (under load) or sends at once."""

from __future__ import annotations

import pytest

from sipguard.net import server


def test_sends_are_batched_only_above_the_rate() -> None:
    assert not server.batch_sends(100, 0.05, above=5000)  # 2,000 messages/s
    assert not server.batch_sends(250, 0.05, above=5000)  # exactly the rate
    assert server.batch_sends(251, 0.05, above=5000)
    assert server.batch_sends(1000, 0.1, above=5000)  # a late probe: the real interval
    assert not server.batch_sends(1000, 0.25, above=5000)
    assert server.batch_sends(0, 0.05, above=0)  # 0: always


@pytest.mark.parametrize(
    ("text", "expected"),
    [(None, 5000.0), ("0", 0.0), ("12000", 12000.0), ("abc", 5000.0), ("nan", 5000.0),
     ("inf", 5000.0), ("-1", 5000.0)],
)  # fmt: skip
def test_the_rate_from_the_environment_is_checked(
    monkeypatch: pytest.MonkeyPatch, text: str | None, expected: float
) -> None:
    if text is None:
        monkeypatch.delenv("SIPGUARD_BATCH_SENDS_ABOVE", raising=False)
    else:
        monkeypatch.setenv("SIPGUARD_BATCH_SENDS_ABOVE", text)
    assert server._batch_sends_above() == expected

"""The two error families of the SIP core.

A peer's mistake is a :class:`SipError`: it carries the status to answer with (400,
416, 420, 481, 483, 505, 513 …) or ``None`` when the message cannot be answered (a
response, or a request whose Via cannot be read): then it is dropped and counted. Our own
misuse of the API raises ``ValueError`` or ``TypeError``. Anything else escaping the core
is a bug.
"""

from __future__ import annotations


class SipError(Exception):
    """The peer sent something wrong. ``status`` is what to answer, None means drop."""

    def __init__(self, reason: str, status: int | None = 400) -> None:
        super().__init__(reason)
        self.reason = reason
        self.status = status
        # a ready-made stateless response to the offending request, when it can be answered
        self.response: bytes | None = None

    @property
    def answerable(self) -> bool:
        return self.status is not None

    def __repr__(self) -> str:
        return f"SipError({self.reason!r}, status={self.status})"


class MessageTooLarge(SipError):  # noqa: N818 (a public name)
    """A message or one of its parts is over a configured limit (answered 513)."""

    def __init__(self, reason: str, status: int | None = 513) -> None:
        super().__init__(reason, status)

"""Cut a TCP/TLS byte stream into SIP messages by Content-Length (RFC 3261 §18.3).

Bounded: a message (header section plus body) over ``max_message`` bytes is a
:class:`MessageTooLarge` error, after which the connection must be closed; so is a
header section without ``Content-Length``, since a stream cannot be re-synchronised
without it. Each byte is searched once, however the stream is cut, and the result
(messages and keep-alive count) does not depend on how it is cut.
"""

from __future__ import annotations

from typing import Final

from sipguard.sip.errors import MessageTooLarge, SipError

_CLEN_NAMES: Final = (b"content-length", b"l")


class StreamFramer:
    __slots__ = ("_buf", "_crlfs", "_error", "_need", "_scan", "max_message", "pings")

    def __init__(self, max_message: int = 65535) -> None:
        self._buf = bytearray()
        self._scan = 0  # bytes of _buf already searched for the end of the header section
        self._need = 0  # once the header section is read: the whole message's length
        self._crlfs = 0  # CRLFs seen since the last message or ping (cut-independent)
        self._error: SipError | None = None  # a framing error not raised yet
        self.max_message = max_message
        self.pings = 0  # RFC 5626 CRLFCRLF keep-alives seen; answer each with one CRLF

    @property
    def buffered(self) -> int:
        return len(self._buf)

    def feed(self, data: bytes) -> list[bytes]:
        """Add bytes; return the whole messages now complete, in order.

        A framing error is raised as :class:`SipError` without a status (close the
        connection). Messages completed before it are returned first: the error is then
        raised by the next call (``feed(b"")`` asks at once), and by every call after.
        """
        if self._error is not None:
            raise self._error
        out: list[bytes] = []
        try:
            self._feed(data, out)
        except SipError as exc:
            self._error = exc
            if not out:
                raise
        return out

    def _feed(self, data: bytes, out: list[bytes]) -> None:
        buf = self._buf
        buf += data
        while buf:
            if not self._need:
                if self._scan == 0:
                    i = 0
                    while buf.startswith(b"\r\n", i):
                        i += 2
                    if i:
                        crlfs = self._crlfs + i // 2
                        self.pings += crlfs // 2
                        self._crlfs = crlfs % 2
                        del buf[:i]
                        continue
                    if buf == b"\r":
                        break  # half a CRLF: wait for the rest
                    self._crlfs = 0  # a message starts
                end = buf.find(b"\r\n\r\n", max(0, self._scan - 3))
                if end < 0:
                    self._scan = len(buf)
                    if len(buf) > self.max_message:
                        raise MessageTooLarge("header section too large on stream", status=None)
                    break
                self._need = end + 4 + self._content_length(buf, end)
                if self._need > self.max_message:
                    raise MessageTooLarge("message too large on stream", status=None)
            if len(buf) < self._need:
                break
            out.append(bytes(buf[: self._need]))
            del buf[: self._need]
            self._need = self._scan = 0

    @staticmethod
    def _content_length(buf: bytearray, end: int) -> int:
        """The Content-Length of the header section ``buf[:end]``, read the way the parser
        reads it (CRLF lines, folding undone, the start line skipped). One pass over the
        lines: no regular expression, so no backtracking on hostile whitespace."""
        values: set[bytes] = set()
        current: bytes | None = None  # the Content-Length being read, while it may fold
        for line in bytes(buf[:end]).split(b"\r\n")[1:]:
            if line[:1] in (b" ", b"\t"):
                if current is not None and len(current) <= 10:  # longer is malformed anyway
                    folded = line.strip(b" \t")
                    current = current + b" " + folded if current and folded else current or folded
                continue
            if current is not None:
                values.add(current)
            name, colon, value = line.partition(b":")
            is_clen = colon and name.rstrip(b" \t").lower() in _CLEN_NAMES
            current = value.strip(b" \t") if is_clen else None
        if current is not None:
            values.add(current)
        if len(values) != 1:
            raise SipError("missing or conflicting Content-Length on a stream", status=None)
        raw = values.pop()
        if not raw.isdigit() or len(raw) > 10:
            raise SipError("malformed Content-Length on a stream", status=None)
        return int(raw)

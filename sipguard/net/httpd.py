"""A tiny HTTP/1.1 endpoint for ``/metrics``, ``/healthz`` and ``/readyz``.

Served on the same event loop as SIP; each request is answered and the connection
closed. ``/readyz`` says 503 while draining, so a load balancer stops sending. It knows
nothing of SIP: it is given what ``/metrics`` shows and whether sipguard is ready.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable

from prometheus_client import CONTENT_TYPE_LATEST


class MetricsServer:
    def __init__(self, metrics_body: Callable[[], bytes], ready: Callable[[], bool]) -> None:
        """``metrics_body()``: the Prometheus text of ``/metrics``; ``ready()``: False
        while draining (``/readyz`` then says 503)."""
        self.metrics_body = metrics_body
        self.ready = ready
        self.server: asyncio.AbstractServer | None = None

    async def start(self, address: str, port: int) -> None:
        self.server = await asyncio.start_server(self._handle, address, port, reuse_address=True)

    async def close(self) -> None:
        if self.server is not None:
            self.server.close()
            await self.server.wait_closed()

    def _body(self, path: str) -> tuple[int, str, bytes]:
        if path == "/metrics":
            return 200, CONTENT_TYPE_LATEST, self.metrics_body()
        if path == "/healthz":
            return 200, "text/plain", b"ok\n"
        if path == "/readyz":
            if not self.ready():
                return 503, "text/plain", b"draining\n"
            return 200, "text/plain", b"ready\n"
        return 404, "text/plain", b"not found\n"

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            line = await asyncio.wait_for(reader.readline(), 5.0)
            while True:
                h = await asyncio.wait_for(reader.readline(), 5.0)
                if h in (b"\r\n", b"\n", b""):
                    break
            parts = line.decode("latin-1").split()
            path = parts[1].split("?", 1)[0] if len(parts) >= 2 else "/"
            status, ctype, body = self._body(path)
            reason = {200: "OK", 404: "Not Found", 503: "Service Unavailable"}[status]
            head = (
                f"HTTP/1.1 {status} {reason}\r\nContent-Type: {ctype}\r\n"
                f"Content-Length: {len(body)}\r\nConnection: close\r\n\r\n"
            )
            writer.write(head.encode() + body)
            await writer.drain()
        except (TimeoutError, ConnectionError, asyncio.LimitOverrunError, ValueError):
            pass
        finally:
            writer.close()

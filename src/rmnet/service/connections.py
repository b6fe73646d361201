"""Connections that cannot exhaust the server: uvicorn's HTTP protocol with a header deadline and a cap.

uvicorn times out idle keep-alive connections, but not a client that connects and sends part of a
request and stops ("slowloris"): each such connection holds a file descriptor for ever, and some
thousand of them stop the server accepting anyone. :class:`GuardedHTTPProtocol` (uvicorn's own
protocol, httptools or h11, with two additions):

- a request's headers must be complete ``header_timeout`` seconds after the connection opened or
  after the first byte of its next request, else the connection is closed;
- at most ``max_connections`` connections per process: one more closes the oldest connection that
  is still waiting for its headers (a client that has sent a whole request is never dropped); when
  none is waiting, the new connection is closed at once.

The upload body has its own pause limit (``rmnet.service.uploads.read_form``). Imports no torch.
"""

from __future__ import annotations

import logging
from collections import OrderedDict
from typing import Any

try:  # the protocol uvicorn's "auto" picks
    from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol as _Protocol
except ImportError:  # pragma: no cover - httptools is a dependency of uvicorn[standard]
    from uvicorn.protocols.http.h11_impl import H11Protocol as _Protocol

log = logging.getLogger("rmnet.service")

FILE_DESCRIPTORS_KEPT = 128  # for the index, the model's files, logs, sockets to the supervisor


def default_max_connections() -> int:
    """Connections per process that leave file descriptors for everything else (soft RLIMIT_NOFILE − 128)."""
    try:
        import resource

        soft, _ = resource.getrlimit(resource.RLIMIT_NOFILE)
    except (ImportError, ValueError, OSError):  # pragma: no cover - not on Linux
        return 1000
    if soft == resource.RLIM_INFINITY:
        return 10_000
    return max(8, min(10_000, soft - FILE_DESCRIPTORS_KEPT))


class GuardedHTTPProtocol(_Protocol):
    """uvicorn's HTTP protocol with a deadline for each request's headers and a connection cap."""

    header_timeout: float = 10.0
    max_connections: int = 1000

    @classmethod
    def configure(cls, *, header_timeout: float, max_connections: int | None) -> None:
        """Set the limits of every connection this process serves (before it serves any)."""
        cls.header_timeout = header_timeout
        cls.max_connections = max_connections or default_max_connections()

    def connection_made(self, transport: Any) -> None:  # type: ignore[override]
        super().connection_made(transport)
        self._header_timer = None
        self._armed_cycle = None
        self._wait_for_headers()
        if len(self.connections) > self.max_connections:
            self._make_room()

    def data_received(self, data: bytes) -> None:
        if self._header_timer is None and (self.cycle is None or self.cycle.response_complete):
            self._wait_for_headers()  # the first bytes of the next request on a kept-alive connection
        super().data_received(data)
        if self._header_timer is not None and self.cycle is not self._armed_cycle:
            self._headers_complete()

    def connection_lost(self, exc: Exception | None) -> None:
        self._headers_complete()
        super().connection_lost(exc)

    # -- the deadline and the cap ----------------------------------------------------------------

    def _waiting(self) -> OrderedDict:
        """This server's connections waiting for headers, oldest first (kept on uvicorn's state)."""
        waiting = getattr(self.server_state, "rmnet_waiting_for_headers", None)
        if waiting is None:
            waiting = OrderedDict()
            self.server_state.rmnet_waiting_for_headers = waiting
        return waiting

    def _wait_for_headers(self) -> None:
        self._armed_cycle = self.cycle
        self._header_timer = self.loop.call_later(self.header_timeout, self._headers_too_slow)
        self._waiting()[self] = None

    def _headers_complete(self) -> None:
        timer = getattr(self, "_header_timer", None)
        if timer is not None:
            timer.cancel()
            self._header_timer = None
        self._waiting().pop(self, None)

    def _headers_too_slow(self) -> None:
        self._header_timer = None
        self._waiting().pop(self, None)
        if not self.transport.is_closing():
            log.debug("closed a connection whose request headers took over %g s", self.header_timeout)
            self.transport.close()

    def _make_room(self) -> None:
        waiting = self._waiting()
        oldest = next((p for p in waiting if p is not self), None)
        victim = oldest if oldest is not None else self
        victim._headers_complete()
        if not victim.transport.is_closing():
            victim.transport.close()
        if victim is self:
            log.warning("%d connections are busy with requests: refused a new one", len(self.connections) - 1)

"""Who may use the service: the API key, the clients that keep guessing it, the hosts it answers to.

- :class:`KeyCheck`: with a key configured, every endpoint that says anything about a patient or a
  prediction needs it (``Authorization: Bearer KEY`` or ``X-API-Key: KEY``; never in the URL),
  compared in constant time; a client that sends wrong keys ``failures`` times within ``window_s``
  seconds gets 429 with ``Retry-After`` until the window has passed, right key or not.
- :func:`check_exposure`: a service listening beyond loopback refuses to start without a key.
- :class:`RedactQuery`: the access log never shows a key sent in a query string.

Imports nothing heavy (the supervisor of several processes uses :class:`RedactQuery`).
"""

from __future__ import annotations

import hmac
import ipaddress
import logging
import re
import threading
import time
from collections import OrderedDict

from rmnet.service.config import API_KEY_ENV

# Query parameters that look like a credential: refused with 400, and redacted from the access log.
SECRET_PARAMETER = re.compile(r"(?i)(?:^|[&?])([^=&]*(?:key|token|auth|secret|passw|bearer)[^=&]*)=([^&]*)")
LOOPBACK_NAMES = ("localhost",)


class AccessDenied(Exception):
    """A request without the right key: HTTP ``status`` (401, 403, 429) and the reason."""

    def __init__(self, status: int, detail: str, headers: dict[str, str] | None = None) -> None:
        super().__init__(detail)
        self.status, self.detail, self.headers = status, detail, headers or {}


def is_loopback(host: str) -> bool:
    """Whether binding ``host`` keeps the service on this machine (127.0.0.0/8, ::1, localhost)."""
    if host.lower() in LOOPBACK_NAMES:
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False  # a host name: it may resolve to anything


def check_exposure(host: str, api_key: str | None) -> None:
    """Refuse (ValueError) to listen beyond loopback without a key: patient images would be public."""
    if api_key is None and not is_loopback(host):
        raise ValueError(
            f"--host {host} listens beyond this machine: set {API_KEY_ENV} to a random key of at least "
            "16 characters first (every request that touches a patient's image or a prediction will "
            "need it); see docs/service.md, 'Deploying it in a clinic'"
        )


def secret_in_query(query_string: str) -> str | None:
    """The name of a query parameter that looks like a credential (``?api_key=…``), or None."""
    found = SECRET_PARAMETER.search(query_string)
    return found.group(1) if found else None


class KeyCheck:
    """The key and the count of wrong keys per client (bounded: at most ``max_clients`` remembered)."""

    def __init__(
        self, api_key: str | None, *, failures: int = 10, window_s: float = 60.0, max_clients: int = 10_000
    ) -> None:
        self.api_key = api_key
        self.failures, self.window_s, self.max_clients = failures, window_s, max_clients
        self._failed: OrderedDict[str, list[float]] = OrderedDict()  # client → times of wrong keys
        self._lock = threading.Lock()

    @property
    def required(self) -> bool:
        return self.api_key is not None

    def sent_key(self, headers) -> str | None:
        """The key a request sent (``Authorization: Bearer KEY`` or ``X-API-Key``), stripped; None if none."""
        api_key = headers.get("x-api-key")
        if api_key is not None and api_key.strip():
            return api_key.strip()
        scheme, _, token = (headers.get("authorization") or "").strip().partition(" ")
        if scheme.lower() == "bearer" and token.strip():
            return token.strip()
        return None

    def check(self, client: str, headers, *, writing: bool = False) -> None:
        """Let the request through, or raise :class:`AccessDenied`.

        Reads need the key only when one is configured; writes always do (403 without one).
        """
        if self.api_key is None:
            if writing:
                raise AccessDenied(403, f"writes are disabled: the service was started without {API_KEY_ENV}")
            return
        self._check_not_blocked(client)
        sent = self.sent_key(headers)
        if sent is None:
            raise AccessDenied(
                401,
                "this service needs its API key: send the header 'Authorization: Bearer KEY' "
                "(or 'X-API-Key: KEY')",
                {"WWW-Authenticate": "Bearer"},
            )
        if not hmac.compare_digest(sent.encode("utf-8"), self.api_key.encode("utf-8")):
            self._record_failure(client)
            raise AccessDenied(403, "wrong API key")

    def _check_not_blocked(self, client: str) -> None:
        now = time.monotonic()
        with self._lock:
            times = self._failed.get(client)
            if not times:
                return
            times[:] = [t for t in times if now - t < self.window_s]
            if len(times) >= self.failures:
                retry = max(1, int(times[0] + self.window_s - now + 0.999))
                raise AccessDenied(
                    429,
                    f"too many wrong API keys from this client: try again in {retry} s",
                    {"Retry-After": str(retry)},
                )

    def _record_failure(self, client: str) -> None:
        with self._lock:
            self._failed.setdefault(client, []).append(time.monotonic())
            self._failed.move_to_end(client)
            while len(self._failed) > self.max_clients:
                self._failed.popitem(last=False)


class RedactQuery(logging.Filter):
    """Blank out credential-like query parameters in uvicorn's access log lines."""

    def filter(self, record: logging.LogRecord) -> bool:
        args = record.args
        if isinstance(args, tuple) and len(args) >= 3 and isinstance(args[2], str) and "?" in args[2]:
            path, _, query = args[2].partition("?")
            query = SECRET_PARAMETER.sub(lambda m: m.group(0)[: m.start(2) - m.start(0)] + "REDACTED", query)
            record.args = (*args[:2], f"{path}?{query}", *args[3:])
        return True

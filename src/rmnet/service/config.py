"""What a running service is: the run and index it serves, where uploads go, its limits and batching."""

from __future__ import annotations

import dataclasses
import json
import os
from dataclasses import dataclass
from pathlib import Path

API_KEY_ENV = "RMNET_API_KEY"
SERVICE_CONFIG_ENV = "RMNET_SERVICE_CONFIG"  # how `rmnet serve` hands its settings to its processes
MAX_K = 100  # the most similar cases one search returns (documented in docs/service.md)
MAX_UPLOAD_MB = 20.0
MAX_PIXELS = 50_000_000  # a 8000 × 6000 photograph; ISIC 2019's largest images are 6000 × 4000
THUMBNAIL_SIZES = (16, 1024)  # allowed range of ?size= on /api/cases/{id}/image
MIN_API_KEY_LENGTH = 16
DECODE_BUDGET_MPX = 64.0  # pixels being decoded at once per process, in millions (docs/service.md: memory)


@dataclass(frozen=True)
class ServiceConfig:
    """Everything ``rmnet serve`` needs; the defaults are the command line's.

    ``api_key`` None means: read ``RMNET_API_KEY`` from the environment. Unset or empty: no key
    (only on loopback; writes disabled). Otherwise it is stripped and must be at least 16 characters.
    With a key, every endpoint that says anything about a patient or a prediction needs it.
    """

    run: Path
    index: Path
    checkpoint: str = "best"
    device: str = "auto"
    host: str = "127.0.0.1"
    port: int = 8000
    api_key: str | None = None
    cases_dir: Path | None = None  # images added through the API; default INDEX/cases
    max_upload_mb: float = MAX_UPLOAD_MB
    max_pixels: int = MAX_PIXELS
    max_k: int = MAX_K
    max_batch: int = 32  # the largest forward pass (images) the start-up measurement may choose
    forward_batch: int | None = None  # images per forward pass (None: the fastest, measured at start-up)
    batch_wait_ms: float = 2.0  # how long the first request of a batch waits for others
    max_queue: int = 256  # requests waiting for the model before the service answers 503
    processes: int | None = None  # serving processes, each with the model (None: app.resolve_parallelism)
    workers: int | None = None  # inference threads per process (None: app.resolve_parallelism)
    torch_threads: int | None = None  # torch threads per worker (None: app.resolve_parallelism)
    allowed_hosts: tuple[str, ...] | None = None  # Host header values served (None: loopback + --host)
    ssl_certfile: str | None = None  # TLS, by uvicorn itself
    ssl_keyfile: str | None = None
    decode_budget_mpx: float = DECODE_BUDGET_MPX  # megapixels decoded at once per process (503 above)
    decode_wait_s: float = 2.0  # how long an upload waits for decode budget before 503
    timeout_keep_alive: float = 5.0  # idle keep-alive connections closed after this (uvicorn)
    header_timeout: float = 10.0  # a request's headers must arrive within this, else the connection closes
    body_timeout: float = 30.0  # longest pause while an upload is received (408 after)
    max_connections: int | None = None  # open connections per process (None: from the file limit)
    auth_failures: int = 10  # wrong keys from one client within auth_window_s before 429
    auth_window_s: float = 60.0

    def __post_init__(self) -> None:
        object.__setattr__(self, "run", Path(self.run))
        object.__setattr__(self, "index", Path(self.index))
        if self.cases_dir is not None:
            object.__setattr__(self, "cases_dir", Path(self.cases_dir))
        if self.allowed_hosts is not None:
            hosts = tuple(h.strip().lower() for h in self.allowed_hosts if h.strip())
            object.__setattr__(self, "allowed_hosts", hosts)
        checks = {
            "max_upload_mb": self.max_upload_mb > 0,
            "max_pixels": self.max_pixels > 0,
            "max_k": self.max_k >= 1,
            "max_batch": self.max_batch >= 4,
            "forward_batch": self.forward_batch is None or self.forward_batch >= 1,
            "batch_wait_ms": self.batch_wait_ms >= 0,
            "max_queue": self.max_queue >= 1,
            "processes": self.processes is None or self.processes >= 1,
            "workers": self.workers is None or self.workers >= 1,
            "torch_threads": self.torch_threads is None or self.torch_threads >= 1,
            "port": 0 <= self.port <= 65535,
            "decode_budget_mpx": self.decode_budget_mpx * 1e6 >= self.max_pixels,
            "decode_wait_s": self.decode_wait_s >= 0,
            "timeout_keep_alive": self.timeout_keep_alive > 0,
            "header_timeout": self.header_timeout > 0,
            "body_timeout": self.body_timeout > 0,
            "max_connections": self.max_connections is None or self.max_connections >= 8,
            "auth_failures": self.auth_failures >= 1,
            "auth_window_s": self.auth_window_s > 0,
        }
        bad = [name for name, ok in checks.items() if not ok]
        if bad:
            settings = ", ".join(f"{name}={getattr(self, name)!r}" for name in bad)
            hint = (
                " (the decode budget must hold one image of max_pixels)" if "decode_budget_mpx" in bad else ""
            )
            raise ValueError(f"invalid service setting(s): {settings}{hint}")
        if (self.ssl_certfile is None) != (self.ssl_keyfile is None):
            raise ValueError("TLS needs both --ssl-certfile and --ssl-keyfile")
        if self.checkpoint not in ("best", "last"):
            raise ValueError(f"checkpoint must be 'best' or 'last', got {self.checkpoint!r}")

    def to_json(self) -> str:
        """These settings as JSON (how ``rmnet serve --processes N`` hands them to each process)."""
        fields = dataclasses.asdict(self)
        return json.dumps({k: str(v) if isinstance(v, Path) else v for k, v in fields.items()})

    @classmethod
    def from_json(cls, text: str) -> ServiceConfig:
        fields = json.loads(text)
        if fields.get("allowed_hosts") is not None:
            fields["allowed_hosts"] = tuple(fields["allowed_hosts"])
        return cls(**fields)

    @property
    def max_upload_bytes(self) -> int:
        return int(self.max_upload_mb * 1024 * 1024)

    @property
    def resolved_api_key(self) -> str | None:
        """The key: ``api_key`` if given, else $RMNET_API_KEY, stripped; None when unset or empty.

        A key that is blank or shorter than 16 characters after stripping is refused (ValueError):
        a service that believes it is protected must be.
        """
        source = "api_key" if self.api_key is not None else f"${API_KEY_ENV}"
        raw = self.api_key if self.api_key is not None else os.environ.get(API_KEY_ENV, "")
        if raw == "":
            return None
        key = raw.strip()
        if len(key) < MIN_API_KEY_LENGTH:
            what = "blank" if not key else f"{len(key)} characters long"
            raise ValueError(
                f"{source} is {what}: use a random key of at least {MIN_API_KEY_LENGTH} characters, e.g. "
                "`python -c 'import secrets; print(secrets.token_urlsafe(32))'` (or leave it unset, "
                "on loopback only)"
            )
        return key

    @property
    def resolved_allowed_hosts(self) -> tuple[str, ...]:
        """Host header values served: ``allowed_hosts``, else localhost, 127.0.0.1, ::1 and --host."""
        if self.allowed_hosts is not None:
            return self.allowed_hosts
        hosts = ["localhost", "127.0.0.1", "::1"]
        if self.host not in ("0.0.0.0", "::", "") and self.host.lower() not in hosts:
            hosts.append(self.host.lower())
        return tuple(hosts)

    @property
    def resolved_cases_dir(self) -> Path:
        return self.cases_dir if self.cases_dir is not None else self.index / "cases"

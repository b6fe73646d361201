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


@dataclass(frozen=True)
class ServiceConfig:
    """Everything ``rmnet serve`` needs; the defaults are the command line's.

    ``api_key`` None means: read ``RMNET_API_KEY`` from the environment (an empty or unset variable
    disables writes: ``POST /api/cases`` answers 403).
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

    def __post_init__(self) -> None:
        object.__setattr__(self, "run", Path(self.run))
        object.__setattr__(self, "index", Path(self.index))
        if self.cases_dir is not None:
            object.__setattr__(self, "cases_dir", Path(self.cases_dir))
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
        }
        bad = [name for name, ok in checks.items() if not ok]
        if bad:
            settings = ", ".join(f"{name}={getattr(self, name)!r}" for name in bad)
            raise ValueError(f"invalid service setting(s): {settings}")
        if self.checkpoint not in ("best", "last"):
            raise ValueError(f"checkpoint must be 'best' or 'last', got {self.checkpoint!r}")

    def to_json(self) -> str:
        """These settings as JSON (how ``rmnet serve --processes N`` hands them to each process)."""
        fields = dataclasses.asdict(self)
        return json.dumps({k: str(v) if isinstance(v, Path) else v for k, v in fields.items()})

    @classmethod
    def from_json(cls, text: str) -> ServiceConfig:
        return cls(**json.loads(text))

    @property
    def max_upload_bytes(self) -> int:
        return int(self.max_upload_mb * 1024 * 1024)

    @property
    def resolved_api_key(self) -> str | None:
        """The write key: ``api_key`` if given, else $RMNET_API_KEY; None (writes disabled) when empty."""
        key = self.api_key if self.api_key is not None else os.environ.get(API_KEY_ENV, "")
        return key or None

    @property
    def resolved_cases_dir(self) -> Path:
        return self.cases_dir if self.cases_dir is not None else self.index / "cases"

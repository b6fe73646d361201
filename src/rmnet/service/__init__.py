"""``rmnet serve``: the CAD web service — diagnosis, Grad-CAM heat map and similar cases of an image.

    rmnet serve RUN --index INDEX [--host 127.0.0.1] [--port 8000]

Parts (each importable on its own; this package imports nothing heavy, so the command line stays fast):

    rmnet.service.config    ServiceConfig: paths, limits, processes, batching
    rmnet.service.access    the API key, clients that keep guessing it, exposure beyond loopback
    rmnet.service.connections  uvicorn's HTTP protocol with a header deadline and a connection cap
    rmnet.service.uploads   reading multipart uploads in memory, decoding untrusted image bytes
    rmnet.service.engine    InferenceEngine: the model, micro-batched on worker threads, Grad-CAM
    rmnet.service.cases     CaseStore: the similar-case index (search, add, case images)
    rmnet.service.app       the FastAPI application, build_service, one serving process of several
    rmnet.service.server    ``serve``: uvicorn in this process, or supervising several (no torch)
    rmnet.service.cli       the ``rmnet serve`` command

See docs/service.md.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from rmnet.service.app import Service, build_service, create_app
    from rmnet.service.config import ServiceConfig
    from rmnet.service.server import serve

__all__ = ["Service", "ServiceConfig", "build_service", "create_app", "serve"]


def __getattr__(name: str) -> Any:  # lazy: `import rmnet.service` must not load torch or FastAPI
    if name in ("Service", "build_service", "create_app"):
        from rmnet.service import app

        return getattr(app, name)
    if name == "serve":
        from rmnet.service.server import serve

        return serve
    if name == "ServiceConfig":
        from rmnet.service.config import ServiceConfig

        return ServiceConfig
    raise AttributeError(f"module 'rmnet.service' has no attribute {name!r}")

"""How ``rmnet serve`` runs the service with uvicorn: in this process, or as the supervisor of several.

Several processes (``--processes``, by default one per core on a CPU, at most 4) because the Python
half of every request (HTTP, multipart, decoding, the model's module calls) holds the interpreter
lock: threads in one process share one core's worth of it, processes do not (docs/service.md).
Nothing here imports torch, so the supervisor of several processes never holds a model.
"""

from __future__ import annotations

import os

from rmnet.service.config import SERVICE_CONFIG_ENV, ServiceConfig


def serve(config: ServiceConfig, *, log_level: str = "info") -> None:
    """Load the service and run it with uvicorn until interrupted.

    With several processes, the run and the index are first checked and the forward batch measured
    once, in a short-lived process; then uvicorn starts the serving processes on one socket, each
    loading its own copy of the service (:class:`rmnet.service.app.ServiceProcess`) over one index.
    """
    import uvicorn

    options = {"host": config.host, "port": config.port, "log_level": log_level}
    if config.processes != 1:
        checked, summary = _in_a_new_process(_check, config)
        if checked.processes > 1:
            print(summary, flush=True)
            os.environ[SERVICE_CONFIG_ENV] = checked.to_json()
            factory = "rmnet.service.app:ServiceProcess"
            uvicorn.run(factory, factory=True, workers=checked.processes, **options)
            return
        config = checked  # one process after all (a GPU, one core): serve from here

    from rmnet.service.app import build_service, create_app, describe_service

    service = build_service(config)
    print(describe_service(service), flush=True)
    try:
        uvicorn.run(create_app(service), workers=1, **options)
    finally:
        service.close()


def _check(config: ServiceConfig) -> tuple[ServiceConfig, str]:
    from rmnet.service.app import check_service

    return check_service(config)


def _in_a_new_process(function, *args):
    """``function(*args)`` in a fresh Python process (spawned: it inherits nothing of this one)."""
    import multiprocessing
    from concurrent.futures import ProcessPoolExecutor

    with ProcessPoolExecutor(1, mp_context=multiprocessing.get_context("spawn")) as pool:
        return pool.submit(function, *args).result()

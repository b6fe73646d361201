"""How ``rmnet serve`` runs the service with uvicorn: in this process, or as the supervisor of several.

Several processes (``--processes``, by default one per core on a CPU, at most 4) because the Python
half of every request (HTTP, multipart, decoding, the model's module calls) holds the interpreter
lock: threads in one process share one core's worth of it, processes do not (docs/service.md).
Nothing here imports torch, so the supervisor of several processes never holds a model.
"""

from __future__ import annotations

import copy
import errno
import os
import socket
from typing import Any

from rmnet.service.access import check_exposure
from rmnet.service.config import SERVICE_CONFIG_ENV, ServiceConfig

PROTOCOL = "rmnet.service.connections:GuardedHTTPProtocol"


def serve(config: ServiceConfig, *, log_level: str = "info") -> None:
    """Load the service and run it with uvicorn until interrupted.

    Refuses at once (ValueError, OSError: one line) a short or blank key, a host beyond loopback
    without a key, and a port already in use. With several processes, the run and the index are
    then checked and the forward batch measured once, in a short-lived process; then uvicorn starts
    the serving processes on one socket, each loading its own copy of the service
    (:class:`rmnet.service.app.ServiceProcess`) over one index.
    """
    import uvicorn

    check_exposure(config.host, config.resolved_api_key)
    check_port_free(config.host, config.port)
    options = uvicorn_options(config, log_level)
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
    from rmnet.service.connections import GuardedHTTPProtocol

    service = build_service(config)
    GuardedHTTPProtocol.configure(
        header_timeout=config.header_timeout, max_connections=config.max_connections
    )
    print(describe_service(service), flush=True)
    try:
        uvicorn.run(create_app(service), workers=1, **options)
    finally:
        service.close()


def uvicorn_options(config: ServiceConfig, log_level: str = "info") -> dict[str, Any]:
    """uvicorn's settings for ``config``: address, TLS, timeouts, the guarded protocol, the log."""
    from rmnet.service.connections import default_max_connections

    max_connections = config.max_connections or default_max_connections()
    options: dict[str, Any] = {
        "host": config.host,
        "port": config.port,
        "log_level": log_level,
        "log_config": log_config(),
        "http": PROTOCOL,
        "timeout_keep_alive": config.timeout_keep_alive,
        # A backstop: connections are kept under max_connections by the protocol (closing the
        # oldest still waiting for its headers), so this only answers 503 when they are all busy.
        "limit_concurrency": max_connections + 16,
        "h11_max_incomplete_event_size": 64 * 1024,
        "server_header": False,
    }
    if config.ssl_certfile:
        options.update(ssl_certfile=config.ssl_certfile, ssl_keyfile=config.ssl_keyfile)
    return options


def log_config() -> dict[str, Any]:
    """uvicorn's log configuration, with the access log's query strings cleared of credentials."""
    from uvicorn.config import LOGGING_CONFIG

    config = copy.deepcopy(LOGGING_CONFIG)
    config.setdefault("filters", {})["redact_query"] = {"()": "rmnet.service.access.RedactQuery"}
    config["handlers"]["access"].setdefault("filters", []).append("redact_query")
    return config


def check_port_free(host: str, port: int) -> None:
    """OSError with one line saying what to do when ``host:port`` cannot be bound (in use, no permission)."""
    if port == 0:
        return
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as uvicorn binds
        try:
            probe.bind((host, port))
        except OSError as err:
            if err.errno == errno.EADDRINUSE:
                raise OSError(f"port {port} is in use: pass --port N (another free port)") from None
            if err.errno == errno.EACCES:
                raise OSError(
                    f"port {port} needs privileges on this machine: pass --port N above 1023"
                ) from None
            raise OSError(f"cannot listen on {host}:{port}: {err.strerror or err}") from None


def _check(config: ServiceConfig) -> tuple[ServiceConfig, str]:
    from rmnet.service.app import check_service

    return check_service(config)


def _in_a_new_process(function, *args):
    """``function(*args)`` in a fresh Python process (spawned: it inherits nothing of this one)."""
    import multiprocessing
    from concurrent.futures import ProcessPoolExecutor

    with ProcessPoolExecutor(1, mp_context=multiprocessing.get_context("spawn")) as pool:
        return pool.submit(function, *args).result()

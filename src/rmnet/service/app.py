"""The FastAPI application: the HTTP contract of the CAD service, over a :class:`Service` loaded once
per process (``rmnet.service.server`` runs it with uvicorn).

    GET  /healthz                      up; with the key (or none configured): model, index, limits
    POST /api/predict                  calibrated diagnosis, uncertain, warnings, rotation check (form: image)
    POST /api/search?k=10              the k most similar indexed cases                 (form: image)
    POST /api/explain[?class=NAME]     Grad-CAM heat map over the image, PNG            (form: image)
    GET  /api/cases/{id}/image[?size=] a case's image, or a thumbnail
    POST /api/cases                    add a diagnosed case (Authorization: Bearer KEY; form: image,
                                       label, optional id) → 201
    GET  /                             the page;  /docs  the OpenAPI page

Every refusal is a 4xx with ``{"detail": "what was wrong"}``. Uploads stay in memory; only
``POST /api/cases`` writes the image, into the cases folder, before indexing it. With a key
configured, every endpoint that says anything about a patient or a prediction needs it
(:mod:`rmnet.service.access`); only the Host names of ``allowed_hosts`` are answered; no response
names a path on the server.
"""

from __future__ import annotations

import asyncio
import dataclasses
import importlib.resources
import logging
import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import quote

from fastapi import FastAPI, Query, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import HTMLResponse, JSONResponse, Response
from starlette.concurrency import run_in_threadpool
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.middleware.trustedhost import TrustedHostMiddleware

from rmnet.retrieval.index import IndexBusyError
from rmnet.service.access import AccessDenied, KeyCheck, check_exposure, secret_in_query
from rmnet.service.cases import CaseStore
from rmnet.service.config import API_KEY_ENV, SERVICE_CONFIG_ENV, THUMBNAIL_SIZES, ServiceConfig
from rmnet.service.engine import EngineBusyError, EngineClosedError, InferenceEngine
from rmnet.service.uploads import PixelBudget, RequestError, check_case_id, decode_image, read_form

log = logging.getLogger("rmnet.service")

PAGE_SECURITY = {
    # The page is one file: its own inline script and style, images from this server (and the
    # blob: URLs it makes from uploads), nothing from anywhere else.
    "Content-Security-Policy": "default-src 'none'; script-src 'unsafe-inline'; style-src 'unsafe-inline'; "
    "img-src 'self' blob: data:; connect-src 'self'; base-uri 'none'; form-action 'none'; "
    "frame-ancestors 'none'",
}
IMAGE_FORM = {
    "requestBody": {
        "required": True,
        "content": {
            "multipart/form-data": {
                "schema": {
                    "type": "object",
                    "required": ["image"],
                    "properties": {"image": {"type": "string", "format": "binary"}},
                }
            }
        },
    }
}
CASE_FORM = {
    "requestBody": {
        "required": True,
        "content": {
            "multipart/form-data": {
                "schema": {
                    "type": "object",
                    "required": ["image", "label"],
                    "properties": {
                        "image": {"type": "string", "format": "binary", "description": "the image"},
                        "label": {"type": "string", "description": "its confirmed diagnosis (a class name)"},
                        "id": {"type": "string", "description": "case id (default: from the image's hash)"},
                    },
                }
            }
        },
    }
}
ERROR_RESPONSES = {
    code: {"description": text, "content": {"application/json": {"example": {"detail": "what was wrong"}}}}
    for code, text in (
        (413, "upload over the size limit"),
        (415, "not multipart/form-data, or not an image"),
        (422, "missing or unknown field, unreadable image, too many pixels, parameter out of range"),
    )
}


@dataclass
class Service:
    """What the application serves: the engine, the index and the settings, loaded once."""

    config: ServiceConfig
    engine: InferenceEngine
    store: CaseStore
    api_key: str | None
    budget: PixelBudget | None = None
    started: float = field(default_factory=time.time)

    def __post_init__(self) -> None:
        if self.budget is None:
            self.budget = PixelBudget(int(self.config.decode_budget_mpx * 1e6), self.config.decode_wait_s)
        self.keys = KeyCheck(
            self.api_key, failures=self.config.auth_failures, window_s=self.config.auth_window_s
        )

    def close(self) -> None:
        self.engine.close()
        self.store.close()


def build_service(config: ServiceConfig) -> Service:
    """Open the index, load the model of the run that built it, and check that they belong together."""
    import torch

    api_key = config.resolved_api_key  # a short or blank key stops here, before anything loads
    check_exposure(config.host, api_key)
    config = resolve_parallelism(config)
    if config.torch_threads:
        torch.set_num_threads(config.torch_threads)
    budget = PixelBudget(int(config.decode_budget_mpx * 1e6), config.decode_wait_s)
    store = CaseStore(config.index, config.resolved_cases_dir, budget=budget, max_pixels=config.max_pixels)
    try:
        run_dir = resolve_run(config.run, store.info.model.run)
        engine = InferenceEngine.from_run(
            run_dir,
            checkpoint=config.checkpoint,
            device=config.device,
            max_batch=config.max_batch,
            forward_batch=config.forward_batch,
            batch_wait_ms=config.batch_wait_ms,
            max_queue=config.max_queue,
            workers=config.workers,
        )
    except BaseException:
        store.close()
        raise
    try:
        if list(engine.info.class_names) != list(store.info.class_names):
            raise ValueError(
                f"run {run_dir} classifies {', '.join(engine.info.class_names)}, but index {config.index} "
                f"holds {', '.join(store.info.class_names)}: serve the index with the run that built it"
            )
        store.attach_model(engine.info.fingerprint, engine.info.code_length)
    except BaseException:
        engine.close()
        store.close()
        raise
    return Service(config, engine, store, api_key, budget)


def resolve_parallelism(config: ServiceConfig) -> ServiceConfig:
    """``config`` with the serving processes, inference workers per process and torch threads per
    worker that it leaves open filled in.

    On a CPU with C cores: one worker per process, min(4, C) processes (fewer when more workers
    per process are asked for), C // (processes × workers) torch threads each; 2 cores: 2 processes
    of 1 worker × 1 thread. Processes rather than threads because the Python half of a request
    (HTTP, decoding, the model's module calls) holds the interpreter lock: on the demo's model one
    process with 2 inference threads served 8 clients 1.0–1.7× faster than 1 client, 2 processes
    1.6–2.6× (docs/service.md has the measurements). On a GPU: one process, one worker, torch's threads.
    """
    from rmnet.io import resolve_device

    if resolve_device(config.device).type != "cpu":
        defaults = {"processes": 1, "workers": 1, "torch_threads": None}
    else:
        cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
        workers = config.workers or 1
        processes = config.processes or max(1, min(4, cores) // workers)
        defaults = {
            "processes": processes,
            "workers": workers,
            "torch_threads": max(1, cores // (processes * workers)),
        }
    chosen = {name: getattr(config, name) or default for name, default in defaults.items()}
    return dataclasses.replace(config, **chosen)


def resolve_run(run: Path, index_run: str | None) -> Path:
    """``run`` itself when it is a run folder; when it is a folder of runs (like ``runs/demo``), the
    run inside it that built the index (the index's manifest names it)."""
    run = Path(run)
    if (run / "config.json").is_file():
        return run
    if not run.is_dir():
        raise FileNotFoundError(f"run folder not found: {run}")
    if index_run:
        built_by = Path(index_run)
        if (built_by / "config.json").is_file() and run.resolve() in built_by.resolve().parents:
            return built_by
        moved = run / built_by.name  # the folder was moved or copied: its run of that name (the
        if (moved / "config.json").is_file():  # model's fingerprint is checked against the index next)
            return moved
    inside = sorted(p.parent.name for p in run.glob("*/config.json"))
    hint = f"; the runs inside it: {', '.join(inside)}" if inside else ""
    raise ValueError(
        f"{run} is not a run folder (no config.json) and does not contain the run that built the index "
        f"({index_run or 'not recorded'}){hint}"
    )


def create_app(service: Service) -> FastAPI:
    """The FastAPI application over a loaded :class:`Service` (the caller closes the service)."""
    config, engine, store = service.config, service.engine, service.store
    classes = list(engine.info.class_names)
    page = importlib.resources.files("rmnet.service").joinpath("static/index.html").read_text("utf-8")
    app = FastAPI(
        title="rmnet CAD service",
        version="1",
        description="Diagnosis, Grad-CAM heat map and the most similar confirmed cases of a dermoscopy "
        "image. For research: not a medical device.",
    )
    app.state.service = service

    # -- errors: always JSON, always a sentence --------------------------------------------------

    @app.exception_handler(RequestError)
    async def request_error(_: Request, err: RequestError) -> JSONResponse:
        return JSONResponse({"detail": err.detail}, status_code=err.status, headers=err.headers)

    @app.exception_handler(RequestValidationError)
    async def validation_error(_: Request, err: RequestValidationError) -> JSONResponse:
        problems = []
        for error in err.errors():
            location = [str(part) for part in error.get("loc", ()) if part not in ("query", "path", "body")]
            message = error.get("msg", "invalid")
            problems.append(f"{'.'.join(location)}: {message}" if location else message)
        return JSONResponse({"detail": "; ".join(problems) or "invalid request"}, status_code=422)

    @app.exception_handler(StarletteHTTPException)
    async def http_error(_: Request, err: StarletteHTTPException) -> JSONResponse:
        detail = err.detail if isinstance(err.detail, str) else str(err.detail)
        return JSONResponse({"detail": detail}, status_code=err.status_code, headers=err.headers)

    @app.exception_handler(EngineBusyError)
    async def busy(_: Request, err: EngineBusyError) -> JSONResponse:
        return JSONResponse({"detail": str(err)}, status_code=503, headers={"Retry-After": "1"})

    @app.exception_handler(EngineClosedError)
    async def closed(_: Request, err: EngineClosedError) -> JSONResponse:
        return JSONResponse({"detail": str(err)}, status_code=503)

    @app.exception_handler(AccessDenied)
    async def access_denied(_: Request, err: AccessDenied) -> JSONResponse:
        return JSONResponse({"detail": err.detail}, status_code=err.status, headers=err.headers)

    @app.exception_handler(IndexBusyError)
    async def index_busy(_: Request, err: IndexBusyError) -> JSONResponse:
        detail = "the case was not added: another process has been writing the index for too long; try again"
        return JSONResponse({"detail": detail}, status_code=409)

    @app.exception_handler(Exception)
    async def internal(_: Request, err: Exception) -> JSONResponse:
        log.exception("internal error")
        return JSONResponse({"detail": f"internal error ({type(err).__name__}); see the service log"}, 500)

    app.add_middleware(RefuseSecretsInQuery)
    hosts = [f"[{h}]" if ":" in h and not h.startswith("[") else h for h in config.resolved_allowed_hosts]
    app.add_middleware(TrustedHostMiddleware, allowed_hosts=hosts, www_redirect=False)  # IPv6 in brackets
    app.add_middleware(SecurityHeaders)

    # -- helpers ------------------------------------------------------------------------------

    def authorise(request: Request, *, writing: bool = False) -> None:
        """Let a request about a patient or a prediction through only with the key (when one is set)."""
        client = request.client.host if request.client else "unknown"
        service.keys.check(client, request.headers, writing=writing)

    async def upload(request: Request, allowed=("image",), required=("image",)):
        return await read_form(
            request,
            max_bytes=config.max_upload_bytes,
            allowed=allowed,
            required=required,
            pause_timeout=config.body_timeout,
        )

    async def decoded_input(data: bytes):
        def work():
            decoded = decode_image(data, max_pixels=config.max_pixels, budget=service.budget)
            return decoded, engine.prepare(decoded.image)

        return await run_in_threadpool(work)

    async def infer(data: bytes, *, turns: bool):
        with engine.arriving() as arrival:
            decoded, x = await decoded_input(data)
            inference = await asyncio.wrap_future(engine.infer(x, turns=turns, arrival=arrival))
        return decoded, inference

    def class_list(probabilities) -> list[dict[str, Any]]:
        pairs = zip(classes, probabilities, strict=True)
        return [{"name": name, "probability": float(p)} for name, p in pairs]

    def image_url(case_id: str) -> str:
        return f"/api/cases/{quote(case_id, safe='')}/image"

    # -- routes -------------------------------------------------------------------------------

    @app.get("/", response_class=HTMLResponse, include_in_schema=False)
    async def index_page() -> HTMLResponse:
        return HTMLResponse(page, headers=PAGE_SECURITY)

    @app.get("/healthz", summary="service status; with the key: model, index, limits")
    async def healthz(request: Request) -> dict[str, Any]:
        if service.keys.required and service.keys.sent_key(request.headers) is None:
            return {"status": "ok", "key_required": True}  # up, and nothing else, to a stranger
        authorise(request)
        return {
            "status": "ok",
            "key_required": service.keys.required,
            "model": public_model_info(engine),
            "index": {**store.info.to_dict(), "built_by_run": _name(store.info.model.run)},
            "writes": "enabled" if service.api_key else f"disabled (set {API_KEY_ENV})",
            "limits": {
                "max_upload_mb": config.max_upload_mb,
                "max_pixels": config.max_pixels,
                "max_k": config.max_k,
                "thumbnail_sizes": list(THUMBNAIL_SIZES),
                "decode": service.budget.to_dict(),
            },
            "process": {"pid": os.getpid(), "processes": config.processes},
            "engine": {
                "device": str(engine.device),
                "workers": len(engine.workers),
                "torch_threads": engine.torch_threads,
                "max_batch_images": engine.max_batch,
                "gather_limit_images": engine.gather_limit,
                "forward_batch": engine.forward_batch,
                "forward_ms_by_batch": {b: round(s * 1000, 3) for b, s in engine.forward_times.items()},
                "batch_wait_ms": engine.batch_wait * 1000,
                "gradcam_layer": engine.cam_layer_name or None,
                **engine.stats.to_dict(),
            },
            "uptime_s": round(time.time() - service.started, 1),
        }

    @app.post(
        "/api/predict", summary="diagnosis of an image", openapi_extra=IMAGE_FORM, responses=ERROR_RESPONSES
    )
    async def predict(request: Request) -> dict[str, Any]:
        authorise(request)
        parts = await upload(request)
        decoded, inference = await infer(parts["image"].data, turns=True)
        hits = await run_in_threadpool(store.search, inference.code, 1)  # out of distribution: how far?
        prediction = engine.run_model.prediction(  # calibrated; uncertain state, warnings, rotation check
            inference.probabilities,
            logits=inference.logits,
            turns=inference.turns,
            statistics=inference.statistics,
            image={"width": decoded.width, "height": decoded.height, "format": decoded.format},
            nearest_distance=float(hits[0].distance) if hits else None,
        )
        return prediction.to_dict() | {"model": _model_summary(engine)}

    @app.post(
        "/api/search",
        summary="the most similar indexed cases",
        openapi_extra=IMAGE_FORM,
        responses=ERROR_RESPONSES,
    )
    async def search(
        request: Request,
        k: int = Query(10, ge=1, le=config.max_k, description=f"how many cases (1-{config.max_k})"),
    ) -> dict[str, Any]:
        authorise(request)
        parts = await upload(request)
        _, inference = await infer(parts["image"].data, turns=False)
        hits = await run_in_threadpool(store.search, inference.code, k)
        best = int(inference.probabilities.argmax())
        return {
            "results": [
                {
                    "rank": hit.rank,
                    "id": hit.image_id,
                    "label": hit.class_name,
                    "distance": float(hit.distance),
                    "image_url": image_url(hit.image_id),
                }
                for hit in hits
            ],
            "k": k,
            "metric": store.info.metric,
            "prediction": classes[best],
            "probability": float(inference.probabilities[best]),
            "calibrated": engine.run_model.profile is not None,  # the run's temperature (docs/trust.md)
        }

    @app.post(
        "/api/explain",
        summary="Grad-CAM heat map over the image (PNG)",
        openapi_extra=IMAGE_FORM,
        responses={200: {"content": {"image/png": {}}}, **ERROR_RESPONSES},
    )
    async def explain(
        request: Request,
        target: str | None = Query(None, alias="class", description="class to explain (default: predicted)"),
    ) -> Response:
        authorise(request)
        if target is not None and target not in classes:
            raise RequestError(422, f"unknown class {target[:80]!r}; the classes are {', '.join(classes)}")
        if engine.cam_layer is None:
            raise RequestError(409, "this model has no spatial feature map: Grad-CAM is not available")
        parts = await upload(request)
        decoded, x = await decoded_input(parts["image"].data)
        index = None if target is None else classes.index(target)
        explanation = await asyncio.wrap_future(engine.explain(x, index))
        from rmnet.service.engine import heatmap_overlay

        png = await run_in_threadpool(
            heatmap_overlay,
            decoded.image,
            explanation.heatmap,
            resize=engine.info.resize,
            image_size=engine.info.image_size,
        )
        name = classes[explanation.target]
        headers = {
            "X-Explained-Class": quote(name),
            "X-Explained-Probability": f"{explanation.probabilities[explanation.target]:.6f}",
            "Cache-Control": "no-store",
        }
        return Response(png, media_type="image/png", headers=headers)

    @app.get(
        "/api/cases/{case_id:path}/image",
        summary="a case's image or thumbnail",
        responses={200: {"content": {"image/jpeg": {}, "image/png": {}}}},
    )
    async def case_image(
        request: Request,
        case_id: str,
        size: int | None = Query(
            None, ge=THUMBNAIL_SIZES[0], le=THUMBNAIL_SIZES[1], description="thumbnail: longest side in px"
        ),
    ) -> Response:
        authorise(request)
        data, media_type = await run_in_threadpool(store.image, case_id, size)
        cache = "private, max-age=3600" if not service.keys.required else "private, no-store"
        return Response(data, media_type=media_type, headers={"Cache-Control": cache})

    add_responses = {
        401: {"description": "no key sent"},
        403: {"description": "wrong key, or writes disabled"},
        409: {"description": "already indexed"},
        **ERROR_RESPONSES,
    }

    @app.post(
        "/api/cases",
        status_code=201,
        summary="add a confirmed case (needs the API key)",
        openapi_extra=CASE_FORM,
        responses=add_responses,
    )
    async def add_case(request: Request) -> JSONResponse:
        authorise(request, writing=True)
        parts = await upload(request, allowed=("image", "label", "id"), required=("image", "label"))
        label = parts["label"].text()
        if label not in classes:
            raise RequestError(422, f"unknown label {label[:80]!r}; the classes are {', '.join(classes)}")
        case_id = parts["id"].text() if "id" in parts else ""
        case_id = check_case_id(case_id) if case_id else None
        decoded, inference = await infer(parts["image"].data, turns=False)
        metadata = {"source": "POST /api/cases", "filename": (parts["image"].filename or "")[:200]}
        future = store.add(
            parts["image"].data, decoded.extension, inference.code, classes.index(label), case_id, metadata
        )
        case = await asyncio.wrap_future(future)
        body = {
            "id": case.case_id,
            "label": case.class_name,
            "image_url": image_url(case.case_id),
            "count": store.info.count,
        }
        return JSONResponse(body, status_code=201)

    return app


class SecurityHeaders:
    """Pure ASGI middleware (cheaper than ``@app.middleware``): no MIME sniffing, no referrer."""

    HEADERS = ((b"x-content-type-options", b"nosniff"), (b"referrer-policy", b"no-referrer"))

    def __init__(self, app) -> None:
        self.app = app

    async def __call__(self, scope, receive, send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return

        async def send_with_headers(message) -> None:
            if message["type"] == "http.response.start":
                message = {**message, "headers": [*message.get("headers", []), *self.HEADERS]}
            await send(message)

        await self.app(scope, receive, send_with_headers)


class RefuseSecretsInQuery:
    """Pure ASGI middleware: a request with a key-like query parameter (``?api_key=…``) gets 400:
    a key in a URL ends up in logs, browser history and proxies; it belongs in a header."""

    def __init__(self, app) -> None:
        self.app = app

    async def __call__(self, scope, receive, send) -> None:
        if scope["type"] == "http" and scope.get("query_string"):
            name = secret_in_query(scope["query_string"].decode("latin-1"))
            if name is not None:
                detail = (
                    f"do not send a key in the URL (query parameter {name[:40]!r}): send the header "
                    "'Authorization: Bearer KEY'"
                )
                await JSONResponse({"detail": detail}, status_code=400)(scope, receive, send)
                return
        await self.app(scope, receive, send)


def public_model_info(engine: InferenceEngine) -> dict[str, Any]:
    """The model as /healthz shows it: no path on the server (the run and checkpoint by name)."""
    info = engine.info.to_dict()
    info["run"] = _name(info.get("run"))
    info["checkpoint"] = _name(info.get("checkpoint"))
    return info


def _name(path: str | None) -> str | None:
    return Path(path).name if path else None


def _model_summary(engine: InferenceEngine) -> dict[str, Any]:
    info = engine.info
    return {
        "description": info.description,
        "rm": info.rm,
        "k": info.k,
        "fingerprint": info.fingerprint,
        "run": _name(info.run),
    }


def check_service(config: ServiceConfig) -> tuple[ServiceConfig, str]:
    """Load the service once and close it: its settings with everything measured or defaulted filled
    in (processes, workers, threads, forward batch), and the line ``rmnet serve`` prints."""
    try:
        service = build_service(config)
    except OSError as err:  # plain types: they travel back from another process intact
        raise OSError(str(err)) from None
    except ValueError as err:
        raise ValueError(str(err)) from None
    try:
        measured = dataclasses.replace(service.config, forward_batch=service.engine.forward_batch)
        return measured, describe_service(service)
    finally:
        service.close()


def describe_service(service: Service) -> str:
    """What ``rmnet serve`` says when it starts: the model, the index, the processes, the address."""
    config, info = service.config, service.engine.info
    if service.api_key:
        access = "the API key is needed for every request about a patient or a prediction; writes enabled"
    else:
        access = f"no API key (loopback only): writes disabled (set {API_KEY_ENV} to enable POST /api/cases)"
    scheme = "https" if config.ssl_certfile else "http"
    return (
        f"serving {info.description} ({info.run}) with {service.store.info.count} indexed cases from "
        f"{config.index}; {config.processes} process(es) × {config.workers} inference worker(s); {access}; "
        f"answers Host {', '.join(config.resolved_allowed_hosts)}\n"
        f"open {scheme}://{_url_host(config.host)}:{config.port}/  (API: /docs)"
    )


class ServiceProcess:
    """The ASGI application of one of several serving processes (uvicorn's factory: see
    :mod:`rmnet.service.server`).

    Reads its settings from ``$RMNET_SERVICE_CONFIG`` and loads its own :class:`Service` at start-up
    (the ASGI lifespan), so that a failure there stops uvicorn instead of having it restart the
    process again and again; closes it at shutdown.
    """

    def __init__(self) -> None:
        from rmnet.service.connections import GuardedHTTPProtocol

        self.config = ServiceConfig.from_json(os.environ[SERVICE_CONFIG_ENV])
        GuardedHTTPProtocol.configure(
            header_timeout=self.config.header_timeout, max_connections=self.config.max_connections
        )
        self.service: Service | None = None
        self.app: FastAPI | None = None

    async def __call__(self, scope, receive, send) -> None:
        if scope["type"] != "lifespan":
            await self.app(scope, receive, send)
            return
        await receive()  # lifespan.startup
        try:
            self.service = build_service(self.config)
            self.app = create_app(self.service)
        except Exception as err:  # noqa: BLE001 - reported to uvicorn, which stops
            log.exception("the service did not start")
            await send({"type": "lifespan.startup.failed", "message": str(err)})
            return
        await send({"type": "lifespan.startup.complete"})
        await receive()  # lifespan.shutdown
        self.service.close()
        await send({"type": "lifespan.shutdown.complete"})


def _url_host(host: str) -> str:
    return f"[{host}]" if ":" in host else host

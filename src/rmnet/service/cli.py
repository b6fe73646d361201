"""The ``rmnet serve`` command (argparse), added to the main CLI by ``add_serve_command``.

Only argparse is imported here: the service (torch, FastAPI, uvicorn) loads when the command runs.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from rmnet.cliargs import DeprecatedOption
from rmnet.service.config import API_KEY_ENV, DECODE_BUDGET_MPX, MAX_K, MAX_PIXELS, MAX_UPLOAD_MB


class _Defaults(argparse.HelpFormatter):
    """ "(default: …)" after options that have one."""

    def _get_help_string(self, action: argparse.Action) -> str:
        text = action.help or ""
        if action.default in (None, False, argparse.SUPPRESS) or action.option_strings == ["-h", "--help"]:
            return text
        return f"{text} (default: %(default)s)"


def add_serve_command(commands: argparse._SubParsersAction) -> None:
    parser = commands.add_parser(
        "serve",
        help="run the CAD web service: diagnosis, heat map and similar cases of an image",
        description="Serve the model of RUN and the similar-case index INDEX over HTTP (FastAPI + uvicorn): "
        "the page at /, the API at /api (documented at /docs). The model is loaded and the index opened "
        f"once. Adding cases (POST /api/cases) needs the key in ${API_KEY_ENV}; without it, writes are "
        "disabled. Binds 127.0.0.1 unless --host says otherwise. See docs/service.md.",
        formatter_class=_Defaults,
    )
    parser.add_argument(
        "run_dir",
        metavar="RUN",
        type=Path,
        help="run folder, or a folder of runs that holds the one that built INDEX",
    )
    parser.add_argument("--index", required=True, type=Path, help="similar-case index (rmnet index build)")
    parser.add_argument("--host", default="127.0.0.1", help="address to listen on (0.0.0.0: every interface)")
    parser.add_argument("--port", type=int, default=8000, help="TCP port")
    parser.add_argument(
        "--allowed-hosts",
        help="comma-separated Host header values to answer (the names clients use for this server; "
        "default: localhost,127.0.0.1,::1 and --host); others get 400, against DNS rebinding",
    )
    parser.add_argument("--ssl-certfile", help="TLS certificate (PEM): serve HTTPS (uvicorn's own TLS)")
    parser.add_argument("--ssl-keyfile", help="the certificate's private key (PEM)")
    parser.add_argument("--checkpoint", default="best", choices=("best", "last"), help="checkpoint of RUN")
    parser.add_argument("--device", default="auto", help="cuda, cpu ...; auto picks CUDA when available")
    parser.add_argument("--cases-dir", type=Path, help="where added cases' images go (default: INDEX/cases)")
    parser.add_argument(
        "--max-upload-mb", type=float, default=MAX_UPLOAD_MB, help="largest upload (413 above)"
    )
    parser.add_argument(
        "--max-pixels", type=int, default=MAX_PIXELS, help="largest image in pixels (422 above)"
    )
    parser.add_argument("--max-k", type=int, default=MAX_K, help="most similar cases one search may ask for")
    parser.add_argument(
        "--decode-budget-mpx",
        type=float,
        default=DECODE_BUDGET_MPX,
        help="megapixels decoded at once per process (at most about 5 bytes each); uploads over it wait "
        "up to 2 s, then get 503",
    )
    parser.add_argument(
        "--timeout-keep-alive",
        type=float,
        default=5.0,
        help="seconds an idle keep-alive connection stays open",
    )
    parser.add_argument(
        "--header-timeout", type=float, default=10.0, help="seconds a request's headers may take to arrive"
    )
    parser.add_argument(
        "--body-timeout", type=float, default=30.0, help="longest pause while an upload arrives (408 after)"
    )
    parser.add_argument(
        "--max-connections",
        type=int,
        help="open connections per process; one more closes the oldest still waiting for its headers "
        "(default: the open-file limit minus 128)",
    )
    parser.add_argument(
        "--max-batch",
        type=int,
        default=32,
        help="the largest forward pass, in images, that the start-up measurement may choose",
    )
    parser.add_argument(
        "--forward-batch",
        type=int,
        help="images per forward pass (default: the fastest on this machine, measured at start-up)",
    )
    parser.add_argument(
        "--batch-wait-ms",
        type=float,
        default=2.0,
        help="how long a batch waits for requests already being decoded (a lone request never waits)",
    )
    parser.add_argument(
        "--processes",
        type=int,
        help="serving processes (uvicorn workers), each with its own copy of the model, all on one port "
        "and one index (default on a CPU: min(4, cores) / inference threads; on a GPU: 1)",
    )
    parser.add_argument(
        "--inference-threads",
        dest="workers",
        type=int,
        help="inference threads per process sharing its model, forward passes in parallel (default: 1)",
    )
    parser.add_argument(  # --workers means data-loading processes in the other commands
        "--workers", dest="workers", type=int, action=DeprecatedOption, replacement="--inference-threads"
    )
    parser.add_argument(
        "--torch-threads",
        type=int,
        help="torch threads per inference thread (default on a CPU: cores / (processes × inference threads))",
    )
    parser.add_argument(
        "--log-level",
        default="info",
        choices=("critical", "error", "warning", "info", "debug"),
        help="uvicorn log",
    )
    parser.set_defaults(run=run_serve)


def run_serve(args: argparse.Namespace) -> None:
    from rmnet.service.config import ServiceConfig
    from rmnet.service.server import serve

    config = ServiceConfig(
        run=args.run_dir,
        index=args.index,
        checkpoint=args.checkpoint,
        device=args.device,
        host=args.host,
        port=args.port,
        cases_dir=args.cases_dir,
        max_upload_mb=args.max_upload_mb,
        max_pixels=args.max_pixels,
        max_k=args.max_k,
        allowed_hosts=None if args.allowed_hosts is None else tuple(args.allowed_hosts.split(",")),
        ssl_certfile=args.ssl_certfile,
        ssl_keyfile=args.ssl_keyfile,
        decode_budget_mpx=args.decode_budget_mpx,
        timeout_keep_alive=args.timeout_keep_alive,
        header_timeout=args.header_timeout,
        body_timeout=args.body_timeout,
        max_connections=args.max_connections,
        max_batch=args.max_batch,
        forward_batch=args.forward_batch,
        batch_wait_ms=args.batch_wait_ms,
        processes=args.processes,
        workers=args.workers,
        torch_threads=args.torch_threads,
    )
    serve(config, log_level=args.log_level)

"""The CAD service's limits under abuse (issue 20), over loopback: no lost case, bounded memory, no
denial of service by idle connections.

    .venv/bin/python -m benchmarks.service_limits [--rounds 100] [--clients 16] [--uploads 2]
                                                  [--idle 1100] [--server-files 1024]

Starts ``rmnet serve --processes 2`` with an API key (the deployed command; the demo's model and
index unless --run/--index), its open-file limit set to ``--server-files`` (as a default Linux
login has), and measures, one after the other:

1. double submit: ``--rounds`` rounds of two clients posting the same new image at once (two ids,
   each on a new connection, so either process may take either), then fetching the image of every
   case that was acknowledged (201): a 404 there is a lost image. Must be 0.
2. big uploads: ``--clients`` clients at once, each uploading ``--uploads`` times a 6 KB PNG of
   7000 × 7000 1-bit pixels (49 megapixels) to /api/predict, while one more client predicts a small
   image in a loop: the server's resident memory (all processes) before, at its peak (sampled every
   20 ms) and after; the answers (200, or 503 with Retry-After over the decode budget); the small
   client's latency.
3. idle connections: ``--idle`` connections that send part of a request and stop (this benchmark
   raises its own open-file limit for them), then /healthz five times on new connections while
   they are held: its answers and latency; then, after the header deadline (10 s), how many of the
   idle connections the server has closed.

Bounded: fixed counts, timeouts on every socket, the server stopped at the end. Writes
results/service_load/service_limits.{csv,md}.
"""

from __future__ import annotations

import argparse
import http.client
import io
import os
import resource
import secrets
import socket
import tempfile
import threading
import time
from pathlib import Path

import numpy as np
import pandas as pd

from benchmarks import command_line, machine_description, save_table
from benchmarks.service_load import Server, build_example, memory_kb, query_images

HEADER_TIMEOUT_S = 10.0  # rmnet serve's default --header-timeout


def form(fields: dict[str, str], image: bytes) -> tuple[bytes, str]:
    """(body, content type) of a multipart form with text ``fields`` and the file field ``image``."""
    boundary = "rmnet-service-limits"
    parts = [
        f'--{boundary}\r\nContent-Disposition: form-data; name="{name}"\r\n\r\n{value}\r\n'.encode()
        for name, value in fields.items()
    ]
    head = f'--{boundary}\r\nContent-Disposition: form-data; name="image"; filename="x.png"\r\n'
    parts.append(head.encode() + b"Content-Type: image/png\r\n\r\n" + image + b"\r\n")
    return b"".join(parts) + f"--{boundary}--\r\n".encode(), f"multipart/form-data; boundary={boundary}"


def request(server: Server, method: str, path: str, body: bytes | None = None, content_type: str = "",
            timeout: float = 120) -> tuple[int, bytes, dict]:  # fmt: skip
    """One request on a new connection: (status, body, headers)."""
    connection = http.client.HTTPConnection("127.0.0.1", server.port, timeout=timeout)
    try:
        headers = dict(server.headers)
        if content_type:
            headers["Content-Type"] = content_type
        connection.request(method, path, body=body, headers=headers)
        response = connection.getresponse()
        return response.status, response.read(), dict(response.getheaders())
    finally:
        connection.close()


def png_bytes(array_or_image) -> bytes:
    from PIL import Image

    image = array_or_image if isinstance(array_or_image, Image.Image) else Image.fromarray(array_or_image)
    out = io.BytesIO()
    image.save(out, "PNG")
    return out.getvalue()


def double_submit(server: Server, rounds: int, label: str) -> dict:
    """Two clients add the same new image at once, ``rounds`` times; then every acknowledged case's image."""
    rng = np.random.default_rng(20)
    statuses: list[int] = []
    acknowledged: list[tuple[str, bytes]] = []
    for r in range(rounds):
        image = png_bytes(rng.integers(0, 256, (32, 32, 3), dtype=np.uint8))
        barrier = threading.Barrier(2)
        answers: dict[str, int] = {}

        def submit(
            case_id: str, image: bytes = image, barrier: threading.Barrier = barrier, answers: dict = answers
        ) -> None:
            body, content_type = form({"label": label, "id": case_id}, image)
            barrier.wait(timeout=30)
            answers[case_id] = request(server, "POST", "/api/cases", body, content_type)[0]

        threads = [threading.Thread(target=submit, args=(f"race{r:03d}-{who}",)) for who in (0, 1)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        statuses += answers.values()
        acknowledged += [(case_id, image) for case_id, status in answers.items() if status == 201]
    lost = [
        case_id
        for case_id, image in acknowledged
        if request(server, "GET", f"/api/cases/{case_id}/image")[1] != image
    ]
    return {
        "rounds": rounds,
        "201": statuses.count(201),
        "409": statuses.count(409),
        "other": len(statuses) - statuses.count(201) - statuses.count(409),
        "lost_images": len(lost),
    }


def big_uploads(server: Server, clients: int, uploads: int, small: bytes) -> dict:
    """``clients`` × ``uploads`` 49-megapixel PNGs at once, and one client of small predicts meanwhile."""
    from PIL import Image

    big = png_bytes(Image.new("1", (7000, 7000)))
    big_body, content_type = form({}, big)
    small_body, _ = form({}, small)
    before = memory_kb(server.process.pid)[0] / 1024
    peak, done = [before], threading.Event()

    def sample() -> None:
        while not done.is_set():
            peak.append(memory_kb(server.process.pid)[0] / 1024)
            time.sleep(0.02)

    statuses: list[int] = []
    retry_after: list[str] = []
    small_ms: list[float] = []

    def client() -> None:
        for _ in range(uploads):
            status, _, headers = request(server, "POST", "/api/predict", big_body, content_type)
            statuses.append(status)
            if status == 503:
                retry_after.append(headers.get("retry-after", ""))

    def lone_client() -> None:
        while not done.is_set():
            started = time.perf_counter()
            request(server, "POST", "/api/predict", small_body, content_type)
            small_ms.append(1000 * (time.perf_counter() - started))

    sampler, lone = threading.Thread(target=sample), threading.Thread(target=lone_client)
    sampler.start()
    lone.start()
    started = time.perf_counter()
    threads = [threading.Thread(target=client) for _ in range(clients)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    seconds = time.perf_counter() - started
    done.set()
    sampler.join()
    lone.join()
    time.sleep(1)
    after = memory_kb(server.process.pid)[0] / 1024
    return {
        "uploads": len(statuses),
        "upload_bytes": len(big),
        "200": statuses.count(200),
        "503": statuses.count(503),
        "503_with_retry_after": sum(1 for value in retry_after if value),
        "other": len(statuses) - statuses.count(200) - statuses.count(503),
        "seconds": seconds,
        "server_rss_before_mb": before,
        "server_rss_peak_mb": max(peak),
        "server_rss_after_mb": after,
        "small_predict_p50_ms": float(np.median(small_ms)) if small_ms else float("nan"),
        "small_predict_max_ms": max(small_ms) if small_ms else float("nan"),
        "small_predicts": len(small_ms),
    }


def idle_connections(server: Server, count: int) -> dict:
    """``count`` partial requests held open; /healthz meanwhile; how many the server closed later."""
    held, refused = [], 0
    for _ in range(count):
        try:
            s = socket.create_connection(("127.0.0.1", server.port), timeout=5)
            s.sendall(b"GET /healthz HTTP/1.1\r\nHost: 127.0.0.1\r\nX-Slow: ")  # and nothing more
            held.append(s)
        except OSError:
            refused += 1
    answers, latencies = [], []
    try:
        for _ in range(5):
            started = time.perf_counter()
            try:
                answers.append(request(server, "GET", "/healthz", timeout=10)[0])
            except OSError as err:
                answers.append(type(err).__name__)
            latencies.append(1000 * (time.perf_counter() - started))
        time.sleep(HEADER_TIMEOUT_S + 2)
        closed = 0
        for s in held:
            s.setblocking(False)
            try:
                closed += s.recv(1) == b""
            except BlockingIOError:
                pass
            except OSError:
                closed += 1
    finally:
        for s in held:
            s.close()
    return {
        "idle_connections": count,
        "opened": len(held),
        "connect_failures": refused,
        "healthz_answers": " ".join(str(a) for a in answers),
        "healthz_max_ms": max(latencies),
        f"closed_by_server_after_{HEADER_TIMEOUT_S + 2:g}_s": closed,
    }


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--run", type=Path, help="run folder to serve (default: build the demo's model)")
    parser.add_argument("--index", type=Path, help="its index (with --run)")
    parser.add_argument("--rounds", type=int, default=100, help="double-submit rounds")
    parser.add_argument(
        "--clients", type=int, default=16, help="clients uploading 49-megapixel images at once"
    )
    parser.add_argument("--uploads", type=int, default=2, help="49-megapixel uploads per client")
    parser.add_argument("--idle", type=int, default=1100, help="idle partial connections held")
    parser.add_argument("--server-files", type=int, default=1024, help="the server's open-file limit")
    parser.add_argument("--processes", type=int, default=2, help="rmnet serve --processes")
    parser.add_argument("--out", type=Path, default=Path("results/service_load"))
    args = parser.parse_args(argv)
    if (args.run is None) != (args.index is None):
        parser.error("--run and --index go together")

    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    needed = args.idle + 256
    if soft < needed:  # the clients' own sockets
        resource.setrlimit(
            resource.RLIMIT_NOFILE, (min(hard, needed) if hard != resource.RLIM_INFINITY else needed, hard)
        )

    def server_files() -> None:
        resource.setrlimit(resource.RLIMIT_NOFILE, (args.server_files, hard))

    load_average = os.getloadavg()
    key = secrets.token_urlsafe(24)
    with tempfile.TemporaryDirectory() as tmp:
        run, index = (args.run, args.index) if args.run else build_example(Path(tmp))
        if args.run:  # adds go into a copy
            import shutil

            index = Path(shutil.copytree(index, Path(tmp) / "index", ignore=shutil.ignore_patterns("cases")))
        server = Server(run, index, ["--processes", str(args.processes)], key=key, preexec_fn=server_files)
        try:
            status, body, _ = request(server, "GET", "/healthz")
            import json

            health = json.loads(body)
            label = health["model"]["classes"][0]
            small = query_images(32, 1)[0]
            print("double submit …", flush=True)
            race = double_submit(server, args.rounds, label)
            print(race, "\nbig uploads …", flush=True)
            memory = big_uploads(server, args.clients, args.uploads, small)
            print(memory, "\nidle connections …", flush=True)
            idle = idle_connections(server, args.idle)
            print(idle, flush=True)
            budget = request(server, "GET", "/healthz")[1]
            decode = json.loads(budget)["limits"]["decode"]
        finally:
            server.stop()

    def text(value) -> str:
        return f"{value:.0f}" if isinstance(value, float) else str(value)

    measured = {"double submit": race, "49-megapixel uploads": memory, "idle connections": idle}
    lines = [
        {"measurement": name, "result": "; ".join(f"{k} = {text(v)}" for k, v in values.items())}
        for name, values in measured.items()
    ]
    caption = (
        f"`{command_line('benchmarks.service_limits', argv)}` — {machine_description()}; load average "
        f"{load_average[0]:.1f} / {load_average[1]:.1f} / {load_average[2]:.1f} when it started (other "
        f"jobs shared the cores). Server: `rmnet serve --processes {args.processes}` with an API key and its "
        f"defaults (decode budget {decode['budget_megapixels']:g} megapixels per process; the most decoded "
        f"at once in the last process asked: {decode['peak_megapixels']:g}), open-file limit "
        f"{args.server_files}; "
        "clients on the same machine, loopback only. Lost images and 'other' answers must be 0; /healthz "
        "must answer 200 while the idle connections are held."
    )
    save_table(pd.DataFrame(lines), args.out, "service_limits", caption)
    print(f"\n{caption}\nwritten: {args.out / 'service_limits.md'}")


if __name__ == "__main__":
    main()

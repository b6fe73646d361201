"""Load on the CAD service (`rmnet serve`) over loopback: throughput, latency, errors, memory.

    .venv/bin/python -m benchmarks.service_load [--run RUN --index INDEX] [--requests 1000]
                                                [--clients 1 4 8] [--time-cap 60]

Starts ``rmnet serve`` as a separate process on a free 127.0.0.1 port (the deployed command, with
its defaults unless ``--serve-option`` says otherwise) and sends it, for each endpoint (predict,
search) and each number of concurrent clients, a fixed number of requests (each client a thread
with its own keep-alive ``http.client`` connection, uploading one of 16 generated lesion images in
turn). A configuration stops when its requests are done or after ``--time-cap`` seconds; every
configuration runs ``--repeats`` times, interleaved (the table gives the median throughput); the
server is stopped at the end. Bounded by construction: nothing here runs forever or leaves loopback.

Measured per configuration: requests/s (completed requests over the wall time of the run), p50/p95/
p99 latency, errors (anything but HTTP 200, and transport failures: must be 0), the server's CPU
time and resident memory after it (and its peak; all its processes together), and how many
requests an engine ran per forward pass. The goal: throughput with 8 clients at least 1.5× that
with 1 client.

With ``--baseline-src DIR`` (another checkout's ``src``, e.g. the commit before a change), a second
``rmnet serve`` runs that code on the same run and index, and every configuration is measured on
both, back to back, in alternating order: the ratio of their throughputs is the comparison that a
shared machine's changing load does not blur (``service_load_compare.md``).

Without --run/--index, it first builds what ``make demo`` serves, at the demo's sizes: generated
lesions (32 px, 6 classes), the RM small CNN (width 16) with a 16-bit hash layer, one epoch (the
weights do not change the cost), and the index of its training images, in a temporary folder.
Writes results/service_load/service_load.{csv,md}.
"""

from __future__ import annotations

import argparse
import http.client
import io
import os
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from urllib.parse import urlsplit

import numpy as np
import pandas as pd

from benchmarks import command_line, machine_description, save_table

ENDPOINTS = {"predict": "/api/predict", "search": "/api/search?k=10"}


def build_example(root: Path) -> tuple[Path, Path]:
    """The demo's served model and index at the demo's sizes, trained for one epoch."""
    from rmnet.config import TrainConfig
    from rmnet.data import make_lesion_dataset
    from rmnet.retrieval.search import build_index
    from rmnet.train import train

    data = make_lesion_dataset(root / "data", n_per_class=40, size=32, num_classes=6)
    config = TrainConfig(
        arch="small_cnn",
        rm="all",
        hash_bits=16,
        model_options={"width": 16},
        data=str(data),
        image_size=28,
        resize=32,
        epochs=1,
        device="cpu",
        workers=0,
    )
    train(config, root / "run", progress=False)
    build_index(root / "run", root / "index")
    return root / "run", root / "index"


def query_images(size: int, n: int = 16) -> list[bytes]:
    from PIL import Image

    from rmnet.data.lesions import LESION_KINDS, render_lesion

    rng = np.random.default_rng(0)
    images = []
    for i in range(n):
        out = io.BytesIO()
        Image.fromarray(render_lesion(LESION_KINDS[i % len(LESION_KINDS)], size, rng)).save(out, "PNG")
        images.append(out.getvalue())
    return images


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def process_tree(pid: int) -> list[int]:
    """``pid`` and its descendants (the serving processes of ``rmnet serve``), from Linux /proc."""
    tree, i = [pid], 0
    while i < len(tree):
        try:
            for task in os.listdir(f"/proc/{tree[i]}/task"):
                with open(f"/proc/{tree[i]}/task/{task}/children") as children:
                    tree += [int(child) for child in children.read().split()]
        except FileNotFoundError:
            pass
        i += 1
    return tree


def cpu_seconds(pid: int) -> float:
    """User + system CPU time so far of process ``pid`` and its descendants, all their threads."""
    total = 0.0
    for member in process_tree(pid):
        try:
            with open(f"/proc/{member}/stat") as stat:
                fields = stat.read().rpartition(")")[2].split()
        except FileNotFoundError:
            continue
        total += (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
    return total


def memory_kb(pid: int) -> tuple[int, int]:
    """(resident, peak resident) memory in KiB of process ``pid`` and its descendants, summed."""
    totals = {"VmRSS": 0, "VmHWM": 0}
    for member in process_tree(pid):
        try:
            with open(f"/proc/{member}/status") as status:
                for line in status:
                    key, _, value = line.partition(":")
                    if key in totals:
                        totals[key] += int(value.split()[0])
        except FileNotFoundError:
            continue
    return totals["VmRSS"], totals["VmHWM"]


class Server:
    """``rmnet serve`` in a child process, on a free loopback port, stopped with Ctrl-C (SIGINT)."""

    def __init__(
        self,
        run: Path,
        index: Path,
        extra: list[str],
        *,
        src: Path | None = None,
        key: str = "",
        preexec_fn=None,
    ) -> None:
        import httpx

        self.port = free_port()
        self.processes = 1  # serving processes (engines() reads it from /healthz)
        self.url = f"http://127.0.0.1:{self.port}"
        self.headers = {"Authorization": f"Bearer {key}"} if key else {}
        command = [sys.executable, "-m", "rmnet", "serve", str(run), "--index", str(index)]
        command += ["--port", str(self.port), "--log-level", "warning", *extra]
        self.log = tempfile.TemporaryFile(mode="w+")
        env = dict(os.environ, RMNET_API_KEY=key)
        if src is not None:  # another tree's code (--baseline-src)
            env["PYTHONPATH"] = str(Path(src).resolve())
        self.process = subprocess.Popen(
            command, stdout=self.log, stderr=subprocess.STDOUT, env=env, preexec_fn=preexec_fn
        )
        deadline = time.monotonic() + 120
        while True:
            try:
                httpx.get(self.url + "/healthz", timeout=5, headers=self.headers).raise_for_status()
                return
            except httpx.HTTPError:
                if self.process.poll() is not None or time.monotonic() > deadline:
                    self.stop()
                    self.log.seek(0)
                    raise RuntimeError(f"rmnet serve did not start:\n{self.log.read()}") from None
                time.sleep(0.2)

    def engines(self) -> dict[int, dict]:
        """The engine of every serving process, by process id: /healthz over new connections (the
        kernel hands each to one process) until every process has answered, 50 tries at most."""
        import httpx

        found: dict[int, dict] = {}
        for _ in range(50):
            headers = {"Connection": "close", **self.headers}
            health = httpx.get(self.url + "/healthz", timeout=30, headers=headers).json()
            found[health["process"]["pid"]] = health["engine"]
            self.processes = health["process"]["processes"]
            if len(found) >= self.processes:
                break
        return found

    def engine_requests(self) -> dict[int, tuple[int, int]]:
        return {pid: (engine["requests"], engine["batches"]) for pid, engine in self.engines().items()}

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGINT)
            try:
                self.process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()


def multipart(image: bytes, name: str) -> tuple[bytes, str]:
    """(body, content type) of a form with one file field ``image``, encoded once per image."""
    boundary = "rmnet-service-load-boundary"
    body = (
        (
            f'--{boundary}\r\nContent-Disposition: form-data; name="image"; filename="{name}"\r\n'
            f"Content-Type: image/png\r\n\r\n"
        ).encode()
        + image
        + f"\r\n--{boundary}--\r\n".encode()
    )
    return body, f"multipart/form-data; boundary={boundary}"


def load(url: str, images: list[bytes], clients: int, requests: int, time_cap: float) -> dict:
    """``requests`` POSTs shared by ``clients`` threads (stop early after ``time_cap`` seconds).

    Each client is a thread with one keep-alive connection (``http.client``: a lean load generator,
    so that the clients, which share the machine's cores with the server, take as little as
    possible of them); the request bodies are encoded once, before the clock starts.
    """
    parts = urlsplit(url)
    path = parts.path + (f"?{parts.query}" if parts.query else "")
    bodies = [multipart(image, f"lesion{i}.png") for i, image in enumerate(images)]
    lock = threading.Lock()
    issued = 0
    latencies: list[float] = []
    errors: list[str] = []
    deadline = time.monotonic() + time_cap

    def client() -> None:
        nonlocal issued
        connection = http.client.HTTPConnection(parts.hostname, parts.port, timeout=60)
        try:
            while True:
                with lock:
                    if issued >= requests or time.monotonic() > deadline:
                        return
                    i = issued
                    issued += 1
                body, content_type = bodies[i % len(bodies)]
                started = time.perf_counter()
                try:
                    connection.request("POST", path, body=body, headers={"Content-Type": content_type})
                    response = connection.getresponse()
                    payload = response.read()
                    elapsed = time.perf_counter() - started
                    with lock:
                        latencies.append(elapsed)
                        if response.status != 200:
                            errors.append(f"HTTP {response.status}: {payload[:200]!r}")
                except (OSError, http.client.HTTPException) as err:
                    connection.close()
                    connection = http.client.HTTPConnection(parts.hostname, parts.port, timeout=60)
                    with lock:
                        errors.append(f"{type(err).__name__}: {err}")
        finally:
            connection.close()

    threads = [threading.Thread(target=client) for _ in range(clients)]
    started = time.perf_counter()
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    wall = time.perf_counter() - started
    ms = np.array(latencies) * 1000
    return {
        "requests": len(latencies) + len([e for e in errors if not e.startswith("HTTP")]),
        "seconds": wall,
        "requests_per_s": len(latencies) / wall,
        "p50_ms": float(np.percentile(ms, 50)) if len(ms) else float("nan"),
        "p95_ms": float(np.percentile(ms, 95)) if len(ms) else float("nan"),
        "p99_ms": float(np.percentile(ms, 99)) if len(ms) else float("nan"),
        "errors": len(errors),
        "first_error": errors[0] if errors else "",
        "stopped_by_time_cap": len(latencies) + len(errors) < requests,
        "latencies_ms": ms,
    }


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--run", type=Path, help="run folder to serve (default: build the demo's model)")
    parser.add_argument("--index", type=Path, help="its index (with --run)")
    parser.add_argument("--requests", type=int, default=1000, help="requests per endpoint and client count")
    parser.add_argument("--clients", type=int, nargs="+", default=[1, 4, 8], help="concurrent clients")
    parser.add_argument("--endpoints", nargs="+", default=list(ENDPOINTS), choices=list(ENDPOINTS))
    parser.add_argument("--repeats", type=int, default=5, help="interleaved repetitions of every setting")
    parser.add_argument("--time-cap", type=float, default=60.0, help="seconds at most per configuration")
    parser.add_argument("--image-px", type=int, default=32, help="side of the uploaded lesion images")
    parser.add_argument("--serve-option", action="append", default=[], help="extra `rmnet serve` option")
    parser.add_argument("--out", type=Path, default=Path("results/service_load"))
    parser.add_argument(
        "--baseline-src",
        type=Path,
        help="another tree's src folder: serve it too and measure both back to back (ratio table)",
    )
    args = parser.parse_args(argv)
    if (args.run is None) != (args.index is None):
        parser.error("--run and --index go together")

    load_average = os.getloadavg()
    with tempfile.TemporaryDirectory() as tmp:
        run, index = (args.run, args.index) if args.run else build_example(Path(tmp))
        images = query_images(args.image_px)
        options = [o for option in args.serve_option for o in option.split()]
        servers = {"this tree": Server(run, index, options)}
        runs: list[dict] = []
        try:
            if args.baseline_src:
                servers["baseline"] = Server(run, index, options, src=args.baseline_src)
            for server in servers.values():
                for endpoint in args.endpoints:  # warm-up
                    load(server.url + ENDPOINTS[endpoint], images, 2, 20, args.time_cap)
            engine = next(iter(servers["this tree"].engines().values()))
            engine["processes"] = servers["this tree"].processes
            for repeat in range(args.repeats):  # interleaved: a slow spell of the machine hits every setting
                for endpoint in args.endpoints:
                    for clients in args.clients:
                        order = list(servers.items())
                        order = order[::-1] if repeat % 2 else order  # which goes first alternates
                        for name, server in order:
                            runs.append({"server": name, **measure(server, endpoint, clients, images, args)})
                            print(f"repeat {repeat + 1} ({name}): {describe(runs[-1])}", flush=True)
        finally:
            for server in servers.values():
                server.stop()
    mine = [run for run in runs if run["server"] == "this tree"]
    rows = summarise(mine)
    write_results(pd.DataFrame(rows), args, argv, pd.DataFrame(runs), engine, load_average)
    if args.baseline_src:
        write_comparison(runs, args, argv, load_average)


def measure(
    server: Server, endpoint: str, clients: int, images: list[bytes], args: argparse.Namespace
) -> dict:
    """One configuration: the load, what the engine did meanwhile, the server's memory after it."""
    before = server.engine_requests()
    server_cpu, client_cpu = cpu_seconds(server.process.pid), time.process_time()
    result = load(server.url + ENDPOINTS[endpoint], images, clients, args.requests, args.time_cap)
    server_cpu, client_cpu = cpu_seconds(server.process.pid) - server_cpu, time.process_time() - client_cpu
    after = server.engine_requests()
    both = before.keys() & after.keys()  # processes that answered before and after
    requests = sum(after[pid][0] - before[pid][0] for pid in both)
    batches = sum(after[pid][1] - before[pid][1] for pid in both)
    rss, peak = memory_kb(server.process.pid)
    done = max(1, result["requests"])
    return {
        "endpoint": endpoint,
        "clients": clients,
        **result,
        "requests_per_forward": requests / max(1, batches),
        "server_cpu_ms_per_request": 1000 * server_cpu / done,
        "client_cpu_ms_per_request": 1000 * client_cpu / done,
        "server_rss_mb": rss / 1024,
        "server_peak_rss_mb": peak / 1024,
    }


def describe(row: dict) -> str:
    r = row
    return (
        f"{r['endpoint']:8} {r['clients']} clients: {r['requests_per_s']:.1f} req/s, "
        f"p50 {r['p50_ms']:.1f} ms, p99 {r['p99_ms']:.1f} ms, errors {r['errors']}, "
        f"{r['requests_per_forward']:.2f} requests per forward pass, server RSS {r['server_rss_mb']:.0f} MB"
    )


def summarise(runs: list[dict]) -> list[dict]:
    """One row per (endpoint, clients): the median throughput of the repeats, latency percentiles
    over all their requests, all their errors, the largest memory."""
    rows = []
    keys = dict.fromkeys((run["endpoint"], run["clients"]) for run in runs)
    for endpoint, clients in keys:
        mine = [run for run in runs if (run["endpoint"], run["clients"]) == (endpoint, clients)]
        ms = np.concatenate([run["latencies_ms"] for run in mine])
        rows.append(
            {
                "endpoint": endpoint,
                "clients": clients,
                "repeats": len(mine),
                "requests": sum(run["requests"] for run in mine),
                "requests_per_s": float(np.median([run["requests_per_s"] for run in mine])),
                "requests_per_s_min": min(run["requests_per_s"] for run in mine),
                "requests_per_s_max": max(run["requests_per_s"] for run in mine),
                "p50_ms": float(np.percentile(ms, 50)),
                "p95_ms": float(np.percentile(ms, 95)),
                "p99_ms": float(np.percentile(ms, 99)),
                "errors": sum(run["errors"] for run in mine),
                "requests_per_forward": float(np.mean([run["requests_per_forward"] for run in mine])),
                "server_cpu_ms_per_request": float(
                    np.median([run["server_cpu_ms_per_request"] for run in mine])
                ),
                "client_cpu_ms_per_request": float(
                    np.median([run["client_cpu_ms_per_request"] for run in mine])
                ),
                "server_rss_mb": max(run["server_rss_mb"] for run in mine),
                "server_peak_rss_mb": max(run["server_peak_rss_mb"] for run in mine),
                "time_cap_hit": any(run["stopped_by_time_cap"] for run in mine),
                "first_error": next((run["first_error"] for run in mine if run["first_error"]), ""),
            }
        )
    return rows


def write_results(
    table: pd.DataFrame,
    args: argparse.Namespace,
    argv: list[str] | None,
    runs: pd.DataFrame,
    engine: dict,
    load: tuple[float, float, float],
) -> None:
    speedups = []
    for endpoint, group in table.groupby("endpoint", sort=False):
        by_clients = dict(zip(group["clients"], group["requests_per_s"], strict=True))
        base = by_clients.get(1)
        for clients, rate in by_clients.items():
            if base and clients != 1:
                speedups.append(f"{endpoint}: {rate / base:.2f}× at {clients} clients")
    shown = table.drop(columns=["first_error"]).rename(
        columns={
            "requests_per_s": "requests/s",
            "requests_per_forward": "requests per forward pass",
            "server_cpu_ms_per_request": "server CPU ms/request",
            "client_cpu_ms_per_request": "client CPU ms/request",
            "server_rss_mb": "server RSS (MB)",
            "server_peak_rss_mb": "server peak RSS (MB)",
            "requests_per_s_min": "slowest repeat",
            "requests_per_s_max": "fastest repeat",
            "time_cap_hit": "time cap hit",
        }
    )
    timings = engine["forward_ms_by_batch"]  # measured by the process that checked the service
    timings = f"; ms per pass by batch size: {timings}" if timings else ""
    options = " ".join(args.serve_option)
    served = f"`rmnet serve {options}`" if options else "`rmnet serve` with its defaults for this machine"
    caption = (
        f"`{command_line('benchmarks.service_load', argv)}` — {machine_description()}; other jobs shared the "
        f"cores while it ran (load average {load[0]:.1f} / {load[1]:.1f} / {load[2]:.1f} over 1 / 5 / 15 min "
        f"when it started). Server: {served}: {engine['processes']} process(es), each with "
        f"{engine['workers']} inference worker(s) × {engine['torch_threads']} torch thread(s), forward "
        f"passes of {engine['forward_batch']} images (the fastest per image, measured at start-up{timings}). "
        "Clients: threads of another process on the same machine "
        "(http.client, keep-alive), loopback only, "
        f"{args.image_px}-px PNG uploads. "
        f"Throughput relative to 1 client: {'; '.join(speedups)}. Errors must be 0."
    )
    save_table(shown, args.out, "service_load", caption)
    per_run = runs.drop(columns=["latencies_ms"])
    save_table(per_run, args.out, "service_load_runs", caption + " Every repeat, in the order run.")
    print(f"\n{caption}\nwritten: {args.out / 'service_load.md'}")


def write_comparison(runs: list[dict], args: argparse.Namespace, argv: list[str] | None, load) -> None:
    """This tree against the baseline, measured back to back: the median of the repeats' ratios."""
    rows = []
    keys = dict.fromkeys((run["endpoint"], run["clients"]) for run in runs)
    for endpoint, clients in keys:
        pair = {
            name: [r for r in runs if (r["server"], r["endpoint"], r["clients"]) == (name, endpoint, clients)]
            for name in ("this tree", "baseline")
        }
        ratios = [
            a["requests_per_s"] / b["requests_per_s"]
            for a, b in zip(pair["this tree"], pair["baseline"], strict=True)
        ]
        rows.append(
            {
                "endpoint": endpoint,
                "clients": clients,
                "this tree requests/s": float(np.median([r["requests_per_s"] for r in pair["this tree"]])),
                "baseline requests/s": float(np.median([r["requests_per_s"] for r in pair["baseline"]])),
                "ratio (median of repeats)": float(np.median(ratios)),
                "ratio range": f"{min(ratios):.2f}–{max(ratios):.2f}",
                "this tree p50 ms": float(np.median([r["p50_ms"] for r in pair["this tree"]])),
                "baseline p50 ms": float(np.median([r["p50_ms"] for r in pair["baseline"]])),
                "errors (this tree / baseline)": f"{sum(r['errors'] for r in pair['this tree'])} / "
                f"{sum(r['errors'] for r in pair['baseline'])}",
            }
        )
    caption = (
        f"`{command_line('benchmarks.service_load', argv)}` — {machine_description()}; load average "
        f"{load[0]:.1f} / {load[1]:.1f} / {load[2]:.1f} when it started. Two `rmnet serve` on the same run "
        f"and index: this tree and {args.baseline_src} (baseline), each configuration measured on both back "
        "to back, which one first alternating by repeat; a ratio over 1: this tree is faster."
    )
    save_table(pd.DataFrame(rows), args.out, "service_load_compare", caption)
    print(f"\n{caption}\nwritten: {args.out / 'service_load_compare.md'}")


if __name__ == "__main__":
    main()

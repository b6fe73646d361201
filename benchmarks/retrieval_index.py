"""The similar-case index at 10k, 100k and 1M codes: build time, single-query latency, memory.

    .venv/bin/python -m benchmarks.retrieval_index [--sizes 10000 100000 1000000] [--queries 200]

Codes are 16-bit (the paper's L), float32. Two databases of each size: "random" (Gaussian codes:
every sign pattern equally likely, few Hamming ties) and "clustered" (8 class centres plus noise,
as trained hashing codes are: most codes of a class share one sign pattern, so Hamming ties are
huge and the deterministic tie-break has the most work). Measured, side by side in one run:

- FAISS alone: IndexFlatIP on L2-normalised codes (cosine) and IndexBinaryFlat on packed signs
  (Hamming): add time, top-10 latency of one query, bytes of the serialised index, RSS growth;
- CodeIndex (rmnet.retrieval.index): build = normalise + FAISS + one SQLite row per code + an
  atomic save to disk; top-10 latency including tie-breaking and reading the rows from SQLite
  (CodeIndex runs FAISS on one thread per query: the FAISS rows show why);
- for scale, the time to embed one 224-px image with ResNet18 (plain and RM 5-8) on this CPU.

Writes results/retrieval_index/index.{md,csv} and embedding.{md,csv}.
"""

from __future__ import annotations

import argparse
import os
import statistics
import tempfile
import time
from pathlib import Path

import faiss
import numpy as np
import pandas as pd
import torch

import rmnet
from benchmarks import machine_description, save_table
from rmnet.metrics.retrieval import normalize_codes
from rmnet.retrieval.codes import pack_codes
from rmnet.retrieval.index import CodeIndex, IndexItem, ModelIdentity

BITS, K, CLASSES = 16, 10, 8


def make_codes(kind: str, n: int, rng: np.random.Generator) -> np.ndarray:
    if kind == "random":
        return rng.standard_normal((n, BITS), dtype=np.float32)
    centres = rng.choice([-1.0, 1.0], size=(CLASSES, BITS)).astype(np.float32)
    return centres[rng.integers(0, CLASSES, n)] + 0.3 * rng.standard_normal((n, BITS), dtype=np.float32)


def rss_bytes() -> int:
    """Resident memory of this process now (Linux /proc)."""
    with open("/proc/self/statm") as statm:
        return int(statm.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def latencies(search, queries: np.ndarray) -> tuple[float, float]:
    """Median and 95th-percentile milliseconds of ``search(one_query)`` over the queries."""
    for query in queries[:5]:  # warm-up
        search(query[None])
    times = []
    for query in queries:
        start = time.perf_counter()
        search(query[None])
        times.append(1e3 * (time.perf_counter() - start))
    return statistics.median(times), float(np.percentile(times, 95))


def timed_with_threads(search, queries: np.ndarray) -> list[tuple[int, float, float]]:
    """(FAISS threads, median ms, p95 ms) with one thread and with one per core."""
    results = []
    for threads in sorted({1, os.cpu_count() or 1}):
        faiss.omp_set_num_threads(threads)
        results.append((threads, *latencies(search, queries)))
    faiss.omp_set_num_threads(os.cpu_count() or 1)
    return results


def faiss_rows(n: int, kind: str, codes: np.ndarray, queries: np.ndarray) -> list[dict]:
    rows = []
    for metric in ("cosine", "hamming"):
        before, start = rss_bytes(), time.perf_counter()
        if metric == "cosine":
            index = faiss.IndexFlatIP(BITS)
            index.add(normalize_codes(codes))
            prepared = normalize_codes(queries)
        else:
            index = faiss.IndexBinaryFlat(BITS)
            index.add(pack_codes(codes))
            prepared = pack_codes(queries)
        build = time.perf_counter() - start
        grown = rss_bytes() - before
        serialised = (
            faiss.serialize_index(index) if metric == "cosine" else faiss.serialize_index_binary(index)
        )
        layer = f"FAISS {type(index).__name__}"
        for threads, median, p95 in timed_with_threads(lambda q, index=index: index.search(q, K), prepared):
            rows.append(_row(n, kind, layer, metric, threads, build, median, p95, serialised.nbytes, grown))
        del index
    return rows


def code_index_rows(n: int, kind: str, codes: np.ndarray, queries: np.ndarray, root: Path) -> list[dict]:
    model = ModelIdentity("benchmark", BITS, "random codes")
    items = [IndexItem(f"img{i:07d}", i % CLASSES) for i in range(n)]
    before, start = rss_bytes(), time.perf_counter()
    index = CodeIndex.create(root, model=model, class_names=[f"c{c}" for c in range(CLASSES)])
    index.add(codes, items, model_fingerprint="benchmark")
    build = time.perf_counter() - start
    on_disk = sum(p.stat().st_size for p in root.iterdir())
    rows = []
    for metric in ("cosine", "hamming"):  # CodeIndex runs FAISS on one thread per query
        median, p95 = latencies(
            lambda q, metric=metric: index.search(q, K, model_fingerprint="benchmark", metric=metric), queries
        )
        grown = rss_bytes() - before  # after the first Hamming search: includes the derived binary index
        rows.append(
            _row(n, kind, "CodeIndex (FAISS + SQLite)", metric, 1, build, median, p95, on_disk, grown)
        )
    index.close()
    return rows


def _row(n, kind, layer, metric, threads, build, median, p95, size, grown) -> dict:
    return {
        "codes": n,
        "database": kind,
        "index": layer,
        "ranking": metric,
        "FAISS threads": threads,
        "build s": build,
        "query median ms": median,
        "query p95 ms": p95,
        "index MB": size / 2**20,
        "RSS growth MB": grown / 2**20,
    }


def embedding_rows(repeats: int) -> list[dict]:
    """Median and fastest ms to embed one 224-px image (batch 1, eval mode) with ResNet18, plain and
    RM 5-8, on one torch thread and on one per core.

    The fastest repetition is the least disturbed by other processes on a shared CPU.
    """
    rows, default_threads = [], torch.get_num_threads()
    image = torch.randn(1, 3, 224, 224)
    for rm in (None, "5-8"):
        model = rmnet.create_model("resnet18", num_classes=8, rm=rm, hash_bits=BITS).eval()
        for threads in sorted({1, os.cpu_count() or 1}):
            torch.set_num_threads(threads)
            with torch.inference_mode():
                for _ in range(3):
                    model.embed(image)
                times = []
                for _ in range(repeats):
                    start = time.perf_counter()
                    model.embed(image)
                    times.append(1e3 * (time.perf_counter() - start))
            rows.append(
                {
                    "model": f"resnet18{' RM ' + rm if rm else ''}, 16-bit hash layer",
                    "torch threads": threads,
                    "embed one image, median ms": statistics.median(times),
                    "fastest ms": min(times),
                }
            )
    torch.set_num_threads(default_threads)
    return rows


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--sizes", type=int, nargs="+", default=[10_000, 100_000, 1_000_000], help="database sizes"
    )
    parser.add_argument("--queries", type=int, default=200, help="single queries timed per configuration")
    parser.add_argument("--embed-repeats", type=int, default=20, help="timed embeddings per model")
    parser.add_argument("--out", type=Path, default=Path("results/retrieval_index"), help="output folder")
    args = parser.parse_args(argv)
    rng = np.random.default_rng(0)
    rows = []
    with tempfile.TemporaryDirectory() as scratch:
        for n in args.sizes:
            for kind in ("random", "clustered"):
                codes, queries = make_codes(kind, n, rng), make_codes(kind, args.queries, rng)
                rows += faiss_rows(n, kind, codes, queries)
                rows += code_index_rows(n, kind, codes, queries, Path(scratch) / f"{kind}-{n}")
                print(pd.DataFrame(rows[-6:]).to_string(index=False), flush=True)
    caption = (
        f"Top-{K} search over {BITS}-bit codes: build time, single-query latency (median and 95th "
        f"percentile of {args.queries} queries), index size (FAISS: serialised bytes; CodeIndex: the folder "
        f"on disk) and resident-memory growth. `python -m benchmarks.retrieval_index` "
        f"({machine_description()}; load average {os.getloadavg()[0]:.1f} at the end)."
    )
    save_table(pd.DataFrame(rows), args.out, "index", caption, floatfmt=".3g")
    embedding = pd.DataFrame(embedding_rows(args.embed_repeats))
    save_table(
        embedding,
        args.out,
        "embedding",
        f"Embedding one 224-px query image, batch 1 ({machine_description()}).",
    )
    print((args.out / "index.md").read_text())
    print((args.out / "embedding.md").read_text())


if __name__ == "__main__":
    main()

"""The similar-case index: build time, single-query latency and memory, 10k to 10M codes.

    .venv/bin/python -m benchmarks.retrieval_index [--sizes 10000 100000 1000000] [--queries 200]
                                                   [--large-sizes 1000000 10000000]

Codes are 16-bit (the paper's L), float32. Two databases of each size: "random" (Gaussian codes:
every sign pattern equally likely, few Hamming ties) and "clustered" (8 class centres plus noise,
as trained hashing codes are: most codes of a class share one sign pattern, so Hamming ties are
huge and the deterministic tie-break has the most work). Measured, side by side in one run:

- FAISS alone: IndexFlatIP on L2-normalised codes (cosine) and IndexBinaryFlat on packed signs
  (Hamming): add time, top-10 latency of one query, bytes of the serialised index, RSS growth;
- CodeIndex (rmnet.retrieval.index): build = normalise + FAISS + one SQLite row per code + an
  atomic save to disk; top-10 latency including the exact tie-break and reading the rows from
  SQLite (CodeIndex runs FAISS on one thread per query: the FAISS rows show why);
- exact Hamming top-10 over 1M and 10M codes (``--large-sizes``), one thread: the code-bucket
  index CodeIndex uses for codes of at most 16 bits, faiss.IndexBinaryFlat with CodeIndex's tie
  probe (its structure for longer codes), faiss.IndexBinaryHash (FAISS's own bucket index), and
  CodeIndex end to end. "exact" is true when every query's top-10 rows equal the flat scan's,
  ties to the lower row (rmnet.metrics.retrieval.rank_database's rule);
- for scale, the time to embed one 224-px image with ResNet18 (plain and RM 5-8) on this CPU.

Writes results/retrieval_index/index.{md,csv}, hamming16.{md,csv} and embedding.{md,csv}.
"""

from __future__ import annotations

import argparse
import os
import statistics
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path

import faiss
import numpy as np
import pandas as pd
import torch

import rmnet
from benchmarks import command_line, machine_description, save_table
from rmnet.metrics.retrieval import normalize_codes, pack_codes
from rmnet.retrieval.index import CodeIndex, IndexItem, ModelIdentity, _HammingBuckets, _HammingFlat

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
    """(FAISS threads, median ms, p95 ms) with one thread and with one per core; the thread's
    setting is restored afterwards (CodeIndex sets it to one once per thread and then keeps it)."""
    results, before = [], faiss.omp_get_max_threads()
    for threads in sorted({1, os.cpu_count() or 1}):
        faiss.omp_set_num_threads(threads)
        results.append((threads, *latencies(search, queries)))
    faiss.omp_set_num_threads(before)
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


class Items(Sequence):
    """n IndexItems made when asked for: a database of millions without millions of objects."""

    def __init__(self, n: int) -> None:
        self.n = n

    def __len__(self) -> int:
        return self.n

    def __getitem__(self, i):
        if isinstance(i, slice):
            return [self[j] for j in range(*i.indices(self.n))]
        if not 0 <= i < self.n:
            raise IndexError(i)
        return IndexItem(f"img{i:08d}", i % CLASSES)


def build_code_index(codes: np.ndarray, root: Path) -> tuple[CodeIndex, float]:
    """A CodeIndex of ``codes`` in ``root`` and the seconds it took to build and save it."""
    model = ModelIdentity("benchmark", BITS, "random codes")
    start = time.perf_counter()
    index = CodeIndex.create(root, model=model, class_names=[f"c{c}" for c in range(CLASSES)])
    index.add(codes, Items(len(codes)), model_fingerprint="benchmark")
    return index, time.perf_counter() - start


def code_index_rows(n: int, kind: str, codes: np.ndarray, queries: np.ndarray, root: Path) -> list[dict]:
    before = rss_bytes()
    index, build = build_code_index(codes, root)
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


def flat_scan_top(keys: np.ndarray, query_key: int, k: int) -> np.ndarray:
    """The reference: exact top-k rows by (Hamming distance, row) over all codes, numpy."""
    distances = np.bitwise_count(keys ^ np.uint16(query_key))
    counts = np.cumsum(np.bincount(distances, minlength=BITS + 1))
    bound = int(np.searchsorted(counts, k))  # the k-th nearest is at this distance
    closer = np.flatnonzero(distances < bound)
    tied = np.flatnonzero(distances == bound)[: k - len(closer)]
    return np.concatenate([closer[np.lexsort((closer, distances[closer]))], tied])


def large_rows(n: int, kind: str, rng: np.random.Generator, n_queries: int, root: Path) -> list[dict]:
    """Exact Hamming top-10 over n 16-bit codes, one query at a time on one thread."""
    codes, queries = make_codes(kind, n, rng), make_codes(kind, n_queries, rng)
    weights = 1 << np.arange(BITS - 1, -1, -1)
    keys = ((codes > 0) @ weights).astype(np.uint16)
    query_keys = ((queries > 0) @ weights).tolist()
    reference = [flat_scan_top(keys, q, K) for q in query_keys]
    bits, query_bits = codes > 0, queries > 0
    rows = []

    def row(method, search, memory, build, grown=None):
        """``search(i)``: the top-10 rows of query i."""
        for i in range(5):  # warm-up
            search(i)
        times, exact, same_distances = [], True, True
        for i, expected in enumerate(reference):
            start = time.perf_counter()
            found = search(i)
            times.append(1e3 * (time.perf_counter() - start))
            exact &= np.array_equal(found, expected)
            distance = lambda rows, i=i: np.sort(np.bitwise_count(keys[rows] ^ np.uint16(query_keys[i])))  # noqa: E731
            same_distances &= np.array_equal(distance(found), distance(expected))
        median, p95 = statistics.median(times), float(np.percentile(times, 95))
        rows.append(
            {
                "codes": n,
                "database": kind,
                "method": method,
                "query median ms": median,
                "query p95 ms": p95,
                "memory MB": memory / 2**20,
                "RSS growth MB": (grown if grown is not None else memory) / 2**20,
                "build s": build,
                "exact": bool(exact),
                "exact distances": bool(same_distances),
            }
        )
        print(pd.DataFrame(rows[-1:]).to_string(index=False, header=len(rows) == 1), flush=True)

    searchers = {
        "code buckets (CodeIndex, <= 16 bits)": _HammingBuckets,
        "FAISS IndexBinaryFlat + tie probe (CodeIndex, > 16 bits)": _HammingFlat,
    }
    for label, searcher_class in searchers.items():
        start = time.perf_counter()
        searcher = searcher_class(bits)
        build = time.perf_counter() - start
        row(label, lambda i, searcher=searcher: searcher.nearest(queries[i], K)[0], searcher.nbytes, build)
        del searcher

    for nflip in (2,):
        start = time.perf_counter()
        hashed = faiss.IndexBinaryHash(BITS, BITS)
        hashed.nflip = nflip
        hashed.add(np.packbits(bits, axis=1))
        build = time.perf_counter() - start
        packed = np.packbits(query_bits, axis=1)
        size = faiss.serialize_index_binary(hashed).nbytes
        row(
            f"FAISS IndexBinaryHash (b=16, nflip={nflip}), raw",
            lambda i, hashed=hashed, packed=packed: hashed.search(packed[i : i + 1], K)[1][0],
            size,
            build,
        )
        del hashed

    before = rss_bytes()
    index, build = build_code_index(codes, root / f"large-{kind}-{n}")
    index.search(queries[:1], K, model_fingerprint="benchmark", metric="hamming")  # derives the buckets
    memory = index._current.vectors.ntotal * BITS * 4 + index._current.hamming().nbytes
    grown = rss_bytes() - before

    def end_to_end(i):
        hits = index.search(queries[i : i + 1], K, model_fingerprint="benchmark", metric="hamming")[0]
        return np.array([hit.row for hit in hits])

    row("CodeIndex.search, Hamming (buckets + SQLite rows)", end_to_end, memory, build, grown)
    index.close()
    return rows


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
    parser.add_argument(
        "--large-sizes",
        type=int,
        nargs="+",
        default=[1_000_000, 10_000_000],
        help="database sizes of the exact-Hamming comparison (hamming16 table)",
    )
    parser.add_argument("--embed-repeats", type=int, default=20, help="timed embeddings per model")
    parser.add_argument(
        "--parts",
        nargs="+",
        choices=("index", "hamming16", "embedding"),
        default=["index", "hamming16", "embedding"],
        help="tables to measure (each is written on its own)",
    )
    parser.add_argument("--out", type=Path, default=Path("results/retrieval_index"), help="output folder")
    args = parser.parse_args(argv)
    command = command_line("benchmarks.retrieval_index", argv)
    with tempfile.TemporaryDirectory() as scratch:
        if "index" in args.parts:
            rng, rows = np.random.default_rng(0), []
            for n in args.sizes:
                for kind in ("random", "clustered"):
                    codes, queries = make_codes(kind, n, rng), make_codes(kind, args.queries, rng)
                    rows += faiss_rows(n, kind, codes, queries)
                    rows += code_index_rows(n, kind, codes, queries, Path(scratch) / f"{kind}-{n}")
                    print(pd.DataFrame(rows[-6:]).to_string(index=False), flush=True)
            caption = (
                f"Top-{K} search over {BITS}-bit codes: build time, single-query latency (median and 95th "
                f"percentile of {args.queries} queries), index size (FAISS: serialised bytes; CodeIndex: the "
                f"folder on disk) and resident-memory growth. `{command}` ({machine_description()}; load "
                f"average {os.getloadavg()[0]:.1f} at the end)."
            )
            save_table(pd.DataFrame(rows), args.out, "index", caption, floatfmt=".3g")
            print((args.out / "index.md").read_text())
        if "hamming16" in args.parts:
            rng, rows = np.random.default_rng(1), []
            faiss.omp_set_num_threads(1)  # one core: FAISS's own structures on one thread too
            for n in args.large_sizes:
                for kind in ("random", "clustered"):
                    rows += large_rows(n, kind, rng, args.queries, Path(scratch))
            caption = (
                f"Exact Hamming top-{K} over {BITS}-bit codes, one query at a time on one thread: "
                f"median and 95th percentile of {args.queries} queries; memory: the search structure "
                "(CodeIndex: its float vectors, which cosine search and `codes()` use, plus the buckets); "
                "RSS growth: measured; build: making the structure (CodeIndex: writing the index folder, "
                f"SQLite rows included). exact: every query's top-{K} rows equal the flat scan's, ties to "
                f"the lower row; exact distances: the same top-{K} distances, whichever tied rows. "
                f"`{command}` ({machine_description()}; load average {os.getloadavg()[0]:.1f} at the end)."
            )
            save_table(pd.DataFrame(rows), args.out, "hamming16", caption, floatfmt=".3g")
            print((args.out / "hamming16.md").read_text())
    if "embedding" in args.parts:
        embedding = pd.DataFrame(embedding_rows(args.embed_repeats))
        save_table(
            embedding,
            args.out,
            "embedding",
            f"Embedding one 224-px query image, batch 1 ({machine_description()}).",
        )
        print((args.out / "embedding.md").read_text())


if __name__ == "__main__":
    main()

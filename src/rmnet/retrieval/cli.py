"""The `rmnet index` and `rmnet search` commands (argparse), added to the main CLI by add_commands.

    rmnet index build --run RUN_DIR [--part train] --out INDEX_DIR
    rmnet index add INDEX_DIR IMAGE_OR_FOLDER... --label CLASS
    rmnet index info INDEX_DIR
    rmnet search IMAGE... --index INDEX_DIR [--k 10] [--gallery out.png]

Each command sets ``run`` on the parsed arguments, as the main CLI expects: ``args.run(args)``
runs it. Bad input raises ValueError or OSError (an unreadable image: after the other images are
done), which the CLI reports as one line with exit status 1.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import torch

from rmnet.data.images import UnreadableImageError
from rmnet.metrics.retrieval import METRICS

PARTS = ("train", "val", "test")


def add_commands(subparsers: argparse._SubParsersAction) -> None:
    """Add ``index`` (build, add, info) and ``search`` to an argparse sub-command set."""
    index = subparsers.add_parser(
        "index",
        help="build or extend a similar-case index (FAISS + SQLite)",
        description="Build, extend or describe a similar-case index: the codes of diagnosed images.",
    )
    commands = index.add_subparsers(dest="index_command", required=True, metavar="{build,add,info}")

    build = commands.add_parser(
        "build",
        help="embed a run's images into a new index",
        description="Embed one part of a run's split with the run's model and store the codes in a new "
        "index. The paper's database is the training set.",
    )
    build.add_argument(
        "--run",
        dest="run_dir",
        metavar="RUN_DIR",
        type=Path,
        required=True,
        help="run folder (from `rmnet train`) whose model embeds and whose split lists the images",
    )
    build.add_argument("--out", metavar="INDEX_DIR", type=Path, required=True, help="folder of the new index")
    build.add_argument(
        "--part", choices=PARTS, default="train", help="part of the run's split to index (default: train)"
    )
    build.add_argument(
        "--checkpoint", choices=("best", "last"), default="best", help="checkpoint of the run (default: best)"
    )
    build.add_argument(
        "--metric",
        choices=METRICS,
        default="cosine",
        help="default ranking of searches: cosine on the real codes (the paper's) or hamming on their signs",
    )
    build.add_argument("--overwrite", action="store_true", help="replace an index already in --out")
    _add_runtime_options(build)
    build.add_argument("--workers", type=int, default=0, help="data-loading worker processes (default: 0)")
    build.set_defaults(run=run_index_build)

    add = commands.add_parser(
        "add",
        help="append diagnosed images to an index",
        description="Embed image files with the index's model and append them. An image already in the "
        "index (same id = file name without extension, or same file content) is skipped.",
    )
    add.add_argument("index_dir", type=Path, help="index folder")
    add.add_argument("images", type=Path, nargs="+", help="image files, or folders searched for image files")
    add.add_argument(
        "--label", required=True, help="diagnosis of these images: a class name of the index or its number"
    )
    add.add_argument(
        "--run",
        dest="run_dir",
        metavar="RUN_DIR",
        type=Path,
        help="run folder of the model (default: the run that built the index)",
    )
    _add_runtime_options(add)
    add.set_defaults(run=run_index_add)

    info = commands.add_parser("info", help="describe an index", description="Print what an index holds.")
    info.add_argument("index_dir", type=Path, help="index folder")
    info.set_defaults(run=run_index_info)

    search = subparsers.add_parser(
        "search",
        help="find the most similar indexed cases of images",
        description="Predict the diagnosis of each image and list its k most similar cases in an index.",
    )
    search.add_argument("images", type=Path, nargs="+", help="query image files (any size; converted to RGB)")
    search.add_argument(
        "--index",
        metavar="INDEX_DIR",
        type=Path,
        required=True,
        help="index folder (from `rmnet index build`)",
    )
    search.add_argument("--k", type=int, default=10, help="number of similar cases to return (default: 10)")
    search.add_argument(
        "--metric", choices=METRICS, default=None, help="ranking (default: the one the index was built with)"
    )
    search.add_argument(
        "--gallery",
        metavar="PNG",
        type=Path,
        help="write a PNG of the query and its results; with several images, NAME-<image>.png for each",
    )
    search.add_argument(
        "--run",
        dest="run_dir",
        metavar="RUN_DIR",
        type=Path,
        help="run folder of the model (default: the run that built the index)",
    )
    search.add_argument("--json", action="store_true", help="print the results as JSON instead of tables")
    _add_runtime_options(search)
    search.set_defaults(run=run_search)


def _add_runtime_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--batch-size", type=int, default=32, help="images per forward pass (default: 32)")
    parser.add_argument("--device", default="auto", help="cpu, cuda, cuda:1…; auto picks CUDA when available")


def run_index_build(args: argparse.Namespace) -> None:
    from rmnet.retrieval.search import build_index

    index, added, unreadable = build_index(
        args.run_dir,
        args.out,
        part=args.part,
        checkpoint=args.checkpoint,
        metric=args.metric,
        batch_size=args.batch_size,
        device=_device(args.device),
        workers=args.workers,
        overwrite=args.overwrite,
    )
    _report_skipped(added.skipped)
    for _, path, why in unreadable:
        print(f"skipped {path}: {why}", file=sys.stderr)
    print(f"indexed {len(added.added)} images of the {args.part} split of {args.run_dir} in {index.root}")


def run_index_add(args: argparse.Namespace) -> None:
    from rmnet.retrieval.search import add_images, image_files, open_searchable_index

    index, encoder = open_searchable_index(args.index_dir, args.run_dir, _device(args.device))
    label = _class_index(args.label, index.class_names)
    added, unreadable = add_images(encoder, index, image_files(args.images), label, args.batch_size)
    _report_skipped(added.skipped)
    print(f"added {len(added.added)} images to {index.root} (now {len(index)})")
    _raise_if_unreadable(unreadable, len(args.images))


def run_index_info(args: argparse.Namespace) -> None:
    import numpy as np

    from rmnet.retrieval.index import CodeIndex

    with CodeIndex.open(args.index_dir) as index:
        model, names = index.model, index.class_names
        counts = np.bincount(index.labels(), minlength=len(names))
        print(f"index {index.root}: {len(index)} images, {model.code_length}-dimensional codes")
        print(f"default ranking: {index.metric}; generation {index.generation}")
        print(f"model {model.fingerprint}: {model.description} ({model.checkpoint})")
        print("images per class: " + ", ".join(f"{c} {n}" for c, n in zip(names, counts, strict=True)))


def run_search(args: argparse.Namespace) -> None:
    from rmnet.retrieval.search import open_searchable_index, search_images

    if args.k < 1:
        raise ValueError(f"--k must be at least 1, got {args.k}")
    index, encoder = open_searchable_index(args.index, args.run_dir, _device(args.device))
    results, unreadable = search_images(encoder, index, args.images, args.k, args.metric, args.batch_size)
    if args.json:
        print(json.dumps([result.to_dict() for result in results], indent=2))
    for result in results:
        if not args.json:
            print(_format_result(result))
        if args.gallery:
            from rmnet.retrieval.gallery import save_gallery

            gallery = args.gallery
            if len(args.images) > 1:
                gallery = gallery.with_name(f"{gallery.stem}-{result.query.stem}{gallery.suffix or '.png'}")
            print(f"gallery: {save_gallery(result, gallery)}", file=sys.stderr if args.json else sys.stdout)
    _raise_if_unreadable(unreadable, len(args.images))


def _format_result(result) -> str:
    lines = [
        f"query: {result.query}",
        f"predicted diagnosis: {result.predicted_class} (p = {result.probability:.2f})",
        f"{len(result.hits)} most similar cases ({result.metric} distance):",
        f"{'rank':>4}  {'image':<24} {'class':<10} {'distance':>8}  path",
    ]
    for hit in result.hits:
        distance = f"{hit.distance:.0f}" if result.metric == "hamming" else f"{hit.distance:.4f}"
        lines.append(f"{hit.rank:>4}  {hit.image_id:<24} {hit.class_name:<10} {distance:>8}  {hit.path}")
    return "\n".join(lines) + "\n"


def _report_skipped(duplicates: list[tuple[str, str]]) -> None:
    for image_id, why in duplicates:
        print(f"skipped {image_id}: {why}", file=sys.stderr)


def _raise_if_unreadable(unreadable: list[tuple[Path, str]], total: int) -> None:
    """After the readable images are done: one error naming every image that could not be read."""
    if unreadable:
        reasons = "; ".join(why for _, why in unreadable)
        raise UnreadableImageError(f"{len(unreadable)} of {total} images could not be read: {reasons}")


def _class_index(label: str, class_names: list[str]) -> int:
    """A class given by name (as the index lists them) or by number."""
    if label in class_names:
        return class_names.index(label)
    if label.isdigit() and int(label) < len(class_names):
        return int(label)
    raise ValueError(f"unknown class {label!r}; the index's classes are {', '.join(class_names)}")


def _device(name: str) -> str:
    if name == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    return name


def main(argv: list[str] | None = None) -> int:
    """Run the retrieval commands on their own: ``python -m rmnet.retrieval.cli index build …``."""
    parser = argparse.ArgumentParser(prog="rmnet", description="rmnet similar-case retrieval")
    add_commands(parser.add_subparsers(dest="command", required=True))
    args = parser.parse_args(argv)
    try:
        args.run(args)
    except (ValueError, OSError, RuntimeError) as err:
        print(f"rmnet: error: {err}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

"""The `rmnet index` and `rmnet search` commands (argparse), added to the main CLI by add_commands.

    rmnet index build RUN --index INDEX [--part train] [--data DATA] [--cache CACHE]
    rmnet index add --index INDEX IMAGE_OR_FOLDER... --label CLASS
    rmnet index info --index INDEX
    rmnet search IMAGE... --index INDEX [--top-k 10] [--gallery out.png]

One vocabulary with the other commands (rmnet.cliargs): the run a command works from is its
positional RUN (as in ``evaluate`` and ``serve``; where a run is only an optional override of the
index's own, ``add`` and ``search``, it is ``--run RUN``), ``--index`` an index folder whether it
is built, extended or read, ``--data``/``--cache`` the images and their resized copies;
``--top-k`` is the number of results (``--k`` means rotations elsewhere). ``index build --run RUN
--out INDEX`` still works, with a deprecation line.

Importing this module loads neither PyTorch nor FAISS (nor scikit-learn, matplotlib): the
commands import them when they run, so ``rmnet --help`` answers at once. Each command sets
``run`` on the parsed arguments, as the main CLI expects: ``args.run(args)`` runs it. Bad input
raises ValueError or OSError (an unreadable image: after the other images are done), which the
CLI reports as one line with exit status 1.
"""

from __future__ import annotations

import argparse
import json
import shlex
import sys
from pathlib import Path

from rmnet.cliargs import DeprecatedOption, add_workers

PARTS = ("train", "val", "test")
RANKINGS = ("cosine", "hamming")  # = rmnet.metrics.retrieval.METRICS (not imported: stays light)
DEFAULT_LOCK_TIMEOUT = 300.0  # = rmnet.retrieval.index.DEFAULT_LOCK_TIMEOUT (FAISS stays unloaded)


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
        "index. The paper's database is the training set. When the run reads a resized cache, the "
        "index stores the original files (paths and content hashes) beside the cached copies.",
    )
    build.add_argument(
        "run_dir",
        metavar="RUN",
        type=Path,
        nargs="?",
        help="run folder (from `rmnet train`) whose model embeds and whose split lists the images",
    )
    build.add_argument("--run", dest="run_option", type=Path, action=DeprecatedOption, replacement="RUN")
    build.add_argument("--index", metavar="INDEX", type=Path, help="folder of the new index (required)")
    build.add_argument("--out", dest="index", type=Path, action=DeprecatedOption, replacement="--index INDEX")
    build.add_argument(
        "--data",
        metavar="DATA",
        type=Path,
        help="the run's images, when they moved since training (default: the run's --data); "
        "checked against the image ids of the run's split",
    )
    build.add_argument(
        "--cache",
        metavar="CACHE",
        type=Path,
        help="the run's resized cache, when it moved (default: the run's --cache, if any)",
    )
    build.add_argument(
        "--part", choices=PARTS, default="train", help="part of the run's split to index (default: train)"
    )
    build.add_argument(
        "--checkpoint", choices=("best", "last"), default="best", help="checkpoint of the run (default: best)"
    )
    build.add_argument(
        "--metric",
        choices=RANKINGS,
        default="cosine",
        help="default ranking of searches: cosine on the real codes (the paper's) or hamming on their signs",
    )
    build.add_argument("--overwrite", action="store_true", help="replace an index already in --index")
    _add_runtime_options(build)
    add_workers(build)
    build.set_defaults(run=run_index_build)

    add = commands.add_parser(
        "add",
        help="append diagnosed images to an index",
        description="Embed image files with the index's model and append them. An image already in the "
        "index (same id = file name without extension, or same file content) is skipped. Waits for "
        "another process that is writing the same index, then adds to what it wrote.",
    )
    _add_index_option(add, "index folder to extend")
    add.add_argument("images", type=Path, nargs="+", help="image files, or folders searched for image files")
    add.add_argument(
        "--label", required=True, help="diagnosis of these images: a class name of the index or its number"
    )
    _add_run_option(add, "run folder of the model (default: the run that built the index)", required=False)
    add.add_argument(
        "--lock-timeout",
        metavar="SECONDS",
        type=float,
        default=DEFAULT_LOCK_TIMEOUT,
        help=f"how long to wait for another process writing the index (default: {DEFAULT_LOCK_TIMEOUT:g})",
    )
    _add_runtime_options(add)
    add.set_defaults(run=run_index_add)

    info = commands.add_parser("info", help="describe an index", description="Print what an index holds.")
    _add_index_option(info, "index folder")
    info.set_defaults(run=run_index_info)

    search = subparsers.add_parser(
        "search",
        help="find the most similar indexed cases of images",
        description="Predict the diagnosis of each image and list its most similar cases in an index.",
    )
    search.add_argument("images", type=Path, nargs="+", help="query image files (any size; converted to RGB)")
    _add_index_option(search, "index folder (from `rmnet index build`)")
    search.add_argument(
        "--top-k", type=int, default=10, help="number of similar cases to return per image (default: 10)"
    )
    search.add_argument(
        "--metric", choices=RANKINGS, default=None, help="ranking (default: the one the index was built with)"
    )
    search.add_argument(
        "--gallery",
        metavar="PNG",
        type=Path,
        help="write a PNG of the query and its results; with several images, one per image: "
        "NAME-1-<image>.png, NAME-2-<image>.png… in the order given",
    )
    _add_run_option(search, "run folder of the model (default: the run that built the index)", required=False)
    search.add_argument("--json", action="store_true", help="print the results as JSON instead of tables")
    _add_runtime_options(search)
    search.set_defaults(run=run_search)


def _add_run_option(parser: argparse.ArgumentParser, help: str, required: bool = True) -> None:
    # dest run_dir: ``args.run`` is the command itself (the main CLI calls ``args.run(args)``)
    parser.add_argument("--run", dest="run_dir", metavar="RUN", type=Path, required=required, help=help)


def _add_index_option(parser: argparse.ArgumentParser, help: str) -> None:
    parser.add_argument("--index", metavar="INDEX", type=Path, required=True, help=help)


def _add_runtime_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--batch-size", type=int, default=32, help="images per forward pass (default: 32)")
    parser.add_argument("--device", default="auto", help="cpu, cuda, cuda:1…; auto picks CUDA when available")


def run_index_build(args: argparse.Namespace) -> None:
    from rmnet.io import resolve_device
    from rmnet.retrieval.search import build_index

    if args.run_dir is not None and args.run_option is not None:
        raise ValueError("give the run once: rmnet index build RUN --index INDEX")
    args.run_dir = args.run_dir or args.run_option
    if args.run_dir is None or args.index is None:
        raise ValueError(
            "rmnet index build needs the run and the index folder: rmnet index build RUN --index INDEX"
        )
    index, added, unreadable = build_index(
        args.run_dir,
        args.index,
        part=args.part,
        checkpoint=args.checkpoint,
        metric=args.metric,
        batch_size=args.batch_size,
        device=resolve_device(args.device),
        workers=args.workers,
        overwrite=args.overwrite,
        data=args.data,
        cache=args.cache,
    )
    _report_skipped(added.skipped)
    for _, path, why in unreadable:
        print(f"skipped {path}: {why}", file=sys.stderr)
    print(f"indexed {len(added.added)} images of the {args.part} split of {args.run_dir} in {index.root}")
    duplicates = [image_id for image_id, why in added.skipped if why.startswith("same file content")]
    if duplicates:
        copies = (
            "image is a byte-identical copy of another"
            if len(duplicates) == 1
            else ("images are byte-identical copies of others")
        )
        print(
            f"{len(duplicates)} {copies} in the {args.part} split (listed above); each file is indexed once"
        )
    print("next: " + shlex.join(["rmnet", "search", "IMAGE", "--index", str(args.index)]))


def run_index_add(args: argparse.Namespace) -> None:
    from rmnet.io import resolve_device
    from rmnet.retrieval.search import add_images, image_files, open_searchable_index

    index, encoder = open_searchable_index(
        args.index, args.run_dir, resolve_device(args.device), lock_timeout=args.lock_timeout
    )
    label = _class_index(args.label, index.class_names)
    added, unreadable = add_images(encoder, index, image_files(args.images), label, args.batch_size)
    _report_skipped(added.skipped)
    print(f"added {len(added.added)} images to {index.root} (now {len(index)})")
    _raise_if_unreadable(unreadable, len(args.images))


def run_index_info(args: argparse.Namespace) -> None:
    import numpy as np

    from rmnet.retrieval.index import CodeIndex, describe_codes

    with CodeIndex.open(args.index) as index:
        model, names = index.model, index.class_names
        counts = np.bincount(index.labels(), minlength=len(names))
        print(f"index {index.root}: {len(index)} images, {describe_codes(model)}")
        print(f"default ranking: {index.metric}; generation {index.generation}")
        print(f"model {model.fingerprint}: {model.description} ({model.checkpoint})")
        print("images per class: " + ", ".join(f"{c} {n}" for c, n in zip(names, counts, strict=True)))


def run_search(args: argparse.Namespace) -> None:
    from rmnet.io import resolve_device
    from rmnet.retrieval.search import open_searchable_index, search_images

    if args.top_k < 1:
        raise ValueError(f"--top-k must be at least 1, got {args.top_k}")
    index, encoder = open_searchable_index(args.index, args.run_dir, resolve_device(args.device))
    results, unreadable = search_images(encoder, index, args.images, args.top_k, args.metric, args.batch_size)
    if args.json:
        print(json.dumps([result.to_dict() for result in results], indent=2))
    galleries = gallery_paths(args.gallery, args.images, [r.query for r in results]) if args.gallery else []
    for n, result in enumerate(results):
        if not args.json:
            print(_format_result(result))
        if args.gallery:
            from rmnet.retrieval.gallery import save_gallery

            path = save_gallery(result, galleries[n])
            print(f"gallery: {path}", file=sys.stderr if args.json else sys.stdout)
    _raise_if_unreadable(unreadable, len(args.images))


def gallery_paths(gallery: Path, images: list[Path], queries: list[Path]) -> list[Path]:
    """One gallery file per answered query: ``gallery`` itself for a single image, else
    NAME-<position>-<image name>.png, numbered by the image's position on the command line (so
    that qa/q.jpg and qb/q.jpg do not write the same file)."""
    suffix = gallery.suffix or ".png"
    if len(images) == 1:
        return [gallery.with_suffix(suffix)]
    paths, position = [], 0
    for query in queries:  # the answered queries, in the order given (unreadable ones left out)
        while images[position] != query:
            position += 1
        paths.append(gallery.with_name(f"{gallery.stem}-{position + 1}-{query.stem}{suffix}"))
        position += 1
    return paths


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
        from rmnet.data.images import UnreadableImageError

        reasons = "; ".join(why for _, why in unreadable)
        raise UnreadableImageError(f"{len(unreadable)} of {total} images could not be read: {reasons}")


def _class_index(label: str, class_names: list[str]) -> int:
    """A class given by name (as the index lists them) or by number."""
    if label in class_names:
        return class_names.index(label)
    if label.isdigit() and int(label) < len(class_names):
        return int(label)
    raise ValueError(f"unknown class {label!r}; the index's classes are {', '.join(class_names)}")


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

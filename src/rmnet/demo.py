"""``rmnet demo``: a plain CNN and the same CNN with Rotation Meanout, trained and compared on rotated images.

Everything it needs ships with rmnet: the lesion-like images are generated (rmnet.data.lesions),
both models train from scratch on the CPU, and the report shows their accuracy against the
rotation angle of the test images. Each model is an ordinary run folder (train + evaluate), so
``rmnet evaluate OUT/rm`` and ``rmnet train --resume`` work on them as on any run.

It ends with a similar-case index: the RM model, given a 16-bit hash layer and fine-tuned for a
few epochs (OUT/hash), embeds the training images into OUT/index, so that right after the demo
``rmnet serve OUT --index OUT/index`` shows the CAD page on the generated lesions.
"""

from __future__ import annotations

import json
import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from rmnet import plots
from rmnet.config import TrainConfig
from rmnet.data import make_lesion_dataset
from rmnet.evaluate import evaluate_run
from rmnet.io import atomic_write_text
from rmnet.report import angle_key, json_safe
from rmnet.train import train


@dataclass(frozen=True)
class DemoSettings:
    """Data and training sizes of the demo: small enough for a laptop CPU."""

    images_per_class: int
    image_px: int  # generated image side
    crop_px: int  # network input: random crops in training, centre crop in evaluation
    epochs: int
    width: int  # channels of the small CNN
    num_classes: int
    sweep_step: float  # degrees between points of the accuracy-against-rotation curve
    batch_size: int = 32
    lr: float = 0.02
    hash_epochs: int = 4  # fine-tuning of the retrieval model (RM weights + a new hash layer)


FULL = DemoSettings(
    images_per_class=160, image_px=32, crop_px=28, epochs=16, width=16, num_classes=6, sweep_step=15
)
QUICK = DemoSettings(
    images_per_class=10,
    image_px=20,
    crop_px=16,
    epochs=1,
    width=8,
    num_classes=3,
    sweep_step=90,
    hash_epochs=1,
)
HASH_BITS = 16  # the paper's code length (SPEC §5)
INDEX_FOLDER = "index"

ROTATIONS = (90, 180, 270, "random")
INVARIANCE_NOTE = {
    4: "At multiples of 90° a rotation only permutes pixels and RM with k = 4 is exactly invariant: its "
    "accuracy curve repeats every 90°. Between them the image is resampled (bilinear) and its corners "
    "leave the frame, so neither model is invariant there; `rmnet demo --k 8` (θ = 45°) covers those "
    "angles as well, at several times the training cost.",
    8: "RM with k = 8 rotates by 45° inside the network (bilinear; the corners a 45° copy loses are "
    "filled from the other copies), so it is nearly invariant at every angle, not only at quarter "
    "turns, at several times the cost of k = 4.",
}


@dataclass(frozen=True)
class DemoModel:
    label: str
    folder: str  # run folder inside the demo's output folder
    rm: str | None
    k: int = 4


def demo_models(k: int = 4) -> dict[str, DemoModel]:
    """The plain small CNN, and the same CNN with RM around its whole trunk (every block): with k = 4
    the network is exactly invariant to rotations of the input image by multiples of 90°."""
    label = "RM (whole trunk)" if k == 4 else f"RM (whole trunk, k={k})"
    folder = "rm" if k == 4 else f"rm-k{k}"
    return {"plain": DemoModel("plain CNN", "plain", None), "rm": DemoModel(label, folder, "all", k)}


def demo_hash_model(k: int = 4) -> DemoModel:
    """The retrieval model: the RM CNN with a hash layer of ``HASH_BITS`` units before its classifier."""
    return DemoModel(f"RM + {HASH_BITS}-bit hash layer", "hash" if k == 4 else f"hash-k{k}", "all", k)


def demo_config(settings: DemoSettings, data: Path, model: DemoModel, workers: int) -> TrainConfig:
    """The demo's recipe: the paper's SGD schedule shortened to a few epochs on small images."""
    return TrainConfig(
        arch="small_cnn",
        rm=model.rm,
        k=model.k,
        model_options={"width": settings.width},
        data=str(data),
        image_size=settings.crop_px,
        resize=settings.image_px,
        epochs=settings.epochs,
        batch_size=settings.batch_size,
        lr=settings.lr,
        lr_step=max(1, round(0.7 * settings.epochs)),
        workers=workers,
        device="cpu",
    )


def run_demo(
    out: str | os.PathLike = "runs/demo",
    *,
    epochs: int | None = None,
    k: int = 4,
    quick: bool = False,
    workers: int = 0,
    progress: bool = True,
) -> dict[str, Any]:
    """Generate the data, train and evaluate both models, write OUT/report/ and print a table."""
    out = Path(out)
    settings = QUICK if quick else FULL
    if epochs is not None:
        settings = DemoSettings(**{**settings.__dict__, "epochs": epochs})
    started = time.perf_counter()
    data = make_lesion_dataset(
        out / "data",
        n_per_class=settings.images_per_class,
        size=settings.image_px,
        num_classes=settings.num_classes,
    )
    models, reports = demo_models(k), {}
    for name, model in models.items():
        run_dir = out / model.folder
        _say(progress, f"training the {model.label} ({settings.epochs} epochs) into {run_dir}")
        # resume: running the demo again reuses finished runs and continues interrupted ones.
        train(demo_config(settings, data, model, workers), run_dir, resume=True, progress=progress)
        options = dict(angles=ROTATIONS, device="cpu", workers=workers, progress=progress)
        reports[name] = evaluate_run(run_dir, sweep_step=settings.sweep_step, **options)
    retrieval = build_demo_index(out, data, settings, k=k, workers=workers, progress=progress)
    summary = summarise(models, reports, seconds=time.perf_counter() - started)
    summary["retrieval"] = retrieval
    report_dir = write_demo_report(summary, reports, out / "report")
    table = summary_table(summary)
    _say(progress, f"\n{table}\n\n{retrieval_line(retrieval, out)}\n\nreport: {report_dir / 'report.md'}")
    return summary


def build_demo_index(
    out: str | os.PathLike,
    data: Path,
    settings: DemoSettings,
    *,
    k: int = 4,
    workers: int = 0,
    progress: bool = True,
) -> dict[str, Any]:
    """Train the retrieval model and index the demo's training images into OUT/index.

    The retrieval model is the trained RM model (OUT/rm) with a new ``HASH_BITS``-bit hash layer and
    classifier, fine-tuned for ``settings.hash_epochs`` epochs (a few seconds, against minutes from
    scratch). Both steps are reused when the demo runs again: a finished run, and an index built by
    the same model (cases added to it since, e.g. through the service, are kept).
    Returns what was built and its retrieval quality on the test images (mAP@10, mRR@10).
    """
    from rmnet.metrics.retrieval import retrieval_metrics
    from rmnet.retrieval.codes import embed_dataset, model_fingerprint
    from rmnet.retrieval.index import CodeIndex
    from rmnet.retrieval.search import build_index
    from rmnet.runs import Run

    out = Path(out)
    model = demo_hash_model(k)
    run_dir, index_dir = out / model.folder, out / INDEX_FOLDER
    start_from = (out / demo_models(k)["rm"].folder / "checkpoints" / "best.pt").resolve()
    config = demo_config(settings, data, model, workers).replace(
        hash_bits=HASH_BITS,
        pretrained=str(start_from),
        epochs=settings.hash_epochs,
        lr_step=max(1, round(0.7 * settings.hash_epochs)),
    )
    epochs = settings.hash_epochs
    _say(progress, f"training the {model.label} ({epochs} epochs from the RM model's weights) into {run_dir}")
    train(config, run_dir, resume=True, progress=progress)
    run = Run(run_dir)
    trained = run.load_model()
    if not _index_built_by(index_dir, model_fingerprint(trained)):
        _say(progress, f"indexing the training images into {index_dir}")
        build_index(run_dir, index_dir, overwrite=True, workers=workers)
    with CodeIndex.open(index_dir) as index:
        db_codes, db_labels, cases = index.codes(), index.labels(), len(index)
    test = run.dataset("test")
    query_codes, query_labels = embed_dataset(trained, test, num_workers=workers, progress=False)
    scores = retrieval_metrics(query_codes, query_labels, db_codes, db_labels, k=10)
    return {
        "label": model.label,
        "folder": model.folder,
        "index": INDEX_FOLDER,
        "cases": cases,
        "hash_bits": HASH_BITS,
        "epochs": settings.hash_epochs,
        "queries": int(len(query_labels)),
        "map_at_10": float(scores["map_at_k"]),
        "mrr_at_10": float(scores["mrr_at_k"]),
    }


def _index_built_by(index_dir: Path, fingerprint: str) -> bool:
    """True when ``index_dir`` is a readable, non-empty index of codes from the model ``fingerprint``."""
    from rmnet.retrieval.index import CodeIndex

    if not (index_dir / "manifest.json").is_file():
        return False
    try:
        with CodeIndex.open(index_dir) as index:
            return index.model.fingerprint == fingerprint and len(index) > 0
    except (OSError, ValueError):
        return False


def retrieval_line(retrieval: dict[str, Any], out: Path) -> str:
    """Where the similar-case index is, how good it is, and the command that serves it."""
    return (
        f"similar cases: {retrieval['cases']} training images indexed in {out / retrieval['index']} by the "
        f"{retrieval['label']} (mAP@10 {100 * retrieval['map_at_10']:.1f} %, mRR@10 "
        f"{100 * retrieval['mrr_at_10']:.1f} % on {retrieval['queries']} test images)\n"
        f"serve them: rmnet serve {out} --index {out / retrieval['index']}   (then open http://127.0.0.1:8000/)"
    )


def summarise(
    demo: dict[str, DemoModel], reports: dict[str, dict[str, Any]], seconds: float
) -> dict[str, Any]:
    """Per model: parameters, accuracy upright and rotated, share of predictions a rotation changes."""
    models = {}
    for name, report in reports.items():
        angles = report["rotation"]["angles"]
        models[name] = {
            "label": demo[name].label,
            "folder": demo[name].folder,
            "parameters": report["model"]["parameters"],
            "accuracy": {angle_key(row["angle"]): row["accuracy"] for row in angles},
            "balanced_accuracy": {angle_key(row["angle"]): row["balanced_accuracy"] for row in angles},
            "changed": {angle_key(row["angle"]): row["changed"] for row in angles if row["angle"] != 0},
            "sweep": report["rotation"]["sweep"],
        }
    gap = {
        angle: models["rm"]["accuracy"][angle] - models["plain"]["accuracy"][angle]
        for angle in models["plain"]["accuracy"]
    }
    return {"models": models, "rm_minus_plain_accuracy": gap, "k": demo["rm"].k, "seconds": seconds}


def summary_table(summary: dict[str, Any]) -> str:
    """Accuracy (%) upright and rotated, and % of the predictions that each rotation changes."""
    angles = ["0", *(angle_key(a) for a in ROTATIONS)]
    header = f"{'':<24}" + "".join(f"{_angle_label(a):>9}" for a in angles)
    lines = ["accuracy (%)", header]
    for model in summary["models"].values():
        cells = "".join(f"{100 * model['accuracy'][a]:>9.1f}" for a in angles)
        lines.append(f"{model['label']:<24}{cells}")
    lines += [
        "predictions changed by the rotation (%)",
        f"{'':<24}" + "".join(f"{_angle_label(a):>9}" for a in angles[1:]),
    ]
    for model in summary["models"].values():
        cells = "".join(f"{100 * model['changed'][a]:>9.1f}" for a in angles[1:])
        lines.append(f"{model['label']:<24}{cells}")
    return "\n".join(lines)


def _angle_label(angle: str) -> str:
    return {"0": "upright", "random": "random"}.get(angle, f"{angle}°")


def write_demo_report(summary: dict[str, Any], reports: dict[str, dict[str, Any]], report_dir: Path) -> Path:
    """report.md (table + both models' rotation curves on one plot) and report.json in ``report_dir``."""
    curves = {m["label"]: (m["sweep"]["angles"], m["sweep"]["accuracy"]) for m in summary["models"].values()}
    plots.plot_rotation_robustness(curves, report_dir / "rotation.png")
    atomic_write_text(report_dir / "report.json", json.dumps(json_safe(summary), indent=2) + "\n")
    angles = ["0", *(angle_key(a) for a in ROTATIONS)]
    header = [
        "model",
        "parameters",
        *(_angle_label(a) for a in angles),
        "changed by 90°",
        "changed by random",
    ]
    rows = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for model in summary["models"].values():
        cells = [f"[{model['label']}](../{model['folder']}/report/report.md)", f"{model['parameters']:,}"]
        cells += [f"{100 * model['accuracy'][a]:.1f}" for a in angles]
        cells += [f"{100 * model['changed'][a]:.1f}" for a in ("90", "random")]
        rows.append("| " + " | ".join(cells) + " |")
    test_images = reports["plain"]["classification"]["n"]
    k = summary["k"]
    turns = ", ".join(f"{360 * i / k:g}°" for i in range(k))
    text = [
        "# rmnet demo: a plain CNN and the same CNN with Rotation Meanout",
        "",
        "Both models are the small CNN of rmnet (four 5×5 conv blocks), trained from scratch with the same "
        "recipe on generated lesion-like images whose class is set by structure, not orientation. RM wraps "
        f"the whole trunk: the same weights see the image turned by {turns} and the realigned feature "
        "maps are averaged; it adds no parameter.",
        "",
        f"Test accuracy (%) on {test_images} images, upright and rotated counterclockwise, and the share (%) "
        "of predictions that change when the image turns:",
        "",
        *rows,
        "",
        "![Accuracy against rotation](rotation.png)",
        "",
        INVARIANCE_NOTE[4 if k == 4 else 8],
        "",
        "Each model's full report (per-class metrics, confusion matrix, ROC, t-SNE, training curves) is "
        "linked from its name.",
        "",
        *_retrieval_section(summary.get("retrieval")),
        f"Total time: {summary['seconds']:.0f} s.",
        "",
    ]
    atomic_write_text(report_dir / "report.md", "\n".join(text))
    return report_dir


def _retrieval_section(retrieval: dict[str, Any] | None) -> list[str]:
    if not retrieval:
        return []
    return [
        "## Similar cases",
        "",
        f"The {retrieval['label']} (the RM model with a new hash layer, fine-tuned for {retrieval['epochs']} "
        f"epochs; [run](../{retrieval['folder']})) indexes the {retrieval['cases']} training images in "
        f"`{retrieval['index']}/`. Searching it with the {retrieval['queries']} test images: mAP@10 "
        f"{100 * retrieval['map_at_10']:.1f} %, mRR@10 {100 * retrieval['mrr_at_10']:.1f} % (cosine distance "
        "between codes, the paper's formulas). `rmnet serve` on the demo's folder shows the diagnosis, the "
        "heat map and the 10 most similar cases of any image (docs/service.md).",
        "",
    ]


def _say(progress: bool, message: str) -> None:
    if progress:
        print(message, flush=True)

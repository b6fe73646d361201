"""The Python API of a trained run: ``rmnet.load_run(run)`` gives a :class:`RunModel` that predicts,
searches and explains images, batched, on the CPU or a GPU.

    model = rmnet.load_run("runs/r18-hash")
    model.predict(["a.jpg", "b.jpg"])          # class probabilities, as POST /api/predict gives them
    model.search("a.jpg", index="index/isic")  # the most similar confirmed cases
    model.explain("a.jpg").heatmap             # Grad-CAM over the network input

The service's engine and ``rmnet search`` run their forward passes and Grad-CAM through a RunModel
too: :meth:`RunModel.forward` is the one place where logits become probabilities.
"""

from __future__ import annotations

import functools
import logging
import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Union

import numpy as np
import torch
from PIL import Image
from torch import nn

if TYPE_CHECKING:
    from rmnet.config import TrainConfig
    from rmnet.retrieval.index import CodeIndex, Hit, ModelIdentity

log = logging.getLogger(__name__)

QUARTER_TURNS = (0, 90, 180, 270)  # degrees counterclockwise, as torch.rot90 turns (H, W)
ImageInput = Union[Image.Image, str, os.PathLike, np.ndarray]  # noqa: UP007 - a runtime alias


@dataclass(frozen=True)
class ModelInfo:
    """What the service says about its model (``GET /healthz``, every prediction)."""

    run: str
    checkpoint: str
    description: str
    fingerprint: str
    code_length: int
    class_names: tuple[str, ...]
    image_size: int
    resize: int
    rm: str | None = None
    k: int | None = None
    hash_bits: int | None = None

    def to_dict(self) -> dict[str, Any]:
        return {
            "run": self.run,
            "checkpoint": self.checkpoint,
            "description": self.description,
            "fingerprint": self.fingerprint,
            "code_length": self.code_length,
            "classes": list(self.class_names),
            "image_size": self.image_size,
            "resize": self.resize,
            "rm": self.rm,
            "k": self.k,
            "hash_bits": self.hash_bits,
        }

    def summary(self) -> dict[str, Any]:
        """The model part of a prediction (``"model"`` in /api/predict)."""
        return {
            "description": self.description,
            "rm": self.rm,
            "k": self.k,
            "fingerprint": self.fingerprint,
            "run": self.run,
        }


@dataclass(frozen=True)
class BatchOutput:
    """What the model says about a batch of network inputs (numpy, float32, on the CPU)."""

    probabilities: np.ndarray  # (B, C): softmax of logits / temperature
    codes: np.ndarray  # (B, D) retrieval codes (hash layer's raw output, or pooled features)
    logits: np.ndarray  # (B, C)
    turns: np.ndarray | None = None  # (B, 4, C): probabilities at 0°, 90°, 180°, 270°


@dataclass(frozen=True)
class Prediction:
    """The diagnosis of one image: its class probabilities, and with ``turns`` those of its quarter turns."""

    probabilities: np.ndarray  # (C,)
    label: str  # the most probable class
    top: list[tuple[str, float]]  # every class with its probability, most probable first
    class_names: tuple[str, ...]
    turns: np.ndarray | None = None  # (4, C)
    image: dict[str, Any] | None = None  # {"width", "height", "format"} of the image as given
    model: dict[str, Any] | None = None  # ModelInfo.summary()

    def to_dict(self) -> dict[str, Any]:
        """The JSON fields of ``POST /api/predict``."""
        best = int(self.probabilities.argmax())
        out: dict[str, Any] = {
            "prediction": self.class_names[best],
            "probability": float(self.probabilities[best]),
            "classes": [
                {"name": name, "probability": float(p)}
                for name, p in zip(self.class_names, self.probabilities, strict=True)
            ],
        }
        if self.turns is not None:
            out["rotation_consistency"] = rotation_consistency(self.turns, self.class_names)
        if self.image is not None:
            out["image"] = dict(self.image)
        if self.model is not None:
            out["model"] = dict(self.model)
        return out


@dataclass(frozen=True)
class Explanation:
    """A Grad-CAM heat map over the network input, for one class."""

    heatmap: np.ndarray  # (H, W) in [0, 1], the network input's size
    target: int  # the class explained
    probabilities: np.ndarray  # (num_classes,)


def rotation_consistency(turns: np.ndarray, class_names: Sequence[str]) -> dict[str, Any]:
    """Whether the prediction survives quarter turns of the image (``turns``: (4, C) probabilities)."""
    rows = []
    for angle, p in zip(QUARTER_TURNS, turns, strict=True):
        label = int(p.argmax())
        rows.append({"angle": angle, "prediction": class_names[label], "probability": float(p[label])})
    return {
        "consistent": len({row["prediction"] for row in rows}) == 1,
        "turns": rows,
        "max_probability_change": float((turns.max(0) - turns.min(0)).max()),
        "note": "the image turned by 0°, 90°, 180° and 270° (counterclockwise) on the network input",
    }


def quarter_turns(x: torch.Tensor) -> torch.Tensor:
    """(B, C, H, W) → (4·B, C, H, W): each image at 0°, 90°, 180°, 270°, image after image."""
    return torch.stack([torch.rot90(x, i, dims=(-2, -1)) for i in range(len(QUARTER_TURNS))], 1).flatten(0, 1)


class RunModel:
    """A trained model with its eval transform, classes and temperature: images in, answers out.

    Thread-safe for inference (the model stays in eval mode; nothing is cached between calls), so the
    service's worker threads share one.
    """

    def __init__(
        self,
        model: nn.Module,
        *,
        class_names: Sequence[str],
        image_size: int | None,
        resize: int | None = None,
        transform: Callable[[Image.Image], torch.Tensor] | None = None,
        device: str | torch.device = "cpu",
        config: TrainConfig | None = None,
        run_dir: str | os.PathLike | None = None,
        checkpoint: str | os.PathLike | None = None,
        temperature: float = 1.0,
        info: ModelInfo | None = None,
    ) -> None:
        if not hasattr(model, "forward_codes"):
            raise TypeError(f"{type(model).__name__} has no forward_codes(): RunModel runs rmnet models")
        if not temperature > 0:
            raise ValueError(f"temperature must be positive, got {temperature}")
        if image_size is None and transform is None:
            raise ValueError("RunModel needs the input size (image_size) or its own transform")
        from rmnet.data import build_transform
        from rmnet.models.weights import resize_for

        self.device = torch.device(device)
        self.model = model.eval().to(self.device)
        self.class_names = list(class_names)
        self.image_size = image_size  # None: a model given with its own transform (no Grad-CAM)
        self.resize = resize or (resize_for(image_size) if image_size else None)
        self.transform = transform or build_transform(False, image_size, resize=self.resize)
        self.config, self.temperature = config, float(temperature)
        self.run_dir = None if run_dir is None else Path(run_dir)
        self.checkpoint = None if checkpoint is None else Path(checkpoint)
        if info is not None:  # given (a model outside a run folder): else described from the run
            self.info = info

    def __repr__(self) -> str:
        where = self.run_dir or type(self.model).__name__
        return f"RunModel({str(where)!r}, classes={self.class_names}, device={str(self.device)!r})"

    # -- what the run is ------------------------------------------------------------------------

    @functools.cached_property
    def fingerprint(self) -> str:
        """The hash of the weights that an index records (see rmnet.retrieval.codes.model_fingerprint)."""
        from rmnet.retrieval.codes import model_fingerprint

        return model_fingerprint(self.model)

    @property
    def code_length(self) -> int:
        return int(getattr(self.model, "code_length", None) or len(self.class_names))

    @property
    def description(self) -> str:
        config = self.config
        if config is None:
            return type(self.model).__name__
        return f"{config.arch} rm={config.rm} hash_bits={config.hash_bits} loss={config.loss}"

    @functools.cached_property
    def info(self) -> ModelInfo:
        """The service's description of this model."""
        config = self.config
        return ModelInfo(
            run=str(self.run_dir.resolve()) if self.run_dir else "",
            checkpoint=str(self.checkpoint.resolve()) if self.checkpoint else "",
            description=self.description,
            fingerprint=self.fingerprint,
            code_length=self.code_length,
            class_names=tuple(self.class_names),
            image_size=self.image_size,
            resize=self.resize,
            rm=config.rm if config else None,
            k=config.k if config and config.rm else None,
            hash_bits=config.hash_bits if config else None,
        )

    @property
    def identity(self) -> ModelIdentity:
        """What an index built by this model records about it."""
        from rmnet.retrieval.index import ModelIdentity

        kind = "features" if getattr(self.model, "hash_bits", None) is None else "hash"
        run = str(self.run_dir.resolve()) if self.run_dir else None
        checkpoint = str(self.checkpoint.resolve()) if self.checkpoint else None
        return ModelIdentity(self.fingerprint, self.code_length, self.description, run, checkpoint, kind)

    # -- images to answers ------------------------------------------------------------------------

    def prepare(self, image: ImageInput) -> torch.Tensor:
        """The network input (3, S, S) of an image (PIL image, file path or H×W×3 uint8 array), upright."""
        return self.transform(_as_image(image)[0])

    @torch.inference_mode()
    def forward(self, x: torch.Tensor, *, turns: bool = False, batch_size: int | None = None) -> BatchOutput:
        """The model on network inputs ``x`` (B, 3, S, S), in passes of ``batch_size`` images (default:
        all at once); with ``turns`` each image also at its quarter turns (one pass of 4·B images).

        The one place where logits become probabilities: softmax(logits / temperature).
        """
        if x.dim() != 4:
            raise ValueError(f"expected a batch (B, 3, H, W) of network inputs, got shape {tuple(x.shape)}")
        x = x.to(self.device)
        if turns:
            x = quarter_turns(x)
        step = batch_size or max(1, len(x))
        outputs = [self.model.forward_codes(x[i : i + step]) for i in range(0, len(x), step)]
        codes = torch.cat([c for c, _ in outputs]).float().cpu().numpy()
        logits = torch.cat([lg for _, lg in outputs]).float().cpu()
        probabilities = self.probabilities(logits)
        logits = logits.numpy()
        if not turns:
            return BatchOutput(probabilities, codes, logits)
        n = len(QUARTER_TURNS)
        upright = slice(0, None, n)
        return BatchOutput(
            probabilities[upright],
            codes[upright],
            logits[upright],
            probabilities.reshape(-1, n, probabilities.shape[1]),
        )

    def probabilities(self, logits: torch.Tensor) -> np.ndarray:
        """Class probabilities of logits (B, C): softmax at this model's temperature."""
        return torch.softmax(logits.float() / self.temperature, dim=1).cpu().numpy()

    def predict(
        self, images: ImageInput | Sequence[ImageInput], *, batch_size: int = 32, turns: bool = True
    ) -> list[Prediction]:
        """One :class:`Prediction` per image (one image or a list), ``batch_size`` images per pass;
        with ``turns`` (as the service) the quarter turns' probabilities too."""
        batch = _as_list(images)
        predictions = []
        for start in range(0, len(batch), batch_size):
            loaded = [_as_image(image) for image in batch[start : start + batch_size]]
            x = torch.stack([self.transform(image) for image, _ in loaded])
            out = self.forward(x, turns=turns)
            for i, (_, meta) in enumerate(loaded):
                predictions.append(
                    self._prediction(out.probabilities[i], None if out.turns is None else out.turns[i], meta)
                )
        return predictions

    def search(
        self,
        image: ImageInput,
        index: str | os.PathLike | CodeIndex,
        k: int = 10,
        *,
        metric: str | None = None,
    ) -> list[Hit]:
        """The ``k`` most similar cases of ``image`` in an index folder (or an open CodeIndex) built by
        this model, nearest first."""
        from rmnet.retrieval.index import CodeIndex

        if k < 1:
            raise ValueError(f"k must be at least 1, got {k}")
        opened = index if isinstance(index, CodeIndex) else CodeIndex.open(index)
        try:
            opened.check_model(self.fingerprint, self.code_length)
            code = self.forward(self.prepare(image)[None]).codes
            return opened.search(code, k, model_fingerprint=self.fingerprint, metric=metric)[0]
        finally:
            if opened is not index:
                opened.close()

    def explain(self, image: ImageInput | torch.Tensor, target: int | str | None = None) -> Explanation:
        """Grad-CAM of ``image`` (or a prepared network input) for class ``target`` (index or name;
        default: the predicted class), at the last feature map before global pooling."""
        x = image if isinstance(image, torch.Tensor) else self.prepare(image)
        if isinstance(target, str):
            if target not in self.class_names:
                raise ValueError(f"unknown class {target!r}; the classes are {', '.join(self.class_names)}")
            target = self.class_names.index(target)
        return self.gradcam(x, target)

    def gradcam(self, x: torch.Tensor, target: int | None = None) -> Explanation:
        """Grad-CAM of one network input ``x`` (3, S, S): captum's LayerGradCam for class ``target``.

        Puts hooks on the model: no other forward pass may run on it meanwhile (the service holds it
        exclusively)."""
        if target is not None and not 0 <= target < len(self.class_names):
            raise ValueError(f"no class {target}: the model has {len(self.class_names)}")
        layer = self.cam_layer
        if layer is None:
            raise RuntimeError("this model has no spatial feature map for Grad-CAM")
        from captum.attr import LayerAttribution, LayerGradCam

        x = x[None].to(self.device).requires_grad_(True)
        with torch.inference_mode(False), torch.enable_grad():
            with torch.no_grad():
                probabilities = self.probabilities(self.model(x))[0]
            target = int(probabilities.argmax()) if target is None else target
            attribution = LayerGradCam(self.model, layer).attribute(x, target=target, relu_attributions=True)
            size = tuple(x.shape[-2:])
            upsampled = LayerAttribution.interpolate(attribution, size, interpolate_mode="bilinear")
        heatmap = upsampled[0].sum(0).detach().float().cpu().numpy()
        peak = float(heatmap.max())
        heatmap = np.clip(heatmap / peak, 0, 1) if peak > 0 else np.zeros_like(heatmap)
        return Explanation(heatmap, target, probabilities)

    @property
    def cam_layer(self) -> nn.Module | None:
        """The module Grad-CAM explains (None when the model has no spatial feature map)."""
        return self._cam[1]

    @property
    def cam_layer_name(self) -> str:
        return self._cam[0]

    @functools.cached_property
    def _cam(self) -> tuple[str, nn.Module | None]:
        if self.image_size is None:
            return "", None
        return gradcam_layer(self.model, self.image_size, self.device)

    def _prediction(self, probabilities: np.ndarray, turns: np.ndarray | None, image: dict) -> Prediction:
        order = np.argsort(-probabilities, kind="stable")
        return Prediction(
            probabilities=probabilities,
            label=self.class_names[int(order[0])],
            top=[(self.class_names[int(i)], float(probabilities[i])) for i in order],
            class_names=tuple(self.class_names),
            turns=turns,
            image=image,
            model=self.info.summary(),
        )


def load_run(
    run: str | os.PathLike, *, checkpoint: str = "best", device: str | torch.device = "auto"
) -> RunModel:
    """The trained model of a run folder (``checkpoint`` "best" or "last"), or of a checkpoint file,
    with the run's eval transform, on ``device`` ("auto": CUDA when available)."""
    from rmnet.io import resolve_device
    from rmnet.runs import Run, load_checkpoint

    path = Path(run)
    if path.is_file():  # a checkpoint file: RUN/checkpoints/best.pt
        checkpoint_path = path
        run_dir = path.parent.parent if (path.parent.parent / "config.json").is_file() else None
    else:
        opened = Run(path, checkpoint=checkpoint)
        checkpoint_path, run_dir = opened.checkpoint, opened.dir
    model, config, class_names = load_checkpoint(checkpoint_path)
    return RunModel(
        model,
        class_names=class_names,
        image_size=config.input_size(),
        resize=config.resize_short_edge(),
        device=resolve_device(device),
        config=config,
        run_dir=run_dir,
        checkpoint=checkpoint_path,
    )


def gradcam_layer(model: nn.Module, image_size: int, device: torch.device) -> tuple[str, nn.Module | None]:
    """The module whose output is the model's last spatial feature map of the image batch itself.

    Found by one dry forward pass: the last module to finish with a (1, C, H, W) output, H·W > 1.
    In an RM model whose region ends the trunk this is the RotationMeanout module (its blocks see the
    k·B rotated copies; RM's output is the realigned, fused map of the B images): the heat map of the
    fused, rotation-equivariant features. In a plain model it is the last block.
    """
    found: list[tuple[str, nn.Module]] = []

    def record(name: str):
        def hook(module: nn.Module, _inputs: Any, output: Any) -> None:
            if isinstance(output, torch.Tensor) and output.dim() == 4 and output.shape[0] == 1:
                if output.shape[-1] * output.shape[-2] > 1:
                    found.append((name, module))

        return hook

    handles = [m.register_forward_hook(record(name)) for name, m in model.named_modules() if name]
    try:
        with torch.inference_mode():
            model(torch.zeros(1, 3, image_size, image_size, device=device))
    finally:
        for handle in handles:
            handle.remove()
    if not found:
        log.warning("no spatial feature map found in %s: Grad-CAM is unavailable", type(model).__name__)
        return "", None
    return found[-1]


def _as_list(images: ImageInput | Sequence[ImageInput]) -> list[ImageInput]:
    if isinstance(images, (Image.Image, str, os.PathLike)):
        return [images]
    if isinstance(images, np.ndarray) and images.ndim == 3:
        return [images]
    return list(images)


def _as_image(image: ImageInput) -> tuple[Image.Image, dict[str, Any]]:
    """An upright RGB picture and {"width", "height", "format"} of a PIL image, file or uint8 array."""
    from rmnet.data.images import open_rgb

    if isinstance(image, Image.Image):
        meta = {"width": image.width, "height": image.height, "format": image.format}
        return (image if image.mode == "RGB" else image.convert("RGB")), meta
    if isinstance(image, np.ndarray):
        if image.ndim not in (2, 3) or (image.ndim == 3 and image.shape[2] not in (1, 3, 4)):
            raise ValueError(f"expected an H×W×3 image array, got shape {image.shape}")
        array = image[..., 0] if image.ndim == 3 and image.shape[2] == 1 else image
        if array.dtype != np.uint8:
            raise ValueError(f"expected a uint8 image array (0-255), got {array.dtype}")
        picture = Image.fromarray(array).convert("RGB")
        return picture, {"width": picture.width, "height": picture.height, "format": None}
    if isinstance(image, (str, os.PathLike)):
        path = Path(image)
        if not path.is_file():
            raise FileNotFoundError(f"image not found: {path}")
        picture = open_rgb(path)
        with Image.open(path) as header:
            meta = {"width": header.width, "height": header.height, "format": header.format}
        return picture, meta
    if isinstance(image, torch.Tensor):
        raise TypeError("a tensor is already a network input: pass it to RunModel.forward, not here")
    raise TypeError(f"expected a PIL image, a file path or an image array, got {type(image).__name__}")

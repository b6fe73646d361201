"""The one inference loop: a model over a dataset, in batches, under several views of each batch.

Evaluation (predictions at many rotation angles) and retrieval (codes of a database) both run
through :func:`infer`, so batching, devices, progress and eval mode are handled in one place.
"""

from __future__ import annotations

from collections.abc import Callable, Hashable, Iterable, Mapping
from dataclasses import dataclass

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset

from rmnet.io import progress_bar, resolve_device
from rmnet.models.base import ImageClassifier, unwrap

# A view maps a batch of images and the dataset index of its first image to the images to run.
View = Callable[[torch.Tensor, int], torch.Tensor]


@dataclass
class Outputs:
    """What the model gave for one view of every image, in dataset order."""

    logits: np.ndarray  # (N, num_classes), float32
    codes: np.ndarray | None  # (N, code_length), or None when not kept


@torch.inference_mode()
def infer(
    model: ImageClassifier,
    dataset: Dataset,
    views: Mapping[Hashable, View] | None = None,
    *,
    batch_size: int = 64,
    device: str | torch.device = "auto",
    workers: int = 0,
    keep_codes: Iterable[Hashable] | None = None,
    progress: bool = False,
    desc: str = "inference",
) -> tuple[np.ndarray, dict[Hashable, Outputs]]:
    """(labels, {view: Outputs}) of ``model`` on ``dataset``; each batch is loaded once.

    ``views`` defaults to the images as they are (key 0); codes are kept for the views in
    ``keep_codes`` (default: the first view) since they cost memory. The model runs in eval mode
    and gets its own mode back afterwards. A dataset whose items are stacks of crops (n, C, H, W)
    (``test_crops``) gets the logits and codes averaged over each image's crops.
    """
    model = unwrap(model)
    views = {0: lambda images, start: images} if views is None else views
    keep = set(list(views)[:1] if keep_codes is None else keep_codes)
    device = resolve_device(device)
    was_training = model.training
    model = model.eval().to(device)
    logits: dict[Hashable, list[torch.Tensor]] = {key: [] for key in views}
    codes: dict[Hashable, list[torch.Tensor]] = {key: [] for key in views}
    labels, start = [], 0
    loader = DataLoader(dataset, batch_size=batch_size, shuffle=False, num_workers=workers)
    for images, targets in progress_bar(loader, desc, progress):
        images = images.to(device)
        labels.append(torch.as_tensor(targets))
        for key, view in views.items():
            batch_codes, batch_logits = _forward_averaged(model, view(images, start))
            logits[key].append(batch_logits.float().cpu())
            if key in keep:
                codes[key].append(batch_codes.float().cpu())
        start += len(images)
    model.train(was_training)
    outputs = {
        key: Outputs(
            torch.cat(logits[key]).numpy() if logits[key] else np.zeros((0, model.num_classes), np.float32),
            torch.cat(codes[key]).numpy() if codes[key] else None,
        )
        for key in views
    }
    return (torch.cat(labels).numpy() if labels else np.zeros(0, np.int64)), outputs


def _forward_averaged(model: ImageClassifier, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(codes, logits) of a batch (B, C, H, W), or of crop stacks (B, n, C, H, W) averaged over n."""
    if images.dim() != 5:
        return model.forward_codes(images)
    b, n = images.shape[:2]
    codes, logits = model.forward_codes(images.flatten(0, 1))
    return codes.unflatten(0, (b, n)).mean(dim=1), logits.unflatten(0, (b, n)).mean(dim=1)

"""Load ImageNet (or any plain-network) weights from a local file: nothing is downloaded."""

from __future__ import annotations

import logging
import os
from collections.abc import Mapping

import torch
from torch import nn

log = logging.getLogger(__name__)

# Keys a plain torchvision checkpoint may hold that rmnet models leave out on purpose.
IGNORED_PREFIXES = ("AuxLogits.",)


def read_state_dict(path: str | os.PathLike) -> dict[str, torch.Tensor]:
    """Tensors from a state_dict file or a checkpoint holding one under "model"/"state_dict"."""
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # noqa: BLE001 - any unpickling failure means the same to the user
        raise ValueError(f"cannot read weights from {path}: {err}") from err
    for key in ("model", "state_dict"):
        if isinstance(obj, Mapping) and isinstance(obj.get(key), Mapping):
            obj = obj[key]
    if not isinstance(obj, Mapping) or not all(isinstance(v, torch.Tensor) for v in obj.values()):
        raise ValueError(f"{path} does not hold a state_dict (a mapping of names to tensors)")
    return {k.removeprefix("module."): v for k, v in obj.items()}


def load_pretrained(model: nn.Module, path: str | os.PathLike, classifier: str) -> list[str]:
    """Load a plain network's weights into ``model``; returns the keys left at their initial values.

    The classifier (``classifier`` is its module path) is dropped when its shape differs, as when
    the class count changes; any other mismatch is an error naming the keys.
    """
    source = read_state_dict(path)
    target = model.state_dict()
    dropped = []
    for key in list(source):
        if key.startswith(IGNORED_PREFIXES):
            del source[key]
        elif key.startswith(classifier + ".") and key in target and source[key].shape != target[key].shape:
            dropped.append(key)
            del source[key]
    mismatched = [
        f"{k}: file {tuple(v.shape)} vs model {tuple(target[k].shape)}"
        for k, v in source.items()
        if k in target and v.shape != target[k].shape
    ]
    unexpected = [k for k in source if k not in target]
    if mismatched or unexpected:
        detail = "; ".join(mismatched[:5] + [f"unexpected key {k}" for k in unexpected[:5]])
        raise ValueError(f"weights in {path} do not fit this architecture: {detail}")
    missing = [k for k in target if k not in source]
    model.load_state_dict(source, strict=False)
    if missing:
        log.info("kept initial values for %d keys not in %s: %s", len(missing), path, missing[:8])
    return missing

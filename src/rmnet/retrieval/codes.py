"""Retrieval codes: embedding a data set, binary packing, and the identity of the model behind them.

A model's code is the hash layer's raw output (``model.embed``). Two forms are used:

- real-valued codes, L2-normalised so that the inner product is the cosine (the paper's ranking);
- binary codes, the signs packed eight bits to a byte (``np.packbits``), ranked by Hamming distance.

``pack_codes``, ``normalize_codes`` and ``quantize_codes`` live in :mod:`rmnet.metrics.retrieval`
(pure numpy, shared with the index) and are re-exported here.
"""

from __future__ import annotations

import hashlib

import numpy as np
import torch
from torch import nn
from torch.utils.data import Dataset

from rmnet.metrics.retrieval import normalize_codes, pack_codes, quantize_codes, to_bits

__all__ = ["embed_dataset", "model_fingerprint", "normalize_codes", "pack_codes", "quantize_codes", "to_bits"]


def embed_dataset(
    model: nn.Module,
    dataset: Dataset,
    batch_size: int = 64,
    device: str | torch.device = "cpu",
    *,
    num_workers: int = 0,
    progress: bool = True,
) -> tuple[np.ndarray, np.ndarray]:
    """Codes (float32, one row per item, in dataset order) and labels of every ``(image, label)`` item.

    Runs the model in eval mode without gradients and restores its mode afterwards.
    """
    if len(dataset) == 0:
        raise ValueError("cannot embed an empty data set")
    from rmnet.inference import infer

    labels, outputs = infer(
        model, dataset, batch_size=batch_size, device=device, workers=num_workers, progress=progress,
        desc="embedding",
    )  # fmt: skip
    return outputs[0].codes.astype(np.float32, copy=False), labels.astype(np.int64)


def model_fingerprint(model: nn.Module) -> str:
    """A short hash of the model's weights and buffers: equal fingerprints embed images identically.

    An index records the fingerprint of the model that built it, and refuses codes from another.
    """
    digest = hashlib.sha256()
    for name, tensor in sorted(model.state_dict().items()):
        digest.update(f"{name}:{tensor.dtype}:{tuple(tensor.shape)}".encode())
        digest.update(tensor.detach().cpu().contiguous().reshape(-1).view(torch.uint8).numpy().tobytes())
    return digest.hexdigest()[:16]

"""rmnet: Rotation Meanout networks for rotation-invariant dermoscopy classification and retrieval.

The names below load on first use (PEP 562), so ``import rmnet.cli`` and ``rmnet --help`` do not
pay for PyTorch.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

__version__ = "0.1.0"

_EXPORTS = {
    "CyclicGroup": "rmnet.groups",
    "DihedralGroup": "rmnet.groups",
    "RotationGroup": "rmnet.groups",
    "make_group": "rmnet.groups",
    "RotationMeanout": "rmnet.meanout",
    "insert_rotation_meanout": "rmnet.meanout",
    "embed_rotation_meanout": "rmnet.meanout",
    "rotation_meanout": "rmnet.meanout",
    "ImageClassifier": "rmnet.models",
    "create_model": "rmnet.models",
    "list_models": "rmnet.models",
    "register_model": "rmnet.models",
    "TrainConfig": "rmnet.config",
    "load_run": "rmnet.api",
    "RunModel": "rmnet.api",
}

__all__ = [
    "CyclicGroup",
    "DihedralGroup",
    "ImageClassifier",
    "RotationGroup",
    "RotationMeanout",
    "RunModel",
    "TrainConfig",
    "create_model",
    "embed_rotation_meanout",
    "insert_rotation_meanout",
    "list_models",
    "load_run",
    "make_group",
    "register_model",
    "rotation_meanout",
]

if TYPE_CHECKING:
    from rmnet.api import RunModel, load_run
    from rmnet.config import TrainConfig
    from rmnet.groups import CyclicGroup, DihedralGroup, RotationGroup, make_group
    from rmnet.meanout import (
        RotationMeanout,
        embed_rotation_meanout,
        insert_rotation_meanout,
        rotation_meanout,
    )
    from rmnet.models import ImageClassifier, create_model, list_models, register_model


def __getattr__(name: str) -> Any:
    if name not in _EXPORTS:
        raise AttributeError(f"module 'rmnet' has no attribute {name!r}")
    value = getattr(importlib.import_module(_EXPORTS[name]), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted([*globals(), *_EXPORTS])

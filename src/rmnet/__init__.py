"""rmnet: Rotation Meanout networks for rotation-invariant dermoscopy classification and retrieval."""

from rmnet.groups import CyclicGroup, DihedralGroup, make_group
from rmnet.meanout import RotationMeanout, embed_rotation_meanout, rotation_meanout
from rmnet.models import create_model, list_models, register_model

__version__ = "0.1.0"

__all__ = [
    "CyclicGroup",
    "DihedralGroup",
    "RotationMeanout",
    "create_model",
    "embed_rotation_meanout",
    "list_models",
    "make_group",
    "register_model",
    "rotation_meanout",
]

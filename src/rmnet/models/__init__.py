"""Models: the paper's backbones with RM embedded, behind one factory."""

from rmnet.models import gcnn, ti_pooling  # noqa: F401  (registers gcnn_*, ti_pooling_*)
from rmnet.models.factory import create_model, list_models, register_model
from rmnet.models.presets import PRESETS, BackbonePreset
from rmnet.models.rmnet import RMNet, parse_rm_spec

__all__ = [
    "PRESETS",
    "BackbonePreset",
    "RMNet",
    "create_model",
    "list_models",
    "parse_rm_spec",
    "register_model",
]

"""Models: the paper's backbones with RM embedded and the compared methods, behind one factory.

base        ImageClassifier: the contract every model keeps (features, codes, logits)
factory     create_model, register_model: the one registry
presets     the paper's backbones as data (stem, numbered blocks, head, weights)
weights     published weights and the transform they expect
rmnet       RMNet: a preset with RM regions (registers every preset by name)
inserted    a compared method at chosen blocks of a preset (create_model(arch, method=, at=))
gcnn, ti_pooling, …   the compared methods, each registering its own names
"""

from rmnet.models import cycnn, e4net, gcnn, orn, stn, ti_pooling  # noqa: F401  (register the compared methods)
from rmnet.models import rmnet as _rmnet  # noqa: F401  (registers the presets first)
from rmnet.models.base import HashHead, ImageClassifier, unwrap
from rmnet.models.factory import create_model, list_models, model_entry, register_model, unregister_model
from rmnet.models.inserted import METHODS, InsertedNet, allowed_positions
from rmnet.models.presets import PRESETS, BackbonePreset
from rmnet.models.rmnet import RMNet, parse_rm_spec
from rmnet.models.weights import IMAGENET, Weights

__all__ = [
    "IMAGENET",
    "METHODS",
    "InsertedNet",
    "allowed_positions",
    "PRESETS",
    "BackbonePreset",
    "HashHead",
    "ImageClassifier",
    "RMNet",
    "Weights",
    "create_model",
    "list_models",
    "model_entry",
    "parse_rm_spec",
    "register_model",
    "unregister_model",
    "unwrap",
]

"""Training objectives: what the training loop minimises, given the model and a batch.

An objective sees the model, not just its logits, because some need more than one forward
pass (CRI runs rotated copies) or the retrieval codes (the hashing losses). Objectives
register by name, so the config and the command line select them with a string.

    base            the Objective contract, the registry, class weights
    classification  "wce": the paper's weighted cross-entropy
    hashing         "dch", "dpn", "csq", "cri": the deep-hashing objectives of Table 11
"""

from rmnet.objectives import classification, hashing, mwnl, rotation  # noqa: F401  (register the objectives)
from rmnet.objectives.base import (
    Objective,
    build_objective,
    class_weights_from_counts,
    list_objectives,
    register_objective,
)

__all__ = [
    "Objective",
    "build_objective",
    "class_weights_from_counts",
    "list_objectives",
    "register_objective",
]

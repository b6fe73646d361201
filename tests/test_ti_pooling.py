"""TI-pooling: a variant of every preset, exactly invariant to 90° rotations, no added parameter."""

import pytest
import torch

from rmnet import create_model, list_models
from rmnet.groups import CyclicGroup, rotate
from rmnet.models import PRESETS

TINY = dict(width=8)


def test_every_preset_has_a_ti_pooling_variant():
    assert {f"ti_pooling_{name}" for name in PRESETS} <= set(list_models())


@pytest.mark.parametrize("mode", ["train", "eval"])
@pytest.mark.parametrize("g", [1, 2, 3])
def test_ti_pooling_is_invariant_to_quarter_turns_of_the_input(g, mode):
    torch.manual_seed(0)
    model = create_model("ti_pooling_small_cnn", num_classes=4, hash_bits=6, **TINY).train(mode == "train")
    x = torch.randn(3, 3, 16, 16)
    codes, logits = model.forward_codes(x)
    rotated_codes, rotated_logits = model.forward_codes(CyclicGroup(4).act(x, g))
    torch.testing.assert_close(rotated_codes, codes, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(rotated_logits, logits, atol=1e-5, rtol=1e-5)


def test_plain_backbone_is_not_invariant():
    """The invariance above comes from TI-pooling, not from the backbone."""
    torch.manual_seed(0)
    model = create_model("small_cnn", num_classes=4, **TINY).eval()
    x = torch.randn(3, 3, 16, 16)
    assert not torch.allclose(model(CyclicGroup(4).act(x, 1)), model(x), atol=1e-4)


@pytest.mark.parametrize(("name", "options"), [("small_cnn", TINY), ("resnet18", {})])
@pytest.mark.parametrize("hash_bits", [None, 16])
def test_ti_pooling_adds_no_parameter(name, options, hash_bits):
    def count(model):
        return sum(p.numel() for p in model.parameters())

    plain = create_model(name, num_classes=8, hash_bits=hash_bits, **options)
    ti = create_model(f"ti_pooling_{name}", num_classes=8, hash_bits=hash_bits, **options)
    assert count(ti) == count(plain)
    assert ti.state_dict().keys() == plain.state_dict().keys()


def test_ti_pooling_loads_the_plain_backbones_weights(tmp_path):
    plain = create_model("small_cnn", num_classes=3, **TINY)
    torch.save(plain.state_dict(), tmp_path / "plain.pt")
    ti = create_model("ti_pooling_small_cnn", num_classes=3, pretrained=tmp_path / "plain.pt", **TINY)
    for key, value in plain.state_dict().items():
        assert torch.equal(ti.state_dict()[key], value), key


def test_ti_pooling_takes_the_max_over_rotated_copies_of_the_features():
    torch.manual_seed(0)
    ti = create_model("ti_pooling_small_cnn", num_classes=3, **TINY).eval()
    x = torch.randn(2, 3, 16, 16)
    group = CyclicGroup(4)
    per_copy = torch.stack([super(type(ti), ti).forward_features(group.act(x, g)) for g in group.elements])
    torch.testing.assert_close(ti.forward_features(x), per_copy.amax(dim=0))


def test_ti_pooling_with_eight_rotations_maxes_over_copies_at_every_45_degrees():
    torch.manual_seed(0)
    ti = create_model("ti_pooling_small_cnn", num_classes=3, k=8, **TINY).eval()
    plain = create_model("small_cnn", num_classes=3, **TINY).eval()
    plain.load_state_dict(ti.state_dict())  # the same weights, without TI-pooling
    x = torch.randn(2, 3, 16, 16)
    with torch.no_grad():
        per_copy = torch.stack([plain.forward_features(rotate(x, 45.0 * i)) for i in range(8)])
        features = ti.forward_features(x)
        torch.testing.assert_close(features, per_copy.amax(dim=0), atol=1e-5, rtol=1e-5)
        # The 45° copies count: the max over eight copies exceeds the max over the quarter turns.
        assert (features >= per_copy[::2].amax(dim=0) - 1e-6).all()
        assert (features > per_copy[::2].amax(dim=0) + 1e-4).any()
        assert ti(x).shape == (2, 3) and ti.group.order == 8
        # Quarter turns of the input permute the eight copies: exactly invariant to them.
        for quarter_turns in (1, 2, 3):
            rotated = ti.forward_features(torch.rot90(x, quarter_turns, (-2, -1)))
            torch.testing.assert_close(rotated, features, atol=1e-5, rtol=1e-5)


def test_ti_pooling_rejects_rotation_meanout_options():
    with pytest.raises(ValueError, match="rm"):
        create_model("ti_pooling_small_cnn", num_classes=3, rm="all", **TINY)

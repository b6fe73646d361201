"""ORN: active rotating filters are rotation-equivariant; ORAlign and ORPool make ResNet18 invariant."""

import pytest
import torch
import torchvision

from rmnet import create_model
from rmnet.equivariance import check_equivariance, check_invariance, equivariance_errors
from rmnet.groups import CyclicGroup
from rmnet.models.gcnn import GroupConvolution, act_on_group_maps
from rmnet.models.orn import ActiveRotatingFilter, or_align, or_pool, ring_step, rotation_sources

C4 = CyclicGroup(4)


@pytest.mark.parametrize("k", [3, 5, 7])
def test_two_45_degree_ring_steps_are_a_quarter_turn(k):
    step = ring_step(k)
    quarter = torch.rot90(torch.arange(k * k).view(k, k), 1).flatten()
    assert torch.equal(step[step], quarter)
    assert sorted(step.tolist()) == list(range(k * k))  # a permutation


def test_a_45_degree_step_moves_every_border_tap_one_place_counterclockwise():
    kernel = torch.arange(9).view(3, 3)
    turned = kernel.flatten()[rotation_sources(3, 1)].view(3, 3)
    assert turned.tolist() == [[1, 2, 5], [0, 4, 8], [3, 6, 7]]


def test_with_four_orientations_an_arf_is_a_c4_group_convolution():
    torch.manual_seed(0)
    arf = ActiveRotatingFilter(3, 5, 3, orientations=4, padding=1)
    gconv = GroupConvolution(C4, 3, 5, 3, padding=1)
    with torch.no_grad():
        gconv.weight.copy_(arf.weight)
        gconv.bias.zero_()
    x = torch.randn(2, 3 * 4, 9, 9)  # ORN's channels c·N + n are the group maps (c, n) flattened
    torch.testing.assert_close(arf(x), gconv(x.unflatten(1, (3, 4))).flatten(1, 2))


@pytest.mark.parametrize("orientations", [4, 8])
def test_arf_layers_are_equivariant_to_quarter_turns(orientations):
    torch.manual_seed(0)
    n = orientations
    lift = ActiveRotatingFilter(3, 4, 7, orientations=n, in_orientations=1, padding=3)
    arf = ActiveRotatingFilter(4, 2, 3, orientations=n, padding=1)

    def act(y, g):  # a quarter turn of oriented maps: turn the planes, roll orientations by N/4
        return torch.roll(C4.act(y.unflatten(1, (-1, n)), g), g * n // 4, dims=2).flatten(1, 2)

    x = torch.randn(2, 3, 11, 11)
    check_equivariance(lift, C4, x, act_out=act, rtol=1e-5)
    y = lift(x)
    for g in C4.elements:
        torch.testing.assert_close(arf(act(y, g)), act(arf(y), g), atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("orientations", [4, 8])
@pytest.mark.parametrize("invariance", ["align", "pool"])
@pytest.mark.parametrize("mode", ["eval", "train"])
def test_oralign_and_orpool_make_resnet18_invariant_to_quarter_turns(orientations, invariance, mode):
    torch.manual_seed(0)
    model = create_model(
        "orn_resnet18", num_classes=3, orientations=orientations, width=2, invariance=invariance
    )
    model.train(mode == "train")
    check_invariance(model.forward_features, C4, torch.randn(3, 3, 33, 33), rtol=1e-4)


def test_without_alignment_the_features_rotate_their_orientations_instead():
    torch.manual_seed(0)
    model = create_model("orn_resnet18", num_classes=3, width=2, invariance="none").eval()
    x = torch.randn(2, 3, 33, 33)
    roll = lambda y, g: torch.roll(y.unflatten(1, (-1, 4)), g, dims=-1).flatten(1)  # noqa: E731
    check_equivariance(model.forward_features, C4, x, act_out=roll, rtol=1e-4)
    with pytest.raises(AssertionError, match="not equivariant"):
        check_invariance(model.forward_features, C4, x, rtol=1e-4)


def test_invariance_needs_centred_strides_at_33_px_not_32():
    torch.manual_seed(0)
    model = create_model("orn_resnet18", num_classes=3, width=2).eval()
    exact = equivariance_errors(model.forward_features, C4, torch.randn(2, 3, 33, 33), act_out=lambda y, g: y)
    shifted = equivariance_errors(
        model.forward_features, C4, torch.randn(2, 3, 32, 32), act_out=lambda y, g: y
    )
    assert max(exact.values()) < 1e-4 < max(shifted.values())


def test_oralign_rolls_each_feature_to_start_at_its_dominant_orientation():
    pooled = torch.tensor([[0.1, 0.9, 0.3, 0.2, 5.0, 1.0, 2.0, 3.0]])  # two features, N = 4
    torch.testing.assert_close(or_align(pooled, 4), torch.tensor([[0.9, 0.3, 0.2, 0.1, 5.0, 1.0, 2.0, 3.0]]))
    torch.testing.assert_close(or_pool(pooled, 4), torch.tensor([[0.9, 5.0]]))


def test_channel_scaling_keeps_resnet18_weights_at_n4_and_orpool_narrows_the_head():
    align = create_model("orn_resnet18", num_classes=8)
    pool = create_model("orn_resnet18", num_classes=8, invariance="pool")
    assert align.num_features == 256 * 4 and pool.num_features == 256
    assert align.layers[0][0].conv1.weight.shape == (32, 32, 4, 3, 3)


def test_an_unknown_number_of_orientations_is_one_clear_error():
    with pytest.raises(ValueError, match="ORN needs N in"):
        create_model("orn_resnet18", num_classes=3, orientations=6)
    with pytest.raises(ValueError, match="unknown ORN invariance"):
        create_model("orn_resnet18", num_classes=3, invariance="mean")


def test_the_plain_stem_starts_from_imagenet_resnet18_and_an_arf_stem_refuses(tmp_path, monkeypatch):
    monkeypatch.setattr(torch.hub, "get_dir", lambda: str(tmp_path))
    (tmp_path / "checkpoints").mkdir()
    weights = torchvision.models.resnet18().state_dict()
    torch.save(weights, tmp_path / "checkpoints" / "resnet18-f37072fd.pth")
    model = create_model("orn_resnet18", num_classes=3, width=2, stem="plain", pretrained="imagenet")
    assert torch.equal(model.conv1.weight, weights["conv1.weight"])
    assert torch.equal(model.bn1.running_var, weights["bn1.running_var"])
    assert model(torch.randn(1, 3, 33, 33)).shape == (1, 3)
    with pytest.raises(ValueError, match="stem='plain'"):
        create_model("orn_resnet18", num_classes=3, width=2, pretrained="imagenet")


def test_its_own_weights_file_loads(tmp_path):
    model = create_model("orn_resnet18", num_classes=3, width=2)
    torch.save(model.state_dict(), tmp_path / "orn.pt")
    again = create_model("orn_resnet18", num_classes=3, width=2, pretrained=tmp_path / "orn.pt")
    for key, value in model.state_dict().items():
        assert torch.equal(again.state_dict()[key], value), key


def test_group_maps_helper_agrees_with_the_orientation_roll_for_n4():
    y = torch.randn(2, 3 * 4, 5, 5)
    roll = torch.roll(C4.act(y.unflatten(1, (-1, 4)), 1), 1, dims=2).flatten(1, 2)
    torch.testing.assert_close(roll, act_on_group_maps(C4, y.unflatten(1, (-1, 4)), 1).flatten(1, 2))

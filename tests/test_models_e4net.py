"""E4-Net and the C4 GCNN ResNet18: the dynamic E4 layer commutes with C4; both nets are invariant."""

import pytest
import torch

from rmnet import create_model
from rmnet.equivariance import check_equivariance, check_invariance, equivariance_errors
from rmnet.groups import CyclicGroup
from rmnet.models.e4net import E4Convolution
from rmnet.models.gcnn import act_on_group_maps

C4 = CyclicGroup(4)


def group_action(y, g):
    return act_on_group_maps(C4, y, g)


@pytest.mark.parametrize("kernel_size", [3, 5])
def test_the_e4_layer_commutes_with_the_c4_action_on_group_maps(kernel_size):
    torch.manual_seed(0)
    layer = E4Convolution(6, 4, kernel_size=kernel_size).eval()
    y = torch.randn(2, 6, 4, 9, 9)
    for g in C4.elements:
        torch.testing.assert_close(layer(group_action(y, g)), group_action(layer(y), g), atol=1e-5, rtol=1e-5)


def test_the_e4_kernel_of_orientation_r_is_turned_by_r_quarter_turns():
    torch.manual_seed(0)
    layer = E4Convolution(4, 4, kernel_size=3)
    y = torch.randn(1, 4, 4, 1, 1)  # one pixel: same raw values for every orientation plane
    y = y[:, :, :1].expand(-1, -1, 4, -1, -1)
    kernels = layer.kernels(y)[0, :, :, :, 0, 0].unflatten(1, (3, 3))  # (groups, 3, 3, orientation)
    for r in range(4):
        torch.testing.assert_close(kernels[..., r], torch.rot90(kernels[..., 0], r, dims=(1, 2)))


@pytest.mark.parametrize("name", ["e4net_resnet18", "gcnn_resnet18"])
@pytest.mark.parametrize("mode", ["eval", "train"])
def test_features_are_invariant_to_quarter_turns_at_33_px(name, mode):
    torch.manual_seed(0)
    model = create_model(name, num_classes=3, width=2).train(mode == "train")
    check_invariance(model.forward_features, C4, torch.randn(3, 3, 33, 33), rtol=1e-4)


def test_the_group_maps_are_equivariant_and_exactness_needs_centred_strides():
    torch.manual_seed(0)
    model = create_model("e4net_resnet18", num_classes=3, width=2).eval()
    check_equivariance(model.group_maps, C4, torch.randn(2, 3, 33, 33), act_out=group_action, rtol=1e-4)
    errors = equivariance_errors(
        model.forward_features, C4, torch.randn(2, 3, 32, 32), act_out=lambda y, g: y
    )
    assert max(errors.values()) > 1e-3  # 32 px: strided layers sample off-centre grids


def test_e4_layers_need_fewer_weights_than_group_convolutions():
    def count(name):
        return sum(p.numel() for p in create_model(name, num_classes=8).parameters())

    assert count("e4net_resnet18") < 0.7 * count("gcnn_resnet18")


def test_bad_e4_options_are_clear_errors():
    with pytest.raises(ValueError, match="groups of 3"):
        create_model("e4net_resnet18", num_classes=3, width=2, group_channels=3)
    with pytest.raises(ValueError, match="odd kernel"):
        E4Convolution(4, 4, kernel_size=4)

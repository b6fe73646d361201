"""CyCNN: a rotation of the image is a cyclic shift of its polar map, and the network commutes with it."""

import math

import pytest
import torch
import torch.nn.functional as F
import torchvision

from rmnet import create_model
from rmnet.equivariance import check_invariance
from rmnet.groups import CyclicGroup
from rmnet.models.cycnn import CylindricalConv2d, CylindricalMaxPool2d, PolarTransform


def smooth_image(size: int, angle: float = 0.0) -> torch.Tensor:
    """A smooth, asymmetric analytic picture (1, 1, size, size), turned counterclockwise by ``angle``
    degrees exactly (evaluated on the turned coordinates, no resampling)."""
    c = (torch.arange(size) + 0.5) / size * 2 - 1  # pixel centres in [-1, 1], as align_corners=False
    y, x = torch.meshgrid(c, c, indexing="ij")
    t = math.radians(angle)
    u = math.cos(t) * x - math.sin(t) * y  # the point the turn brings to (x, y), y pointing down
    v = math.sin(t) * x + math.cos(t) * y
    image = torch.exp(-((u - 0.3) ** 2 + (v + 0.1) ** 2) / 0.08) + 0.5 * torch.exp(
        -((u + 0.2) ** 2 + v**2) / 0.2
    )
    return image[None, None]


@pytest.mark.parametrize("m", [1, 3, 5])
def test_a_turn_by_a_multiple_of_360_over_the_angle_rows_is_a_cyclic_shift(m):
    angles = 32
    polar = PolarTransform((angles, 16))
    upright = polar(smooth_image(129))
    turned = polar(smooth_image(129, 360.0 * m / angles))
    shifted = torch.roll(upright, m, dims=-2)
    assert (turned - shifted).abs().max() < 0.01 * upright.abs().max()  # bilinear sampling only
    assert (turned - upright).abs().max() > 0.1 * upright.abs().max()  # it did move


def test_quarter_turns_of_the_pixel_grid_are_exact_row_shifts():
    polar = PolarTransform((64, 8))
    x = torch.randn(2, 3, 21, 21)
    for g in (1, 2, 3):
        turned = polar(torch.rot90(x, g, dims=(-2, -1)))
        torch.testing.assert_close(turned, torch.roll(polar(x), 16 * g, dims=-2), atol=1e-4, rtol=0)


def test_cylindrical_convolution_wraps_the_angle_axis_and_zero_pads_the_radius():
    torch.manual_seed(0)
    conv = CylindricalConv2d(2, 3, 3, padding=1, bias=False)
    x = torch.randn(1, 2, 8, 5)
    expected = F.conv2d(F.pad(F.pad(x, (0, 0, 1, 1), mode="circular"), (1, 1, 0, 0)), conv.weight)
    torch.testing.assert_close(conv(x), expected)
    torch.testing.assert_close(conv(torch.roll(x, 3, dims=-2)), torch.roll(conv(x), 3, dims=-2))


def test_strided_cylindrical_layers_commute_with_shifts_by_a_multiple_of_the_stride():
    torch.manual_seed(0)
    conv = CylindricalConv2d(2, 2, 3, stride=2, padding=1)
    pool = CylindricalMaxPool2d(3, 2, 1)
    x = torch.randn(1, 2, 16, 6)
    for layer in (conv, pool):
        torch.testing.assert_close(layer(torch.roll(x, 4, dims=-2)), torch.roll(layer(x), 2, dims=-2))


def test_features_are_invariant_to_quarter_turns_when_the_angle_rows_are_a_multiple_of_128():
    torch.manual_seed(0)
    model = create_model("cycnn_resnet18", num_classes=3, width=4, polar_size=(128, 8)).eval()
    check_invariance(model.forward_features, CyclicGroup(4), torch.randn(2, 3, 33, 33), rtol=1e-4)


def test_log_polar_samples_radii_geometrically():
    grid = PolarTransform((4, 8), log_polar=True).grid
    radii = grid[0, 0, :, 0]  # row 0 looks along +x
    ratios = radii[1:] / radii[:-1]
    torch.testing.assert_close(ratios, ratios[:1].expand_as(ratios))


def test_resnet18_weights_load_unchanged(tmp_path):
    torch.save(torchvision.models.resnet18().state_dict(), tmp_path / "resnet18.pth")
    model = create_model("cycnn_resnet18", num_classes=4, pretrained=tmp_path / "resnet18.pth")
    source = torch.load(tmp_path / "resnet18.pth")
    assert torch.equal(model.backbone.layer3[1].conv2.weight, source["layer3.1.conv2.weight"])
    assert isinstance(model.backbone.layer3[1].conv2, CylindricalConv2d)

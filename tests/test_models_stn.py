"""STN: a rotation-only spatial transformer that starts as the plain network and trains at a lower rate."""

import math

import pytest
import torch

from rmnet import create_model
from rmnet.models.stn import rotate_by
from rmnet.train import parameter_groups


def test_at_initialisation_it_computes_the_plain_resnet18(tmp_path):
    torch.manual_seed(0)
    plain = create_model("resnet18", num_classes=3).eval()
    torch.save(plain.state_dict(), tmp_path / "plain.pt")
    stn = create_model("stn_resnet18", num_classes=3, pretrained=tmp_path / "plain.pt").eval()
    x = torch.randn(2, 3, 33, 33)
    assert torch.equal(stn.localization(x), torch.zeros(2))
    torch.testing.assert_close(stn(x), plain(x), atol=1e-5, rtol=1e-5)


def test_rotate_by_turns_counterclockwise_like_rot90():
    x = torch.randn(2, 3, 9, 9)
    turned = rotate_by(x, torch.tensor([math.pi / 2, 0.0]))
    torch.testing.assert_close(turned[0], torch.rot90(x[0], 1, dims=(-2, -1)), atol=1e-5, rtol=0)
    torch.testing.assert_close(turned[1], x[1], atol=1e-5, rtol=0)


def test_the_angle_is_learnable_from_the_first_step():
    torch.manual_seed(0)
    stn = create_model("stn_resnet18", num_classes=3, width=4)
    stn(torch.randn(2, 3, 33, 33)).sum().backward()
    last = stn.localization.regress[-1]
    assert last.weight.grad.abs().sum() > 0 and last.bias.grad.abs().sum() > 0


def test_the_localisation_network_trains_at_its_own_lower_learning_rate():
    stn = create_model("stn_resnet18", num_classes=3, width=4, lr_scale=0.05)
    groups = parameter_groups(stn, lr=0.1)
    assert groups[0]["lr"] == 0.1 and groups[1]["lr"] == pytest.approx(0.005)
    assert {id(p) for p in groups[1]["params"]} == {id(p) for p in stn.localization.parameters()}
    assert sum(len(g["params"]) for g in groups) == len(list(stn.parameters()))
    plain = parameter_groups(create_model("resnet18", num_classes=3), lr=0.1)
    assert len(plain) == 1


def test_a_bad_learning_rate_scale_is_refused():
    with pytest.raises(ValueError, match="lr_scale"):
        create_model("stn_resnet18", num_classes=3, width=4, lr_scale=0)


def test_the_affine_stn_starts_at_the_identity_matrix_and_computes_the_plain_resnet18(tmp_path):
    torch.manual_seed(0)
    plain = create_model("resnet18", num_classes=3).eval()
    torch.save(plain.state_dict(), tmp_path / "plain.pt")
    stn = create_model("stn_affine_resnet18", num_classes=3, pretrained=tmp_path / "plain.pt").eval()
    x = torch.randn(2, 3, 33, 33)
    identity = torch.tensor([[1.0, 0.0, 0.0], [0.0, 1.0, 0.0]])
    assert torch.equal(stn.localization(x), identity.expand(2, 2, 3))
    torch.testing.assert_close(stn(x), plain(x), atol=1e-5, rtol=1e-5)
    with pytest.raises(TypeError, match="not angles"):
        stn.predicted_angles(x)


def test_the_affine_stn_applies_the_matrix_it_regresses():
    """θ = [[0, −1, 0], [1, 0, 0]] samples output (x, y) at input (−y, x): a quarter turn
    counterclockwise, as rot90; a scale of ½ zooms in on the centre."""
    stn = create_model("stn_affine_resnet18", num_classes=3, width=4)
    last = stn.localization.regress[-1]
    x = torch.randn(2, 3, 8, 8)
    with torch.no_grad():
        last.bias.copy_(torch.tensor([0.0, -1.0, 0.0, 1.0, 0.0, 0.0]))
        torch.testing.assert_close(stn.transform(x), torch.rot90(x, 1, dims=(-2, -1)), atol=1e-5, rtol=0)
        last.bias.copy_(torch.tensor([0.5, 0.0, 0.0, 0.0, 0.5, 0.0]))
        zoomed = stn.transform(x)
    centre = torch.nn.functional.interpolate(x[..., 2:6, 2:6], scale_factor=2, mode="bilinear")
    inner = (..., slice(1, -1), slice(1, -1))  # (interpolate clamps at the crop's edge; the STN reads on)
    torch.testing.assert_close(zoomed[inner], centre[inner], atol=1e-5, rtol=0)
    stn(torch.randn(2, 3, 33, 33)).sum().backward()
    assert last.weight.grad.abs().sum() > 0  # all six parameters learn from the first step

"""The GCNN: every layer commutes with every group element; the network's logits are invariant."""

import pytest
import torch

from rmnet import create_model
from rmnet.groups import CyclicGroup, DihedralGroup
from rmnet.models.gcnn import (
    GroupBatchNorm,
    GroupConvolution,
    GroupEquivariantCNN,
    LiftingConvolution,
    act_on_group_maps,
)

GROUPS = {"C4": CyclicGroup(4), "D4": DihedralGroup(4)}
CASES = [(name, g) for name, group in GROUPS.items() for g in group.elements]
IDS = [f"{name}-g{g}" for name, g in CASES]


@pytest.mark.parametrize("group_name", list(GROUPS))
def test_action_on_group_maps_is_a_group_action(group_name):
    group = GROUPS[group_name]
    f = torch.randn(2, 3, group.order, 7, 7)
    for a in group.elements:
        for b in group.elements:
            composed = act_on_group_maps(group, act_on_group_maps(group, f, b), a)
            assert torch.equal(composed, act_on_group_maps(group, f, group.compose(a, b))), (a, b)
    assert torch.equal(act_on_group_maps(group, f, group.identity), f)


def test_lifting_convolution_adds_a_group_axis():
    lifting = LiftingConvolution(CyclicGroup(4), in_channels=3, out_channels=8, kernel_size=5)
    assert lifting(torch.randn(2, 3, 16, 16)).shape == (2, 8, 4, 12, 12)


@pytest.mark.parametrize("stride", [1, 2])
@pytest.mark.parametrize(("group_name", "g"), CASES, ids=IDS)
def test_lifting_convolution_is_equivariant(group_name, g, stride):
    group = GROUPS[group_name]
    torch.manual_seed(0)
    lifting = LiftingConvolution(
        group, in_channels=3, out_channels=6, kernel_size=5, stride=stride, padding=2
    )
    x = torch.randn(2, 3, 13, 13)  # odd side: a stride-2 grid holds the centre
    expected = act_on_group_maps(group, lifting(x), g)
    torch.testing.assert_close(lifting(group.act(x, g)), expected, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize(("stride", "padding"), [(1, 0), (2, 1)])
@pytest.mark.parametrize(("group_name", "g"), CASES, ids=IDS)
def test_group_convolution_is_equivariant(group_name, g, stride, padding):
    group = GROUPS[group_name]
    torch.manual_seed(0)
    conv = GroupConvolution(
        group, in_channels=4, out_channels=5, kernel_size=3, stride=stride, padding=padding
    )
    f = torch.randn(2, 4, group.order, 11, 11)
    expected = act_on_group_maps(group, conv(f), g)
    torch.testing.assert_close(conv(act_on_group_maps(group, f, g)), expected, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("mode", ["train", "eval"])
@pytest.mark.parametrize(("group_name", "g"), CASES, ids=IDS)
def test_group_batchnorm_is_equivariant(group_name, g, mode):
    group = GROUPS[group_name]
    norm = GroupBatchNorm(4).train(mode == "train")
    with torch.no_grad():
        norm.running_mean.uniform_(-1, 1), norm.weight.uniform_(0.5, 1.5), norm.bias.uniform_(-1, 1)
    f = torch.randn(3, 4, group.order, 5, 5)
    expected = act_on_group_maps(group, norm(f), g)
    torch.testing.assert_close(norm(act_on_group_maps(group, f, g)), expected, atol=1e-5, rtol=1e-5)


def test_group_axis_really_moves_under_rotation():
    """The test above is not vacuous: rotating the input does not just rotate each plane."""
    group = CyclicGroup(4)
    torch.manual_seed(0)
    lifting = LiftingConvolution(group, 3, 6, kernel_size=5)
    x = torch.randn(1, 3, 13, 13)
    planes_rotated_only = group.act(lifting(x), 1)
    assert not torch.allclose(lifting(group.act(x, 1)), planes_rotated_only, atol=1e-3)


LAYOUTS = {
    "small_cnn_layout": dict(width=4),  # strides 1, 2, 2, 1 and group BatchNorm
    "blog_layout": dict(width=4, strides=(1, 1, 1), padding=0, norm="layer"),
}


@pytest.mark.parametrize("mode", ["train", "eval"])
@pytest.mark.parametrize("layout", list(LAYOUTS))
@pytest.mark.parametrize(("name", "g"), [(f"gcnn_{n.lower()}", g) for n, g in CASES], ids=IDS)
def test_gcnn_logits_are_invariant_to_every_group_element(name, g, layout, mode):
    torch.manual_seed(0)
    model = create_model(name, num_classes=10, **LAYOUTS[layout]).train(mode == "train")
    x = torch.randn(3, 3, 17, 17)  # 17 ≡ 1 (mod 4): both stride-2 layers are exact
    logits = model(x)
    torch.testing.assert_close(model(model.group.act(x, g)), logits, atol=1e-5, rtol=1e-5)
    assert logits.std() > 1e-3  # not trivially constant


def test_gcnn_is_not_invariant_to_a_45_degree_rotation():
    """C4 invariance is what it is: 45° lies outside the group."""
    torch.manual_seed(0)
    model = create_model("gcnn_c4", num_classes=10, width=4).train()
    x = torch.randn(4, 3, 17, 17)
    logits = model(x)
    change_45 = (model(CyclicGroup(8).act(x, 1)) - logits).abs().max()
    change_90 = (model(CyclicGroup(4).act(x, 1)) - logits).abs().max()
    assert change_45 > 1e-2 and change_45 > 1e3 * change_90


def test_gcnn_offers_codes_embed_and_hash_layer():
    model = create_model("gcnn_c4", num_classes=5, in_chans=1, width=4, strides=(1, 2), hash_bits=6)
    x = torch.randn(2, 1, 13, 13)
    codes, logits = model.forward_codes(x)
    assert codes.shape == (2, 6) and logits.shape == (2, 5)
    torch.testing.assert_close(model.embed(x), codes)
    assert model.forward_features(x).shape == (2, model.num_features)


def test_gcnn_learns_a_tiny_problem():
    torch.manual_seed(0)
    model = GroupEquivariantCNN(
        CyclicGroup(4), num_classes=2, in_chans=1, width=8, strides=(1, 1), kernel_size=3
    )
    x = torch.randn(16, 1, 9, 9)
    x[:8, :, 3:6, 3:6] += 3.0  # class 1: a bright centre
    y = torch.tensor([1] * 8 + [0] * 8)
    optimizer = torch.optim.Adam(model.parameters(), lr=0.05)
    losses = []
    for _ in range(30):
        loss = torch.nn.functional.cross_entropy(model(x), y)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
    assert losses[-1] < 0.1 * losses[0]
    assert (model(x).argmax(dim=1) == y).all()


def test_group_convolutions_reject_groups_that_interpolate():
    with pytest.raises(ValueError, match="multiples of 90"):
        LiftingConvolution(CyclicGroup(8), 3, 4)


def test_gcnn_names_the_norms_it_knows():
    with pytest.raises(ValueError, match="batch, layer"):
        create_model("gcnn_c4", num_classes=10, norm="group")


def test_gcnn_refuses_pretrained_weights_it_cannot_use():
    with pytest.raises(ValueError, match="pretrained"):
        create_model("gcnn_c4", num_classes=10, pretrained=True)

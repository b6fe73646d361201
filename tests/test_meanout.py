"""RotationMeanout: equivariance for every group element, fusion and mode; the paper's ablations."""

import itertools

import pytest
import torch
from torch import nn
from torchvision.models.resnet import BasicBlock

from rmnet import RotationMeanout, insert_rotation_meanout
from rmnet.groups import make_group


def conv_bn_block() -> nn.Module:
    """Stride, padding and BatchNorm: not equivariant on its own (stride-2 grids shift)."""
    return nn.Sequential(nn.Conv2d(3, 8, 3, stride=2, padding=1), nn.BatchNorm2d(8), nn.ReLU())


def residual_block() -> nn.Module:
    """torchvision's BasicBlock with a strided, projecting shortcut."""
    down = nn.Sequential(nn.Conv2d(3, 8, 1, stride=2, bias=False), nn.BatchNorm2d(8))
    return BasicBlock(3, 8, stride=2, downsample=down)


def two_blocks() -> nn.Module:
    return nn.Sequential(residual_block(), BasicBlock(8, 8))


BLOCKS = {"conv_bn": conv_bn_block, "residual": residual_block, "two_blocks": two_blocks}


def perturb_batchnorm(module: nn.Module) -> nn.Module:
    """Give BatchNorm non-trivial statistics and affine parameters, so eval mode tests something."""
    torch.manual_seed(1)
    for m in module.modules():
        if isinstance(m, nn.BatchNorm2d):
            m.running_mean.uniform_(-0.5, 0.5)
            m.running_var.uniform_(0.5, 2.0)
            nn.init.uniform_(m.weight, 0.5, 1.5)
            nn.init.uniform_(m.bias, -0.5, 0.5)
    return module


@pytest.mark.parametrize("block_name", list(BLOCKS))
@pytest.mark.parametrize("fusion", ["mean", "max"])
@pytest.mark.parametrize("dihedral", [False, True], ids=["C4", "D4"])
@pytest.mark.parametrize("mode", ["train", "eval"])
def test_rm_is_equivariant_for_every_group_element(block_name, fusion, dihedral, mode):
    torch.manual_seed(0)
    rm = RotationMeanout(perturb_batchnorm(BLOCKS[block_name]()), k=4, fusion=fusion, dihedral=dihedral)
    rm.train(mode == "train")
    x = torch.randn(3, 3, 12, 12)
    y = rm(x)
    for g in rm.group.elements:
        assert torch.allclose(rm(rm.group.act(x, g)), rm.group.act(y, g), atol=1e-5), g


@pytest.mark.parametrize("fusion", ["mean", "max"])
def test_global_average_pool_after_rm_is_rotation_invariant(fusion):
    rm = RotationMeanout(perturb_batchnorm(two_blocks()), fusion=fusion).eval()
    x = torch.randn(2, 3, 16, 16)
    pooled = rm(x).mean(dim=(-2, -1))
    for quarter_turns in range(1, 4):
        rotated = torch.rot90(x, quarter_turns, dims=(-2, -1))
        assert torch.allclose(rm(rotated).mean(dim=(-2, -1)), pooled, atol=1e-5)


def test_a_plain_block_is_not_equivariant_so_the_tests_above_mean_something():
    block = perturb_batchnorm(two_blocks()).eval()
    x = torch.randn(2, 3, 16, 16)
    error = (block(torch.rot90(x, 1, (-2, -1))) - torch.rot90(block(x), 1, (-2, -1))).abs().max()
    assert error > 1e-2


@pytest.mark.parametrize("fusion", ["mean", "max"])
def test_mean_and_max_fusion_add_no_parameter_and_keep_the_output_shape(fusion):
    block = residual_block()
    rm = RotationMeanout(block, fusion=fusion)
    assert sum(p.numel() for p in rm.parameters()) == sum(p.numel() for p in block.parameters())
    x = torch.randn(2, 3, 10, 10)
    assert rm(x).shape == block(x).shape == (2, 8, 5, 5)


def test_embedding_fusion_adds_a_1x1_conv_that_starts_as_the_mean():
    torch.manual_seed(0)
    block = perturb_batchnorm(residual_block()).eval()
    mean_rm = RotationMeanout(block, fusion="mean").eval()
    emb_rm = RotationMeanout(block, fusion="embedding", channels=8).eval()
    added = sum(p.numel() for p in emb_rm.parameters()) - sum(p.numel() for p in block.parameters())
    assert added == 4 * 8 * 8 + 8
    x = torch.randn(2, 3, 10, 10)
    assert torch.allclose(emb_rm(x), mean_rm(x), atol=1e-5)
    with pytest.raises(ValueError, match="channels"):
        RotationMeanout(block, fusion="embedding")


def test_batched_copies_equal_one_call_per_rotation_in_eval_mode():
    block = perturb_batchnorm(two_blocks()).eval()
    rm = RotationMeanout(block).eval()
    x = torch.randn(2, 3, 12, 12)
    one_by_one = torch.stack(
        [torch.rot90(block(torch.rot90(x, i, (-2, -1))), -i, (-2, -1)) for i in range(4)]
    )
    assert torch.allclose(rm(x), one_by_one.mean(0), atol=1e-6)


def test_batchnorm_updates_its_running_statistics_once_per_step():
    block = conv_bn_block()
    rm = RotationMeanout(block).train()
    rm(torch.randn(2, 3, 8, 8))
    assert block[1].num_batches_tracked.item() == 1


def test_no_rotation_ablation_rm_wr_equals_the_plain_block_and_is_not_equivariant():
    block = perturb_batchnorm(two_blocks()).eval()
    wr = RotationMeanout(block, rotate=False).eval()
    x = torch.randn(2, 3, 12, 12)
    assert torch.allclose(wr(x), block(x), atol=1e-6)
    rotated = torch.rot90(x, 1, (-2, -1))
    assert (wr(rotated) - torch.rot90(wr(x), 1, (-2, -1))).abs().max() > 1e-2


def test_no_weight_sharing_ablation_rm_nws_has_k_independent_copies():
    block = perturb_batchnorm(residual_block()).eval()
    nws = RotationMeanout(block, share_weights=False).eval()
    block_params = sum(p.numel() for p in block.parameters())
    assert sum(p.numel() for p in nws.parameters()) == 4 * block_params
    x = torch.randn(2, 3, 10, 10)
    assert torch.allclose(nws(x), RotationMeanout(block).eval()(x), atol=1e-6)  # equal at the start
    with torch.no_grad():
        for p in nws.extra_branches[0].parameters():
            p.add_(0.1 * torch.randn_like(p))
    rotated = torch.rot90(x, 1, (-2, -1))
    assert (nws(rotated) - torch.rot90(nws(x), 1, (-2, -1))).abs().max() > 1e-3
    nws.train()
    nws(x).sum().backward()
    assert all(p.grad is not None for p in nws.extra_branches.parameters())


# Measured relative equivariance error of interpolated RM (see docs/meanout.md), with margin.
INTERPOLATED_BOUND = {6: 0.10, 8: 0.10}


@pytest.mark.parametrize("padding", ["none", "full"])
@pytest.mark.parametrize("k", [6, 8])
def test_interpolated_rm_is_equivariant_within_the_documented_bound(k, padding):
    torch.manual_seed(0)
    block = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.ReLU(), nn.Conv2d(8, 8, 3, padding=1)).eval()
    rm = RotationMeanout(block, k=k, padding=padding).eval()
    x = torch.nn.functional.avg_pool2d(torch.randn(2, 3, 36, 36), 3, 1, 1)  # smooth maps, as in a CNN
    y = rm(x)
    assert y.shape == block(x).shape
    inner = slice(6, -6)  # compare away from the border the rotated square cuts off
    for g in list(rm.group.elements)[1:]:
        lhs, rhs = rm(rm.group.act(x, g)), rm.group.act(y, g)
        err = (lhs - rhs)[..., inner, inner].abs().mean() / rhs[..., inner, inner].abs().mean()
        assert err < INTERPOLATED_BOUND[k], (g, err)


@pytest.mark.parametrize("padding", ["none", "full"])
@pytest.mark.parametrize("size", [20, 21])
def test_interpolated_rm_stays_exact_for_the_quarter_turns_its_group_contains(size, padding):
    """C8 contains the 90° rotations; the padding crop must be centred for them to stay exact."""
    torch.manual_seed(0)
    block = nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), nn.ReLU(), nn.Conv2d(4, 4, 3, stride=2, padding=1))
    rm = RotationMeanout(block.eval(), k=8, padding=padding).eval()
    x = torch.randn(2, 3, size, size)
    y = rm(x)
    for quarter_turns in range(1, 4):
        rotated = torch.rot90(x, quarter_turns, (-2, -1))
        assert torch.allclose(rm(rotated), torch.rot90(y, quarter_turns, (-2, -1)), atol=1e-5)


def test_full_padding_keeps_content_at_the_corners():
    """Zero-padding before rotating means the corners survive the round trip."""
    rm = RotationMeanout(nn.Identity(), k=8, padding="full").eval()
    x = torch.ones(1, 1, 16, 16)
    corner = rm(x)[0, 0, 0, 0]
    assert corner > 0.7


def test_rm_on_a_non_square_map_names_the_shape_and_the_fix():
    rm = RotationMeanout(nn.Identity())
    with pytest.raises(ValueError, match=r"square feature maps.*\(1, 2, 6, 8\)"):
        rm(torch.zeros(1, 2, 6, 8))
    with pytest.raises(ValueError, match=r"\(B, C, H, W\)"):
        rm(torch.zeros(2, 6, 6))


def test_unknown_fusion_is_rejected():
    with pytest.raises(ValueError, match="unknown fusion 'sum'"):
        RotationMeanout(nn.Identity(), fusion="sum")


def test_insert_rotation_meanout_wraps_modules_of_any_cnn_by_path():
    model = nn.Sequential(conv_bn_block(), nn.Sequential(nn.Conv2d(8, 8, 3, padding=1), nn.ReLU()))
    insert_rotation_meanout(model, ["1"], k=4)
    assert isinstance(model[1], RotationMeanout)
    with pytest.raises(ValueError, match="no module 'nope'"):
        insert_rotation_meanout(model, ["nope"])


def test_group_elements_match_k_and_the_dihedral_option():
    assert len(list(RotationMeanout(nn.Identity(), k=4).group.elements)) == 4
    assert len(list(RotationMeanout(nn.Identity(), k=4, dihedral=True).group.elements)) == 8


@pytest.mark.parametrize("dihedral", [False, True], ids=["C4", "D4"])
def test_composed_element_acts_as_the_two_actions_one_after_the_other(dihedral):
    """compose(a, b) is "b first, then a": its action on a map is act(act(x, b), a)."""
    group = make_group(4, dihedral=dihedral)
    x = torch.randn(2, 3, 6, 6)  # no symmetry, so distinct elements act differently
    images = [group.act(x, g) for g in group.elements]
    for a, b in itertools.product(group.elements, repeat=2):
        assert torch.equal(group.act(x, group.compose(a, b)), group.act(group.act(x, b), a)), (a, b)
        assert torch.equal(group.act(group.act(x, a), group.inverse(a)), x), a
    pairs = itertools.combinations(range(len(images)), 2)
    assert all(not torch.equal(images[i], images[j]) for i, j in pairs)


# The interpolating paths: padding="none" (the default, the map keeps its size) and "full".
PADDINGS = ["none", "full"]


@pytest.mark.parametrize("padding", PADDINGS)
@pytest.mark.parametrize("fusion", ["mean", "max"])
@pytest.mark.parametrize("dihedral", [False, True], ids=["C8", "D8"])
@pytest.mark.parametrize("mode", ["train", "eval"])
def test_interpolated_rm_is_exact_for_the_quarter_turns_in_every_mode(padding, fusion, dihedral, mode):
    """Strides, BatchNorm and a shortcut, train and eval mode, mean and max: the quarter turns
    inside C8 (and the mirrors inside D8) stay exact to float rounding, whatever the padding."""
    torch.manual_seed(0)
    block = perturb_batchnorm(two_blocks())
    rm = RotationMeanout(block, k=8, fusion=fusion, dihedral=dihedral, padding=padding).train(mode == "train")
    x = torch.randn(3, 3, 13, 13)
    y = rm(x)
    exact = [g for g in rm.group.elements if rm.group.angle(g) % 90 == 0]
    assert len(exact) == (8 if dihedral else 4)
    for g in exact:
        assert torch.allclose(rm(rm.group.act(x, g)), rm.group.act(y, g), atol=1e-5), g


def test_padding_none_keeps_the_map_size_and_costs_half_of_full_padding():
    """Every copy runs at the input's size (no ⌈√2·side⌉ padding): 8 copies, not 8 padded ones."""
    seen = []
    block = nn.Conv2d(1, 1, 3, padding=1)
    block.register_forward_hook(lambda module, args, out: seen.append(tuple(args[0].shape)))
    x = torch.randn(2, 1, 21, 21)
    for padding in PADDINGS:
        assert RotationMeanout(block, k=8, padding=padding)(x).shape == x.shape
    assert seen == [(16, 1, 21, 21), (16, 1, 31, 31)]


@pytest.mark.parametrize("fusion", ["mean", "max", "embedding"])
def test_padding_none_keeps_content_at_the_corners(fusion):
    """Where a 45° copy leaves the map, the copies that cover the pixel fill it in: an identity
    block returns a constant map unchanged, corners included, whatever the fusion."""
    rm = RotationMeanout(nn.Identity(), k=8, fusion=fusion, channels=2).eval()
    x = torch.full((1, 2, 16, 16), 3.0)
    torch.testing.assert_close(rm(x), x)


def test_padding_none_mean_is_the_coverage_weighted_mean_of_the_copies():
    """Interior pixels: the plain mean of all 8 copies; a corner: the mean of the 4 quarter turns."""
    torch.manual_seed(0)
    block = nn.Sequential(nn.Conv2d(2, 4, 3, padding=1), nn.ReLU()).eval()
    x = torch.randn(1, 2, 17, 17)
    group = make_group(8)
    copies = torch.stack([group.act(block(group.act(x, g)), group.inverse(g)) for g in group.elements])
    y = RotationMeanout(block, k=8).eval()(x)
    torch.testing.assert_close(y[..., 8, 8], copies[..., 8, 8].mean(0))
    torch.testing.assert_close(y[..., 0, 0], copies[::2, ..., 0, 0].mean(0))
    max_rm = RotationMeanout(block, k=8, fusion="max").eval()
    torch.testing.assert_close(max_rm(x)[..., 8, 8], copies[..., 8, 8].amax(0))


@pytest.mark.parametrize("padding", PADDINGS)
def test_interpolated_rm_runs_backward_and_updates_batchnorm_once(padding):
    block = conv_bn_block()
    rm = RotationMeanout(block, k=8, padding=padding).train()
    rm(torch.randn(2, 3, 9, 9)).square().mean().backward()
    assert block[1].num_batches_tracked.item() == 1
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in block.parameters())


def test_k6_works_with_either_padding_and_unknown_padding_is_rejected():
    x = torch.randn(2, 3, 12, 12)
    block = nn.Conv2d(3, 4, 3, padding=1).eval()
    outputs = [RotationMeanout(block, k=6, padding=p).eval()(x) for p in PADDINGS]
    assert all(out.shape == (2, 4, 12, 12) for out in outputs)
    inner = slice(4, -4)  # away from the corners the two paddings agree up to the blocks' borders
    assert torch.allclose(outputs[0][..., inner, inner], outputs[1][..., inner, inner], atol=1e-4)
    with pytest.raises(ValueError, match="unknown padding 'corners'"):
        RotationMeanout(block, k=8, padding="corners")


def test_c8_on_a_non_square_map_names_the_shape():
    with pytest.raises(ValueError, match=r"square feature maps.*\(1, 2, 6, 8\)"):
        RotationMeanout(nn.Identity(), k=8)(torch.zeros(1, 2, 6, 8))


def test_the_old_name_embed_rotation_meanout_still_works_and_warns():
    from rmnet import embed_rotation_meanout

    model = nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), nn.Conv2d(4, 4, 3, padding=1))
    with pytest.warns(DeprecationWarning, match="insert_rotation_meanout"):
        embed_rotation_meanout(model, ["1"], k=4)
    assert isinstance(model[1], RotationMeanout)


@pytest.mark.parametrize("padding", PADDINGS)
def test_interpolated_rm_runs_under_cpu_bfloat16_autocast(padding):
    """AMP: RM over bfloat16 maps (the rotations by 45° resample in float32: rmnet.groups)."""
    torch.manual_seed(0)
    block = nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), nn.BatchNorm2d(4), nn.ReLU())
    rm = RotationMeanout(block, k=8, padding=padding).train()
    x = torch.randn(2, 3, 12, 12)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        y = rm(nn.functional.conv2d(x, torch.eye(3)[:, :, None, None]))  # bfloat16 maps, as inside AMP
        assert y.dtype in (torch.bfloat16, torch.float32)
    y.float().sum().backward()
    reference = RotationMeanout(block, k=8, padding=padding).train()(x)
    assert torch.allclose(y.float(), reference, atol=0.1)

"""The rotation groups: group laws, and actions on feature maps that respect them."""

import itertools

import pytest
import torch

from rmnet.groups import CyclicGroup, DihedralGroup, act_all, make_group, mirror, rotate

GROUPS = [CyclicGroup(4), CyclicGroup(2), CyclicGroup(8), DihedralGroup(4), DihedralGroup(8)]
EXACT_GROUPS = [g for g in GROUPS if g.is_exact]


@pytest.mark.parametrize("group", GROUPS, ids=repr)
def test_group_laws_identity_inverse_associativity(group):
    e = group.identity
    for a in group.elements:
        assert group.compose(e, a) == a == group.compose(a, e)
        assert group.compose(a, group.inverse(a)) == e == group.compose(group.inverse(a), a)
    for a, b, c in itertools.product(group.elements, repeat=3):
        assert group.compose(group.compose(a, b), c) == group.compose(a, group.compose(b, c))


def test_group_orders_and_exactness():
    assert CyclicGroup(4).order == 4 and DihedralGroup(4).order == 8
    assert CyclicGroup(4).is_exact and DihedralGroup(4).is_exact and CyclicGroup(2).is_exact
    assert not CyclicGroup(8).is_exact and not CyclicGroup(6).is_exact
    assert make_group(4, dihedral=True) == DihedralGroup(4)
    with pytest.raises(ValueError, match="k >= 1"):
        CyclicGroup(0)


@pytest.mark.parametrize("group", EXACT_GROUPS, ids=repr)
def test_exact_action_is_a_homomorphism(group):
    x = torch.randn(2, 3, 7, 7)
    for a, b in itertools.product(group.elements, repeat=2):
        assert torch.equal(group.act(group.act(x, b), a), group.act(x, group.compose(a, b)))


def test_dihedral_group_is_not_commutative_and_mirrors_are_involutions():
    d4 = DihedralGroup(4)
    r, m = 1, 4  # rotation by 90°, and the mirror
    assert d4.compose(r, m) != d4.compose(m, r)
    for g in range(4, 8):
        assert d4.is_mirrored(g) and d4.inverse(g) == g
    x = torch.randn(1, 1, 5, 5)
    assert torch.equal(d4.act(x, m), mirror(x))


def test_rotation_by_90_degrees_is_counterclockwise_and_exact():
    x = torch.tensor([[1.0, 2.0], [3.0, 4.0]])
    assert torch.equal(rotate(x, 90), torch.tensor([[2.0, 4.0], [1.0, 3.0]]))
    assert torch.equal(rotate(rotate(x, 90), 270), x)
    assert torch.equal(rotate(x, -90), rotate(x, 270))


@pytest.mark.parametrize("size", [8, 9])
def test_interpolated_rotation_agrees_with_exact_rotation_at_90_degrees(size):
    from rmnet.groups import _rotate_bilinear

    x = torch.randn(2, 3, size, size)
    assert torch.allclose(_rotate_bilinear(x, 90.0), rotate(x, 90), atol=1e-5)


def test_interpolated_rotation_keeps_the_centre_of_a_smooth_map():
    yy, xx = torch.meshgrid(torch.linspace(-1, 1, 33), torch.linspace(-1, 1, 33), indexing="ij")
    disc = torch.exp(-(xx**2 + yy**2) / 0.1)  # rotation-symmetric
    assert torch.allclose(rotate(disc, 45), disc, atol=2e-2)


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_a_half_precision_map_rotates_as_in_float32_rounded_once(dtype):
    """Under AMP the maps are half precision; the rotation resamples them in float32, so the only
    error is the final rounding (a half-precision sampling grid would misplace pixels)."""
    x = torch.rand(2, 3, 24, 24).to(dtype)
    rotated = rotate(x, 45)
    assert rotated.dtype == dtype
    reference = rotate(x.float(), 45)
    assert torch.equal(rotated, reference.to(dtype))


def test_exact_rotation_of_a_non_square_map_says_what_to_do():
    with pytest.raises(ValueError, match=r"non-square feature map of shape \(1, 4, 6\)"):
        rotate(torch.zeros(1, 4, 6), 90)
    assert rotate(torch.zeros(1, 4, 6), 180).shape == (1, 4, 6)


def test_act_all_stacks_every_element():
    group = DihedralGroup(4)
    x = torch.randn(2, 3, 5, 5)
    stacked = act_all(group, x)
    assert stacked.shape == (8, 2, 3, 5, 5)
    assert torch.equal(stacked[5], group.act(x, 5))

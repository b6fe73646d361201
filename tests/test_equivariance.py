"""rmnet.equivariance: the shared check every equivariant model's tests use must itself catch failures."""

import pytest
import torch
from torch import nn

from rmnet.equivariance import check_equivariance, check_invariance, equivariance_errors
from rmnet.groups import CyclicGroup, DihedralGroup
from rmnet.meanout import RotationMeanout


def test_a_pointwise_map_is_equivariant_under_every_element_of_d4():
    x = torch.randn(2, 3, 9, 9)
    errors = check_equivariance(torch.relu, DihedralGroup(4), x)
    assert set(errors) == set(range(8)) and max(errors.values()) == 0


def test_a_plain_convolution_fails_the_check_and_rm_around_it_passes():
    torch.manual_seed(0)
    conv = nn.Conv2d(3, 4, 3, padding=1).eval()
    x = torch.randn(2, 3, 9, 9)
    with pytest.raises(AssertionError, match="not equivariant under CyclicGroup"):
        check_equivariance(conv, CyclicGroup(4), x)
    check_equivariance(RotationMeanout(conv, k=4).eval(), CyclicGroup(4), x, rtol=1e-5)


def test_invariance_compares_with_the_unmoved_output():
    pooled = lambda x: x.mean(dim=(-2, -1))  # noqa: E731
    check_invariance(pooled, CyclicGroup(4), torch.randn(2, 3, 8, 8))
    first_row = lambda x: x[..., 0, :].sum(-1)  # noqa: E731
    errors = equivariance_errors(first_row, CyclicGroup(4), torch.randn(2, 3, 8, 8), act_out=lambda y, g: y)
    assert errors[0] == 0 and min(errors[g] for g in (1, 2, 3)) > 1e-3

"""Checks that a module commutes with a rotation group: the definition, applied.

For every group element g, compare f(g·x) with g·f(x) (equivariance) or with f(x)
(invariance). Every equivariant model's tests call these, as escnn's ``check_equivariance``
does for its modules.
"""

from __future__ import annotations

from collections.abc import Callable

import torch

from rmnet.groups import RotationGroup

Action = Callable[[torch.Tensor, int], torch.Tensor]


def _relative_error(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a - b).abs().max() / b.abs().max().clamp_min(1e-12))


@torch.no_grad()
def equivariance_errors(
    f: Callable[[torch.Tensor], torch.Tensor],
    group: RotationGroup,
    x: torch.Tensor,
    act_out: Action | None = None,
) -> dict[int, float]:
    """max |f(g·x) − g·f(x)| / max |g·f(x)| for every element g (``act_out`` defaults to the
    group's own action on the output; pass ``lambda y, g: y`` to check invariance)."""
    act_out = group.act if act_out is None else act_out
    fx = f(x)
    return {g: _relative_error(f(group.act(x, g)), act_out(fx, g)) for g in group.elements}


def check_equivariance(
    f: Callable[[torch.Tensor], torch.Tensor],
    group: RotationGroup,
    x: torch.Tensor,
    *,
    act_out: Action | None = None,
    rtol: float = 1e-4,
) -> dict[int, float]:
    """Assert f(g·x) = g·f(x) for every g up to ``rtol`` (relative to the output's magnitude)."""
    errors = equivariance_errors(f, group, x, act_out)
    bad = {g: e for g, e in errors.items() if not e <= rtol}
    if bad:
        raise AssertionError(f"not equivariant under {group}: relative errors {bad} exceed {rtol}")
    return errors


def check_invariance(
    f: Callable[[torch.Tensor], torch.Tensor], group: RotationGroup, x: torch.Tensor, *, rtol: float = 1e-4
) -> dict[int, float]:
    """Assert f(g·x) = f(x) for every g up to ``rtol``: e.g. a model's logits or codes."""
    return check_equivariance(f, group, x, act_out=lambda y, g: y, rtol=rtol)

"""The independent check of a Jacobian-vector product: central finite differences of f."""

from __future__ import annotations

import copy

import torch

from taskvec.linearization import jvp


def assert_jvp_matches_finite_differences(model: torch.nn.Module, batch: dict, eps: float = 1e-6, seed: int = 1) -> None:
    """taskvec's (f, J·v) at the model's float64 weights against f itself and (f(θ+εv) − f(θ−εv)) / 2ε."""
    params = {n: p.detach() for n, p in model.named_parameters()}
    g = torch.Generator().manual_seed(seed)
    direction = {n: torch.randn(p.shape, generator=g, dtype=p.dtype) for n, p in params.items()}
    with torch.no_grad():  # inference mode: nn.MultiheadAttention would take its fused fast path
        primal, tangent = jvp(model, params, direction, batch)

    def shifted(step: float) -> torch.Tensor:
        moved = copy.deepcopy(model)
        with torch.no_grad():
            for n, p in moved.named_parameters():
                p.add_(direction[n], alpha=step)
            return moved(**batch)

    torch.testing.assert_close(primal, model(**batch))
    torch.testing.assert_close(tangent, (shifted(eps) - shifted(-eps)) / (2 * eps), rtol=1e-5, atol=1e-7)

"""Linearization: f_lin(x; θ) = f(x; θ0) + J(x; θ0)(θ − θ0), one Jacobian-vector product.

`linearize(backbone)` returns a `LinearizedBackbone` whose trainable parameters θ have the
same names as the backbone's, start at θ0, and can be fine-tuned with the same loop as the
non-linear model. θ0 is a frozen copy. The head is never linearized (it sits outside).

Speed (benchmarks/bench_linearized_step.py, docs/benchmarks.md). A linearized training step
runs the forward pass with dual numbers (primal and tangent) and back-propagates through the
tangent computation. Two things in `jvp` make that cheaper without changing what is computed:

* Normalization layers (and, since, attention, linear layers and GELU: see their section
  `tangent_rules.py`) get hand-written tangent rules (`_TangentRules`). PyTorch's
  built-in forward-AD formulas for `layer_norm` and `batch_norm` are generic, and autograd
  then back-propagates through each of their element-wise operations. The tangent of a
  normalization is linear in the tangents of (input, weight, bias), and its adjoint is exactly
  the layer's ordinary backward at the primal point, so here the tangent is computed in a few
  fused passes and differentiated by the single fused `native_layer_norm_backward` /
  `native_batch_norm_backward` kernel. BatchNorm is covered in inference mode only (running
  statistics, as `Backbone.train()` keeps it); anything else uses PyTorch's own formulas.
  Measured on CPU: a LayerNorm of MiniLM's size, 14 ms -> 5.5 ms for tangent + its backward;
  an EfficientNet-Lite0 step at 224 px, about 12% less time.
* On CPU, 4-D floating inputs of a module that has `Conv2d` layers are passed in the
  channels-last memory format (same values, other strides): oneDNN's convolutions, the
  depthwise ones above all, are faster in that layout, for the three convolutions (primal and
  two tangent terms) and their backward. EfficientNet-Lite0 step at 32 px: about 15% less time.

An alternative that was measured and dropped: a custom autograd.Function computing f_lin's
gradient as the VJP J(θ0)ᵀg from the primal graph instead of through the tangent operations.
It needs either a dual pass with the primal graph recorded (autograd then also records every
tangent operation, for higher-order derivatives) or a second primal pass; both were 5-15%
slower than back-propagating through the tangents. `torch.func.jvp` (see `func_jvp`) computes
the same dual numbers with an extra layer of wrapping per operation, and is not faster.

The package: `dual` (dual numbers and `jvp`, the product every linearized forward computes),
`tangent_rules` (the fused tangent rules `jvp` routes layers to) and `backbone`
(`LinearizedBackbone`, `linearize`, and `func_jvp`, the independent reference).
"""

from __future__ import annotations

from .backbone import LinearizedBackbone, func_jvp, linearize
from .dual import LazyTensors, Params, forward_ad_safe_attention, jvp, preferred_layout

__all__ = ["LazyTensors", "LinearizedBackbone", "Params", "forward_ad_safe_attention", "func_jvp", "jvp", "linearize", "preferred_layout"]

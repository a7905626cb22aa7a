"""TAK's dataless curvature: each task's Kronecker factors at θ0 and the penalty built from the others'.

TAK (Porrello et al., ICLR 2026, arXiv 2602.17385) fine-tunes f_lin and keeps τ_t from moving
the other tasks' representations, without their data: every task ships the KFAC factors of
its own representation drift at θ0, and a fine-tune is penalized by the sum of the other
tasks' quadratic forms. What the official code (aimagelab/mammoth, `models/tak.py` and
`models/tak_utils/`, read at e75a491) computes, and what this module does:

* Layers: the `nn.Linear` modules whose weight or bias is fine-tuned (`fisher_kfac.py:69-78`,
  hooks `fisher_kfac.py:21-48`); the official CLIP backbone splits attention into linear
  `attn.qkv`/`attn.proj` modules, so attention is covered. Here: every `nn.Linear` outside
  `nn.MultiheadAttention` (whose fused projections never call their modules; open_clip's
  attention is therefore not trained by this mode), and, with the `convs = "kfac"` setting,
  every `nn.Conv2d` with groups = 1 through its unfolded patches (Grosse & Martens' KFC,
  the usual KFAC for convolutions). The official code fine-tunes no convolution
  (`tak.py:96-100`, `ft_conv` default 0: CLIP's patch embedding is frozen); EfficientNet is
  mostly convolutions, hence the setting; depthwise convolutions (groups > 1) stay frozen.
  Official differences left out: LayerNorm weights and CLIP's class embedding, which the
  official code trains with a separate per-parameter Gram penalty (`ffT`, `tak.py:773-780`,
  weight × `fisher_norm_scaler` = 10), are frozen here, and the final projection's
  0.1 scaler (`fisher_ft_proj_scaler`, `tak.py:768-769`) has no counterpart (no `lin_proj`).
* Factors (`hooks.py:30-57`, `hooks.py:127-153`, divided by the example count at
  `tak.py:597-599`): A = mean over examples of (1/R) Σ_r a_r a_rᵀ, a_r the layer's input at
  position r (token, or conv patch) with a 1 appended when the bias is trained (`concatone`);
  G = mean over examples of (1/R) Σ_r g_r g_rᵀ, g_r the gradient of (z · v) with respect to the
  layer's output, z = f(x; θ0)/‖f(x; θ0)‖ the normalized features and v ~ N(0, I) a Gaussian
  probe (`fisher_kfac.py:210-219`, `num_samples_expectation` = 1 probe, several probes summed
  as there): E_v[g gᵀ] = J Jᵀ, so A ⊗ G approximates the Gauss-Newton matrix of the
  representation drift ‖z(θ) − z(θ0)‖², not the loss curvature (no head, `use_head=False`).
  Computed at θ0 in eval mode on the task's own training inputs (all of them by default,
  `train_percent` = 1.0, `tak.py:196-204`). Here accumulated in float64 and stored in the model's precision
  (float32; official: float32 with Kahan summation).
* Combination (`tak.py:583-609`, `fisher_ideal` = 0): A = Σ_t (n_t / N) A_t, G = Σ_t G_t over
  the other tasks t, one pair per layer whatever the number of tasks.
* Penalty (`tak.py:747-771`, used at `tak.py:841-851`): λ Σ_layers tr(G ΔW A ΔWᵀ) =
  λ Σ vec(ΔW)ᵀ (A ⊗ G) vec(ΔW), ΔW = [ΔW, Δb] the layer's tangent (θ − θ0, f_lin is trained:
  `tangent` = 1, `tak.py:796-808`), λ = `reg_lambda` = 500 (`tak.py:141-145`). No damping and
  no inverse: the factors only enter this quadratic form.

Factors are computed here with hooks, as the official code does, rather than with
curvlinops' KFAC: its factors come from a loss on the model output with its own scaling
(sum over positions, one side averaged), while TAK's are both position-averaged and probe the
normalized features; matching them would mean rescaling around the library, and the hooks
are short.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from ..errors import TaskvecError
from ..io import load_tensors, save_tensors
from ..models.base import Backbone, Batch
from .cost import CostMeter

FORMAT = "taskvec.kfac/1"


def factored_modules(backbone: nn.Module, convs: str) -> dict[str, nn.Module]:
    """The layers that get factors, by module name: linear layers outside nn.MultiheadAttention
    and, with convs = "kfac", convolutions with groups = 1."""
    inside_attention = {
        f"{name}.{sub}"
        for name, m in backbone.named_modules()
        if isinstance(m, nn.MultiheadAttention)
        for sub, _ in m.named_modules()
        if sub
    }
    out: dict[str, nn.Module] = {}
    for name, module in backbone.named_modules():
        if name in inside_attention:
            continue
        if isinstance(module, nn.Linear) or (convs == "kfac" and isinstance(module, nn.Conv2d) and module.groups == 1):
            out[name] = module
    return out


def factored_parameters(backbone: nn.Module, convs: str) -> list[str]:
    """The parameters TAK trains: the weights and biases of the factored layers."""
    names = []
    for name, module in factored_modules(backbone, convs).items():
        names.append(f"{name}.weight")
        if getattr(module, "bias", None) is not None:
            names.append(f"{name}.bias")
    if not names:
        raise TaskvecError(
            f"backbone {getattr(backbone, 'name', '?')!r} has no linear layer or convolution (convs = {convs!r}) for KFAC factors"
        )
    return names


@dataclass
class TaskFactors:
    """One task's KFAC factors at θ0 (per layer weight name: A and G, examples' means), what it ships.

    `count` is the number of examples averaged; `meta` names the base model, the task, the
    settings and the cost of computing them (`cost`: seconds, peak_mib, memory)."""

    a: dict[str, torch.Tensor]
    g: dict[str, torch.Tensor]
    count: int
    meta: dict[str, Any] = field(default_factory=dict)

    def save(self, path: str | Path) -> None:
        tensors = {**{f"A/{n}": t.contiguous() for n, t in self.a.items()}, **{f"G/{n}": t.contiguous() for n, t in self.g.items()}}
        save_tensors(path, tensors, {"format": FORMAT, "count": self.count, **self.meta})

    @classmethod
    def load(cls, path: str | Path, base: Mapping[str, str] | None = None) -> TaskFactors:
        """Read factors; with `base`, refuse those computed on another base model."""
        path = Path(path)
        if not path.exists():
            raise TaskvecError(f"KFAC factors not found: {path}")
        tensors, meta = load_tensors(path)
        if meta.get("format") != FORMAT:
            raise TaskvecError(f"{path} is not a taskvec KFAC factors file")
        if base is not None and meta.get("base") != dict(base):
            raise TaskvecError(f"KFAC factors {path} were computed on another base model ({meta.get('base')}), not {dict(base)}")
        a = {k[2:]: v for k, v in tensors.items() if k.startswith("A/")}
        g = {k[2:]: v for k, v in tensors.items() if k.startswith("G/")}
        count = int(meta.pop("count"))
        meta.pop("format")
        return cls(a, g, count, meta)


# ----- the factors of one task ---------------------------------------------------------------------


def _positions(x: torch.Tensor) -> torch.Tensor:
    """(B, R, C): a linear layer's inputs or output gradients with R positions (R = 1 for (B, C))."""
    return x.reshape(x.shape[0], -1, x.shape[-1]) if x.dim() > 2 else x.unsqueeze(1)


def _gram(rows: torch.Tensor) -> torch.Tensor:
    """Σ_b (1/R) Σ_r x_br x_brᵀ in float64 (`hooks.py:52-53`)."""
    rows = rows.to(torch.float64)
    return torch.einsum("brc,brd->cd", rows, rows) / rows.shape[1]


def _with_ones(rows: torch.Tensor) -> torch.Tensor:
    return torch.cat((rows, torch.ones_like(rows[..., :1])), -1)


class _Accumulator:
    """Hooks on the factored layers that add each batch's input and output-gradient Grams."""

    def __init__(self, modules: dict[str, nn.Module]):
        self.modules = modules
        self.a: dict[str, torch.Tensor] = {}
        self.g: dict[str, torch.Tensor] = {}

    def _add(self, table: dict[str, torch.Tensor], name: str, gram: torch.Tensor) -> None:
        table[name] = gram if name not in table else table[name] + gram

    def _record(self, name: str, module: nn.Module, rows: torch.Tensor, out: torch.Tensor, to_rows: Callable) -> None:
        rows = _with_ones(rows) if module.bias is not None else rows
        self._add(self.a, name, _gram(rows.detach()))
        out.register_hook(lambda grad: self._add(self.g, name, _gram(to_rows(grad))))

    @contextmanager
    def attached(self) -> Iterator[None]:
        handles, patched = [], []
        for name, module in self.modules.items():
            if isinstance(module, nn.Conv2d):
                patched.append(module)
                module._conv_forward = self._conv_recorder(name, module)  # type: ignore[method-assign]
            else:
                hook = lambda m, inp, out, name=name: self._record(name, m, _positions(inp[0]), out, _positions)  # noqa: E731
                handles.append(module.register_forward_hook(hook))
        try:
            yield
        finally:
            for h in handles:
                h.remove()
            for module in patched:
                del module._conv_forward  # back to the class's method

    def _conv_recorder(self, name: str, module: nn.Conv2d) -> Callable:
        """Conv2d.forward's `_conv_forward`, recording the (padded) input's patches: subclasses
        that pad in their own forward (TF "SAME") pass the padded input here."""
        original = type(module)._conv_forward
        if module.padding_mode != "zeros" or isinstance(module.padding, str):
            raise TaskvecError(f"KFAC factors of convolution {name} need explicit zero padding (padding_mode zeros, numeric padding)")

        def forward(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None) -> torch.Tensor:
            out = original(module, x, weight, bias)
            patches = F.unfold(x, module.kernel_size, module.dilation, module.padding, module.stride)  # type: ignore[arg-type]  # (B, C·k·k, L)
            self._record(name, module, patches.transpose(1, 2), out, lambda grad: grad.flatten(2).transpose(1, 2))
            return out

        return forward


@contextmanager
def _differentiable(params: list[nn.Parameter]) -> Iterator[None]:
    """The factored weights require grad for the backward pass (`fisher_kfac.py:153`), then not."""
    flags = [p.requires_grad for p in params]
    for p in params:
        p.requires_grad_(True)
    try:
        yield
    finally:
        for p, flag in zip(params, flags):
            p.requires_grad_(flag)
            p.grad = None


def compute_factors(
    backbone: Backbone,
    inputs: Batch,
    *,
    convs: str = "kfac",
    examples: int = 0,
    probes: int = 1,
    batch_size: int = 32,
    seed: int = 0,
    device: torch.device | str = "cpu",
) -> TaskFactors:
    """The task's factors at the backbone's current weights (θ0), from `examples` of its
    training inputs (0: all), `probes` Gaussian probes each; their cost in meta["cost"]."""
    device = torch.device(device)
    n = len(next(iter(inputs.values())))
    generator = torch.Generator().manual_seed(seed)
    order = torch.randperm(n, generator=generator)[: examples or n]
    modules = factored_modules(backbone, convs)
    if not modules:
        factored_parameters(backbone, convs)  # the one-line error
    meter = CostMeter(device).start()
    accumulate = _Accumulator(modules)
    was_training = backbone.training
    backbone.eval()
    params = [p for m in modules.values() for p in m.parameters(recurse=False)]
    with _differentiable(params), accumulate.attached():
        for index in order.split(batch_size):
            batch = {k: v[index].to(device) for k, v in inputs.items()}
            features = backbone(**batch)
            features = F.normalize(features.to(torch.promote_types(features.dtype, torch.float32)), dim=-1)
            for s in range(probes):
                probe = torch.randn(features.shape, generator=generator, dtype=features.dtype).to(device)
                (features * probe).sum().backward(retain_graph=s < probes - 1)
    backbone.train(was_training)
    count, dtype = len(order), torch.promote_types(params[0].dtype, torch.float32)  # float32, float64 for a float64 model
    missing = sorted(set(modules) - set(accumulate.a))
    if missing:
        raise TaskvecError(f"layers {', '.join(missing)} were not run by the backbone's forward; their KFAC factors are undefined")
    for name in set(modules) - set(accumulate.g):  # run, but the features do not depend on it (a BERT pooler): J = 0
        rows = int(modules[name].weight.shape[0])  # type: ignore[index]
        accumulate.g[name] = torch.zeros(rows, rows, dtype=torch.float64, device=accumulate.a[name].device)
    a = {f"{k}.weight": (v / count).to(dtype).cpu() for k, v in accumulate.a.items()}
    g = {f"{k}.weight": (v / count).to(dtype).cpu() for k, v in accumulate.g.items()}
    settings = {"convs": convs, "examples": examples, "probes": probes, "seed": seed}
    return TaskFactors(a, g, count, {"settings": settings, "cost": dict(meter.summary())})


def factor_settings(settings: Mapping[str, Any]) -> dict[str, Any]:
    """`compute_factors`' keywords from a TAK mode's resolved settings."""
    from .settings import CONVS, FACTOR_EXAMPLES, PROBES

    return {"convs": settings[CONVS.name], "examples": settings[FACTOR_EXAMPLES.name], "probes": settings[PROBES.name]}


def task_factors(
    path: Path,
    backbone: Backbone,
    inputs: Batch,
    settings: Mapping[str, Any],
    *,
    task: str,
    identity: dict,
    batch_size: int,
    seed: int,
    device,
    save: bool,
) -> TaskFactors:
    """The task's factors under a TAK mode's `settings`: read from `path` when they were computed
    on this base with these settings, else computed at θ0 (and written to `path` when `save`)."""
    wanted = {**factor_settings(settings), "seed": seed}
    if path.exists():
        cached = TaskFactors.load(path, base=identity)
        if cached.meta.get("settings") == wanted:
            return cached
    factors = compute_factors(backbone, inputs, **factor_settings(settings), batch_size=batch_size, seed=seed, device=device)
    factors.meta.update(base=identity, task=task)
    if save:
        factors.save(path)
    return factors


# ----- the other tasks' penalty ----------------------------------------------------------------------


def combine(factors: Sequence[TaskFactors]) -> dict[str, tuple[torch.Tensor, torch.Tensor]]:
    """One (A, G) per layer from the other tasks': A = Σ (n_t / N) A_t, G = Σ G_t (`tak.py:583-609`)."""
    if not factors:
        raise TaskvecError("TAK needs the KFAC factors of at least one other task")
    layers = set(factors[0].a)
    for f in factors[1:]:
        if set(f.a) != layers or any(f.a[k].shape != factors[0].a[k].shape for k in layers):
            raise TaskvecError(
                f"the KFAC factors of tasks {factors[0].meta.get('task')!r} and {f.meta.get('task')!r} cover different layers or shapes"
            )
    total = sum(f.count for f in factors)
    return {k: (sum(f.a[k] * (f.count / total) for f in factors), sum(f.g[k] for f in factors)) for k in sorted(layers)}  # type: ignore[misc]


class KfacPenalty:
    """λ Σ_layers tr(G ΔW A ΔWᵀ) of the trained tangent (ΔW with the bias column when trained)."""

    def __init__(self, combined: Mapping[str, tuple[torch.Tensor, torch.Tensor]], weight: float, shapes: Mapping[str, torch.Size]):
        self.weight = weight
        self.layers: dict[str, tuple[torch.Tensor, torch.Tensor, str | None]] = {}
        for name, shape in shapes.items():
            if not name.endswith(".weight"):
                continue
            if name not in combined:
                raise TaskvecError(f"the KFAC factors have no layer {name}: they were computed for another model or convs setting")
            a, g = combined[name]
            bias = name.removesuffix("weight") + "bias"
            fan_in = int(torch.Size(shape[1:]).numel())
            width = fan_in + (1 if bias in shapes else 0)
            if tuple(a.shape) != (width, width) or tuple(g.shape) != (shape[0], shape[0]):
                raise TaskvecError(
                    f"the KFAC factors of {name} have shapes {tuple(a.shape)}, {tuple(g.shape)}, not ({width}, {width}), ({shape[0]}, {shape[0]}): factors of another model"
                )
            self.layers[name] = (a, g, bias if bias in shapes else None)

    def to(self, device: torch.device) -> KfacPenalty:
        self.layers = {n: (a.to(device), g.to(device), b) for n, (a, g, b) in self.layers.items()}
        return self

    def __call__(self, tangent_of: Callable[[str], torch.Tensor]) -> torch.Tensor:
        first = next(iter(self.layers.values()))[0]
        total = torch.zeros((), device=first.device, dtype=first.dtype)
        for name, (a, g, bias) in self.layers.items():
            delta = tangent_of(name).flatten(1).to(a.dtype)
            if bias is not None:
                delta = torch.cat((delta, tangent_of(bias).to(a.dtype).unsqueeze(1)), 1)
            total = total + ((g @ delta) * (delta @ a)).sum()  # tr(G ΔW A ΔWᵀ), A symmetric
        return self.weight * total

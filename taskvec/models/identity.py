"""θ0's identity: what a task vector records of the weights it was taken from.

`base_identity(backbone)` is the backbone's own `identity()` plus a `fingerprint` of its current
weights, so a vector cannot be applied to other weights by mistake; zero-shot heads key their
cache on it too. torch is imported when something is hashed.
"""

from __future__ import annotations

import hashlib
import weakref
from typing import TYPE_CHECKING

from ..lazy import lazy_import

if TYPE_CHECKING:
    from .base import Backbone

if TYPE_CHECKING:
    import torch
else:
    torch = lazy_import("torch")


def fingerprint(params: dict[str, torch.Tensor]) -> str:
    """A short hash of θ0's values, so a vector can't be applied to other weights by mistake."""
    digest = hashlib.sha256()
    for name in sorted(params):
        tensor = params[name].detach().to("cpu", torch.float32).contiguous()
        digest.update(name.encode())
        digest.update(tensor.numpy().tobytes())
    return digest.hexdigest()[:16]


_FINGERPRINTS: weakref.WeakKeyDictionary[torch.nn.Module, tuple[tuple, str]] = weakref.WeakKeyDictionary()


def base_identity(backbone: Backbone) -> dict[str, str]:
    """The backbone's own identity plus a fingerprint of its current (θ0) weights.

    A linearized backbone (one that keeps its expansion point as `params0`) is identified by
    that θ0, not by the θ it trains. The hash is remembered per module until a parameter is
    replaced or modified in place (tensor version counters), so sweeps that apply many edits to
    one base hash it once.
    """
    params0 = getattr(backbone, "params0", None)
    params = params0 if params0 is not None else dict(backbone.named_parameters())
    state = tuple((name, p.data_ptr(), p._version) for name, p in params.items())
    cached = _FINGERPRINTS.get(backbone)
    if cached is None or cached[0] != state:
        cached = (state, fingerprint(params))
        _FINGERPRINTS[backbone] = cached
    return {**backbone.identity(), "fingerprint": cached[1]}

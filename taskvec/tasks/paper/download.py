"""Fetching a paper dataset from the internet, only when the user asks (`taskvec download`):
kept apart so that nothing on the ordinary path can download."""

from __future__ import annotations

from pathlib import Path

from ...errors import TaskvecError
from .catalog import HOW
from .task import missing_data

DOWNLOADABLE = ("MNIST", "SVHN", "GTSRB", "DTD", "EuroSAT", "SUN397")
SUN397_PARTITIONS_URL = "https://vision.princeton.edu/projects/2010/SUN/download/Partitions.zip"


def download_dataset(name: str, root: str | Path) -> Path:  # pragma: no cover - needs the internet
    """Fetch a dataset into `root` with torchvision (only when the user asks for it)."""
    import torchvision.datasets as tvd

    root = Path(root).expanduser()
    root.mkdir(parents=True, exist_ok=True)
    if name == "MNIST":
        for train in (True, False):
            tvd.MNIST(str(root), train=train, download=True)
    elif name == "SVHN":
        for split in ("train", "test"):
            tvd.SVHN(str(root / "svhn"), split=split, download=True)
    elif name == "GTSRB":
        for split in ("train", "test"):
            tvd.GTSRB(str(root), split=split, download=True)
    elif name == "DTD":
        tvd.DTD(str(root), split="train", download=True)
    elif name == "EuroSAT":
        tvd.EuroSAT(str(root), download=True)
    elif name == "SUN397":
        from torchvision.datasets.utils import download_and_extract_archive

        tvd.SUN397(str(root), download=True)
        download_and_extract_archive(SUN397_PARTITIONS_URL, download_root=str(root / "SUN397"))
    else:
        raise TaskvecError(f"{name} cannot be downloaded automatically: {HOW.get(name, 'unknown dataset')}")
    messages = missing_data(name, root)
    if messages:
        raise TaskvecError(f"download of {name} finished but data are still missing: {messages[0]}")
    return root

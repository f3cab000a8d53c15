"""Image/label folders paired by file name (the CamVid / SegNet layout)."""
from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np

from ..errors import ConfigError

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp")


def paired_files(images_dir: str | Path, labels_dir: str | Path) -> list[tuple[Path, Path]]:
    """(image, label) pairs matched by stem; an image without a label is a ConfigError."""
    images_dir, labels_dir = Path(images_dir), Path(labels_dir)
    for d in (images_dir, labels_dir):
        if not d.is_dir():
            raise ConfigError(f"dataset folder {d} does not exist")
    labels = {p.stem: p for p in labels_dir.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES}
    images = sorted(p for p in images_dir.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)
    if not images:
        raise ConfigError(f"no images found in {images_dir}")
    missing = [p.name for p in images if p.stem not in labels]
    if missing:
        raise ConfigError(f"{len(missing)} images in {images_dir} have no label in {labels_dir}, e.g. {missing[:3]}")
    return [(p, labels[p.stem]) for p in images]


def read_pair(image_path: Path, label_path: Path) -> tuple[np.ndarray, np.ndarray]:
    """RGB uint8 image and uint8/uint16 single-channel label of the same size."""
    bgr = cv2.imread(str(image_path), cv2.IMREAD_COLOR)
    label = cv2.imread(str(label_path), cv2.IMREAD_UNCHANGED)
    if bgr is None or label is None:
        raise ConfigError(f"cannot read {image_path if bgr is None else label_path}")
    if label.ndim == 3:
        label = label[..., 0]
    if label.shape != bgr.shape[:2]:
        raise ConfigError(f"{label_path} is {label.shape}, image {image_path} is {bgr.shape[:2]}")
    return cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB), label


class SegmentationDataset:
    """All pairs held in memory (CamVid train is ~190 MB), transformed on access."""

    def __init__(self, images_dir: str | Path, labels_dir: str | Path, transform=None,
                 limit: int | None = None) -> None:
        pairs = paired_files(images_dir, labels_dir)[:limit]
        self.names = [p.stem for p, _ in pairs]
        self.samples = [read_pair(image, label) for image, label in pairs]
        self.transform = transform

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, index: int):
        image, label = self.samples[index]
        return self.transform(image, label) if self.transform else (image, label)

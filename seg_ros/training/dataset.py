"""Image/label folders paired by file name (the CamVid / SegNet layout)."""
from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np
import torch

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
        raise ConfigError(f"{len(missing)} images in {images_dir} have no label in {labels_dir}, "
                          f"e.g. {missing[:3]}")
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


def as_list(folders: str | Path | list | tuple) -> list[str]:
    """One folder or several (a YAML list) as a list."""
    return [str(f) for f in folders] if isinstance(folders, (list, tuple)) else [str(folders)]


def read_pairs(images_dirs, labels_dirs, limit: int | None = None) -> tuple[list[str], list]:
    """Names and decoded (image, label) pairs of one or several folder pairs, in order."""
    images_dirs, labels_dirs = as_list(images_dirs), as_list(labels_dirs)
    if len(images_dirs) != len(labels_dirs):
        raise ConfigError(f"{len(images_dirs)} image folders but {len(labels_dirs)} label folders")
    pairs = [p for i, lab in zip(images_dirs, labels_dirs) for p in paired_files(i, lab)][:limit]
    return [p.stem for p, _ in pairs], [read_pair(image, label) for image, label in pairs]


class SegmentationDataset:
    """Validation frames held in memory.

    All pairs of one or several folder pairs decoded once and held in memory as numpy arrays
    (CamVid train + val at 360x480: about 320 MB).
    """

    def __init__(self, images_dirs, labels_dirs, limit: int | None = None) -> None:
        self.names, self.samples = read_pairs(images_dirs, labels_dirs, limit)

    def __len__(self) -> int:
        return len(self.samples)


class TrainFrames:
    """Training frames as tensors on the training device.

    The training pairs as uint8 tensors on the training device, decoded once: a batch is an
    index into them, so no step decodes, copies to the device or waits for a loader. Frames of one
    size (CamVid) are stacked, (N, 3, H, W) and (N, H, W); mixed sizes stay a list.
    """

    def __init__(self, samples: list, device: torch.device) -> None:
        images = [torch.from_numpy(np.ascontiguousarray(img)).permute(2, 0, 1)
                  for img, _ in samples]
        labels = [torch.from_numpy(lab if lab.dtype == np.uint8 else lab.astype(np.int32))
                  for _, lab in samples]
        self.uniform = len({tuple(lab.shape) for lab in labels}) == 1
        if self.uniform:
            self.images = torch.stack(images).to(device)
            self.labels = torch.stack(labels).to(device)
        else:
            self.images = [t.unsqueeze(0).to(device) for t in images]
            self.labels = [t.unsqueeze(0).to(device) for t in labels]
        self.frame_hw = tuple(labels[0].shape)

    def __len__(self) -> int:
        return len(self.images)

    def groups(self, indices: torch.Tensor):
        """(images, labels, positions in ``indices``) of frames that can be augmented together."""
        if self.uniform:
            idx = indices.to(self.images.device)
            yield self.images.index_select(0, idx), self.labels.index_select(0, idx), None
            return
        for pos, i in enumerate(indices.tolist()):
            yield self.images[i], self.labels[i], pos

"""Pack image/label folders small enough to carry to a GPU machine with the repository.

Images become quality-95 JPEGs (CamVid train + val: about 30 MB instead of 120 MB of PNGs),
labels stay lossless PNGs. The layout is CamVid's (``<split>/`` and ``<split>annot/``), so a
training config points at the pack as it points at the original.
"""
from __future__ import annotations

import json
from pathlib import Path

import cv2

from ..errors import ConfigError
from .dataset import paired_files, read_pair


def pack_splits(source: str | Path, splits: list[str], out: str | Path, quality: int = 95,
                max_mb: float = 40.0) -> dict:
    """Pack splits of a data set as JPEG images and PNG labels.

    Write ``out/<split>/<stem>.jpg`` and ``out/<split>annot/<stem>.png`` for every pair of
    ``source/<split>`` and ``source/<split>annot``, and ``out/manifest.json``. ConfigError when
    the pack exceeds ``max_mb`` megabytes (10^6 bytes).
    """
    source, out = Path(source), Path(out)
    if not 1 <= quality <= 100:
        raise ConfigError(f"JPEG quality must be in 1..100, got {quality}")
    counts = {split: _pack_split(source, split, out, quality) for split in splits}
    total = sum(p.stat().st_size for p in out.rglob("*")
                if p.is_file() and p.name != "manifest.json")
    summary = {"source": str(source), "splits": counts, "frames": sum(counts.values()),
               "bytes": total, "jpeg_quality": quality}
    (out / "manifest.json").write_text(json.dumps(summary, indent=2))
    if total > max_mb * 1e6:
        raise ConfigError(f"the pack in {out} is {total / 1e6:.1f} MB, more than {max_mb} MB: "
                          f"lower the JPEG quality or pack fewer splits")
    return summary


def _pack_split(source: Path, split: str, out: Path, quality: int) -> int:
    images, labels = out / split, out / f"{split}annot"
    images.mkdir(parents=True, exist_ok=True)
    labels.mkdir(parents=True, exist_ok=True)
    pairs = paired_files(source / split, source / f"{split}annot")
    for image_path, label_path in pairs:
        rgb, label = read_pair(image_path, label_path)
        jpeg = [cv2.IMWRITE_JPEG_QUALITY, quality]
        if not cv2.imwrite(str(images / f"{image_path.stem}.jpg"), rgb[..., ::-1], jpeg):
            raise ConfigError(f"cannot write {images / image_path.stem}.jpg")
        if not cv2.imwrite(str(labels / f"{image_path.stem}.png"), label,
                           [cv2.IMWRITE_PNG_COMPRESSION, 9]):
            raise ConfigError(f"cannot write {labels / image_path.stem}.png")
    return len(pairs)

"""The default weights the package ships (weights/ddrnet23_slim_camvid.pt, docs/training.md).

Self-describing, picked by ``weights: default``, and accurate on real CamVid val frames.
"""
from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from helpers import CAMVID, REPO, requires_camvid
from seg_ros.classes import load_classes
from seg_ros.metrics import ConfusionAccumulator
from seg_ros.models import list_shipped_weights, read_weights, shipped_weights
from seg_ros.pipeline import SegmentationPipeline

SHIPPED = REPO / shipped_weights("ddrnet23_slim").file


def test_shipped_weights_describe_themselves():
    weights = read_weights(SHIPPED)
    meta = weights.meta
    assert (
        meta["arch"] == "ddrnet23_slim" and meta["num_classes"] == 11 and meta["ignore_id"] == 11
    )
    assert meta["classes"] == load_classes("camvid").to_dicts()
    assert 0.55 <= meta["val_miou"] <= 1.0
    assert meta["input_size"] == [
        360,
        480,
    ]  # the size it was validated at: the pipeline's inference size
    assert SHIPPED.stat().st_size < 15 * 2**20  # fp16: a few MB


@pytest.mark.parametrize("entry", list_shipped_weights(), ids=lambda e: e.file)
def test_registry_entry_agrees_with_the_file_it_names(entry):
    """What the registry says about a shipped file (without loading it) is what the file says."""
    assert entry.path().is_file() and (REPO / entry.file).is_file()
    meta = read_weights(REPO / entry.file).meta
    assert meta["arch"] == entry.model and meta["classes_name"] == entry.classes
    assert meta["num_classes"] == entry.num_classes and meta["ignore_id"] == entry.ignore_id
    assert tuple(meta["input_size"]) == entry.input_size
    assert tuple(meta["mean"]) == pytest.approx(entry.mean)
    assert tuple(meta["std"]) == pytest.approx(entry.std)
    # the model card gives one decimal of a percent
    assert meta["val_miou"] == pytest.approx(entry.metrics["val_miou"], abs=5e-4)
    assert meta["classes"] == load_classes(entry.classes).to_dicts()
    assert entry.card and entry.file in (REPO / entry.card).read_text(encoding="utf-8")


@requires_camvid
def test_shipped_weights_reach_55_percent_miou_on_camvid_val():
    """10 val frames spread over the sequence, 360x480 single scale, void ignored."""
    pipe = SegmentationPipeline(weights="default", device="cpu")
    assert pipe.describe()["weights"].endswith(SHIPPED.name)
    files = sorted((CAMVID / "val").glob("*.png"))[::10][:10]
    acc = ConfusionAccumulator(pipe.classes.num_classes, pipe.classes.ignore_id)
    for path in files:
        image = np.asarray(Image.open(path).convert("RGB"))
        acc.add(np.asarray(Image.open(CAMVID / "valannot" / path.name)), pipe(image, "rgb").labels)
    miou = acc.scores().miou
    print(f"shipped weights: mIoU {miou:.4f} on {len(files)} CamVid val frames")
    assert miou >= 0.55

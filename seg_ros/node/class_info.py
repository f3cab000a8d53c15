"""The class-metadata contract published on ``~/class_info`` (std_msgs/String, JSON, latched).

A downstream node reads it once (transient local) to map label ids to names and colours. Keys:
``model``, ``classes`` ([{id, name, color: [r, g, b]}] ordered by id), ``num_classes``,
``ignore_id`` (int or null), ``label_encoding`` (mono8 | mono16), ``weights``, ``trained``.
"""
from __future__ import annotations

import json
from typing import Any

from ..pipeline import SegmentationPipeline

CONTRACT_VERSION = 1


def class_info(pipeline: SegmentationPipeline) -> dict[str, Any]:
    classes = pipeline.classes
    return {
        "version": CONTRACT_VERSION,
        "model": pipeline.config.model,
        "classes": classes.to_dicts(),
        "num_classes": classes.num_classes,
        "ignore_id": classes.ignore_id,
        "label_encoding": "mono8" if classes.num_classes <= 256 else "mono16",
        "weights": str(pipeline.weights_path or "random-init"),
        "trained": bool(pipeline.trained),
    }


def class_info_json(pipeline: SegmentationPipeline) -> str:
    return json.dumps(class_info(pipeline), separators=(",", ":"))

"""Class files: the built-in sets and the validation of user files."""
from __future__ import annotations

import numpy as np
import pytest

from seg_ros.classes import ClassSet, load_classes
from seg_ros.errors import ConfigError


def test_builtin_camvid_matches_dataset_readme():
    c = load_classes("camvid")
    assert c.num_classes == 11 and c.ignore_id == 11
    assert c.names[0] == "sky" and c.names[10] == "bicyclist"
    assert c.colors[4].tolist() == [60, 40, 222] and c.colors[8].tolist() == [64, 0, 128]
    assert c.label_dtype == np.uint8


def test_builtin_cityscapes_train_ids():
    c = load_classes("cityscapes")
    assert c.num_classes == 19 and c.ignore_id == 255
    assert c.names[13] == "car" and c.colors[0].tolist() == [128, 64, 128]


def _write(tmp_path, text):
    path = tmp_path / "classes.yaml"
    path.write_text(text)
    return path


@pytest.mark.parametrize("body, message", [
    ("classes:\n  - {id: 0, name: a, color: [1, 2, 3]}\n  - {id: 0, name: b, color: [1, 2, 3]}\n",
     "duplicate class id 0"),
    ("classes:\n  - {id: 0, name: a, color: [1, 2, 300]}\n", "colour \\[1, 2, 300\\]"),
    ("classes:\n  - {id: 0, name: a, color: [1, 2]}\n", "three integers"),
    ("classes:\n  - {id: 0, name: a, color: [1, 2, 3]}\n  - {id: 2, name: b, color: [1, 2, 3]}\n",
     "missing ids \\[1\\]"),
    ("classes:\n  - {id: -1, name: a, color: [1, 2, 3]}\n", "invalid id -1"),
    ("classes:\n  - {name: a, color: [1, 2, 3]}\n", "must have 'id'"),
    ("ignore_id: 0\nclasses:\n  - {id: 0, name: a, color: [1, 2, 3]}\n", "ignore_id 0"),
    ("classes: []\n", "no classes"),
    ("just text", "mapping with a 'classes' list"),
])
def test_invalid_class_files_are_rejected_with_reason(tmp_path, body, message):
    path = _write(tmp_path, body)
    with pytest.raises(ConfigError, match=message) as err:
        load_classes(path)
    assert str(path) in str(err.value)


def test_missing_file_named():
    with pytest.raises(ConfigError, match="nowhere.yaml does not exist"):
        load_classes("/nowhere.yaml")


def test_class_count_must_match_model():
    c = load_classes("camvid")
    with pytest.raises(ConfigError, match="11 classes but model.pt predicts 19"):
        c.check_num_classes(19, "model.pt")


def test_more_than_256_classes_use_uint16():
    c = ClassSet.generic(300)
    assert c.label_dtype == np.uint16 and c.colors.shape == (300, 3)

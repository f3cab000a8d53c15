"""Shared test fixtures: real CamVid frames when ../shared is present, isolated ROS domains.

The functions behind them, and everything else test modules share, are in helpers.py.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from helpers import (CAMVID, SMALL, build_workspace, camvid_available, require_module,
                     require_ros2_cli, save_test_weights)


@pytest.fixture(scope="session")
def weights_file(tmp_path_factory) -> Path:
    """Return DDRNet-23-slim test weights, saved once.

    Every pipeline and node loads identical tensors.
    """
    return save_test_weights(tmp_path_factory.mktemp("weights") / "ddrnet_test.pt")


@pytest.fixture(scope="session")
def camvid_dir() -> Path:
    if not camvid_available():
        pytest.skip(f"CamVid not found at {CAMVID} (../shared absent)")
    return CAMVID


@pytest.fixture(scope="session")
def road_image() -> np.ndarray:
    """Return a real CamVid val frame (RGB uint8) when available.

    Else a synthetic road-like scene.
    """
    if camvid_available():
        from PIL import Image
        first = sorted((CAMVID / "val").glob("*.png"))[0]
        return np.asarray(Image.open(first).convert("RGB"))
    h, w = 360, 480
    img = np.zeros((h, w, 3), np.uint8)
    img[: h // 3] = (135, 170, 210)  # sky
    img[h // 3: 2 * h // 3] = (110, 90, 80)  # buildings
    img[2 * h // 3:] = (100, 100, 100)  # road
    rng = np.random.default_rng(0)
    return np.clip(img + rng.integers(-20, 20, img.shape), 0, 255).astype(np.uint8)


@pytest.fixture(scope="module")
def offline(weights_file):
    """Return the offline reference: the pipeline on the test weights.

    As the node under test loads them.
    """
    from seg_ros.pipeline import SegmentationPipeline
    return SegmentationPipeline(weights=str(weights_file), device="cpu")


@pytest.fixture(scope="module")
def small_image(road_image) -> np.ndarray:
    import cv2
    return cv2.resize(road_image, SMALL[::-1], interpolation=cv2.INTER_AREA)


@pytest.fixture(scope="module")
def workspace(tmp_path_factory) -> Path:
    """install/ of a colcon workspace holding a clean copy of this repository."""
    require_ros2_cli()
    require_module("rclpy", reason="rclpy (ROS 2) is not installed")
    return build_workspace(tmp_path_factory.mktemp("ros2_ws"))


@pytest.fixture()
def ros_domain_id(monkeypatch) -> int:
    """Return a ROS_DOMAIN_ID of its own for each test.

    So parallel runs never cross-talk, with discovery on this machine only (the tools'
    private_env), for this test's process and the processes it starts.
    """
    from seg_ros.cli.live_node import DISCOVERY_VARS, private_env, random_domain

    domain = random_domain()
    env = private_env(domain)
    for name in DISCOVERY_VARS:
        if name in env:
            monkeypatch.setenv(name, env[name])
        else:
            monkeypatch.delenv(name, raising=False)
    return domain


@pytest.fixture(autouse=True)
def _restore_torch_threads():
    """Restore torch's process-wide thread count after each test.

    A pipeline built with num_threads changes torch's process-wide thread count; restore it so a
    later test's in-process reference computes with the same thread count as the node it is
    compared to (float reductions, and so near-tie labels, depend on it).
    """
    import torch
    threads = torch.get_num_threads()
    yield
    torch.set_num_threads(threads)

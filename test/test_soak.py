"""``seg-ros soak`` on a live node (a short run; docs/node.md records a 10,000-frame one).

Every output subscribed, malformed frames interleaved, RSS sampled, summary and plot written.
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from helpers import require_module

require_module("rclpy", reason="rclpy (ROS 2) is not installed")

REPO = Path(__file__).resolve().parent.parent


@pytest.mark.slow
@pytest.mark.timeout(240)
def test_short_soak(tmp_path, weights_file):
    out = tmp_path / "soak"
    cmd = [sys.executable, "-m", "seg_ros.cli.main", "soak", "--frames", "100", "--rate", "10",
           "--window", "25", "--malformed-every", "10", "--rss-interval", "0.5",
           "--weights", str(weights_file), "--out", str(out)]
    run = subprocess.run(cmd, cwd=REPO, env=dict(os.environ), capture_output=True, text=True,
                         timeout=200)
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-3000:]
    s = json.loads((out / "soak_summary.json").read_text())
    d, m = s["delivery"], s["malformed"]
    assert s["frames"] == 100 and s["node_alive"]
    assert s["outputs"] == ["labels", "color_mask", "overlay", "confidence"]
    assert d["good_sent"] == 90 and d["partial"] == 0 and d["lost_after_node"] == 0
    assert d["late"] == 0
    assert d["delivered"] + d["dropped_by_node"] >= d["good_sent"] - d["lost_before_node"]
    assert m["sent"] == 10 and m["counted_right"] and sum(m["counted_by_node"].values()) >= 1
    assert set(m["sent_by_kind"]) == {"unknown_encoding", "empty", "too_large", "size_mismatch",
                                      "truncated"}
    # the node kept processing good frames all along, malformed ones in between
    assert len(s["windows"]) == 4 and all(w["delivered"] > 0 for w in s["windows"]), s["windows"]
    assert s["rss"]["samples"] >= 10 and 100 < s["rss"]["start_mib"] < 4000
    png = (out / "soak.png").read_bytes()
    assert png[:8] == b"\x89PNG\r\n\x1a\n" and len(png) < 200_000
    text = (out / "soak_summary.txt").read_text()
    assert "result: OK" in text and "MiB per 1000 frames" in text
    assert "Traceback" not in (out / "node.log").read_text()

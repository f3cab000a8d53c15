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
    """Five frame sizes, one frame of each in turn: more than the node keeps graphs for.

    Before the fix (issue 18.1) every frame re-traced a graph (1 s, late) and RSS grew ~24 MiB a
    frame; the limits passed fail on either. Now each size costs one trace while the node's
    four graphs fill and one more when the fifth size replaces one (so up to 5 late frames), and
    RSS grows while they fill (the first window, left out of the slope), then stays.
    """
    out = tmp_path / "soak"
    sizes = ["360x480", "360x500", "360x520", "360x540", "360x560"]
    cmd = [sys.executable, "-m", "seg_ros.cli.main", "soak", "--frames", "100", "--rate", "10",
           "--window", "50", "--malformed-every", "10", "--rss-interval", "0.5",
           "--size", *sizes, "--max-late", "5", "--max-rss-slope", "5000",
           "--weights", str(weights_file), "--out", str(out)]
    run = subprocess.run(cmd, cwd=REPO, env=dict(os.environ), capture_output=True, text=True,
                         timeout=200)
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-3000:]
    s = json.loads((out / "soak_summary.json").read_text())
    d, m = s["delivery"], s["malformed"]
    assert s["frames"] == 100 and s["node_alive"]
    assert s["outputs"] == ["labels", "color_mask", "overlay", "confidence"]
    assert d["good_sent"] == 90 and d["partial"] == 0 and d["lost_after_node"] == 0
    assert s["size"] == ",".join(sizes) and d["late"] <= 5
    assert s["rss"]["from_frame"] >= 50 and s["rss"]["slope_mib_per_1000_frames"] < 5000
    assert s["rss"]["max_mib"] - s["rss"]["start_mib"] < 600, s["rss"]
    assert d["delivered"] + d["dropped_by_node"] >= d["good_sent"] - d["lost_before_node"]
    assert m["sent"] == 10 and m["counted_right"] and sum(m["counted_by_node"].values()) >= 1
    assert set(m["sent_by_kind"]) == {"unknown_encoding", "empty", "too_large", "size_mismatch",
                                      "truncated"}
    # the node kept processing good frames all along, malformed ones in between
    assert len(s["windows"]) == 2 and all(w["delivered"] > 0 for w in s["windows"]), s["windows"]
    assert s["rss"]["samples"] >= 10 and 100 < s["rss"]["start_mib"] < 4000
    png = (out / "soak.png").read_bytes()
    assert png[:8] == b"\x89PNG\r\n\x1a\n" and len(png) < 200_000
    text = (out / "soak_summary.txt").read_text()
    assert "result: OK" in text and "MiB per 1000 frames" in text
    assert "Traceback" not in (out / "node.log").read_text()

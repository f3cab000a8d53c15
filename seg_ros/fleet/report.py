"""The fleet evaluation report: overall and per-bag scores as JSON, Markdown and a PNG figure.

Overall scores come from the confusion matrices of all bags SUMMED (seg_ros.metrics), never from
averaging per-bag scores: a bag of 10 frames weighs what its pixels weigh.
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from ..errors import ConfigError
from ..metrics import scores_from_confusion

MAX_BAG_BARS = 30


def fleet_report(bag_reports: Sequence[dict[str, Any]],
                 failed: Sequence[dict[str, Any]]) -> dict[str, Any]:
    """Merge the per-bag evaluation reports into one fleet report.

    Overall scores of the per-bag reports (``OUT/<bag>.eval.json`` contents) plus a row per bag
    and the failed bags (``bag``, ``error``).
    """
    if not bag_reports:
        reasons = "; ".join(f"{f['bag']}: {f['error']}" for f in failed[:3])
        raise ConfigError(f"no bag could be scored: {reasons}")
    names = bag_reports[0]["class_names"]
    for r in bag_reports:
        if r["class_names"] != names:
            raise ConfigError(f"bag {r['bag']} was scored with classes {r['class_names']}, others "
                              f"with {names}")
    total = np.sum([np.asarray(r["confusion"], dtype=np.int64) for r in bag_reports], axis=0)
    report = scores_from_confusion(total).to_dict(names)
    report.update({
        "bags_scored": len(bag_reports), "bags_failed": len(failed),
        "images": int(sum(r["images"] for r in bag_reports)),
        "skipped_frames": int(sum(len(r["skipped"]) for r in bag_reports)),
        "model": bag_reports[0].get("model"),
        "trained": all(r.get("trained") for r in bag_reports),
        "crf": bag_reports[0].get("crf"), "ignore_id": bag_reports[0].get("ignore_id"),
        "bags": [{"bag": r["bag"], "images": r["images"], "miou": r["miou"],
                  "pixel_accuracy": r["pixel_accuracy"], "per_class_iou": r["per_class_iou"]}
                 for r in bag_reports],
        "failed": [{"bag": f["bag"], "error": f["error"]} for f in failed]})
    return report


def _pct(v: float | None) -> str:
    return "n/a" if v is None else f"{100 * v:.2f}"


def worst_first(report: dict[str, Any]) -> list[dict[str, Any]]:
    return sorted(report["bags"], key=lambda b: (b["miou"] is None, b["miou"] or 0.0, b["bag"]))


def markdown(report: dict[str, Any], figure: str | None = None) -> str:
    """Return a reviewer's summary: overall, per class, per bag (worst first), failures."""
    m = report.get("model") or {}
    lines = [f"# Fleet evaluation: {m.get('model', '?')} ({m.get('weights', '?')})", "",
             f"{report['bags_scored']} bags scored, {report['bags_failed']} failed; "
             f"{report['images']} images ({report['skipped_frames']} frames skipped: bad input); "
             f"**mIoU {_pct(report['miou'])} %**, pixel accuracy "
             f"{_pct(report['pixel_accuracy'])} % (from the confusion matrices of all bags "
             f"summed).", ""]
    if not report.get("trained", True):
        lines += ["**The model is UNTRAINED (random weights): these scores only show the tooling "
                  "working.**", ""]
    if figure:
        lines += [f"![per-bag mIoU and per-class IoU]({figure})", ""]
    gt_pixels = np.asarray(report["confusion"]).sum(axis=1)
    lines += ["## Per class (all bags)", "", "| class | IoU % | ground-truth pixels |",
              "|---|---:|---:|"]
    for i, (name, iou) in enumerate(report["per_class_iou"].items()):
        lines.append(f"| {name} | {_pct(iou)} | {int(gt_pixels[i])} |")
    lines += ["", "## Per bag (worst mIoU first)", "", "| bag | images | mIoU % | pixel acc % |",
              "|---|---:|---:|---:|"]
    for b in worst_first(report):
        lines.append(f"| {b['bag']} | {b['images']} | {_pct(b['miou'])} | "
                     f"{_pct(b['pixel_accuracy'])} |")
    if report["failed"]:
        lines += ["", "## Failed bags", "", "| bag | error |", "|---|---|"]
        lines += [f"| {f['bag']} | {str(f['error']).replace('|', '/')} |"
                  for f in report["failed"]]
    return "\n".join(lines) + "\n"


def write_figure(path: Path, report: dict[str, Any]) -> None:
    """Per-bag mIoU (worst first, at most MAX_BAG_BARS bars) beside the overall per-class IoU."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    rows = worst_first(report)[:MAX_BAG_BARS]
    names = list(report["per_class_iou"])
    height = 2.5 + 0.3 * max(len(rows), len(names))
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(12, height))
    y = np.arange(len(rows))
    values = [b["miou"] or 0.0 for b in rows]
    ax1.barh(y, values, color="#3070b0")
    for yi, v in zip(y, values):
        ax1.text(min(v + 0.01, 0.9), yi, f"{v:.3f}", va="center", fontsize=7)
    ax1.set_yticks(y, [b["bag"] for b in rows], fontsize=7)
    ax1.invert_yaxis()
    n_bags = len(report["bags"])
    shown = "" if len(rows) == n_bags else f" ({len(rows)} worst of {n_bags})"
    ax1.set_title(f"per-bag mIoU{shown}")
    ious = list(report["per_class_iou"].values())
    y2 = np.arange(len(names))
    colors = ["#bbbbbb" if v is None else "#3070b0" for v in ious]
    ax2.barh(y2, [v or 0.0 for v in ious], color=colors)
    ax2.set_yticks(y2, names, fontsize=8)
    ax2.invert_yaxis()
    ax2.set_title("per-class IoU, all bags (grey: absent)")
    for ax in (ax1, ax2):
        ax.set_xlim(0, 1)
        ax.set_xlabel("IoU")
        if report["miou"] is not None:
            ax.axvline(report["miou"], color="#c03030", linestyle="--",
                       label=f"overall mIoU {report['miou']:.3f}")
        ax.legend(loc="lower right", fontsize=8)
    m = report.get("model") or {}
    untrained = "  [UNTRAINED MODEL]" if not report.get("trained", True) else ""
    fig.suptitle(f"{m.get('model', '?')} on {report['bags_scored']} bags, {report['images']} "
                 f"images{untrained}", fontsize=9)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)


def write_report(out_dir: Path, report: dict[str, Any],
                 stem: str = "eval_report") -> dict[str, Path]:
    """``OUT/eval_report.json``, ``.md`` and ``.png``; returns their paths."""
    paths = {ext: out_dir / f"{stem}.{ext}" for ext in ("json", "md", "png")}
    write_figure(paths["png"], report)
    paths["json"].write_text(json.dumps(report, indent=2))
    paths["md"].write_text(markdown(report, paths["png"].name))
    return paths

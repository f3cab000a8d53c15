#!/usr/bin/env bash
# Train the CamVid recipe (train -> val) and the protocol's final run (train + val) on one lent
# GPU, from the pack that `seg-ros train-pack` wrote to packed/camvid (docs/training.md).
#   scripts/gpu_train.sh [recipe|trainval|both]      (default: both, about 8 minutes on an H200)
# Needs python3 with torch (CUDA), numpy, opencv, pyyaml and tqdm, the repository and the pack;
# not ROS. Writes under $OUT (default out/gpu): <run>.pt (exported weights), <run>.log.jsonl,
# <run>.png (curves) and <run>.txt (the console output). Checkpoints stay in $RUN_DIR.
set -euo pipefail
cd "$(dirname "$0")/.."
WHICH=${1:-both}
OUT=${OUT:-out/gpu}
RUN_DIR=${RUN_DIR:-/tmp/seg_ros_gpu_runs}
export PYTHONUNBUFFERED=1 PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
mkdir -p "$OUT" "$RUN_DIR"
if [ ! -f packed/camvid/manifest.json ]; then
    echo "no packed/camvid: run 'seg-ros train-pack --from ../shared/datasets/camvid --out packed/camvid' first" >&2
    exit 2
fi
python3 - <<'PY'
import cv2, numpy, torch, tqdm, yaml  # noqa: F401  (what training needs; fails here, not later)
print(f"torch {torch.__version__}, cuda {torch.cuda.is_available()}",
      torch.cuda.get_device_name(0) if torch.cuda.is_available() else "(no GPU: CPU run)")
PY
train() {
    local name=$1
    local t0=$SECONDS
    python3 -m seg_ros.cli.train train --config "config/train/ddrnet23_slim_camvid_${name}_gpu.yaml" \
        --out-dir "$RUN_DIR/$name" --export "$OUT/$name.pt" 2>&1 | tee "$OUT/$name.txt"
    cp "$RUN_DIR/$name/log.jsonl" "$OUT/$name.log.jsonl"
    cp "$RUN_DIR/$name/curves.png" "$OUT/$name.png" 2>/dev/null || true
    echo "$name: $((SECONDS - t0)) s" | tee -a "$OUT/$name.txt"
}
case "$WHICH" in
    recipe|trainval) train "$WHICH" ;;
    both) train recipe; train trainval ;;
    *) echo "usage: $0 [recipe|trainval|both]" >&2; exit 2 ;;
esac

"""Options shared by several subcommands, so every tool builds its pipeline the same way."""
from __future__ import annotations

import argparse

from pathlib import Path

from ..crf import CRF_MODES, Refiner, create_refiner, load_crf_config
from ..backends import list_backends
from ..models import list_models
from ..pipeline import PipelineConfig, SegmentationPipeline, with_overrides


def parse_size(text: str) -> tuple[int, int]:
    """'512x1024' -> (512, 1024) as (height, width)."""
    try:
        h, w = (int(v) for v in text.lower().split("x"))
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"size must be HxW, e.g. 512x1024, got {text!r}"
        ) from None
    if h < 8 or w < 8:
        raise argparse.ArgumentTypeError(f"size must be at least 8x8, got {text!r}")
    return h, w


def parse_option(text: str) -> tuple[str, object]:
    """'cuda_graphs=false' -> ('cuda_graphs', False): values are read as YAML scalars."""
    import yaml
    key, sep, value = text.partition("=")
    if not sep or not key.strip():
        raise argparse.ArgumentTypeError(f"backend option must be KEY=VALUE, got {text!r}")
    try:
        return key.strip(), yaml.safe_load(value) if value.strip() else ""
    except yaml.YAMLError:
        return key.strip(), value


def add_pipeline_args(parser: argparse.ArgumentParser, size_required: bool = False) -> None:
    g = parser.add_argument_group("model")
    g.add_argument("--model", default="ddrnet23_slim", choices=list_models())
    g.add_argument(
        "--weights",
        default="default",
        help="weights file; 'default' = the model's shipped weights, 'none' = random init",
    )
    g.add_argument(
        "--classes", default=None, help="classes YAML file or built-in name (camvid, cityscapes)"
    )
    g.add_argument("--backend", default="torch", choices=list_backends(), help="inference backend")
    g.add_argument(
        "--backend-option",
        dest="backend_options",
        action="append",
        type=parse_option,
        default=[],
        metavar="KEY=VALUE",
        help="backend option, repeatable (e.g. cuda_graphs=false, "
        "onnx_path=m.onnx, precision=int8, calib_images=DIR); see docs/backends.md",
    )
    g.add_argument("--device", default="auto", help="auto, cpu, cuda or cuda:N")
    g.add_argument("--precision", default="fp32", choices=["fp32", "fp16"])
    g.add_argument(
        "--input-size",
        type=parse_size,
        default=None,
        required=size_required,
        help="inference size HxW (default: the weights' training size, else the frame size)",
    )
    g.add_argument("--no-keep-aspect", dest="keep_aspect", action="store_false")
    g.add_argument("--threads", type=int, default=0, help="CPU threads (0 = library default)")
    c = parser.add_argument_group("CRF refinement (docs/crf.md)")
    c.add_argument(
        "--crf",
        default="off",
        choices=list(CRF_MODES),
        help="refine the labels with a CRF: dense (pydensecrf, seconds per frame on a CPU) "
        "or fast (local-window mean-field on the model's device)",
    )
    c.add_argument("--crf-config", type=Path, default=None,
                   help="YAML file of CRF parameters, or a shipped profile: deeplab_v2 (default, "
                        "config/crf.yaml) or camvid (tuned for the CamVid weights)")


def pipeline_from_args(args: argparse.Namespace, **overrides) -> SegmentationPipeline:
    return SegmentationPipeline(pipeline_config_from_args(args, **overrides))


def pipeline_config_from_args(args: argparse.Namespace, **overrides) -> PipelineConfig:
    """Return the pipeline configuration the options describe.

    Fleet workers build their pipeline from it.
    """
    config = PipelineConfig(model=args.model, weights=args.weights, classes=args.classes,
                            backend=getattr(args, "backend", "torch"),
                            device=args.device, precision=args.precision,
                            input_size=getattr(args, "input_size", None),
                            keep_aspect=getattr(args, "keep_aspect", True),
                            num_threads=getattr(args, "threads", 0),
                            backend_options=dict(getattr(args, "backend_options", None) or []))
    return with_overrides(config, overrides)


def refiner_from_args(args: argparse.Namespace, pipe: SegmentationPipeline) -> Refiner | None:
    """Return the CRF refiner asked for with --crf / --crf-config (None for off).

    On the pipeline's device.
    """
    mode = getattr(args, "crf", "off")
    if mode == "off":
        return None
    return create_refiner(mode, load_crf_config(getattr(args, "crf_config", None)), pipe.device)

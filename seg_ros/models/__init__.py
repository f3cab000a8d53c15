"""Segmentation models: the registry, the architectures, and weights loading."""
from . import ddrnet as _ddrnet
from .registry import build_model, list_models, register_model
from .weights import WeightsFile, load_weights, read_weights, save_weights

register_model("ddrnet23_slim")(_ddrnet.ddrnet23_slim)
register_model("ddrnet23")(_ddrnet.ddrnet23)
register_model("ddrnet39")(_ddrnet.ddrnet39)

__all__ = ["build_model", "list_models", "register_model", "load_weights", "read_weights",
           "save_weights", "WeightsFile"]

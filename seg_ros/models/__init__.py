"""Segmentation models: the registry, the architectures, and weights loading."""
from . import ddrnet as _ddrnet
from . import deeplab as _deeplab
from . import dilatednet as _dilatednet
from . import fcn as _fcn
from . import pspnet as _pspnet
from . import segnet as _segnet
from . import unet as _unet
from .base import SegmentationModel
from .registry import build_model, list_models, model_options, register_model
from .shipped import ShippedWeights, list_shipped_weights, register_weights, shipped_weights
from .weights import WeightsFile, load_weights, read_weights, save_weights

register_model("ddrnet23_slim")(_ddrnet.ddrnet23_slim)
register_weights(_ddrnet.DDRNET23_SLIM_CAMVID)
register_model("ddrnet23")(_ddrnet.ddrnet23)
register_model("ddrnet39")(_ddrnet.ddrnet39)
register_model("deeplabv2_resnet101")(_deeplab.deeplabv2_resnet101)
register_model("deeplabv3_resnet50")(_deeplab.deeplabv3_resnet50)
register_model("deeplabv3_resnet101")(_deeplab.deeplabv3_resnet101)
register_model("deeplabv3plus_resnet50")(_deeplab.deeplabv3plus_resnet50)
register_model("deeplabv3plus_resnet101")(_deeplab.deeplabv3plus_resnet101)
register_model("pspnet_resnet50")(_pspnet.pspnet_resnet50)
register_model("pspnet_resnet101")(_pspnet.pspnet_resnet101)
register_model("fcn8s_vgg16")(_fcn.fcn8s_vgg16)
register_model("segnet_vgg16")(_segnet.segnet_vgg16)
register_model("deconvnet_vgg16")(_segnet.deconvnet_vgg16)
register_model("unet")(_unet.unet)
register_model("dilatednet_vgg16")(_dilatednet.dilatednet_vgg16)

__all__ = ["SegmentationModel", "build_model", "list_models", "model_options", "register_model",
           "load_weights", "read_weights", "save_weights", "WeightsFile", "ShippedWeights",
           "list_shipped_weights", "register_weights", "shipped_weights"]

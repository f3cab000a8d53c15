"""Inference-time rewrites that keep outputs identical up to float rounding.

Batch norms that directly follow a convolution or a transposed convolution (DeconvNet's decoder)
are folded into it (declared by ``nn.Sequential`` order or by a block's ``conv_bn_pairs``), and
the network switches to channels_last, which the CPU (oneDNN) and GPU (cuDNN) convolution
kernels prefer.
"""
from __future__ import annotations

import torch
from torch import nn
from torch.nn.utils.fusion import fuse_conv_bn_eval


def _foldable(conv: nn.Module, bn: nn.Module) -> bool:
    return isinstance(conv, (nn.Conv2d, nn.ConvTranspose2d)) and isinstance(bn, nn.BatchNorm2d)


def _fuse(conv: nn.Module, bn: nn.BatchNorm2d) -> nn.Module:
    return fuse_conv_bn_eval(conv, bn, transpose=isinstance(conv, nn.ConvTranspose2d))


def _fold_sequential(seq: nn.Sequential) -> int:
    folded = 0
    names = list(seq._modules)
    for first, second in zip(names, names[1:]):
        conv, bn = seq._modules[first], seq._modules[second]
        if _foldable(conv, bn):
            seq._modules[first] = _fuse(conv, bn)
            seq._modules[second] = nn.Identity()
            folded += 1
    return folded


def fold_batchnorm(model: nn.Module) -> int:
    """Fold conv->BN pairs in place (model must be in eval mode); returns how many were folded."""
    if model.training:
        raise RuntimeError("fold_batchnorm needs a model in eval mode")
    folded = 0
    for module in list(model.modules()):
        if isinstance(module, nn.Sequential):
            folded += _fold_sequential(module)
        for conv_name, bn_name in getattr(module, "conv_bn_pairs", ()):
            conv, bn = getattr(module, conv_name), getattr(module, bn_name)
            if _foldable(conv, bn):
                setattr(module, conv_name, _fuse(conv, bn))
                setattr(module, bn_name, nn.Identity())
                folded += 1
    return folded


def prepare_for_inference(model: nn.Module, device: torch.device, half: bool = False,
                          channels_last: bool = True) -> nn.Module:
    """Eval mode, folded BN, target device/dtype and memory format; gradients off."""
    model.eval()
    fold_batchnorm(model)
    for p in model.parameters():
        p.requires_grad_(False)
    model.to(device)
    if half:
        model.half()
    if channels_last:
        model.to(memory_format=torch.channels_last)
    return model

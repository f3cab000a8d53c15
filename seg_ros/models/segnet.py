"""SegNet (Badrinarayanan et al., 2017) and DeconvNet (Noh et al., 2015).

VGG-16 encoders whose mirrored decoders upsample by max-unpooling with the encoder's pooling
indices.

Both encoders are torchvision's ``vgg16_bn().features`` (13 convs, each with BN; ImageNet
weights load into ``features.*``), pooling with indices. The decoders mirror it stage by stage
(``decoder.0`` undoes pool5, ..., ``decoder.4`` pool1): unpool, then 3x3 conv + BN + ReLU
(SegNet) or 3x3 transposed conv + BN + ReLU (DeconvNet), the last one of a stage narrowing to the
next stage's width, as in the Caffe models.

* SegNet has no fully connected layers; its last decoder layer is the 3x3 classifier
  (``classifier``, Caffe's conv1_1_D), so decoder stage 1 has one conv + BN + ReLU.
* DeconvNet keeps fc6 (7x7, 4096) and fc7 (1x1, 4096) as convolutions with BN and deconvolves
  fc6 back with a 7x7 transposed conv (``fc``), before the decoder, whose stage 1 has two
  layers, and a 1x1 classifier. The paper ran on 224x224 proposals, where pool5 is 7x7 and fc6
  is 1x1; here fc6 and its deconvolution are padded by 3 to keep the size, so any input works.

Pooling indices only invert exactly on sizes divisible by 32: inputs are zero-padded to a
multiple of 32 and the logits cropped back, so they come out at the input size
(``output_stride = 1``). Unpooling is a scatter (``max_unpool``), which exports to ONNX
(ScatterElements); ``F.max_unpool2d`` does not export with torch's ONNX exporter.
"""
from __future__ import annotations

import torch
from torch import nn

from .base import SegmentationModel
from .init import init_weights
from .vgg import (
    VGG16_STAGES,
    Stage,
    conv_bn_relu,
    crop_to,
    fc_as_conv,
    pad_to_multiple,
    vgg16_features,
)


def max_unpool(x: torch.Tensor, indices: torch.Tensor) -> torch.Tensor:
    """Inverse of a 2x2/stride-2 max pooling.

    Each value goes back to the position its pooling took it from (``indices`` from
    ``max_pool2d(..., return_indices=True)``, flat ``h * W + w`` per channel, W the pooled input's
    width = 2 * x's); every other position is zero.
    """
    n, c, h, w = x.shape
    out = x.new_zeros(n, c, 4 * h * w).scatter_(2, indices.flatten(2), x.flatten(2))
    return out.view(n, c, 2 * h, 2 * w)


def mirrored_decoder(transposed: bool, stage1_layers: int) -> nn.ModuleList:
    """Return decoder stages for pool5..pool1.

    VGG-16's widths reversed, each layer a 3x3 (transposed) conv + BN + ReLU, the last of a stage
    narrowing to the next stage's width.
    """
    stages = []
    for i in reversed(range(len(VGG16_STAGES))):
        width = VGG16_STAGES[i][0]
        n_layers = len(VGG16_STAGES[i]) if i else stage1_layers
        out_last = VGG16_STAGES[i - 1][0] if i else width
        outs = [width] * (n_layers - 1) + [out_last]
        layers = [m for out in outs for m in conv_bn_relu(width, out, True, transposed=transposed)]
        stages.append(nn.Sequential(*layers))
    return nn.ModuleList(stages)


class UnpoolingNet(SegmentationModel):
    """VGG-16-BN encoder with pooling indices.

    ``fc`` (identity for SegNet), mirrored unpooling decoder, classifier; logits at the input size.
    """

    output_stride = 1
    size_divisor = 32

    def __init__(
        self, num_classes: int, fc: nn.Module, decoder: nn.ModuleList, classifier: nn.Conv2d
    ) -> None:
        super().__init__()
        self.num_classes = num_classes
        self.features = vgg16_features(batch_norm=True, pool_indices=True)
        self.fc = fc
        self.decoder = decoder
        self.classifier = classifier
        init_weights(nn.ModuleList([self.fc, self.decoder, self.classifier]))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        hw = x.shape[-2:]
        stages: list[Stage] = self.features.stages(pad_to_multiple(x, 32))
        x = self.fc(stages[-1].out)
        for stage, enc in zip(self.decoder, reversed(stages)):
            x = stage(max_unpool(x, enc.indices))
        return crop_to(self.classifier(x), hw)


class SegNet(UnpoolingNet):
    """SegNet: no fully connected layers, 3x3 classifier."""

    def __init__(self, num_classes: int) -> None:
        super().__init__(
            num_classes,
            nn.Identity(),
            mirrored_decoder(transposed=False, stage1_layers=1),
            nn.Conv2d(64, num_classes, 3, padding=1),
        )


class DeconvNet(UnpoolingNet):
    """DeconvNet: fc6/fc7 (+BN) and the fc6 deconvolution in ``fc``.

    Transposed-conv decoder, 1x1 classifier.
    """

    def __init__(self, num_classes: int) -> None:
        fc = nn.Sequential(
            fc_as_conv(512, 4096, 7),
            nn.BatchNorm2d(4096),
            nn.ReLU(inplace=True),
            fc_as_conv(4096, 4096, 1),
            nn.BatchNorm2d(4096),
            nn.ReLU(inplace=True),
            nn.ConvTranspose2d(4096, 512, 7, padding=3),
            nn.BatchNorm2d(512),
            nn.ReLU(inplace=True),
        )
        super().__init__(num_classes, fc, mirrored_decoder(transposed=True, stage1_layers=2),
                         nn.Conv2d(64, num_classes, 1))


def segnet_vgg16(num_classes: int) -> SegNet:
    return SegNet(num_classes)


def deconvnet_vgg16(num_classes: int) -> DeconvNet:
    return DeconvNet(num_classes)

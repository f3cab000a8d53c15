"""Training augmentation on tensors, a whole batch at once, on the training device.

Random scale, random crop (padded with black / the ignore id where the scaled frame is smaller
than the crop), horizontal flip and photometric jitter (brightness, contrast, saturation), then
the same mean/std normalisation the inference pipeline applies. The random draws come from a
``torch.Generator`` the caller seeds, so a batch is a pure function of (frames, draws): a resumed
run sees exactly the batches an unbroken one would.

One ``grid_sample`` per batch computes only the crop's pixels (cheaper than resizing the whole
frame and cropping), for the image bilinearly; labels are gathered nearest-neighbour by index.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

# columns of the per-sample draw table (uniform in [0, 1))
_SCALE, _ROW, _COL, _FLIP, _BRIGHT, _CONTRAST, _SATURATION = range(7)
DRAWS_PER_SAMPLE = 7


@dataclass
class AugmentConfig:
    crop: tuple[int, int] = (360, 480)
    scale: tuple[float, float] = (0.5, 2.0)
    flip: bool = True
    brightness: float = 0.25
    contrast: float = 0.25
    saturation: float = 0.25


def draw(batches: int, batch_size: int, generator: torch.Generator) -> torch.Tensor:
    """Draw the random numbers of several batches.

    The random numbers of ``batches`` batches, (batches, batch_size, 7), drawn up front so a
    run resumed in the middle of an epoch can skip to its batch without replaying the others.
    """
    return torch.rand(batches, batch_size, DRAWS_PER_SAMPLE, generator=generator,
                      dtype=torch.float64)


class BatchAugment:
    """uint8 frames (B, 3, H, W) and labels (B, H, W) -> normalised float crops, int64 labels."""

    def __init__(self, cfg: AugmentConfig, mean, std, ignore_id: int,
                 channels_last: bool = False) -> None:
        self.cfg, self.ignore_id, self.channels_last = cfg, ignore_id, channels_last
        self.mean = torch.tensor(mean, dtype=torch.float32).view(1, 3, 1, 1) * 255.0
        self.std = torch.tensor(std, dtype=torch.float32).view(1, 3, 1, 1) * 255.0

    def __call__(self, images: torch.Tensor, labels: torch.Tensor,
                 draws: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """``draws``: (B, 7) from :func:`draw`."""
        rows, cols, valid = self._crop_coordinates(labels.shape[-2:], draws, images.device)
        x = self._sample_images(images, rows, cols, labels.shape[-2:])
        x = x * valid.unsqueeze(1)  # black outside the scaled frame, as padding
        y = self._gather_labels(labels, rows, cols, valid)
        x = self._photometric(x, draws.to(x.device, torch.float32))
        x = (x - self.mean.to(x.device)) / self.std.to(x.device)
        if self.channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        return x, y

    def _crop_coordinates(self, frame_hw, draws: torch.Tensor, device: torch.device):
        """Locate each sample's crop in its scaled frame.

        Per sample: crop rows and columns in scaled-frame pixels (B, ch) / (B, cw), the scaled
        frame's size, and the mask of crop pixels inside the scaled frame (B, ch, cw).
        """
        (h, w), (ch, cw) = frame_hw, self.cfg.crop
        lo, hi = self.cfg.scale
        s = lo + (hi - lo) * draws[:, _SCALE]
        nh = torch.clamp(torch.floor(h * s + 0.5), min=8)
        nw = torch.clamp(torch.floor(w * s + 0.5), min=8)
        y0 = torch.floor(draws[:, _ROW] * (torch.clamp(nh - ch, min=0) + 1))
        x0 = torch.floor(draws[:, _COL] * (torch.clamp(nw - cw, min=0) + 1))
        rows = y0[:, None] + torch.arange(ch, dtype=torch.float64)
        cols = x0[:, None] + torch.arange(cw, dtype=torch.float64)
        if self.cfg.flip:
            flipped = draws[:, _FLIP] < 0.5
            cols = torch.where(flipped[:, None], cols.flip(1), cols)
        valid = (rows < nh[:, None])[:, :, None] & (cols < nw[:, None])[:, None, :]
        return ((rows, nh), (cols, nw), valid.to(device))

    @staticmethod
    def _sample_images(images: torch.Tensor, rows, cols, frame_hw) -> torch.Tensor:
        """Sample the images bilinearly at the crop pixels.

        Bilinear samples at the crop pixels (half-pixel centres, as cv2.resize and
        F.interpolate with align_corners=False), edges replicated.
        """
        (r, nh), (c, nw) = rows, cols
        gy = (2 * (r + 0.5) / nh[:, None] - 1).float()
        gx = (2 * (c + 0.5) / nw[:, None] - 1).float()
        grid = torch.stack(torch.broadcast_tensors(gx[:, None, :], gy[:, :, None]), dim=-1)
        return F.grid_sample(images.float(), grid.to(images.device), mode="bilinear",
                             padding_mode="border", align_corners=False)

    def _gather_labels(self, labels: torch.Tensor, rows, cols,
                       valid: torch.Tensor) -> torch.Tensor:
        """Gather the labels at the crop pixels.

        Nearest-neighbour labels (source index floor(dst * src / dst), as cv2's INTER_NEAREST),
        the ignore id outside the scaled frame.
        """
        (r, nh), (c, nw) = rows, cols
        h, w = labels.shape[-2:]
        src_r = torch.clamp(torch.floor(r * h / nh[:, None]), max=h - 1).long().to(labels.device)
        src_c = torch.clamp(torch.floor(c * w / nw[:, None]), max=w - 1).long().to(labels.device)
        n = labels.shape[0]
        flat = src_r[:, :, None] * w + src_c[:, None, :]
        y = labels.reshape(n, -1).long().gather(1, flat.reshape(n, -1)).view(flat.shape)
        return y.masked_fill_(~valid, self.ignore_id)

    def _photometric(self, x: torch.Tensor, draws: torch.Tensor) -> torch.Tensor:
        """Jitter brightness, contrast and saturation.

        Brightness, contrast (around the crop's mean) and saturation (around the per-pixel
        grey) factors in 1 +- the configured amounts, per sample; clipped to 0..255.
        """
        cfg = self.cfg

        def factor(column: int, amount: float) -> torch.Tensor:
            return (1.0 + amount * (2 * draws[:, column] - 1)).view(-1, 1, 1, 1)

        x = x * factor(_BRIGHT, cfg.brightness)
        mean = x.mean(dim=(1, 2, 3), keepdim=True)
        x = (x - mean) * factor(_CONTRAST, cfg.contrast) + mean
        gray = x.mean(dim=1, keepdim=True)
        x = (x - gray) * factor(_SATURATION, cfg.saturation) + gray
        return x.clamp_(0.0, 255.0)

"""2D BEV backbone: strided conv stages, each upsampled back to one stride and concatenated.

The region-proposal-style backbone of VoxelNet/SECOND/PointPillars ("PointPillars: Fast
Encoders for Object Detection from Point Clouds", Lang et al. 2019; OpenPCDet's
``BaseBEVBackbone``): stage ``i`` downsamples by ``layer_strides[i]`` and applies
``layer_nums[i]`` 3x3 conv+BN+ReLU layers; a transposed conv (or a strided conv for upsample
strides below 1) brings every stage to a common resolution, and the stages are concatenated.
An optional shrink block (HEAL's ``shrink_header``) then reduces the channels and may
downsample further.
"""

from __future__ import annotations

import math
from fractions import Fraction
from typing import Sequence

import torch
from torch import nn

from coperception.errors import ConfigError

_BN = dict(eps=1e-3, momentum=0.01)


def _conv_bn_relu(c_in: int, c_out: int, stride: int = 1) -> list[nn.Module]:
    return [nn.Conv2d(c_in, c_out, 3, stride=stride, padding=1, bias=False),
            nn.BatchNorm2d(c_out, **_BN), nn.ReLU(inplace=True)]


def _stage(c_in: int, c_out: int, stride: int, num_layers: int) -> nn.Sequential:
    layers = _conv_bn_relu(c_in, c_out, stride)
    for _ in range(num_layers):
        layers += _conv_bn_relu(c_out, c_out)
    return nn.Sequential(*layers)


def _resample(c_in: int, c_out: int, factor: Fraction) -> nn.Sequential:
    """Upsample by ``factor`` >= 1 (transposed conv) or downsample by 1/factor (strided conv)."""
    if factor >= 1:
        k = int(factor)
        conv: nn.Module = nn.ConvTranspose2d(c_in, c_out, k, stride=k, bias=False)
    else:
        k = int(1 / factor)
        conv = nn.Conv2d(c_in, c_out, k, stride=k, bias=False)
    return nn.Sequential(conv, nn.BatchNorm2d(c_out, **_BN), nn.ReLU(inplace=True))


def _as_fraction(x: float, what: str) -> Fraction:
    f = Fraction(x).limit_denominator(64)
    ok = f > 0 and (f.denominator == 1 or f.numerator == 1)
    if not ok or not math.isclose(float(f), float(x), rel_tol=1e-6):
        raise ConfigError(f"{what} must be a positive integer or 1/integer, got {x}")
    return f


class BEVBackbone(nn.Module):
    """Multi-stage 2D BEV backbone.

    in_channels: channels of the input pseudo-image.
    layer_nums / layer_strides / num_filters: per stage, extra 3x3 layers, the first layer's
        stride, and the stage's channels (OpenCOOD PointPillars: [3,5,8], [2,2,2], [64,128,256]).
    upsample_strides / num_upsample_filters: per stage, the resampling factor to the common
        resolution (1, 2, 4 or 0.5, ...) and its channels ([1,2,4], [128,128,128]). Empty lists
        mean no upsampling: then only one stage is allowed and its output is returned.
    shrink_channels: if given, a 3x3 conv+BN+ReLU to this many channels (stride
        ``shrink_stride``) followed by a 3x3 conv+BN+ReLU; HEAL's 384->256 shrink header.

    ``forward`` maps (A, in_channels, H, W) to (A, out_channels, H/stride, W/stride);
    ``stride`` and ``out_channels`` are attributes. H and W must be multiples of
    ``input_multiple`` so that every stage's upsampled map has the same size.
    """

    def __init__(self, in_channels: int, layer_nums: Sequence[int] = (3, 5, 8),
                 layer_strides: Sequence[int] = (2, 2, 2), num_filters: Sequence[int] = (64, 128, 256),
                 upsample_strides: Sequence[float] = (1, 2, 4),
                 num_upsample_filters: Sequence[int] = (128, 128, 128),
                 shrink_channels: int | None = None, shrink_stride: int = 1) -> None:
        super().__init__()
        if not (len(layer_nums) == len(layer_strides) == len(num_filters)) or not layer_nums:
            raise ConfigError(f"layer_nums {list(layer_nums)}, layer_strides {list(layer_strides)} and "
                              f"num_filters {list(num_filters)} must be non-empty and of equal length")
        if len(upsample_strides) != len(num_upsample_filters):
            raise ConfigError(f"upsample_strides {list(upsample_strides)} and num_upsample_filters "
                              f"{list(num_upsample_filters)} must have equal length")
        if upsample_strides and len(upsample_strides) != len(layer_nums):
            raise ConfigError(f"need one upsample stride per stage ({len(layer_nums)}), got {list(upsample_strides)}")
        if not upsample_strides and len(layer_nums) != 1:
            raise ConfigError("without upsample_strides the backbone must have exactly one stage")
        if any(int(s) < 1 for s in layer_strides):
            raise ConfigError(f"layer_strides must be >= 1, got {list(layer_strides)}")

        cum = list(_cumprod([int(s) for s in layer_strides]))
        self.input_multiple = cum[-1]
        self.blocks = nn.ModuleList()
        c_in = in_channels
        for n, s, c in zip(layer_nums, layer_strides, num_filters):
            self.blocks.append(_stage(c_in, int(c), int(s), int(n)))
            c_in = int(c)

        self.deblocks = nn.ModuleList()
        if upsample_strides:
            factors = [_as_fraction(u, "upsample stride") for u in upsample_strides]
            out_strides = {Fraction(st) / f for st, f in zip(cum, factors)}
            if len(out_strides) != 1 or next(iter(out_strides)).denominator != 1:
                raise ConfigError(f"stages at strides {cum} upsampled by {list(upsample_strides)} do not meet "
                                  f"at one integer stride (got {sorted(map(float, out_strides))})")
            stride = int(next(iter(out_strides)))
            for c, f, cu in zip(num_filters, factors, num_upsample_filters):
                self.deblocks.append(_resample(int(c), int(cu), f))
            channels = sum(int(c) for c in num_upsample_filters)
        else:
            stride, channels = cum[-1], int(num_filters[-1])

        self.shrink: nn.Module | None = None
        if shrink_channels is not None:
            if int(shrink_stride) < 1:
                raise ConfigError(f"shrink_stride must be >= 1, got {shrink_stride}")
            self.shrink = nn.Sequential(*_conv_bn_relu(channels, int(shrink_channels), int(shrink_stride)),
                                        *_conv_bn_relu(int(shrink_channels), int(shrink_channels)))
            channels, stride = int(shrink_channels), stride * int(shrink_stride)
            self.input_multiple = math.lcm(self.input_multiple, stride)
        self.stride: int = stride
        self.out_channels: int = channels

    def forward_levels(self, x: torch.Tensor, stem_done: bool = False) -> list[torch.Tensor]:
        """Per-stage maps (A, num_filters[i], H/cum_stride_i, W/cum_stride_i), for multi-scale fusion.

        stem_done: ``x`` is already the output of the first convolution (``blocks[0][0]``), e.g.
            computed from sparse pillars by :func:`~coperception.encoders.pointpillars.scatter_conv2d`.
        """
        levels = []
        for k, block in enumerate(self.blocks):
            x = block[1:](x) if stem_done and k == 0 else block(x)
            levels.append(x)
        return levels

    def merge_levels(self, levels: Sequence[torch.Tensor]) -> torch.Tensor:
        """Resample the stage maps to the common stride, concatenate, and shrink if configured."""
        if self.deblocks:
            x = torch.cat([up(level) for up, level in zip(self.deblocks, levels)], dim=1)
        else:
            x = levels[-1]
        return self.shrink(x) if self.shrink is not None else x

    def forward(self, x: torch.Tensor, stem_done: bool = False) -> torch.Tensor:
        """(A, in_channels, H, W) -> (A, out_channels, H/stride, W/stride); with ``stem_done`` see
        :meth:`forward_levels` (x is then the first convolution's output)."""
        h, w = x.shape[-2:]
        first = int(self.blocks[0][0].stride[0]) if stem_done else 1
        if (h * first) % self.input_multiple or (w * first) % self.input_multiple:
            raise ConfigError(f"BEV input of size {h * first}x{w * first} is not a multiple of the backbone's "
                              f"total stride {self.input_multiple}")
        return self.merge_levels(self.forward_levels(x, stem_done))


def _cumprod(values: Sequence[int]):
    acc = 1
    for v in values:
        acc *= v
        yield acc

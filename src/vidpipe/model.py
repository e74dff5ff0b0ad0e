"""NVIDIA's SSD300 v1.1: ResNet-50 backbone, 81 labels (0 = background), 8732 default boxes.

Parameter names and shapes match NVIDIA's published checkpoints
(``feature_extractor.feature_extractor.*``, ``additional_blocks.0..4``, ``loc.0..5``, ``conf.0..5``).

In:  ``Tensor[N, 3, 300, 300]`` normalised images, any float dtype, NCHW or channels_last.
Out: ``locs Tensor[N, 4, 8732]`` (box offsets) and ``scores Tensor[N, 81, 8732]`` (class logits),
in the input's dtype, ordered as NVIDIA's ``SSD300.forward`` orders them.
"""

from __future__ import annotations

import torch
from torch import nn
from torchvision.models import resnet50

NUM_LABELS = 81
_OUT_CHANNELS = (1024, 512, 512, 256, 256, 256)
_BOXES_PER_CELL = (4, 6, 6, 6, 4, 4)


class ResNetBackbone(nn.Module):
    """ResNet-50 up to conv4 (children[:7]) with conv4's first block at stride 1: 38x38 features."""

    def __init__(self) -> None:
        super().__init__()
        self.feature_extractor = nn.Sequential(*list(resnet50(weights=None).children())[:7])
        block = self.feature_extractor[-1][0]
        block.conv1.stride = (1, 1)
        block.conv2.stride = (1, 1)
        block.downsample[0].stride = (1, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.feature_extractor(x)


def _extra_block(cin: int, cout: int, mid: int, last: bool) -> nn.Sequential:
    # The last two blocks shrink 5->3->1 without padding; the first three halve with stride 2.
    conv = (
        nn.Conv2d(mid, cout, kernel_size=3, bias=False)
        if last
        else nn.Conv2d(mid, cout, kernel_size=3, padding=1, stride=2, bias=False)
    )
    return nn.Sequential(
        nn.Conv2d(cin, mid, kernel_size=1, bias=False),
        nn.BatchNorm2d(mid),
        nn.ReLU(inplace=True),
        conv,
        nn.BatchNorm2d(cout),
        nn.ReLU(inplace=True),
    )


class SSD300(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.feature_extractor = ResNetBackbone()
        mids = (256, 256, 128, 128, 128)
        self.additional_blocks = nn.ModuleList(
            _extra_block(cin, cout, mid, last=i >= 3)
            for i, (cin, cout, mid) in enumerate(zip(_OUT_CHANNELS[:-1], _OUT_CHANNELS[1:], mids))
        )
        self.loc = nn.ModuleList(
            nn.Conv2d(c, n * 4, kernel_size=3, padding=1) for n, c in zip(_BOXES_PER_CELL, _OUT_CHANNELS)
        )
        self.conf = nn.ModuleList(
            nn.Conv2d(c, n * NUM_LABELS, kernel_size=3, padding=1)
            for n, c in zip(_BOXES_PER_CELL, _OUT_CHANNELS)
        )
        for layer in (*self.additional_blocks, *self.loc, *self.conf):
            for p in layer.parameters():
                if p.dim() > 1:
                    nn.init.xavier_uniform_(p)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        x = self.feature_extractor(x)
        feeds = [x]
        for block in self.additional_blocks:
            x = block(x)
            feeds.append(x)
        n = x.shape[0]
        locs = torch.cat([head(f).reshape(n, 4, -1) for f, head in zip(feeds, self.loc)], 2)
        scores = torch.cat([head(f).reshape(n, NUM_LABELS, -1) for f, head in zip(feeds, self.conf)], 2)
        return locs.contiguous(), scores.contiguous()

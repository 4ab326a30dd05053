"""DPT decoder head (as configured by UniMatch V2: no BatchNorm, bilinear with align_corners=True).

Takes the four tapped encoder maps (all at H/p, p the encoder's patch size) and rebuilds a pyramid: layer 1
upsampled x4, layer 2 x2, layer 3 kept, layer 4 downsampled x2, then fused from deep to shallow and upsampled x2
once more, giving logits at 8 x (H/p). The segmentor resizes those to the input size.
"""

from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F

from semiseg.models.specs import HeadSpec


class ResidualConvUnit(nn.Module):
    """x + conv(relu(conv(relu(x)))): the refinement unit of every fusion step."""

    def __init__(self, features: int) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(features, features, 3, padding=1)
        self.conv2 = nn.Conv2d(features, features, 3, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.conv2(F.relu(self.conv1(F.relu(x))))


class FusionBlock(nn.Module):
    """Add the refined skip (if any), refine, upsample to `size` (or x2), project with a 1x1 conv."""

    def __init__(self, features: int, has_skip: bool) -> None:
        super().__init__()
        self.skip_unit = ResidualConvUnit(features) if has_skip else None
        self.unit = ResidualConvUnit(features)
        self.out_conv = nn.Conv2d(features, features, 1)

    def forward(
        self, x: torch.Tensor, skip: torch.Tensor | None = None, size: tuple[int, int] | None = None
    ) -> torch.Tensor:
        if skip is not None:
            x = x + self.skip_unit(skip)
        x = self.unit(x)
        if size is None:
            x = F.interpolate(x, scale_factor=2, mode="bilinear", align_corners=True)
        else:
            x = F.interpolate(x, size=size, mode="bilinear", align_corners=True)
        return self.out_conv(x)


class DPTHead(nn.Module):
    def __init__(self, in_dim: int, nclass: int, spec: HeadSpec) -> None:
        super().__init__()
        oc, f = spec.out_channels, spec.features
        self.project = nn.ModuleList(nn.Conv2d(in_dim, c, 1) for c in oc)
        self.resize = nn.ModuleList(
            [
                nn.ConvTranspose2d(oc[0], oc[0], kernel_size=4, stride=4),
                nn.ConvTranspose2d(oc[1], oc[1], kernel_size=2, stride=2),
                nn.Identity(),
                nn.Conv2d(oc[3], oc[3], kernel_size=3, stride=2, padding=1),
            ]
        )
        self.reduce = nn.ModuleList(nn.Conv2d(c, f, 3, padding=1, bias=False) for c in oc)
        # fusion[0] is the shallowest (official refinenet1); fusion[3] the deepest, which has no skip input.
        self.fusion = nn.ModuleList(FusionBlock(f, has_skip=i < 3) for i in range(4))
        self.output = nn.Sequential(
            nn.Conv2d(f, f, 3, padding=1), nn.ReLU(inplace=True), nn.Conv2d(f, nclass, 1)
        )

    def forward(self, features: list[torch.Tensor]) -> torch.Tensor:
        l1, l2, l3, l4 = (
            red(res(proj(x))) for x, proj, res, red in zip(features, self.project, self.resize, self.reduce)
        )
        p4 = self.fusion[3](l4, size=l3.shape[-2:])
        p3 = self.fusion[2](p4, l3, size=l2.shape[-2:])
        p2 = self.fusion[1](p3, l2, size=l1.shape[-2:])
        p1 = self.fusion[0](p2, l1)
        return self.output(p1)

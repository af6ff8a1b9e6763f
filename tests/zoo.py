"""Small but structurally different encoder-decoder pairs for engine tests."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


def conv_bn(cin: int, cout: int, stride: int = 1) -> nn.Sequential:
    return nn.Sequential(nn.Conv2d(cin, cout, 3, stride, 1, bias=False), nn.BatchNorm2d(cout), nn.ReLU())


class ResidualBlock(nn.Module):
    def __init__(self, channels: int) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(channels, channels, 3, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(channels)
        self.conv2 = nn.Conv2d(channels, channels, 3, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(channels)
        self.act1, self.act2 = nn.ReLU(), nn.ReLU()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.act1(self.bn1(self.conv1(x)))
        return self.act2(x + self.bn2(self.conv2(y)))


class ResNetEncoder(nn.Module):
    """Stem, residual block, stride-2 downsampling, residual block: BatchNorm and adds throughout."""

    def __init__(self, width: int = 16) -> None:
        super().__init__()
        self.stem = conv_bn(3, width)
        self.block1 = ResidualBlock(width)
        self.down = conv_bn(width, 2 * width, stride=2)
        self.block2 = ResidualBlock(2 * width)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.block2(self.down(self.block1(self.stem(x))))


class ResNetDecoder(nn.Module):
    def __init__(self, width: int = 16) -> None:
        super().__init__()
        self.block = ResidualBlock(2 * width)
        self.up = conv_bn(2 * width, width)
        self.head = nn.Conv2d(width, 3, 3, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.up(F.interpolate(self.block(x), scale_factor=2.0, mode="nearest"))
        return torch.sigmoid(self.head(x))


class UNetEncoder(nn.Module):
    """Returns a dict of skip features at three scales."""

    def __init__(self, width: int = 8) -> None:
        super().__init__()
        self.enc1 = nn.Sequential(nn.Conv2d(3, width, 3, padding=1), nn.ReLU())
        self.enc2 = nn.Sequential(nn.MaxPool2d(2), nn.Conv2d(width, 2 * width, 3, padding=1), nn.ReLU())
        self.enc3 = nn.Sequential(nn.MaxPool2d(2), nn.Conv2d(2 * width, 4 * width, 3, padding=1), nn.ReLU())

    def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        s1 = self.enc1(x)
        s2 = self.enc2(s1)
        return {"s1": s1, "s2": s2, "bottom": self.enc3(s2)}


class UNetDecoder(nn.Module):
    """Consumes the skip dict: upsample, concatenate, convolve."""

    def __init__(self, width: int = 8) -> None:
        super().__init__()
        self.dec2 = nn.Sequential(nn.Conv2d(6 * width, 2 * width, 3, padding=1), nn.ReLU())
        self.dec1 = nn.Sequential(nn.Conv2d(3 * width, width, 3, padding=1), nn.ReLU())
        self.head = nn.Conv2d(width, 3, 1)

    def forward(self, skips: dict[str, torch.Tensor]) -> torch.Tensor:
        x = F.interpolate(skips["bottom"], scale_factor=2.0, mode="nearest")
        x = self.dec2(torch.cat([x, skips["s2"]], dim=1))
        x = F.interpolate(x, scale_factor=2.0, mode="nearest")
        x = self.dec1(torch.cat([x, skips["s1"]], dim=1))
        return torch.sigmoid(self.head(x))


class TokenEncoder(nn.Module):
    """Patchify to [B, N, C] tokens (ViT-style), then an MLP."""

    def __init__(self, dim: int = 32) -> None:
        super().__init__()
        self.patch = nn.Conv2d(3, dim, 4, stride=4)
        self.fc1 = nn.Linear(dim, 2 * dim)
        self.act = nn.GELU()
        self.fc2 = nn.Linear(2 * dim, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        tokens = self.patch(x).flatten(2).transpose(1, 2)
        return self.fc2(self.act(self.fc1(tokens)))


class TokenDecoder(nn.Module):
    def __init__(self, dim: int = 32, size: int = 32) -> None:
        super().__init__()
        self.size = size // 4
        self.fc = nn.Linear(dim, 3 * 16)

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        b, n, _ = tokens.shape
        x = self.fc(tokens).transpose(1, 2).reshape(b, 3 * 16, self.size, self.size)
        return torch.sigmoid(F.pixel_shuffle(x, 4))


def conv_gn(cin: int, cout: int, stride: int = 1, groups: int = 4) -> nn.Sequential:
    return nn.Sequential(nn.Conv2d(cin, cout, 3, stride, 1), nn.GroupNorm(groups, cout), nn.SiLU())


class GNUNetEncoder(nn.Module):
    """Stride-2 convs, GroupNorm; returns a tuple of skips (full, 1/2) and the 1/4 bottleneck."""

    def __init__(self, width: int = 16) -> None:
        super().__init__()
        self.enc1 = conv_gn(3, width)
        self.enc2 = conv_gn(width, 2 * width, stride=2)
        self.enc3 = conv_gn(2 * width, 4 * width, stride=2)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        s1 = self.enc1(x)
        s2 = self.enc2(s1)
        return s1, s2, self.enc3(s2)


class GNUNetDecoder(nn.Module):
    """ConvTranspose upsampling, concatenated skips, GroupNorm, a 1x1 RGB head."""

    def __init__(self, width: int = 16) -> None:
        super().__init__()
        self.up2 = nn.ConvTranspose2d(4 * width, 2 * width, 2, stride=2)
        self.dec2 = conv_gn(4 * width, 2 * width)
        self.up1 = nn.ConvTranspose2d(2 * width, width, 2, stride=2)
        self.dec1 = conv_gn(2 * width, width)
        self.head = nn.Conv2d(width, 3, 1)

    def forward(self, features: tuple[torch.Tensor, torch.Tensor, torch.Tensor]) -> torch.Tensor:
        s1, s2, bottom = features
        x = self.dec2(torch.cat([self.up2(bottom), s2], dim=1))
        x = self.dec1(torch.cat([self.up1(x), s1], dim=1))
        return self.head(x)

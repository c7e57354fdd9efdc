"""The config dataclasses of the denoiser networks (``net`` section of a run's config): each
kind's options, defaults and ``validate(shape)``. Plain data without torch, so that config
validation and the command line answer without importing it; the networks themselves are in
``unet.py`` and ``dit.py``.
"""
from __future__ import annotations

import math
from dataclasses import asdict, dataclass

from difflab.data.shape import DataShape


@dataclass
class UNetConfig:
    kind: str = "unet"
    channels: int = 32
    channel_mult: tuple[int, ...] = (1, 2, 2)
    num_res_blocks: int = 1
    attention_resolutions: tuple[int, ...] = (7,)
    attention_head_channels: int = 32
    dropout: float = 0.0
    groups: int = 8
    out_channels: int | None = None
    patch_size: int = 1              # p x p pixels -> one position of p^2 channels at the stem

    def validate(self, shape: DataShape | None = None) -> "UNetConfig":
        """Check the options, and against ``shape`` (if given) that the image can be halved."""
        if self.groups < 1:
            raise ValueError(f"net.groups={self.groups} must be at least 1")
        if self.channels <= 0 or self.channels % self.groups:
            raise ValueError(f"net.channels={self.channels} must be a positive multiple of "
                             f"net.groups={self.groups}")
        if not self.channel_mult or any(m <= 0 for m in self.channel_mult):
            raise ValueError(f"net.channel_mult={self.channel_mult} must be positive integers")
        if self.num_res_blocks < 1:
            raise ValueError(f"net.num_res_blocks={self.num_res_blocks} must be at least 1")
        if not 0 <= self.dropout < 1:
            raise ValueError(f"net.dropout={self.dropout} must be in [0, 1)")
        if any(r < 1 for r in self.attention_resolutions):
            raise ValueError(f"net.attention_resolutions={self.attention_resolutions} must be "
                             "positive feature-map sizes")
        if self.attention_head_channels < 1:
            raise ValueError(f"net.attention_head_channels={self.attention_head_channels} "
                             "must be at least 1")
        if self.out_channels is not None and self.out_channels < 1:
            raise ValueError(f"net.out_channels={self.out_channels} must be at least 1")
        if self.patch_size < 1:
            raise ValueError(f"net.patch_size={self.patch_size} must be at least 1")
        if shape is None:
            return self
        if len(shape.size) != 2 or shape.size[0] != shape.size[1]:
            raise ValueError(f"net.kind=unet needs square images, got data of size {shape.size}")
        if shape.size[0] % self.patch_size:
            raise ValueError(f"net.patch_size={self.patch_size} does not divide the image size "
                             f"{shape.size[0]}")
        size = shape.size[0] // self.patch_size
        for _ in self.channel_mult[1:]:
            if size % 2:
                raise ValueError(f"net: image size {shape.size[0]} cannot be halved "
                                 f"{len(self.channel_mult) - 1} times (odd size {size})")
            size //= 2
        return self

    def to_dict(self) -> dict:
        return asdict(self)


@dataclass
class DiTConfig:
    kind: str = "dit"
    patch: int = 2
    width: int = 128
    depth: int = 6
    heads: int = 4
    mlp_ratio: float = 4.0
    dropout: float = 0.0
    long_skips: bool = False

    def validate(self, shape: DataShape | None = None) -> "DiTConfig":
        """Check the options, and against ``shape`` (if given) that patches tile the image."""
        for name in ("patch", "width", "depth", "heads"):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, int) or v < 1:
                raise ValueError(f"net.{name}={v} must be a positive integer")
        if self.width % self.heads:
            raise ValueError(f"net.width={self.width} must be divisible by net.heads={self.heads}")
        if not (math.isfinite(self.mlp_ratio) and self.width * self.mlp_ratio >= 1):
            raise ValueError(f"net.mlp_ratio={self.mlp_ratio} must be positive "
                             "(at least 1/net.width)")
        if not 0 <= self.dropout < 1:
            raise ValueError(f"net.dropout={self.dropout} must be in [0, 1)")
        if self.long_skips and self.depth < 2:
            raise ValueError(f"net.long_skips={self.long_skips} needs net.depth >= 2, "
                             f"got net.depth={self.depth}")
        if shape is None:
            return self
        if len(shape.size) != 2:
            raise ValueError(f"net.kind=dit needs 2-D images, got data of size {shape.size}")
        if any(side % self.patch for side in shape.size):
            raise ValueError(f"net.patch={self.patch} must divide both image sides, "
                             f"got data of size {shape.size}")
        return self

    def to_dict(self) -> dict:
        return asdict(self)

"""U-Net denoiser network (Ho et al. 2020, Appendix B; Dhariwal & Nichol 2021, Sec. 3).

Raw network ``F(x_in, c_noise, cond)``: the Denoiser wrapper (``difflab.diffusion.denoiser``) supplies the
preconditioned input and the noise conditioning. Encoder blocks at each resolution, self-attention
at the resolutions listed in ``attention_resolutions``, a middle block, and a decoder that
concatenates the encoder's activations (skip connections). Residual blocks use GroupNorm and
scale-shift conditioning on the time/class embedding (Dhariwal & Nichol 2021, "AdaGN").
With ``patch_size`` p > 1 the network sees each p x p block of pixels as one position of p^2 C
channels (``pixel_unshuffle`` at the stem, ``pixel_shuffle`` after the output convolution), so
every level runs at 1/p of the resolution: the fp32 recipe's way to halve the FLOPs per image.
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from difflab.data.shape import DataShape
from difflab.nets.configs import UNetConfig  # noqa: F401 (re-exported)


def sinusoidal_embedding(c_noise: torch.Tensor, dim: int, scale: float = 250.0) -> torch.Tensor:
    """Transformer-style sinusoidal embedding (Vaswani et al. 2017, Sec. 3.5) of scale * c_noise,
    frequencies geometric from 1 to 1e-4. [B] -> [B, dim]."""
    half = dim // 2
    freqs = torch.exp(-math.log(10_000.0) * torch.arange(half, device=c_noise.device) / half)
    phase = (scale * c_noise.float())[:, None] * freqs[None]
    return torch.cat([phase.cos(), phase.sin()], dim=1)


class ResBlock(nn.Module):
    def __init__(self, c_in: int, c_out: int, emb_dim: int, groups: int, dropout: float):
        super().__init__()
        self.norm1 = nn.GroupNorm(groups, c_in)
        self.conv1 = nn.Conv2d(c_in, c_out, 3, padding=1)
        self.emb = nn.Linear(emb_dim, 2 * c_out)  # scale and shift
        self.norm2 = nn.GroupNorm(groups, c_out)
        self.dropout = nn.Dropout(dropout)
        self.conv2 = nn.Conv2d(c_out, c_out, 3, padding=1)
        nn.init.zeros_(self.conv2.weight)
        nn.init.zeros_(self.conv2.bias)
        self.skip = nn.Conv2d(c_in, c_out, 1) if c_in != c_out else nn.Identity()

    def forward(self, x: torch.Tensor, emb: torch.Tensor) -> torch.Tensor:
        h = self.conv1(F.silu(self.norm1(x)))
        scale, shift = self.emb(emb)[:, :, None, None].chunk(2, dim=1)  # [B, C, 1, 1] each
        h = self.norm2(h) * (1 + scale) + shift
        h = self.conv2(self.dropout(F.silu(h)))
        return self.skip(x) + h


class Attention(nn.Module):
    def __init__(self, channels: int, head_channels: int, groups: int):
        super().__init__()
        self.heads = max(1, channels // head_channels)
        self.norm = nn.GroupNorm(groups, channels)
        self.qkv = nn.Conv2d(channels, 3 * channels, 1)
        self.proj = nn.Conv2d(channels, channels, 1)
        nn.init.zeros_(self.proj.weight)
        nn.init.zeros_(self.proj.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        B, C, H, W = x.shape
        qkv = self.qkv(self.norm(x)).reshape(B, 3, self.heads, C // self.heads, H * W)
        q, k, v = qkv.transpose(-1, -2).unbind(1)  # each [B, heads, HW, C/heads]
        h = F.scaled_dot_product_attention(q, k, v)
        return x + self.proj(h.transpose(-1, -2).reshape(B, C, H, W))


class UNet(nn.Module):
    """U-Net ``F(x_in [B,C,H,W], c_noise [B], cond [B] int or None) -> [B,C,H,W]`` for images of
    ``shape`` (channels, size and classes from the data)."""

    def __init__(self, config: UNetConfig, shape: DataShape):
        super().__init__()
        self.config = config.validate(shape)
        self.num_classes = shape.num_classes
        ch, groups = config.channels, config.groups
        emb_dim = 4 * ch
        self.emb_channels = ch
        self.time_mlp = nn.Sequential(nn.Linear(ch, emb_dim), nn.SiLU(), nn.Linear(emb_dim, emb_dim))
        # Index num_classes is the "no label" token used for classifier-free guidance.
        self.class_emb = nn.Embedding(shape.num_classes + 1, emb_dim) if shape.num_classes else None
        p = config.patch_size  # space-to-depth: [C, H, W] -> [C p^2, H/p, W/p] (and back at the end)
        self.stem = nn.Conv2d(shape.channels * p * p, ch, 3, padding=1)

        self.down = nn.ModuleList()
        skip_channels = [ch]
        c, size = ch, shape.size[0] // p
        for level, mult in enumerate(config.channel_mult):
            for _ in range(config.num_res_blocks):
                block = nn.ModuleList([ResBlock(c, ch * mult, emb_dim, groups, config.dropout)])
                c = ch * mult
                if size in config.attention_resolutions:
                    block.append(Attention(c, config.attention_head_channels, groups))
                self.down.append(block)
                skip_channels.append(c)
            if level < len(config.channel_mult) - 1:
                self.down.append(nn.ModuleList([nn.Conv2d(c, c, 3, stride=2, padding=1)]))
                skip_channels.append(c)
                size //= 2

        self.mid = nn.ModuleList([ResBlock(c, c, emb_dim, groups, config.dropout),
                                  Attention(c, config.attention_head_channels, groups),
                                  ResBlock(c, c, emb_dim, groups, config.dropout)])

        self.up = nn.ModuleList()
        for level, mult in reversed(list(enumerate(config.channel_mult))):
            for i in range(config.num_res_blocks + 1):
                block = nn.ModuleList([ResBlock(c + skip_channels.pop(), ch * mult, emb_dim,
                                                groups, config.dropout)])
                c = ch * mult
                if size in config.attention_resolutions:
                    block.append(Attention(c, config.attention_head_channels, groups))
                if level > 0 and i == config.num_res_blocks:
                    block.append(nn.Upsample(scale_factor=2, mode="nearest"))
                    block.append(nn.Conv2d(c, c, 3, padding=1))
                    size *= 2
                self.up.append(block)

        self.out_norm = nn.GroupNorm(groups, c)
        self.out = nn.Conv2d(c, (config.out_channels or shape.channels) * p * p, 3, padding=1)
        nn.init.zeros_(self.out.weight)
        nn.init.zeros_(self.out.bias)

    @staticmethod
    def _run(block: nn.ModuleList, h: torch.Tensor, emb: torch.Tensor) -> torch.Tensor:
        for layer in block:
            h = layer(h, emb) if isinstance(layer, ResBlock) else layer(h)
        return h

    def forward(self, x: torch.Tensor, c_noise: torch.Tensor,
                cond: torch.Tensor | None = None) -> torch.Tensor:
        emb = self.time_mlp(sinusoidal_embedding(c_noise, self.emb_channels))
        if self.class_emb is not None:
            null = self.num_classes  # label -1 or None: the unconditional token
            cond = torch.full((x.shape[0],), null, device=x.device) if cond is None else \
                torch.where(cond < 0, null, cond)
            emb = emb + self.class_emb(cond)
        p = self.config.patch_size
        h = self.stem(F.pixel_unshuffle(x, p) if p > 1 else x)
        skips = [h]
        for block in self.down:
            h = self._run(block, h, emb)
            skips.append(h)
        h = self._run(self.mid, h, emb)
        for block in self.up:
            h = self._run(block, torch.cat([h, skips.pop()], dim=1), emb)
        out = self.out(F.silu(self.out_norm(h)))
        return F.pixel_shuffle(out, p) if p > 1 else out

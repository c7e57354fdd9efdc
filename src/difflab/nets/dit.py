"""Diffusion Transformer (DiT; Peebles & Xie 2023, "Scalable Diffusion Models with Transformers").

Raw network ``F(x_in, c_noise, cond)`` for the Denoiser wrapper (``difflab.diffusion.denoiser``):

    z_0 = Patchify(x_in) + E_pos                 conv, kernel = stride = p; fixed 2-D sin-cos E_pos
    c   = MLP(sin(c_noise)) + E_cls[y]           noise-level + class embedding (DiT Sec. 3.2)
    z_k = Block_k(z_{k-1}, c)                    adaLN-Zero transformer blocks, k = 1..depth
    F   = Unpatchify(Linear(adaLN(z_depth, c)))  p*p*C values per token, zero-initialised

adaLN-Zero (DiT Sec. 3.2): from c a zero-initialised linear layer regresses per-channel
(shift, scale, gate) for the attention and the MLP sub-blocks,

    z = z + g_1 * Attn(LN(z) (1 + s_1) + b_1),   z = z + g_2 * MLP(LN(z) (1 + s_2) + b_2),

so every block starts as the identity and F starts at exactly zero. With ``long_skips`` the
U-ViT long skips (Bao et al. 2023, Sec. 3.1) join the halves: the input of block depth-1-i becomes
Linear([z ; output of block i]) for i < depth // 2. Labels -1 (or ``cond`` None) select the learned
null embedding, index ``num_classes`` (classifier-free guidance, Ho & Salimans 2022); an
unconditional model (num_classes 0) has no class embedding.

| code | symbol  | meaning                              |
|------|---------|--------------------------------------|
| p    | p       | patch side                           |
| d    | d       | token width (hidden size)            |
| c    | c       | conditioning vector [B, d]           |
| b,s,g| beta, gamma, alpha | adaLN shift, scale, gate  |
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from difflab.data.shape import DataShape
from difflab.nets.configs import DiTConfig  # noqa: F401 (re-exported)
from difflab.nets.unet import sinusoidal_embedding


def sincos_1d(pos: torch.Tensor, dim: int) -> torch.Tensor:
    """[sin(pos w_k), cos(pos w_k)], w_k = 10000^(-k/(dim/2)) (Vaswani et al. 2017, Sec. 3.5);
    [N] -> [N, dim], a zero column appended if dim is odd."""
    k = dim // 2
    w = 10_000.0 ** (-torch.arange(k, dtype=torch.float64) / max(k, 1))
    phase = pos.double()[:, None] * w[None]
    return F.pad(torch.cat([phase.sin(), phase.cos()], dim=1), (0, dim - 2 * k))


def sincos_2d(h: int, w: int, dim: int) -> torch.Tensor:
    """Fixed 2-D positional embedding (DiT Sec. 3.2, after MAE, He et al. 2022): half the channels
    encode the token's row, half its column. Tokens in row-major order: [h * w, dim], float32."""
    rows, cols = torch.meshgrid(torch.arange(h), torch.arange(w), indexing="ij")
    d_row = dim // 2
    emb = torch.cat([sincos_1d(rows.flatten(), d_row), sincos_1d(cols.flatten(), dim - d_row)], 1)
    return emb.float()


def modulate(z: torch.Tensor, shift: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
    """adaLN: z (1 + s) + b, with s, b of shape [B, d] broadcast over tokens."""
    return z * (1 + scale[:, None]) + shift[:, None]


class Block(nn.Module):
    """Pre-LN transformer block with adaLN-Zero conditioning (DiT Sec. 3.2, Fig. 3)."""

    def __init__(self, d: int, heads: int, mlp_ratio: float, dropout: float):
        super().__init__()
        self.heads, self.dropout = heads, dropout
        self.norm1 = nn.LayerNorm(d, elementwise_affine=False, eps=1e-6)
        self.qkv = nn.Linear(d, 3 * d)
        self.proj = nn.Linear(d, d)
        self.norm2 = nn.LayerNorm(d, elementwise_affine=False, eps=1e-6)
        hidden = max(1, int(d * mlp_ratio))
        self.mlp = nn.Sequential(nn.Linear(d, hidden), nn.GELU(approximate="tanh"),
                                 nn.Dropout(dropout), nn.Linear(hidden, d))
        self.ada = nn.Linear(d, 6 * d)  # (b1, s1, g1, b2, s2, g2) from SiLU(c); zero-initialised

    def attention(self, z: torch.Tensor) -> torch.Tensor:
        B, N, d = z.shape
        q, k, v = self.qkv(z).reshape(B, N, 3, self.heads, d // self.heads).permute(2, 0, 3, 1, 4)
        h = F.scaled_dot_product_attention(q, k, v, dropout_p=self.dropout if self.training else 0.0)
        return self.proj(h.transpose(1, 2).reshape(B, N, d))

    def forward(self, z: torch.Tensor, c: torch.Tensor) -> torch.Tensor:
        b1, s1, g1, b2, s2, g2 = self.ada(F.silu(c)).chunk(6, dim=1)
        z = z + g1[:, None] * self.attention(modulate(self.norm1(z), b1, s1))
        return z + g2[:, None] * self.mlp(modulate(self.norm2(z), b2, s2))


class DiT(nn.Module):
    """DiT ``F(x_in [B,C,H,W], c_noise [B], cond [B] int or None) -> [B,C,H,W]`` for images of
    ``shape`` (channels, size and classes from the data)."""

    def __init__(self, config: DiTConfig, shape: DataShape):
        super().__init__()
        self.config = config.validate(shape)
        self.num_classes = shape.num_classes
        p, d, C = config.patch, config.width, shape.channels
        self.grid = (shape.size[0] // p, shape.size[1] // p)
        self.embed = nn.Conv2d(C, d, p, stride=p)
        self.register_buffer("pos", sincos_2d(*self.grid, d), persistent=False)  # fixed, not learned
        self.noise_mlp = nn.Sequential(nn.Linear(d, d), nn.SiLU(), nn.Linear(d, d))
        # Index num_classes is the "no label" token used for classifier-free guidance.
        self.class_emb = nn.Embedding(shape.num_classes + 1, d) if shape.num_classes else None
        self.blocks = nn.ModuleList(Block(d, config.heads, config.mlp_ratio, config.dropout)
                                    for _ in range(config.depth))
        n_skips = config.depth // 2 if config.long_skips else 0
        self.skips = nn.ModuleList(nn.Linear(2 * d, d) for _ in range(n_skips))
        self.out_norm = nn.LayerNorm(d, elementwise_affine=False, eps=1e-6)
        self.out_ada = nn.Linear(d, 2 * d)  # (b, s) of the final adaLN; zero-initialised
        self.out = nn.Linear(d, p * p * C)
        self._init()

    def _init(self) -> None:
        """Xavier-uniform linear layers (incl. the patch embedding), zero biases; zeros for every
        adaLN regression and the output layer (adaLN-Zero, DiT Sec. 3.2)."""
        for m in self.modules():
            if isinstance(m, nn.Linear):
                nn.init.xavier_uniform_(m.weight)
                nn.init.zeros_(m.bias)
        nn.init.xavier_uniform_(self.embed.weight.view(self.embed.out_channels, -1))
        nn.init.zeros_(self.embed.bias)
        nn.init.normal_(self.noise_mlp[0].weight, std=0.02)
        nn.init.normal_(self.noise_mlp[2].weight, std=0.02)
        if self.class_emb is not None:
            nn.init.normal_(self.class_emb.weight, std=0.02)
        for layer in [*(b.ada for b in self.blocks), self.out_ada, self.out]:
            nn.init.zeros_(layer.weight)
            nn.init.zeros_(layer.bias)

    def condition(self, c_noise: torch.Tensor, cond: torch.Tensor | None) -> torch.Tensor:
        """c = MLP(sinusoidal(c_noise)) + E_cls[y], y = num_classes for label -1 or None."""
        c = self.noise_mlp(sinusoidal_embedding(c_noise, self.config.width))
        if self.class_emb is None:
            return c
        null = self.num_classes
        y = torch.full((c.shape[0],), null, device=c.device) if cond is None else \
            torch.where(cond < 0, null, cond)
        return c + self.class_emb(y)

    def unpatchify(self, z: torch.Tensor) -> torch.Tensor:
        """[B, h*w, C*p*p] (channel-major within a patch) -> [B, C, h*p, w*p]."""
        (h, w), p = self.grid, self.config.patch
        B = z.shape[0]
        z = z.reshape(B, h, w, -1, p, p).permute(0, 3, 1, 4, 2, 5)
        return z.reshape(B, -1, h * p, w * p)

    def forward(self, x: torch.Tensor, c_noise: torch.Tensor,
                cond: torch.Tensor | None = None) -> torch.Tensor:
        c = self.condition(c_noise, cond)
        z = self.embed(x).flatten(2).transpose(1, 2) + self.pos  # [B, N, d]
        depth, n, saved = len(self.blocks), len(self.skips), []
        for k, block in enumerate(self.blocks):
            if n and k >= depth - n:  # U-ViT long skip from block depth-1-k
                z = self.skips[k - (depth - n)](torch.cat([z, saved.pop()], dim=-1))
            z = block(z, c)
            if k < n:
                saved.append(z)
        b, s = self.out_ada(F.silu(c)).chunk(2, dim=1)
        return self.unpatchify(self.out(modulate(self.out_norm(z), b, s)))

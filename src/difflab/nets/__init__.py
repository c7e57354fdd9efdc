"""Denoiser networks (U-Net, DiT) behind one factory, and the feature networks used by the metrics.

A network kind is a config dataclass (with a ``kind`` field and a ``validate(shape)`` method) and
a module class built as ``Net(config, shape)``, where ``shape`` (``difflab.data.shape.DataShape``)
comes from the data. Adding a kind touches its own module and the table below only.
"""
from __future__ import annotations

from difflab.data.shape import DataShape
from difflab.nets.dit import DiT, DiTConfig
from difflab.nets.unet import UNet, UNetConfig

NETS = {"unet": (UNetConfig, UNet), "dit": (DiTConfig, DiT)}


def net_config(kind: str):
    """A default config of network ``kind``; ValueError listing the kinds otherwise."""
    if kind not in NETS:
        raise ValueError(f"net.kind={kind!r}: choose from {', '.join(NETS)}")
    return NETS[kind][0]()


def build_net(config, shape: DataShape):
    """The raw network ``F(x_in, c_noise, cond)`` that ``config`` describes, for data of ``shape``."""
    config.validate(shape)
    return NETS[config.kind][1](config, shape)

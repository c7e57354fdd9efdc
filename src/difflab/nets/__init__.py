"""Denoiser networks (U-Net, DiT) behind one factory, and the feature networks used by the metrics.

A network kind is a config dataclass (``configs.py``: a ``kind`` field and a ``validate(shape)``
method, no torch) and a module class built as ``Net(config, shape)``, where ``shape``
(``difflab.data.shape.DataShape``) comes from the data. Adding a kind touches its own module,
its config and the two lookups below only.
"""
from __future__ import annotations

from difflab.data.shape import DataShape
from difflab.nets.configs import DiTConfig, UNetConfig

NET_CONFIGS = {"unet": UNetConfig, "dit": DiTConfig}


def net_config(kind: str):
    """A default config of network ``kind``; ValueError listing the kinds otherwise."""
    if kind not in NET_CONFIGS:
        raise ValueError(f"net.kind={kind!r}: choose from {', '.join(NET_CONFIGS)}")
    return NET_CONFIGS[kind]()


def build_net(config, shape: DataShape):
    """The raw network ``F(x_in, c_noise, cond)`` that ``config`` describes, for data of ``shape``."""
    config.validate(shape)
    if config.kind == "dit":
        from difflab.nets.dit import DiT

        return DiT(config, shape)
    from difflab.nets.unet import UNet

    return UNet(config, shape)

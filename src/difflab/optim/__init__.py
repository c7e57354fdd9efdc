"""Optimizers: the Langevin family (SGLD, tutorial constant noise, SGHMC-style momentum,
annealed gradient noise, pSGLD) in ``torch.optim`` style, and their noise stream."""
from difflab.optim.langevin import NOISE_MODES, Langevin, scheduled_temperature
from difflab.optim.normal import NormalStream

__all__ = ["Langevin", "NOISE_MODES", "NormalStream", "scheduled_temperature"]

"""Optimizers: the Langevin family (SGLD, tutorial constant noise, SGHMC-style momentum,
annealed gradient noise, pSGLD) in ``torch.optim`` style."""
from difflab.optim.langevin import NOISE_MODES, Langevin, scheduled_temperature

__all__ = ["Langevin", "NOISE_MODES", "scheduled_temperature"]

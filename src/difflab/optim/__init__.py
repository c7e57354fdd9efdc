"""Optimizers: the Langevin family (SGLD, tutorial constant noise, SGHMC-style momentum,
annealed gradient noise, pSGLD) in ``torch.optim`` style, their noise stream, and posterior
sampling on top of them (cyclical step sizes, burn-in/thinning schedules, snapshot collectors and
the posterior predictive, with the temperature and N/n conventions in ``sgmcmc``)."""
from difflab.optim.cyclical import (CyclicalStepSize, SamplingSchedule, cycle_length,
                                    cyclical_step_size, in_exploration)
from difflab.optim.langevin import NOISE_MODES, Langevin, scheduled_temperature
from difflab.optim.normal import NormalStream
from difflab.optim.posterior import PosteriorCollector, PredictiveAverage
from difflab.optim.sgmcmc import (effective_sample_size, gaussian_stationary_covariance,
                                  sghmc_hyperparameters, sgld_hyperparameters)

__all__ = ["Langevin", "NOISE_MODES", "NormalStream", "scheduled_temperature",
           "CyclicalStepSize", "SamplingSchedule", "cycle_length", "cyclical_step_size",
           "in_exploration", "PosteriorCollector", "PredictiveAverage", "effective_sample_size",
           "gaussian_stationary_covariance", "sghmc_hyperparameters", "sgld_hyperparameters"]

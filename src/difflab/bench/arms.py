"""The arms of the optimizer benchmark and the optimizer each one trains with.

Tuned arms (``ARMS``): SGD, SGD + momentum, SGD + momentum + weight decay, Adam and the Langevin
family. Final-run-only arms that take a partner arm's selected learning rate and seeds:

* noiseless twins (``TWINS``): the partner Langevin arm with temperature 0, i.e. the same
  update rule without the noise;
* ensembles at the same total epochs (``ENSEMBLES``, ``difflab.bench.ensembles``): a snapshot
  ensemble (Huang et al. 2017, "Snapshot ensembles: train 1, get M for free", ICLR: SGD with
  momentum on M cosine cycles with restarts, one snapshot at the end of each cycle) and a deep
  ensemble (Lakshminarayanan, Pritzel & Blundell 2017, "Simple and scalable predictive
  uncertainty estimation using deep ensembles", NeurIPS: M independently initialised and
  shuffled Adam models), each of E/M epochs, so the M members together cost the E epochs of
  one run of any other arm.
"""
from __future__ import annotations

import torch

from difflab.optim import Langevin

ARMS = ("sgd", "momentum", "momentum_wd", "adam", "langevin", "tutorial", "sghmc", "annealed")
BASELINES = ("sgd", "momentum", "momentum_wd", "adam")
LANGEVIN_ARMS = ("langevin", "tutorial", "sghmc", "annealed")
# the SG-MCMC arms (a posterior temperature D x N): their trajectory average is the Bayesian
# model average the ensembles are compared with
POSTERIOR_ARMS = ("langevin", "sghmc")
# noiseless twins (final runs only): the partner Langevin arm's selected lr and seeds with
# temperature 0, i.e. the same update rule without the noise. twin -> (partner, its baseline)
TWINS = {"langevin_twin": ("langevin", "sgd"), "sghmc_twin": ("sghmc", "momentum")}
# ensembles (final runs only): arm -> the tuned arm whose optimizer and selected lr it uses
ENSEMBLES = {"snapshot": "momentum", "deep_ensemble": "adam"}
FINAL_ONLY_ARMS = tuple(TWINS) + tuple(ENSEMBLES)
RUN_ARMS = ARMS + FINAL_ONLY_ARMS      # every arm a run record may carry
# arms whose final records also hold the trajectory average of test predictions
AVERAGED_ARMS = LANGEVIN_ARMS + tuple(TWINS)
# the second hyperparameter each arm reads (all arms read lr)
ARM_KNOBS = {"momentum_wd": "weight_decay", "langevin": "temperature_n", "tutorial": "noise_std",
             "sghmc": "temperature_n", "annealed": "eta"}
NOISE_SEED_OFFSET = 1_000_003


def make_optimizer(arm: str, params, hparams: dict, n_train: int, seed: int):
    """Arm name + hyperparameters -> optimizer. Temperatures of the Langevin arms are given as
    ``temperature_n = D * N`` (D = 1/N is the posterior temperature of a mean loss). An
    ensemble arm gets its base arm's optimizer (``ENSEMBLES``)."""
    arm = ENSEMBLES.get(arm, arm)
    for name in ("lr", ARM_KNOBS.get(arm)):
        if name is not None and name not in hparams:
            raise ValueError(f"optimizer arm {arm!r} needs the hyperparameter {name!r} "
                             f"(got {sorted(hparams)})")
    lr = hparams["lr"]
    noise_seed = seed + NOISE_SEED_OFFSET
    if arm == "sgd":
        return torch.optim.SGD(params, lr=lr, foreach=True)
    if arm == "momentum":
        return torch.optim.SGD(params, lr=lr, momentum=0.9, foreach=True)
    if arm == "momentum_wd":
        return torch.optim.SGD(params, lr=lr, momentum=0.9, weight_decay=hparams["weight_decay"],
                               foreach=True)
    if arm == "adam":
        return torch.optim.Adam(params, lr=lr, foreach=True)
    if arm == "langevin":
        return Langevin(params, lr=lr, temperature=hparams["temperature_n"] / n_train,
                        noise="langevin", seed=noise_seed)
    if arm == "tutorial":
        return Langevin(params, lr=lr, temperature=hparams["noise_std"], noise="constant",
                        seed=noise_seed)
    if arm == "sghmc":
        return Langevin(params, lr=lr, temperature=hparams["temperature_n"] / n_train,
                        noise="langevin", momentum=0.9, seed=noise_seed)
    if arm == "annealed":
        return Langevin(params, lr=lr, temperature=hparams["eta"], noise="annealed",
                        gamma=0.55, seed=noise_seed)
    if arm == "langevin_twin":
        return Langevin(params, lr=lr, temperature=0.0, noise="langevin", seed=noise_seed)
    if arm == "sghmc_twin":
        return Langevin(params, lr=lr, temperature=0.0, noise="langevin", momentum=0.9,
                        seed=noise_seed)
    raise ValueError(f"unknown optimizer arm {arm!r} (choose from {', '.join(ARMS)})")

"""The data sets' recipes: the defaults of ``difflab train --data D``, as the fields in which
they differ from ``TrainConfig()`` (the MNIST recipe measured on a CPU with AMX). ``recipe``
applies them before a --config file, flags and --set.
"""
from __future__ import annotations

from difflab.config import TrainConfig, update

# Per-data-set recipes: CIFAR-10's was chosen in BENCHMARKS.md, "CIFAR-10 recipe".
RECIPES = {
    "cifar10": {"data": {"dataset": "cifar10", "hflip": True}, "net": {"attention_resolutions": [8]},
                "loop": {"out": "runs/cifar10", "minutes": 30.0}, "sample": {"guidance": 2.0}},
}


# Where training runs in fp32 (a CPU without AMX, the kind most laptops have), a data set's
# recipe takes these fields on top: a network with fewer FLOPs per image, since fp32 there runs
# at a third to half of AMX's bf16 speed. MNIST's was chosen in BENCHMARKS.md, "The main job in
# fp32". Where auto picks bf16 (AMX), the recipe above stays as it was measured.
FP32_RECIPES = {
    "mnist": {"net": {"patch_size": 2, "channel_mult": [2, 2]}, "optim": {"lr": 7e-4},
              "diffusion": {"p_mean": -0.8}, "loop": {"minutes": 8.0}},
}


def recipe(dataset: str = "mnist", precision: str = "bf16") -> TrainConfig:
    """The default TrainConfig of ``dataset``: the MNIST recipe with ``RECIPES[dataset]`` on
    top, and ``FP32_RECIPES[dataset]`` above that where ``precision`` (the resolved training
    precision, ``device.resolve_precision``) is fp32."""
    config = TrainConfig()
    if dataset in RECIPES:
        update(config, RECIPES[dataset], f"recipe {dataset}")
    if precision == "fp32" and dataset in FP32_RECIPES:
        update(config, FP32_RECIPES[dataset], f"fp32 recipe {dataset}")
    return config

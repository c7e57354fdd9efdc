"""The names users choose among and the ranges of the integers every sampling call takes: one
home for each list, shared by config validation, the command line and the Python API.

Standard library only: ``difflab --help``, ``difflab CMD --help`` and argument errors answer
without importing torch. The modules that implement the names import their list from here;
where an implementation keeps a table of functions keyed by name (``generation.SAMPLERS``,
``solvers.SOLVERS``), a test checks that it holds exactly these names.
"""
from __future__ import annotations

import numbers

# diffusion: what the denoiser predicts, how training draws sigma, alpha-bar schedules, grids
PARAMETERIZATIONS = ("eps", "x0", "v", "edm")
TRAINING_DENSITIES = ("lognormal", "ddpm", "log-uniform")
SCHEDULES = ("linear", "cosine", "sigmoid")
GRIDS = ("karras", "uniform-t", "log-snr", "ddpm")
SAMPLERS = ("ddim", "ddpm", "euler", "heun", "dpmpp-2m", "dpmpp-3m", "unipc", "euler-maruyama",
            "pc", "ald")
ODE_SAMPLERS = ("ddim", "euler", "heun", "dpmpp-2m", "dpmpp-3m", "unipc")
MAX_STEPS = 10_000  # more steps than any sampler needs; bounds the time and memory of a call

# restoration: tasks, solvers and each task's default solver. Noisy measurements get DDRM: at 50
# steps DDNM+ re-injects the measurement's noise at every step and returns nearly the noisy input
# (CIFAR-10, 100 test images, denoising at sigma 0.2: PSNR 17.1 vs DDRM's 24.6 dB, FID 27.2 vs
# 4.2; BENCHMARKS.md, "Default solvers")
RESTORATION_TASKS = ("inpaint", "upscale", "denoise", "deblur", "colorize", "edit")
RESTORATION_METHODS = ("ddnm", "ddrm", "pigdm", "repaint")
DEFAULT_METHOD = {"inpaint": "ddnm", "upscale": "ddnm", "denoise": "ddrm", "deblur": "ddrm",
                  "colorize": "ddnm"}

# evaluation: the reference splits samples are scored against
REFERENCES = ("mnist-test", "mnist-train", "cifar10-test", "cifar10-train")

# the optimizer benchmark: problems, budgets, executors
BENCH_PROBLEMS = ("cifar10-cnn", "mnist-mlp", "digits-mlp")
BUDGETS = ("quick", "standard", "full")
EXECUTORS = ("sequential", "process", "ray")


def is_integer(value) -> bool:
    """An integer that is not a bool (NumPy integers count; floats and strings do not)."""
    return isinstance(value, numbers.Integral) and not isinstance(value, bool)


def check_steps(steps, name: str = "steps", high: int = MAX_STEPS) -> int:
    """``steps`` as an int in [1, high]; a one-line ValueError naming ``name`` otherwise (0,
    1.5, "10" and True are refused, never read as another number of steps)."""
    if not is_integer(steps) or not 1 <= int(steps) <= high:
        raise ValueError(f"{name} must be an integer in [1, {high}], got {steps!r}")
    return int(steps)


def check_seed(seed, name: str = "seed") -> int:
    """``seed`` as an int in [0, 2^63), the range torch's generators take; a one-line
    ValueError naming ``name`` otherwise (1.5 is not truncated, "1" is not another seed)."""
    if not is_integer(seed) or not 0 <= int(seed) < 2**63:
        raise ValueError(f"{name} must be an integer in [0, 2^63), got {seed!r}")
    return int(seed)

"""Step-overhead measurement: ``optimizer.step()`` alone and a whole training step, for every arm,
interleaved in one process (robust to machine load), relative to plain SGD.

All optimizers run their ``foreach`` implementation (same implementation mode). Timings are
taken in repeated blocks; each repeat visits every arm once, so a ratio per repeat compares
neighbouring blocks, and the reported ratio is the median over repeats with a bootstrap CI.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

from difflab.bench.problems import build_model
from difflab.bench.runner import ARMS, environment, make_optimizer
from difflab.timing import interleave, summarise


def _state_bytes(opt) -> int:
    total = 0
    for state in opt.state.values():
        for v in state.values():
            if torch.is_tensor(v):
                total += v.numel() * v.element_size()
    for flat in getattr(opt, "_flat_noise", {}).values():
        total += flat.numel() * flat.element_size()
    return total


def measure_overhead(problem: str, configs: dict[str, dict], n_train: int, repeats: int = 15,
                     step_block: int = 50, train_block: int = 5, batch: tuple | None = None,
                     threads: int = 1) -> dict:
    """Timing record: per arm median seconds of step() and of a whole training step, ratios to
    SGD (median over repeats, 95% bootstrap CI), optimizer state bytes."""
    torch.set_num_threads(threads)
    arms = [a for a in ARMS if a in configs]
    if "sgd" not in arms:
        raise ValueError("overhead measurement needs the 'sgd' arm as reference")
    gen = torch.Generator().manual_seed(0)
    if batch is None:
        raise ValueError("measure_overhead needs a (inputs, labels) batch")
    xb, yb = batch
    setups = {}
    for arm in arms:
        torch.manual_seed(0)
        model = build_model(problem)
        opt = make_optimizer(arm, model.parameters(), configs[arm], n_train, seed=0)
        for p in model.parameters():
            p.grad = torch.randn(p.shape, generator=gen) * 1e-3
        setups[arm] = (model, opt)
    calls, blocks = {}, {}
    for arm in arms:             # per repeat: arm 1's step() block, its training block, arm 2's ...
        model, opt = setups[arm]

        def train_step(model=model, opt=opt):
            opt.zero_grad(set_to_none=True)
            F.cross_entropy(model(xb), yb).backward()
            opt.step()

        calls[arm, "step"], blocks[arm, "step"] = opt.step, step_block
        calls[arm, "train"], blocks[arm, "train"] = train_step, train_block
    times = interleave(calls, repeats, blocks)   # plus one warm-up repeat, discarded
    step = summarise({a: times[a, "step"] for a in arms}, "sgd")
    train = summarise({a: times[a, "train"] for a in arms}, "sgd")
    out = {"kind": "overhead", "key": f"overhead/{problem}", "problem": problem,
           "n_params": sum(p.numel() for p in setups["sgd"][0].parameters()),
           "batch_size": int(xb.shape[0]), "env": environment(threads), "arms": {}}
    for arm in arms:
        out["arms"][arm] = {
            "hparams": configs[arm],
            "step_seconds": step[arm]["seconds"],
            "train_step_seconds": train[arm]["seconds"],
            "step_ratio": step[arm]["ratio"],
            "step_ratio_ci": step[arm]["ratio_ci"],
            "train_step_ratio": train[arm]["ratio"],
            "train_step_ratio_ci": train[arm]["ratio_ci"],
            "state_bytes": _state_bytes(setups[arm][1]),
        }
    return out

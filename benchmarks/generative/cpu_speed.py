"""FLOPs per image against images per second on this CPU: the MNIST recipe's network for AMX
machines (bf16 there; here in fp32) against the fp32 recipe's (a 2x2 space-to-depth U-Net), each
in torch's default layout and channels-last (``device.fast_layout``), in one process.

    python benchmarks/generative/cpu_speed.py --rounds 5 --steps 5
    ONEDNN_MAX_CPU_ISA=AVX2 ATEN_CPU_CAPABILITY=avx2 python benchmarks/generative/cpu_speed.py

For each arm: training FLOPs per image (forward + backward, ``torch.utils.flop_counter``), the
median time of a whole training step (``train.optimization_step``: loss, backward, clipping,
fused AdamW; plus the EMA update) at batch 64 and of a sampling forward pass at batch 500 (250
images with classifier-free guidance), as images/s and achieved GFLOP/s. The arms alternate in
rounds, so load from elsewhere hits all alike. GFLOP/s are set against ``--peak-gflops`` (the
CPU's fp32 peak: cores x FLOPs per cycle x clock, e.g. 2 x 64 x 4.1 GHz with AVX-512's two FMA
pipes) or, without it, against a dense channels-last 3x3 convolution measured here at the same
thread count. Ratios are against the first arm.
"""
from __future__ import annotations

import argparse
import statistics
import time

import torch
from torch.utils.flop_counter import FlopCounterMode


def arms(extra: list[str]):
    """(name, config, channels-last) of every arm: the two recipes' networks in both layouts,
    then each ``--arm`` (overrides on the fp32 recipe, e.g. "net.channel_mult=[2,3]"),
    channels-last."""
    from difflab.config import parse_overrides, update, validate
    from difflab.recipes import recipe

    out = [("AMX recipe's U-Net, default layout", recipe("mnist", "bf16"), False),
           ("AMX recipe's U-Net, channels-last", recipe("mnist", "bf16"), True),
           ("fp32 recipe's U-Net, default layout", recipe("mnist", "fp32"), False),
           ("fp32 recipe's U-Net, channels-last", recipe("mnist", "fp32"), True)]
    for text in extra:
        config = validate(update(recipe("mnist", "fp32"), parse_overrides(text.split())))
        out.append((f"fp32 recipe with {text}, channels-last", config, True))
    return out


def dense_conv_gflops(repeats: int = 10) -> float:
    """GFLOP/s of a 128 -> 128 channel 3x3 convolution on [64, 128, 14, 14] in channels-last
    (forward, best of 5): the best rate of oneDNN's fp32 convolutions seen on the machines here,
    counted as direct convolution FLOPs (oneDNN may compute it with fewer, e.g. Winograd)."""
    conv = torch.nn.Conv2d(128, 128, 3, padding=1).to(memory_format=torch.channels_last)
    x = torch.randn(64, 128, 14, 14).contiguous(memory_format=torch.channels_last)
    flops = 2 * 128 * 128 * 9 * 14 * 14 * 64
    best = 0.0
    with torch.no_grad():
        for _ in range(3):
            conv(x)
        for _ in range(5):
            started = time.perf_counter()
            for _ in range(repeats):
                conv(x)
            best = max(best, flops * repeats / (time.perf_counter() - started) / 1e9)
    return best


def yardstick(peak: float | None) -> tuple[float, str]:
    """(GFLOP/s, its name): the CPU's fp32 peak if given (``--peak-gflops``: cores x FLOPs per
    cycle x clock), else the dense convolution measured here."""
    if peak:
        return peak, "the given fp32 peak"
    return dense_conv_gflops(), "a dense channels-last 3x3 convolution here"


def main() -> None:
    from difflab.data.shape import DataShape
    from difflab.diffusion.denoiser import build_denoiser
    from difflab.training.ema import EMA
    from difflab.training.train import make_optimizer, optimization_step

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--steps", type=int, default=5, help="training steps per arm and round")
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default torch's)")
    parser.add_argument("--peak-gflops", type=float, default=None,
                        help="the CPU's fp32 peak at this thread count, for the percentages")
    parser.add_argument("--arm", action="append", default=[], metavar="OVERRIDES",
                        help='another network: overrides of the fp32 recipe, e.g. '
                        '"net.channel_mult=[2,3]" (repeatable)')
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    cpu, shape, batch, sample_batch = torch.device("cpu"), DataShape(1, (28, 28), 10), 64, 500
    print(f"torch {torch.__version__}, ATen capability {torch.backends.cpu.get_cpu_capability()}, "
          f"{torch.get_num_threads()} threads")
    peak, peak_name = yardstick(args.peak_gflops)
    print(f"yardstick: {peak_name}, {peak:.0f} GFLOP/s")

    generator = torch.Generator().manual_seed(0)

    def batch_of(n: int):
        x0 = torch.rand(n, 1, 28, 28, generator=generator) * 2 - 1
        return (x0, torch.randint(0, 10, (n,), generator=generator),
                (torch.randn(n, generator=generator) * 1.2 - 1.2).exp(),
                torch.randn(x0.shape, generator=generator))

    setups = []
    for name, config, channels_last in arms(args.arm):
        torch.manual_seed(0)
        denoiser = build_denoiser(config, shape)
        if channels_last:
            denoiser.to(memory_format=torch.channels_last)
        optimizer = make_optimizer(denoiser.net, config, cpu)
        ema = EMA(denoiser.net, config.optim.ema_half_life_images, config.optim.ema_rampup_ratio)
        with FlopCounterMode(display=False) as counter:
            optimization_step(denoiser, denoiser.net, optimizer, config, batch_of(batch), cpu, "fp32")
        train_flops = counter.get_total_flops() / batch
        with FlopCounterMode(display=False) as counter, torch.no_grad():
            denoiser(*batch_of(1)[:1], torch.ones(1), torch.zeros(1, dtype=torch.long))
        setups.append({"name": name, "config": config, "denoiser": denoiser, "optimizer": optimizer,
                       "ema": ema, "train_flops": train_flops,
                       "forward_flops": counter.get_total_flops(), "step": [], "forward": [],
                       "parameters": sum(p.numel() for p in denoiser.net.parameters())})

    x = torch.randn(sample_batch, 1, 28, 28, generator=generator)
    sigma, labels = torch.ones(sample_batch), torch.arange(sample_batch) % 11 - 1
    for round_ in range(args.rounds + 1):  # round 0 warms every arm up and is not counted
        for s in setups:
            s["denoiser"].train()
            for _ in range(args.steps):
                data = batch_of(batch)
                started = time.perf_counter()
                optimization_step(s["denoiser"], s["denoiser"].net, s["optimizer"], s["config"],
                                  data, cpu, "fp32")
                s["ema"].update(s["denoiser"].net, batch, 10**6)
                if round_:
                    s["step"].append(time.perf_counter() - started)
            s["denoiser"].eval()
            with torch.no_grad():
                started = time.perf_counter()
                s["denoiser"](x, sigma, labels)
                if round_:
                    s["forward"].append(time.perf_counter() - started)

    print(f"\n| network, layout | parameters | train MFLOP/image | train images/s | train GFLOP/s "
          f"(of {peak:.0f}) | sampling evaluations/s | sampling GFLOP/s | train ratio | sampling ratio |")
    print("|---|---:|---:|---:|---:|---:|---:|---:|---:|")
    base = None
    for s in setups:
        step, forward = statistics.median(s["step"]), statistics.median(s["forward"])
        train_rate, forward_rate = batch / step, sample_batch / forward
        base = base or (train_rate, forward_rate)
        print(f"| {s['name']} | {s['parameters']:,} | {s['train_flops'] / 1e6:.0f} | "
              f"{train_rate:.0f} | {s['train_flops'] * train_rate / 1e9:.0f} "
              f"({s['train_flops'] * train_rate / 1e9 / peak:.0%}) | {forward_rate:.0f} | "
              f"{s['forward_flops'] * forward_rate / 1e9:.0f} | {train_rate / base[0]:.2f}x | "
              f"{forward_rate / base[1]:.2f}x |")


if __name__ == "__main__":
    main()

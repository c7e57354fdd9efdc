"""Training throughput: difflab's U-Net training step against Hugging Face diffusers'
UNet2DModel + DDPMScheduler at a comparable parameter count, same batch, same machine, one process.

Both sides run a whole training step (noise, forward, loss, backward, gradient clipping, AdamW,
EMA update) on MNIST-shaped batches; rounds alternate between the two so that load from other
processes hits both alike (``difflab.timing``; one warm-up round is discarded). Prints images/s of
each and the ratio (median over rounds of the per-round ratio, with a 95% bootstrap CI), per
precision mode (``difflab.device.autocast``):

  fp32   both in float32
  bf16   both under bf16 autocast
  default  each library's default: difflab's ``run.precision=auto`` as resolved on this machine
           (bf16 only where the CPU computes it natively, printed) vs diffusers in float32

    python benchmarks/generative/train_speed_vs_diffusers.py --rounds 6 --steps-per-round 5
"""
from __future__ import annotations

import argparse

import torch

from difflab.device import autocast, resolve_precision
from difflab.timing import interleave, summarise

CPU = torch.device("cpu")


def difflab_side(batch: int):
    from difflab.config import TrainConfig
    from difflab.data.shape import DataShape
    from difflab.diffusion.denoiser import build_denoiser
    from difflab.diffusion.loss import denoising_loss
    from difflab.diffusion.schedules import sample_training_sigma
    from difflab.training.ema import EMA

    config = TrainConfig()
    denoiser = build_denoiser(config, DataShape(1, (28, 28)))  # unconditional, like diffusers' side
    ema = EMA(denoiser.net, config.optim.ema_half_life_images)
    opt = torch.optim.AdamW(denoiser.net.parameters(), lr=1e-4)
    x0 = torch.rand(batch, 1, 28, 28) * 2 - 1
    seen = [0]

    def step(precision: str):
        sigma = sample_training_sigma("lognormal", batch)
        noise = torch.randn_like(x0)
        with autocast(CPU, precision):
            loss = denoising_loss(denoiser, x0, sigma, noise)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(denoiser.net.parameters(), 1.0)
        opt.step()
        seen[0] += batch
        ema.update(denoiser.net, batch, seen[0])

    return denoiser.net, step


def diffusers_side(batch: int):
    from diffusers import DDPMScheduler, UNet2DModel
    from diffusers.training_utils import EMAModel

    model = UNet2DModel(sample_size=28, in_channels=1, out_channels=1,
                        block_out_channels=(32, 64, 64), layers_per_block=1, norm_num_groups=8,
                        down_block_types=("DownBlock2D", "DownBlock2D", "AttnDownBlock2D"),
                        up_block_types=("AttnUpBlock2D", "UpBlock2D", "UpBlock2D"))
    scheduler = DDPMScheduler(num_train_timesteps=1000)
    ema = EMAModel(model.parameters(), decay=0.999)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4)
    x0 = torch.rand(batch, 1, 28, 28) * 2 - 1

    def step(precision: str):
        noise = torch.randn_like(x0)
        t = torch.randint(0, 1000, (batch,))
        x_t = scheduler.add_noise(x0, noise, t)
        with autocast(CPU, precision):
            pred = model(x_t, t).sample
        loss = torch.nn.functional.mse_loss(pred.float(), noise)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        ema.step(model.parameters())

    return model, step


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--rounds", type=int, default=6)
    parser.add_argument("--steps-per-round", type=int, default=5)
    parser.add_argument("--modes", default="fp32,bf16,default")
    parser.add_argument("--threads", type=int, default=None)
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    ours_net, ours = difflab_side(args.batch)
    theirs_net, theirs = diffusers_side(args.batch)
    n_ours = sum(p.numel() for p in ours_net.parameters())
    n_theirs = sum(p.numel() for p in theirs_net.parameters())
    print(f"torch {torch.__version__}, threads {torch.get_num_threads()}, batch {args.batch}")
    print(f"parameters: difflab U-Net {n_ours:,}, diffusers UNet2DModel {n_theirs:,} "
          f"(ratio {n_ours / n_theirs:.2f})")
    auto, why = resolve_precision("auto", CPU)
    modes = {"fp32": ("fp32", "fp32"), "bf16": ("bf16", "bf16"), "default": (auto, "fp32")}
    print(f"default mode: difflab {auto} ({why}), diffusers fp32")
    for mode in args.modes.split(","):
        ours_precision, theirs_precision = modes[mode]
        times = interleave({"difflab": lambda: ours(ours_precision),
                            "diffusers": lambda: theirs(theirs_precision)},
                           args.rounds, args.steps_per_round)  # + 1 warm-up round (oneDNN set-up)
        summary = summarise(times, "difflab")
        a, b = (args.batch / summary[side]["seconds"] for side in ("difflab", "diffusers"))
        ratio = summary["diffusers"]  # per round: diffusers' seconds / difflab's = img/s ratio
        lo, hi = ratio["ratio_ci"]
        print(f"{mode:8s} difflab {a:7.1f} img/s   diffusers {b:7.1f} img/s   "
              f"ratio {ratio['ratio']:.2f}x [{lo:.2f}, {hi:.2f}]")



if __name__ == "__main__":
    main()

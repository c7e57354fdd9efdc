"""Sampling speed at equal network and equal number of network evaluations: difflab's samplers
vs Hugging Face diffusers' pipeline loop, both driving the same ``UNet2DModel`` in one process.

diffusers side: ``DDIMPipeline`` (DDIM, eta = 0) and ``DDPMPipeline`` given a
``DPMSolverMultistepScheduler`` (DPM-Solver++(2M)); both with the progress bar off and
``output_type="pt"``. difflab side: ``generation.sample`` with ``ddim`` / ``dpmpp-2m`` on the trained
DDPM grid, the same UNet wrapped as an eps-prediction ``Denoiser`` (the wrapper turns
c_noise = log(sigma)/4 back into diffusers' fractional timestep). Both sides draw their start
noise inside the timed call. Both use the same trailing timesteps (999, 949, ... for 20 steps)
and the same start noise, so they compute the same images; the last column checks it. Runs are
interleaved in alternating order (diffusers, difflab | difflab, diffusers | ...), so machine load
affects both alike; reported are each side's images/s (median time) and the per-round ratio of
images/s, difflab / diffusers (> 1: difflab faster), as median [min, max] over rounds.

Run:  python benchmarks/generative/sampler_speed.py [--batch 16 --steps 20 --net small|tiny|null]
"""
from __future__ import annotations

import argparse
import bisect

import torch
from torch import nn

from difflab.diffusion import schedules
from difflab.diffusion.denoiser import Denoiser
from difflab.diffusion.generation import sample
from difflab.timing import interleave, summarise

T_TRAIN = 1000


class DiffusersUNet(nn.Module):
    """difflab's raw-network contract F(x_in, c_noise, cond) around a diffusers UNet2DModel
    trained on discrete timesteps: t is interpolated in log sigma (diffusers' own rule). Samplers
    give the whole batch one level, so t is computed once, in Python, as diffusers does."""

    def __init__(self, unet, alphas_cumprod: torch.Tensor):
        super().__init__()
        self.unet = unet
        ab = alphas_cumprod.double()
        self.log_sigmas = ((1 - ab) / ab).sqrt().log().tolist()  # increasing in t

    def timestep(self, c_noise: float) -> float:
        log_sigma = min(max(4 * c_noise, self.log_sigmas[0]), self.log_sigmas[-1])
        hi = min(max(bisect.bisect_left(self.log_sigmas, log_sigma), 1), len(self.log_sigmas) - 1)
        lo_value, hi_value = self.log_sigmas[hi - 1], self.log_sigmas[hi]
        t = hi - 1 + (log_sigma - lo_value) / (hi_value - lo_value)
        return float(round(t)) if abs(t - round(t)) < 1e-4 else t  # a trained step, up to float32

    def forward(self, x_in, c_noise, cond=None):
        if bool((c_noise == c_noise[0]).all()):  # a 0-dim float tensor, as diffusers passes t
            return self.unet(x_in, torch.tensor(self.timestep(float(c_noise[0])))).sample
        t = torch.tensor([self.timestep(float(c)) for c in c_noise])
        return self.unet(x_in, t).sample


def make_unet(net: str):
    """``small``: 1.1 M parameters at 32x32 (network-bound); ``tiny``: 10.6 k parameters at 8x8
    (a ~2 ms network); ``null``: the tiny model's interface with a forward that returns zeros, so
    only the sampling loops' own per-evaluation cost is timed."""
    from diffusers import UNet2DModel
    from diffusers.models.unets.unet_2d import UNet2DOutput

    class NullUNet(UNet2DModel):
        def forward(self, sample, timestep, class_labels=None, return_dict=True):
            return UNet2DOutput(sample=torch.zeros_like(sample))

    torch.manual_seed(0)
    if net in ("tiny", "null"):
        return (NullUNet if net == "null" else UNet2DModel)(
            sample_size=8, in_channels=1, out_channels=1, layers_per_block=1,
            block_out_channels=(8,), down_block_types=("DownBlock2D",),
            up_block_types=("UpBlock2D",), norm_num_groups=4).eval()
    return UNet2DModel(sample_size=32, in_channels=1, out_channels=1,
                       layers_per_block=1, block_out_channels=(32, 64, 64),
                       down_block_types=("DownBlock2D", "DownBlock2D", "AttnDownBlock2D"),
                       up_block_types=("AttnUpBlock2D", "UpBlock2D", "UpBlock2D")).eval()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--net", choices=("small", "tiny", "null"), default="small")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)

    import diffusers

    unet = make_unet(args.net)
    size = unet.config.sample_size
    scheduler_args = dict(num_train_timesteps=T_TRAIN, beta_start=1e-4, beta_end=0.02,
                          beta_schedule="linear", timestep_spacing="trailing")
    alpha_bar = schedules.make_alpha_bar("linear", T_TRAIN)
    denoiser = Denoiser(DiffusersUNet(unet, torch.as_tensor(
        diffusers.DDIMScheduler(**scheduler_args).alphas_cumprod)), "eps", alpha_bar=alpha_bar,
        sigma_min=float(schedules.sigma_from_alpha_bar(alpha_bar[0])),
        sigma_max=float(schedules.sigma_from_alpha_bar(alpha_bar[-1]))).eval()
    pipelines = {
        "ddim": diffusers.DDIMPipeline(unet=unet, scheduler=diffusers.DDIMScheduler(
            **scheduler_args, clip_sample=False)),
        "dpmpp-2m": diffusers.DDPMPipeline(unet=unet, scheduler=diffusers.DPMSolverMultistepScheduler(
            **scheduler_args, algorithm_type="dpmsolver++", solver_order=2)),
    }
    shape = (args.batch, 1, size, size)
    print(f"batch {args.batch}, {args.steps} network evaluations, {size}x{size}, "
          f"{args.threads} thread(s), UNet2DModel {sum(p.numel() for p in unet.parameters()) / 1e6:.2f} M params")
    print("| sampler | difflab images/s | diffusers images/s | ratio difflab/diffusers: median [min, max] "
          "of rounds | max abs image difference |")
    print("|---|---|---|---|---|")
    for name, pipe in pipelines.items():
        pipe.set_progress_bar_config(disable=True)
        images = {}

        def run_difflab(name=name):
            images["difflab"] = sample(denoiser, shape, sampler=name, steps=args.steps,
                                       grid="ddpm", generator=torch.Generator().manual_seed(0))

        def run_diffusers(pipe=pipe):
            images["diffusers"] = pipe(batch_size=args.batch, generator=torch.Generator().manual_seed(0),
                                       num_inference_steps=args.steps, output_type="pt").images

        with torch.inference_mode():  # the first round warms up and is not counted
            times = interleave({"diffusers": run_diffusers, "difflab": run_difflab}, args.repeats,
                               alternate=True)
        summary = summarise(times, "difflab")
        images["difflab"] = (images["difflab"] / 2 + 0.5).clamp(0, 1)  # diffusers' output range
        rate = {side: args.batch / s["seconds"] for side, s in summary.items()}
        ratios = sorted(summary["diffusers"]["ratios"])  # per round: images/s difflab / diffusers
        print(f"| {name} | {rate['difflab']:.2f} | {rate['diffusers']:.2f} | "
              f"{summary['diffusers']['ratio']:.3f} [{ratios[0]:.3f}, {ratios[-1]:.3f}] | "
              f"{(images['difflab'] - images['diffusers']).abs().max():.1e} |", flush=True)


if __name__ == "__main__":
    main()

"""EMA lengths from one training run: the recipe trains once (``difflab train``, the real loop)
while extra EMAs of other half-lives and ramp-up ratios follow the same weights; each is saved
at the given steps and then sampled and scored like the run's own (1,000 samples, seed 1234,
both MNIST feature spaces). One trajectory, so the EMAs differ only in their averaging.

    python benchmarks/generative/ema_lengths.py --out runs/ema-lengths --steps 2550 \
        --save-at 1700 2550 -- --threads 1 --set net.patch_size=2 --set net.channel_mult=[2,2]

Arguments after ``--`` go to ``difflab train``. Each EMA is "half-life images:ramp-up ratio".
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

DEFAULT_EMAS = ("25000:0.1", "25000:0.05", "25000:0.2", "10000:0.1", "50000:0.3")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", required=True)
    parser.add_argument("--steps", type=int, required=True)
    parser.add_argument("--save-at", type=int, nargs="+", required=True)
    parser.add_argument("--emas", nargs="+", default=DEFAULT_EMAS)
    parser.add_argument("--n", type=int, default=1000)
    args, train_args = parser.parse_known_args()
    train_args = [a for a in train_args if a != "--"]
    variants = {}
    for text in args.emas:
        half_life, _, ratio = text.partition(":")
        variants[text] = (float(half_life), float(ratio))

    from safetensors.torch import load_file, save_file

    import difflab
    import difflab.training.train as train_module
    from difflab.cli import main as cli_main
    from difflab.runs import score_samples
    from difflab.training.ema import EMA

    saved = Path(args.out) / "emas"

    class EMAs(EMA):
        """The run's EMA, and beside it one EMA per variant, saved at ``--save-at`` steps."""

        def __init__(self, model, half_life, ratio):
            super().__init__(model, half_life, ratio)
            self.others = {name: EMA(model, *v) for name, v in variants.items()}

        def update(self, model, batch, images_seen):
            super().update(model, batch, images_seen)
            for other in self.others.values():
                other.update(model, batch, images_seen)
            if images_seen // batch in args.save_at:
                saved.mkdir(parents=True, exist_ok=True)
                for name, other in self.others.items():
                    save_file({k: v.contiguous() for k, v in other.state_dict().items()},
                              str(saved / f"{name}@{images_seen // batch}.safetensors"))

    train_module.EMA = EMAs
    code = cli_main(["train", "--out", args.out, "--steps", str(args.steps), "--final-samples", "0",
                     *train_args])
    if code:
        sys.exit(code)
    model = difflab.load(args.out)
    for path in sorted(saved.glob("*.safetensors")):
        model.denoiser.net.load_state_dict(load_file(str(path)))
        scores = score_samples(model.generate(args.n, seed=1234), model.config)
        spaces = scores["feature spaces"]
        print(json.dumps({"ema (half-life:ratio@step)": path.stem,
                          **{f"{name} {key}": round(space[key], 3) for name, space in spaces.items()
                             for key in ("fid", "precision", "recall")}}), flush=True)


if __name__ == "__main__":
    main()

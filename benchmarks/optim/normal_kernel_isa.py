"""The Langevin noise kernel (src/difflab/optim/_normal.c) built for three x86-64 levels, timed
against torch's ``normal_`` and the NumPy definition (what runs without a C compiler) on 62,006
floats (the CIFAR-10 CNN's parameter count).

The installed kernel picks the best of its clones at load time (x86-64-v4 = AVX-512, v3 = AVX2,
baseline = SSE2); this script compiles each level on its own with the same flags as setup.py,
so a machine with AVX-512 can show what an AVX2-only laptop gets. All builds must give the same
bits (checked). Blocks of calls alternate between the variants; ratios are medians over rounds.

    python benchmarks/optim/normal_kernel_isa.py [--rounds 30] [--block 300]
"""
from __future__ import annotations

import argparse
import importlib.util
import subprocess
import sysconfig
import tempfile
from pathlib import Path

import torch

from difflab.optim.normal import reference_normal
from difflab.timing import interleave, summarise

SOURCE = Path(__file__).resolve().parents[2] / "src" / "difflab" / "optim" / "_normal.c"
LEVELS = {"x86-64 (SSE2)": "-march=x86-64", "x86-64-v3 (AVX2)": "-march=x86-64-v3",
          "x86-64-v4 (AVX-512)": "-march=x86-64-v4"}


def build(level_flag: str, workdir: Path, name: str):
    """Compile the kernel for one level (no clones) and import it."""
    out = workdir / name / ("_normal" + sysconfig.get_config_var("EXT_SUFFIX"))
    out.parent.mkdir()
    subprocess.run(["gcc", "-O3", "-ffp-contract=off", "-fno-math-errno", "-DDIFFLAB_NO_CLONES",
                    level_flag, "-fPIC", "-shared", "-I" + sysconfig.get_paths()["include"],
                    str(SOURCE), "-o", str(out)], check=True)
    spec = importlib.util.spec_from_file_location("_normal", out)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rounds", type=int, default=30)
    ap.add_argument("--block", type=int, default=300)
    ap.add_argument("--n", type=int, default=62006)
    args = ap.parse_args()
    torch.set_num_threads(1)
    n = args.n
    buf = torch.empty(n)
    address, sizes = (buf.data_ptr(),), (n,)
    with tempfile.TemporaryDirectory() as tmp:
        kernels = {label: build(flag, Path(tmp), f"k{i}")
                   for i, (label, flag) in enumerate(LEVELS.items())}
        outputs = set()
        for k in kernels.values():
            k.apply(address, sizes, 7, 12345, 0.0, False)
            outputs.add(buf.numpy().tobytes())
        assert len(outputs) == 1, "the builds disagree"
        gen = torch.Generator().manual_seed(0)
        calls = {label: (lambda k=k: k.apply(address, sizes, 1, 0, 0.0, False))
                 for label, k in kernels.items()}
        calls["torch normal_ (MT19937)"] = lambda: buf.normal_(generator=gen)
        calls["NumPy definition (no compiler)"] = lambda: reference_normal(1, 0, n)
        times = interleave(calls, args.rounds, args.block)  # + 1 warm-up round
    summary = summarise(times, "torch normal_ (MT19937)")
    print(f"{n} float32 N(0,1) values, 1 thread, {args.rounds} rounds x {args.block} calls; "
          "all kernel builds bit-identical")
    print(f"{'variant':28s} {'median us':>10s} {'vs torch normal_':>17s}  95% CI")
    for label, s in summary.items():
        lo, hi = s["ratio_ci"]
        print(f"{label:28s} {1e6 * s['seconds']:10.1f} {s['ratio']:17.2f}  [{lo:.2f}, {hi:.2f}]")


if __name__ == "__main__":
    main()

"""torchrun + DistributedDataParallel: 2 gloo processes on 127.0.0.1 train like one process, a
stopped and resumed torchrun run is bit-identical to an uninterrupted one, and sharded sampling
returns the samples of one process; per-sample noise makes generate() independent of batching.

The two torchrun launches (``python -m torch.distributed.run``, one thread per process) run this
file as a script (``worker`` below), sharing one module fixture: launch 1 trains an uninterrupted
run and the first half of another; launch 2, a new process group, resumes the second and samples
the first with the CLI."""
import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from difflab.config import TrainConfig, parse_overrides, update, validate
from difflab.training.checkpoint import read_checkpoint

STEPS, HALF = 6, 3
SAMPLE_ARGS = ["--n", "10", "--batch-size", "4", "--seed", "5", "--sampler", "ddpm", "--steps", "3"]


def make_images(folder: Path) -> Path:
    """48 synthetic 8x8 grayscale PNGs in 3 class folders (a bright row, column or diagonal)."""
    from PIL import Image

    rng = np.random.default_rng(0)
    for label in range(3):
        (folder / f"class{label}").mkdir(parents=True)
        for i in range(16):
            pixels = rng.integers(0, 60, (8, 8))
            if label == 0:
                pixels[i % 8, :] = 255
            elif label == 1:
                pixels[:, i % 8] = 255
            else:
                pixels[np.arange(8), (np.arange(8) + i) % 8] = 255
            Image.fromarray(pixels.astype(np.uint8)).save(folder / f"class{label}" / f"{i}.png")
    return folder


def tiny_config(out, steps=STEPS, batch=16, folder="images"):
    """Class-conditional synthetic images (8x8), a tiny U-Net, one thread; labels dropped at 0.3
    so that label dropout is exercised."""
    config = TrainConfig()
    update(config, parse_overrides([
        "data.dataset=folder", f"data.folder={folder}", "data.image_size=8", "data.channels=1",
        "net.channels=16", "net.channel_mult=[1,2]", "net.groups=4",
        f"optim.batch_size={batch}", "optim.warmup_steps=2", "diffusion.label_dropout=0.3",
        "run.precision=fp32", "loop.log_every=1", "loop.checkpoint_every=2",
        "loop.sample_every=1000", f"loop.out={out}", f"loop.steps={steps}", "loop.minutes=none",
        "loop.threads=1"]))
    return validate(config)


def worker(phase: str, root: Path) -> None:
    """One rank of a torchrun launch (this file run as a script)."""
    from difflab import cli
    from difflab.training import distributed
    from difflab.training.train import train

    rank, images = distributed.rank(), root / "images"
    if phase == "train":
        train(tiny_config(root / "whole", folder=images))
        train(tiny_config(root / "part", steps=HALF, folder=images))
        disagree = tiny_config(root / "disagree", folder=images)
        disagree.run.seed = rank  # as if each machine's recipe differed
        for name, config in (("odd", tiny_config(root / "odd", batch=15, folder=images)),
                             ("taken", tiny_config(root / "whole", folder=images)),
                             ("disagree", disagree)):
            try:
                train(config)
                message = "no error"
            except ValueError as e:  # ConfigError and claim_run_dir's refusal
                message = f"{type(e).__name__}: {e}"
            (root / f"{name}-{rank}.txt").write_text(message)
    else:
        train(tiny_config(root / "part", folder=images), resume=True)
        assert cli.main(["sample", str(root / "whole"), *SAMPLE_ARGS, "--out",
                         str(root / "ddp.png"), "--npz", str(root / "ddp.npz")]) == 0
    distributed.destroy()  # gloo's threads must end here, not at interpreter exit
    (root / f"threads-{phase}-{rank}.txt").write_text("\n".join(native_threads()))


def native_threads() -> list[str]:
    """The names of this process's threads; ["unknown"] where /proc does not list them (not
    Linux)."""
    tasks = Path("/proc/self/task")
    if not tasks.is_dir():
        return ["unknown"]
    return sorted((task / "comm").read_text().strip() for task in tasks.iterdir())


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def torchrun(phase: str, root: Path) -> None:
    command = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2",
               "--nnodes", "1", "--master_addr", "127.0.0.1", "--master_port", str(free_port()),
               __file__, phase, str(root)]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "MASTER_ADDR": "127.0.0.1",
           "PYTHONFAULTHANDLER": "1"}  # a crash prints each rank's Python stack
    result = subprocess.run(command, capture_output=True, text=True, timeout=300, env=env)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    root = tmp_path_factory.mktemp("ddp")
    make_images(root / "images")
    torchrun("train", root)
    torchrun("resume", root)
    return root


def curve(run):
    return [(r["step"], r["loss"], r["grad_norm"])
            for r in map(json.loads, (run / "metrics.jsonl").read_text().splitlines())]


def test_ddp_equals_one_process_on_the_same_global_batch(runs, tmp_path):
    from difflab.training.train import train

    torch.set_num_threads(1)
    train(tiny_config(tmp_path / "single", folder=runs / "images"))
    info, ddp = read_checkpoint(runs / "whole")
    _, single = read_checkpoint(tmp_path / "single")
    assert info["step"] == STEPS and info["processes"] == 2 and ddp.keys() == single.keys()
    # the same global batch and noise; only the float sums differ. Tolerances: float32's
    # defaults, as PyTorch's own DDP tests compare (rtol 1.3e-6, atol 1e-5). The largest
    # difference is 4e-7 here and 1.6e-6 on an AVX2-only CPU, whose conv kernels sum in another
    # order (ONEDNN_MAX_CPU_ISA=AVX2 ATEN_CPU_CAPABILITY=avx2); training on half the batch
    # instead ends 1.8e-2 away.
    for key in ddp:
        torch.testing.assert_close(ddp[key], single[key], msg=key)
    for (step, loss, norm), (step1, loss1, norm1) in zip(curve(runs / "whole"),
                                                         curve(tmp_path / "single")):
        assert step == step1 and loss == pytest.approx(loss1, rel=1e-5)
        assert norm == pytest.approx(norm1, rel=1e-4)


def test_stopped_and_resumed_torchrun_run_is_bit_identical(runs):
    part, whole = runs / "part", runs / "whole"
    assert curve(part) == curve(whole) and len(curve(part)) == STEPS
    _, a = read_checkpoint(part)
    _, b = read_checkpoint(whole)
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    written = sorted(p.name for p in part.iterdir())  # by rank 0 alone: one set of files
    assert written == [".difflab-run", "checkpoint-00000006.safetensors", "checkpoint.json",
                       "config.json", "metrics.jsonl"]


def test_batch_not_divisible_and_refused_directory_fail_on_every_rank(runs):
    for rank in (0, 1):
        assert (runs / f"odd-{rank}.txt").read_text() == (
            "ConfigError: optim.batch_size=15: must be divisible by the number of processes (2)")
    assert "already has a checkpoint" in (runs / "taken-0.txt").read_text()
    assert (runs / "taken-1.txt").read_text().startswith("ValueError: rank 0 failed (ValueError: ")
    for rank in (0, 1):  # ranks given different configs all stop, none waits for another
        assert (runs / f"disagree-{rank}.txt").read_text().startswith(
            "ValueError: the processes disagree on the training config or precision")


def test_leaving_the_process_group_ends_gloos_threads(runs):
    """torch._dynamo, imported by DDP, once kept the group alive after destroy_process_group;
    gloo's threads then ran into interpreter exit, the likely cause of a rank's occasional
    SIGABRT there."""
    for phase in ("train", "resume"):
        for rank in (0, 1):
            threads = (runs / f"threads-{phase}-{rank}.txt").read_text().split()
            if threads == ["unknown"]:
                pytest.skip("this system does not list a process's threads in /proc")
            assert not [t for t in threads if "gloo" in t], (phase, rank, threads)


def test_sharded_sampling_equals_one_process(runs, tmp_path):
    from difflab import cli

    torch.set_num_threads(1)
    assert cli.main(["sample", str(runs / "whole"), *SAMPLE_ARGS, "--out", str(tmp_path / "one.png"),
                     "--npz", str(tmp_path / "one.npz")]) == 0
    ddp = np.load(runs / "ddp.npz")["samples"]
    assert ddp.shape == (10, 1, 8, 8)
    np.testing.assert_array_equal(ddp, np.load(tmp_path / "one.npz")["samples"])


@pytest.fixture(scope="module")
def denoiser():
    from difflab.data.shape import DataShape
    from difflab.diffusion.denoiser import build_denoiser

    torch.manual_seed(0)
    return build_denoiser(tiny_config("unused"), DataShape(1, (8, 8), 3)).eval()


@pytest.mark.parametrize("sampler", ["heun", "ddpm", "euler-maruyama"])
def test_generate_does_not_depend_on_batch_size_or_start(denoiser, sampler):
    from difflab.diffusion.generation import generate

    torch.set_num_threads(1)
    def draw(n, seed=7, **kwargs):
        return generate(denoiser, (1, 8, 8), 3, n, sampler=sampler, steps=3, guidance=1.5,
                        seed=seed, **kwargs)

    whole = draw(10, batch_size=4)
    # the same batches (ranges starting at multiples of the batch size): bit for bit
    assert torch.equal(torch.cat([draw(8, batch_size=4), draw(2, batch_size=4, start=8)]), whole)
    # other batches: the same noise and labels; only batch-size-dependent kernel rounding differs
    for other in (draw(10, batch_size=3), draw(10, batch_size=10),
                  torch.cat([draw(5, batch_size=2), draw(5, batch_size=5, start=5)])):
        torch.testing.assert_close(other, whole, rtol=0, atol=1e-5)
    torch.testing.assert_close(draw(9, batch_size=4, start=1), whole[1:], rtol=0, atol=1e-5)
    assert (draw(10, seed=8, batch_size=4) - whole).abs().flatten(1).amax(1).min() > 1e-2


def test_per_row_noise_is_independent_of_the_batch():
    from difflab.diffusion.samplers import noise_like, sample_generators

    x = torch.empty(6, 3, 4, 4)
    together = noise_like(x, sample_generators(3, 0, 6))
    apart = torch.cat([noise_like(x[:2], sample_generators(3, 0, 2)),
                       noise_like(x[2:], sample_generators(3, 2, 4))])
    assert torch.equal(together, apart)
    assert not torch.equal(together, noise_like(x, sample_generators(4, 0, 6)))
    with pytest.raises(ValueError, match="5 per-row generators for a batch of 6 rows"):
        noise_like(x, sample_generators(3, 0, 5))


def test_training_batch_is_a_function_of_seed_step_and_index(tmp_path):
    """Shares of the global batch concatenate to the whole batch, a global batch may straddle
    two epochs, and an epoch shows every image once."""
    from difflab.training.train import batch_share, epoch_order, prepare

    config = tiny_config("unused", batch=10, folder=make_images(tmp_path / "images"))
    data = prepare(config)[0]
    whole = batch_share(data, config, None, 3, 0, 10)
    halves = [batch_share(data, config, None, 3, first, 5) for first in (0, 5)]
    for a, b, c in zip(whole, *halves):
        assert torch.equal(a, torch.cat([b, c]))
    assert (whole[1] == -1).any() and (whole[1] >= 0).any()  # label dropout 0.3
    assert not torch.equal(whole[3], batch_share(data, config, None, 2, 0, 10)[3])
    orders = [epoch_order(config.run.seed, epoch, len(data)) for epoch in (0, 1)]
    assert torch.equal(orders[0].sort().values, torch.arange(len(data)))
    assert not torch.equal(orders[0], orders[1])
    # 48 images, 10 a step: step 4 shows the last 8 of epoch 0 and the first 2 of epoch 1
    x0 = batch_share(data, config, None, 4, 0, 10)[0]
    assert torch.equal(x0, data.images[torch.cat([orders[0][-8:], orders[1][:2]])])


def test_horizontal_flips_mirror_a_keyed_half_and_leave_the_rest_of_the_batch(tmp_path):
    """data.hflip mirrors each image with probability 1/2, drawn from the sample's own generator
    after its noise: the noise, sigma and labels are those of the same run without flips, and the
    flipped batch is the same whichever rank draws it."""
    from difflab.training.train import batch_share, prepare

    config = tiny_config("unused", batch=40, folder=make_images(tmp_path / "images"))
    data = prepare(config)[0]
    plain = batch_share(data, config, None, 1, 0, 40)
    config.data.hflip = True
    flipped = batch_share(data, config, None, 1, 0, 40)
    for a, b in zip(plain[1:], flipped[1:]):
        assert torch.equal(a, b)
    mirrored = [torch.equal(f, p.flip(-1)) and not torch.equal(f, p)
                for f, p in zip(flipped[0], plain[0])]
    kept = [torch.equal(f, p) for f, p in zip(flipped[0], plain[0])]
    assert all(m or k for m, k in zip(mirrored, kept))
    assert 8 <= sum(mirrored) <= 32  # Binomial(40, 1/2) (all test images are asymmetric)
    halves = torch.cat([batch_share(data, config, None, 1, first, 20)[0] for first in (0, 20)])
    assert torch.equal(halves, flipped[0])


def test_cifar10_recipe_sits_under_config_file_flags_and_set(tmp_path):
    from difflab.cli import build_parser
    from difflab.cli.train import train_config
    from difflab.config import TrainConfig
    from difflab.recipes import RECIPES, recipe

    assert recipe("mnist") == TrainConfig()
    cifar = recipe("cifar10")
    assert cifar.data.dataset == "cifar10" and cifar.data.hflip
    assert cifar.loop.out == "runs/cifar10" and cifar.loop.minutes == 30
    assert cifar.sample.guidance == 2 and cifar.net.channels == TrainConfig().net.channels
    assert list(cifar.net.attention_resolutions) == RECIPES["cifar10"]["net"]["attention_resolutions"]
    parse = build_parser().parse_args
    assert train_config(parse(["train", "--data", "cifar10"])).data.hflip
    assert not train_config(parse(["train", "--data", "mnist"])).data.hflip
    config = train_config(parse(["train", "--data", "cifar10", "--set", "data.hflip=false",
                                 "--minutes", "3"]))
    assert not config.data.hflip and config.loop.minutes == 3
    assert train_config(parse(["train", "--set", "data.dataset=cifar10"])).data.hflip
    toml = tmp_path / "c.toml"
    toml.write_text('[data]\ndataset = "cifar10"\n[loop]\nout = "runs/x"\n')
    config = train_config(parse(["train", "--config", str(toml)]))
    assert config.data.hflip and config.loop.out == "runs/x"
    run = tmp_path / "run"  # --resume without --data keeps the run's own config
    run.mkdir()
    saved = recipe("cifar10", "bf16")
    saved.net.channels = 16  # not what any recipe says: the run's own config is the base
    (run / "config.json").write_text(json.dumps(saved.to_dict()))
    resumed = train_config(parse(["train", "--out", str(run), "--resume"]))
    assert resumed.data.dataset == "cifar10" and resumed.data.hflip  # what the checkpoint holds
    assert resumed.net.channels == 16 and resumed.net.patch_size == 1
    assert train_config(parse(["train", "--out", str(run), "--resume", "--minutes", "2"])
                        ).loop.minutes == 2
    assert not train_config(parse(["train", "--out", str(tmp_path), "--resume"])).data.hflip


def test_fp32_recipe_goes_on_top_where_training_runs_in_fp32():
    from difflab.cli import build_parser
    from difflab.cli.train import train_config
    from difflab.config import TrainConfig
    from difflab.recipes import FP32_RECIPES, recipe

    assert recipe("mnist", "bf16") == TrainConfig()
    fp32 = recipe("mnist", "fp32")
    assert fp32.net.patch_size == FP32_RECIPES["mnist"]["net"]["patch_size"] > 1
    assert recipe("cifar10", "fp32") == recipe("cifar10", "bf16")  # CIFAR-10 keeps its recipe
    parse = build_parser().parse_args
    assert train_config(parse(["train", "--precision", "fp32"])).net == fp32.net
    assert train_config(parse(["train", "--precision", "bf16"])).net == TrainConfig().net
    assert train_config(parse(["train", "--precision", "fp32", "--set", "net.patch_size=1"])
                        ).net.patch_size == 1  # --set goes on top of the recipe


def test_shards_cover_the_items_in_order_in_whole_blocks(monkeypatch):
    from difflab.training import distributed

    monkeypatch.setenv("RANK", "0")  # as torchrun sets it, before the process group exists
    for world, n, block in ((2, 10, 4), (3, 10, 1), (3, 50000, 250), (4, 3, 250), (2, 1, 1)):
        monkeypatch.setenv("WORLD_SIZE", str(world))
        shares = [distributed.shard(n, block, r) for r in range(world)]
        assert sum(count for _, count in shares) == n and shares[0][0] == 0
        for (start, count), (nxt, _) in zip(shares, shares[1:]):
            assert start + count == nxt and (nxt % block == 0 or nxt == n)
    monkeypatch.setenv("WORLD_SIZE", "3")  # 200 batches of 250: 67, 67 and 66 batches
    assert [distributed.shard(50000, 250, r) for r in range(3)] == [(0, 16750), (16750, 16750),
                                                                    (33500, 16500)]
    monkeypatch.delenv("RANK")
    assert distributed.world_size() == 1 and distributed.shard(7) == (0, 7)
    assert distributed.all_mean([1.5, 2.0]) == [1.5, 2.0]


def test_checkpoint_format_3_checks_its_weights_and_resumes_format_2(tmp_path):
    """Format 3 records the weights' SHA-256 (a flipped byte is caught) and drops rng.*
    tensors; a newer format is refused; a format-2 run (rng.* tensors, no checksum) resumes."""
    from difflab.training.checkpoint import CheckpointError, INDEX, save_checkpoint
    from difflab.training.train import train

    torch.set_num_threads(1)
    images = make_images(tmp_path / "images")
    run = train(tiny_config(tmp_path / "run", steps=2, folder=images))
    info, tensors = read_checkpoint(run)
    assert info["version"] == 3 and len(info["weights_sha256"]) == 64
    assert not any(k.startswith("rng.") for k in tensors)
    weights = run / info["weights"]
    good = weights.read_bytes()
    raw = bytearray(good)
    raw[-3] ^= 0x01  # the last bytes are tensor data: still a valid safetensors file
    weights.write_bytes(bytes(raw))
    with pytest.raises(CheckpointError, match="do not match the SHA-256 recorded in checkpoint.json"):
        read_checkpoint(run)
    weights.write_bytes(good)
    (run / INDEX).write_text(json.dumps({**info, "version": 4}))
    with pytest.raises(CheckpointError, match="format version 4 is newer than this difflab"):
        read_checkpoint(run)

    # a format-2 checkpoint of the same state: rng.* generator states, no checksum
    meta = {k: v for k, v in info.items()
            if k not in ("format", "version", "step", "weights", "weights_sha256", "config")}
    save_checkpoint(run, 2, info["config"], {**tensors, "rng.train": torch.Generator().get_state(),
                                             "rng.torch": torch.get_rng_state()}, meta)
    index = json.loads((run / INDEX).read_text())
    del index["weights_sha256"]
    (run / INDEX).write_text(json.dumps({**index, "version": 2}))
    train(tiny_config(run, steps=4, folder=images), resume=True)
    assert read_checkpoint(run)[0]["step"] == 4


if __name__ == "__main__":
    worker(sys.argv[1], Path(sys.argv[2]))

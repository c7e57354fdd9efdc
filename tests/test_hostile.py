"""A hostile user, class by class (issue 27): run directories with symbolic links out of them,
outputs aimed at their own inputs or at a run's files, two writers at once, runs whose data
moved, writes that fail half-way, resource limits, tampered run files, the README's torchrun
command, a lax Python API and posterior helpers, a command line that must answer without
importing torch, and numeric config fields out of range. Every case must end in one line
``difflab: error: ...`` (exit 2) or the correct result, with nothing a user owns changed and no
temporary file left. Tiny digits models: seconds each."""
import dataclasses
import errno
import hashlib
import json
import math
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from test_fuzz import TINY, assert_standard, copy_run, hashes, run_cli

import difflab
from difflab import cli
from difflab.config import TrainConfig

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory):
    """A 2-step digits run with its final outputs (samples.npz of 4 samples, report, loss.png)."""
    run = tmp_path_factory.mktemp("hostile") / "run"
    assert cli.main(["train", "--data", "digits", "--steps", "2", "--out", str(run),
                     "--final-samples", "4", *TINY]) == 0
    return run


def no_temp_files(*folders: Path) -> bool:
    return not any(".tmp-" in p.name for folder in folders for p in folder.rglob("*"))


def train_more(run: Path, steps: int, capsys, *extra):
    return run_cli(["train", "--out", run, "--resume", "--steps", steps, "--final-samples", "0",
                    *extra], capsys)


# 1. A run directory never reads or writes through a link out of it ------------------------------

@pytest.mark.parametrize("name", ["report.md", "config.json", "metrics.jsonl", "loss.png",
                                  "samples.png", "samples.npz", "samples"])
def test_a_link_out_of_the_run_directory_is_refused_on_resume(name, run_dir, tmp_path, capsys):
    run = copy_run(run_dir, tmp_path / "run")
    mine = tmp_path / "mine"
    mine.mkdir()
    target = mine / "notes.txt"
    target.write_text("the user's own file\n")
    (run / name).unlink(missing_ok=True)
    (run / name).symlink_to(mine if name == "samples" else target)
    before = hashes(mine)
    assert_standard(train_more(run, 3, capsys, "--set", "loop.sample_every=1"), before,
                    mention="outside the run directory")
    assert sorted(p.name for p in mine.iterdir()) == ["notes.txt"]


def test_reads_of_a_run_never_follow_a_link_out_of_it(run_dir, tmp_path, capsys):
    outside = tmp_path / "outside"
    outside.mkdir()
    for name in ("checkpoint.json", "schedules.json", "config.json"):
        run = copy_run(run_dir, tmp_path / f"run-{name}")
        shutil.copy(run / name, outside / name) if (run / name).exists() else \
            (outside / name).write_text("{}")
        (run / name).unlink(missing_ok=True)
        (run / name).symlink_to(outside / name)
        before = hashes(outside)
        command = ["sample", run, "--n", "2", "--out", tmp_path / "g.png"]
        if name == "config.json":  # read by a resume
            command = ["train", "--out", run, "--resume", "--steps", "3"]
        assert_standard(run_cli(command, capsys), before, mention="outside the run directory")


# 2. A restoration never replaces what it was made from ----------------------------------------

def test_a_restoration_never_overwrites_its_input_or_mask(run_dir, tmp_path, capsys):
    digit = np.random.default_rng(0).integers(0, 256, (8, 8), dtype=np.uint8)
    mask = np.full((8, 8), 255, np.uint8)
    mask[2:6, 2:6] = 0
    Image.fromarray(digit).save(tmp_path / "in.png")
    Image.fromarray(mask).save(tmp_path / "m.png")
    os.link(tmp_path / "in.png", tmp_path / "hard-link.png")
    (tmp_path / "soft-link.png").symlink_to(tmp_path / "in.png")
    folder = tmp_path / "photos"
    folder.mkdir()
    Image.fromarray(digit).save(folder / "a.png")
    Image.fromarray(digit).save(folder / "a.jpg")
    before = hashes(tmp_path)
    denoise = ["denoise", run_dir, tmp_path / "in.png", "--sigma", "0.2", "--steps", "2"]
    for out in ("hard-link.png", "soft-link.png", "in.png"):
        assert_standard(run_cli([*denoise, "--out", tmp_path / out], capsys), before,
                        mention="would overwrite the input")
    inpaint = ["inpaint", run_dir, tmp_path / "in.png", "--mask", tmp_path / "m.png",
               "--steps", "2"]
    assert_standard(run_cli([*inpaint, "--out", tmp_path / "m.png"], capsys), before,
                    mention="would overwrite the input")
    assert_standard(run_cli(["denoise", run_dir, folder, "--sigma", "0.2", "--out",
                             tmp_path / "restored"], capsys), before, mention="would both be")
    # another spelling of the suffix is another file here (and the same file, caught as such,
    # on a case-insensitive file system): in.png is never replaced
    for out in ("in.PNG", "m.Png"):
        code, _, err = run_cli([*inpaint, "--out", tmp_path / out], capsys)
        same = (tmp_path / out).exists() and os.path.samefile(tmp_path / out, tmp_path / "in.png")
        assert code == 0 or same and "would overwrite" in err, err
        assert hashes(tmp_path)[tmp_path / "in.png"] == before[tmp_path / "in.png"]
        assert hashes(tmp_path)[tmp_path / "m.png"] == before[tmp_path / "m.png"]


# 3. Commands write neither into a user's folder nor onto a run's files ------------------------

def test_outputs_of_other_commands_never_land_on_a_runs_files(run_dir, tmp_path, capsys):
    run = copy_run(run_dir, tmp_path / "run")
    before = hashes(run)
    npz = run / "samples.npz"
    for command in (["eval", npz, "--ref", "mnist-test", "--json", run / "checkpoint.json"],
                    ["eval", npz, "--ref", "mnist-test", "--json", run / "config.json"],
                    ["sample", run, "--n", "2", "--out", run / "samples.png"],
                    ["sample", run, "--n", "2", "--npz", npz],
                    ["denoise", run, tmp_path / "x.png", "--sigma", "0.1", "--out",
                     run / "samples.png"]):
        Image.fromarray(np.zeros((8, 8), np.uint8)).save(tmp_path / "x.png")
        assert_standard(run_cli(command, capsys), before, mention="is a file of the run")


def test_bench_never_writes_into_a_folder_that_is_not_its_own(run_dir, tmp_path, capsys):
    from difflab.bench import check_arguments

    mine = tmp_path / "mine"
    mine.mkdir()
    (mine / "report.md").write_text("my notes\n")
    for out in (mine, run_dir):
        before = hashes(out)
        with pytest.raises(ValueError, match="not a difflab bench directory"):
            check_arguments("digits-mlp", "quick", out)
        assert_standard(run_cli(["bench", "optimizers", "--problem", "digits-mlp", "--out", out,
                                 "--report-only"], capsys), before)
        assert hashes(out) == before


def test_checkpoints_delete_exactly_their_own_superseded_weights(run_dir, tmp_path, capsys):
    run = copy_run(run_dir, tmp_path / "run")
    keep = [run / "checkpoint-00000003-keep-this-backup.safetensors",
            run / "checkpoint-1.safetensors.bak", run / "my-checkpoint-00000001.safetensors"]
    for path in keep:
        path.write_bytes(b"a user's backup")
    code, _, err = train_more(run, 3, capsys)
    assert code == 0, err
    assert all(path.read_bytes() == b"a user's backup" for path in keep)
    assert sorted(p.name for p in run.glob("checkpoint-*.safetensors")) == \
        ["checkpoint-00000003-keep-this-backup.safetensors", "checkpoint-00000003.safetensors"]


# 4. One writer at a time -----------------------------------------------------------------------

def test_a_second_writer_gets_one_line_while_the_first_holds_the_run(run_dir, tmp_path, capsys):
    run = copy_run(run_dir, tmp_path / "run")
    holder = subprocess.Popen(
        [sys.executable, "-c", "import sys; from difflab.training.run_dir import lock_run; "
         "lock = lock_run(sys.argv[1]); print('locked', flush=True); sys.stdin.read()", str(run)],
        stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "locked"
        before = hashes(run)
        assert_standard(train_more(run, 3, capsys), before, mention="another difflab process")
        assert_standard(run_cli(["train", "--data", "digits", "--out", run, "--steps", "2",
                                 *TINY], capsys), before)
    finally:
        holder.communicate("")
    code, _, err = train_more(run, 3, capsys)  # released: the run goes on
    assert code == 0, err


# 5. Where the data is is not part of the run ---------------------------------------------------

def test_a_run_resumes_with_its_data_found_elsewhere(data_dir, tmp_path, capsys, monkeypatch):
    link = tmp_path / "data-link"
    link.symlink_to(data_dir)
    run = tmp_path / "run"
    code, _, err = run_cli(["train", "--data", "mnist", "--data-dir", link, "--steps", "1",
                            "--out", run, "--final-samples", "0", *TINY], capsys)
    assert code == 0, err
    link.unlink()  # the data moved
    monkeypatch.setenv("DIFFLAB_DATA", str(data_dir))
    code, _, err = train_more(run, 2, capsys)
    assert code == 0, err
    monkeypatch.delenv("DIFFLAB_DATA")
    code, _, err = train_more(run, 3, capsys, "--data-dir", data_dir)
    assert code == 0, err
    info = json.loads((run / "checkpoint.json").read_text())
    assert info["step"] == 3 and info["config"]["data"]["data_dir"] == str(data_dir)


def test_a_digits_run_resumes_without_naming_its_data(run_dir, tmp_path, capsys):
    run = copy_run(run_dir, tmp_path / "run")
    code, _, err = train_more(run, 3, capsys)
    assert code == 0, err
    assert json.loads((run / "config.json").read_text())["data"]["dataset"] == "digits"


# 6. Outputs are whole or absent ----------------------------------------------------------------

def fail_half_way(monkeypatch, owner, name: str):
    """Make ``owner.name`` write a few bytes into its file, then fail as a full disk does."""
    def broken(*args, **kwargs):
        target = next(a for a in (*args, *kwargs.values()) if hasattr(a, "write")
                      or isinstance(a, (str, Path)))
        if hasattr(target, "write"):
            target.write(b"partial")
        else:
            Path(target).write_bytes(b"partial")
        raise OSError(errno.ENOSPC, "No space left on device")
    monkeypatch.setattr(owner, name, broken)


def test_a_write_that_fails_half_way_leaves_the_previous_file(run_dir, tmp_path, capsys,
                                                              monkeypatch):
    outputs = tmp_path / "outputs"
    outputs.mkdir()
    for name in ("grid.png", "s.npz", "restored/x.png"):
        (outputs / name).parent.mkdir(exist_ok=True)
        (outputs / name).write_bytes(b"the previous file")
    Image.fromarray(np.zeros((8, 8), np.uint8)).save(tmp_path / "x.png")
    before = hashes(outputs)
    cases = [(np, "savez_compressed", ["sample", run_dir, "--n", "2", "--out",
                                       outputs / "grid2.png", "--npz", outputs / "s.npz"]),
             (Image.Image, "save", ["sample", run_dir, "--n", "2", "--out",
                                    outputs / "grid.png"]),
             (Image.Image, "save", ["denoise", run_dir, tmp_path, "--sigma", "0.1", "--steps",
                                    "2", "--out", outputs / "restored"])]
    for owner, name, command in cases:  # (tmp_path as an image folder: x.png only)
        with monkeypatch.context() as patch:
            fail_half_way(patch, owner, name)
            assert_standard(run_cli(command, capsys), before, mention="free disk space")
        assert no_temp_files(outputs)


def test_a_kill_during_a_write_leaves_the_previous_file_and_no_temporary_one(run_dir, tmp_path):
    npz = tmp_path / "s.npz"
    npz.write_bytes(b"the previous file")
    script = ("import os, signal, sys, time; import numpy; from difflab import cli\n"
              "def killed(f, **arrays):\n"
              "    f.write(b'partial'); f.flush(); os.kill(os.getpid(), signal.SIGTERM)\n"
              "    time.sleep(30)\n"
              "numpy.savez_compressed = killed\n"
              "sys.exit(cli.main(sys.argv[1:]))")
    result = subprocess.run([sys.executable, "-c", script, "sample", str(run_dir), "--n", "2",
                             "--out", str(tmp_path / "g.png"), "--npz", str(npz)],
                            capture_output=True, text=True, timeout=120,
                            env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert result.returncode == 130 and "Traceback" not in result.stderr, result.stderr[-2000:]
    assert npz.read_bytes() == b"the previous file" and no_temp_files(tmp_path)


# 7. Resource limits are one line ---------------------------------------------------------------

def test_a_full_disk_during_a_checkpoint_is_one_line_and_the_run_resumes(run_dir, tmp_path,
                                                                         capsys):
    run = copy_run(run_dir, tmp_path / "run")
    weights = next(run.glob("checkpoint-*.safetensors"))
    limit = weights.stat().st_size // 2  # every other file of the run is far smaller
    script = ("import resource, signal, sys; from difflab import cli; "
              "signal.signal(signal.SIGXFSZ, signal.SIG_IGN); "
              f"resource.setrlimit(resource.RLIMIT_FSIZE, ({limit}, {limit})); "
              "sys.exit(cli.main(sys.argv[1:]))")
    before = hashes(run)
    full = subprocess.run([sys.executable, "-c", script, "train", "--out", str(run), "--resume",
                           "--steps", "3", "--final-samples", "0"],
                          capture_output=True, text=True, env={**os.environ, "OMP_NUM_THREADS": "1"})
    lines = full.stderr.strip().splitlines()
    assert full.returncode == 2 and "Traceback" not in full.stderr, full.stderr[-2000:]
    assert lines[-1].startswith("difflab: error: ") and "free disk space" in lines[-1], lines
    assert no_temp_files(run)
    assert json.loads((run / "checkpoint.json").read_text())["step"] == 2
    assert weights.read_bytes() == (run_dir / weights.name).read_bytes()
    assert hashes(run)[run / "checkpoint.json"] == before[run / "checkpoint.json"]
    code, _, err = train_more(run, 3, capsys)  # with the space back, the run goes on
    assert code == 0, err
    assert json.loads((run / "checkpoint.json").read_text())["step"] == 3


def test_restorations_too_large_for_the_machine_are_refused(run_dir, tmp_path, capsys,
                                                            monkeypatch):
    pages = os.sysconf("SC_PHYS_PAGES")
    gib = 2**30 // os.sysconf("SC_PAGE_SIZE")
    monkeypatch.setattr(os, "sysconf",  # a machine with 1 GiB of memory
                        lambda name, real=os.sysconf: gib if name == "SC_PHYS_PAGES" else real(name))
    assert os.sysconf("SC_PHYS_PAGES") == gib != pages
    Image.fromarray(np.zeros((14, 14), np.uint8)).save(tmp_path / "small.png")
    Image.fromarray(np.zeros((1024, 1024), np.uint8)).save(tmp_path / "photo.png")
    before = hashes(tmp_path)
    one_step = ["--steps", "1", "--out", tmp_path / "big.png"]
    # 896x896 images (network activations and solver state: about 0.7 GiB) and 14000x14000
    # (more pixels than an image may have)
    for factor, mention in (("64", "GiB"), ("1000", "lower --factor")):
        assert_standard(run_cli(["upscale", run_dir, tmp_path / "small.png", "--factor", factor,
                                 *one_step], capsys), before, mention=mention)
    assert_standard(run_cli(["denoise", run_dir, tmp_path / "photo.png", "--sigma", "0.1",
                             *one_step], capsys), before, mention="GiB")
    assert not (tmp_path / "big.png").exists()
    assert run_cli(["upscale", run_dir, tmp_path / "small.png", "--factor", "2", *one_step],
                   capsys)[0] == 0  # what fits is restored


def test_absurd_step_counts_and_allocations_fail_in_one_line(run_dir, tmp_path, capsys,
                                                             monkeypatch):
    run = copy_run(run_dir, tmp_path / "run")
    before = hashes(run)
    assert_standard(train_more(run, 4611686018427387906, capsys, "--minutes", "0.01"), before,
                    mention="loop.steps")
    Image.fromarray(np.zeros((8, 8), np.uint8)).save(tmp_path / "x.png")
    for command, mention in ((["denoise", run, tmp_path / "x.png", "--sigma", "0.1", "--steps",
                               "1", "--draws", 10**9, "--out", tmp_path / "d.png"], "draws"),
                             (["eval", run, "--ref", "mnist-test", "--nll", "--nll-steps", 10**9],
                              "--nll-steps"),
                             (["deblur", run, tmp_path / "x.png", "--kernel", "gaussian:1e308",
                               "--out", tmp_path / "d.png"], "std")):
        assert_standard(run_cli(command, capsys), before, mention=mention)

    def out_of_memory(*args, **kwargs):
        raise RuntimeError("[enforce fail at alloc_cpu.cpp:117] data. DefaultCPUAllocator: "
                           "can't allocate memory: you tried to allocate 9663676416 bytes.")
    monkeypatch.setattr(difflab.runs.Model, "generate", out_of_memory)
    assert_standard(run_cli(["sample", run, "--out", tmp_path / "g.png"], capsys), before,
                    mention="out of memory")


# 8. Tampered run files are refused ---------------------------------------------------------------

def tampered(run_dir: Path, dest: Path, change) -> Path:
    run = copy_run(run_dir, dest)
    index = json.loads((run / "checkpoint.json").read_text())
    change(run, index)
    (run / "checkpoint.json").write_text(json.dumps(index))
    return run


def flip_a_weight_byte(run: Path, index: dict) -> None:
    weights = run / index["weights"]
    raw = bytearray(weights.read_bytes())
    raw[-3] ^= 0x01
    weights.write_bytes(bytes(raw))


def integer_weights(run: Path, index: dict) -> None:
    from safetensors.torch import load_file, save_file

    tensors = load_file(run / index["weights"])
    name = next(k for k in tensors if k.startswith("ema.") and k.endswith("weight"))
    tensors[name] = tensors[name].round().to(torch.int32)
    save_file(tensors, run / index["weights"])
    index["weights_sha256"] = hashlib.sha256((run / index["weights"]).read_bytes()).hexdigest()


TAMPERED = {
    "absurd step": (lambda run, index: index.update(step=10**30), "bad step"),
    "no checksum": (lambda run, index: (index.pop("weights_sha256"), flip_a_weight_byte(run, index)),
                    "weights_sha256"),
    "no checksum, older version": (lambda run, index: (index.pop("weights_sha256"),
                                                       index.update(version=2)), "version 2"),
    "integer weights": (integer_weights, "int32"),
    "a shape the weights do not have": (lambda run, index: index["shape"].update(
        num_classes=10**12), "weights and config do not match"),  # (no terabyte embedding built)
    "NaN training time": (lambda run, index: index.update(train_seconds=float("nan")),
                          "training state"),
}


@pytest.mark.parametrize("case", list(TAMPERED))
def test_tampered_checkpoints_are_refused(case, run_dir, tmp_path, capsys):
    change, mention = TAMPERED[case]
    run = tampered(run_dir, tmp_path / "run", change)
    before = hashes(run)
    command = ["sample", run, "--n", "2", "--out", tmp_path / "g.png"]
    if case == "NaN training time":  # read by a resume only
        command = ["train", "--out", run, "--resume", "--steps", "3"]
    assert_standard(run_cli(command, capsys), before, mention=mention)
    assert not (tmp_path / "g.png").exists()


def test_a_schedule_grid_for_another_sigma_range_is_refused(run_dir, tmp_path, capsys):
    from difflab.diffusion.schedule_store import save_schedule, schedule_key

    run = copy_run(run_dir, tmp_path / "run")
    recipe = difflab.load(run).config.sample  # 2 steps; the model's sigma_max is 80
    save_schedule(run, schedule_key(recipe.sampler, recipe.steps), [1e-3, 5e-4, 0.0])
    before = hashes(run)
    for grid in ([], ["--grid", "optimized"]):
        assert_standard(run_cli(["sample", run, "--n", "2", "--out", tmp_path / "g.png",
                                 *grid], capsys), before, mention="schedules.json")
    with pytest.raises(ValueError, match="start at the model's sigma_max"):
        difflab.load(run).sample(2, grid=torch.tensor([1e-3, 5e-4, 0.0]), steps=2)


def test_float_and_32_bit_tiffs_are_refused_not_misread(run_dir, tmp_path, capsys):
    pixels = np.random.default_rng(1).random((8, 8))
    Image.fromarray(pixels.astype(np.float32)).save(tmp_path / "float.tif")
    Image.fromarray((pixels * 2**20).astype(np.int32)).save(tmp_path / "int32.tif")
    before = hashes(tmp_path)
    for name in ("float.tif", "int32.tif"):
        assert_standard(run_cli(["denoise", run_dir, tmp_path / name, "--sigma", "0.1", "--out",
                                 tmp_path / "d.png"], capsys), before, mention="no known range")
    Image.fromarray((pixels * 65535).astype(np.uint16)).save(tmp_path / "sixteen.tif")
    from difflab.data import read_images
    got, _ = read_images(tmp_path / "sixteen.tif")
    assert np.abs(got[0, 0].astype(float) - pixels * 255).max() <= 1  # rescaled, not clipped


# 9. The README's torchrun sampling command --------------------------------------------------------

def test_the_readmes_torchrun_sampling_command_reaches_difflab_whole():
    from torch.distributed.run import get_args_parser

    readme = (ROOT / "README.md").read_text()
    line = next(li.strip() for li in readme.splitlines()
                if li.strip().startswith("torchrun") and " sample " in li)
    args = get_args_parser().parse_args(line.split()[1:])
    assert args.module and args.training_script == "difflab"
    ours = cli.build_parser().parse_args(args.training_script_args)
    assert ours.command == "sample" and ours.n == int(re.search(r"--num-samples (\d+)", line)[1])
    assert cli.build_parser().parse_args(["sample", "r", "--n", "5"]).n == 5  # still works


# 10. The Python API is as strict as the command line ---------------------------------------------

def test_the_python_api_refuses_what_the_cli_refuses(run_dir):
    model = difflab.load(run_dir)
    images, mask = torch.rand(1, 1, 8, 8), torch.ones(8, 8)
    mask[2:6, 2:6] = 0
    bad_calls = {
        "steps": [lambda: model.sample(2, steps=0), lambda: model.sample(2, steps=1.5),
                  lambda: model.inpaint(images, mask, steps=0),
                  lambda: model.denoise(images, 0.1, steps=True)],
        "seed": [lambda: model.sample(2, seed=1.5), lambda: model.sample(2, seed="1"),
                 lambda: model.sample(2, seed=-1), lambda: model.denoise(images, 0.1, seed=2.5)],
        "real": [lambda: model.denoise(images.to(torch.complex64), 0.1)],
    }
    for word, calls in bad_calls.items():
        for call in calls:
            with pytest.raises(ValueError, match=word) as caught:
                call()
            assert "\n" not in str(caught.value)
    assert torch.equal(model.sample(2, seed=np.int64(1)), model.sample(2, seed=1))


def test_langevin_refuses_noise_that_would_overflow_the_parameters():
    from difflab.optim import Langevin

    for temperature, lr in ((1e308, 0.01), (1e80, 1.0)):
        p = torch.nn.Parameter(torch.ones(4))
        opt = Langevin([p], lr=lr, temperature=temperature, seed=0)
        p.grad = torch.ones(4)
        with pytest.raises(ValueError, match="overflow"):
            opt.step()
        assert torch.equal(p.detach(), torch.ones(4)) and opt.param_groups[0]["step"] == 0
    p = torch.nn.Parameter(torch.ones(4, dtype=torch.float64))
    opt = Langevin([p], lr=0.01, temperature=1e80, seed=0)  # fits float64
    p.grad = torch.ones_like(p)
    opt.step()
    assert torch.isfinite(p).all()


# 11. Posterior helpers check shapes and numbers --------------------------------------------------

def test_posterior_helpers_refuse_wrong_shapes_and_bad_numbers():
    from difflab.optim import (PosteriorCollector, SamplingSchedule,
                               gaussian_stationary_covariance, sgld_hyperparameters)

    small, big = torch.nn.Linear(4, 1), torch.nn.Linear(4, 3)
    collector = PosteriorCollector(small)
    collector.collect()
    with pytest.raises(ValueError, match="weight has shape"):
        collector.predictive(big, torch.rand(2, 4))
    state = collector.state_dict()
    wrong = PosteriorCollector(big)
    with pytest.raises(ValueError, match=r"snapshots\['weight'\]"):
        wrong.load_state_dict(state)
    assert len(wrong) == 0
    for fields in ({"thinning": math.nan}, {"burn_in": math.nan}, {"thinning": 2.0},
                   {"cycle_length": 10.5}, {"burn_in": True},
                   {"cycle_length": 10, "exploration": math.nan}):
        with pytest.raises(ValueError, match="SamplingSchedule"):
            SamplingSchedule(**fields)
    for args in ((100, math.nan), (100, math.inf), (100, 1e-3, math.nan), (100.5, 1e-3),
                 (100, 1e-3, 1.0, math.inf)):
        with pytest.raises(ValueError):
            sgld_hyperparameters(*args[:3], **({"prior_precision": args[3]} if len(args) > 3 else {}))
    eye = torch.eye(2)
    for kwargs, word in (({"step_size": math.nan}, "step_size"),
                         ({"step_size": 0.1, "temperature": -1.0}, "temperature"),
                         ({"step_size": 0.1, "temperature": math.nan}, "temperature")):
        with pytest.raises(ValueError, match=word):
            gaussian_stationary_covariance(eye, **kwargs)
    with pytest.raises(ValueError, match="precision must be a real square matrix"):
        gaussian_stationary_covariance(torch.ones(2, 3), 0.1)


# 12. The command line answers without importing torch ------------------------------------------

def test_help_and_argument_errors_import_no_torch():
    commands = [["--help"], ["train", "--steps", "-1"], ["train", "--set", "diffusion.p_std=-1"],
                ["sample", "r", "--steps", "0"], ["train", "--bogus"]]
    commands += [[name, "--help"] for name in ("train", "sample", "eval", "schedule", "inpaint",
                                               "upscale", "denoise", "bench")]
    script = ("import json, sys; from difflab import cli\n"
              "try:\n    code = cli.main(json.loads(sys.argv[1]))\n"
              "except SystemExit as e:\n    code = e.code\n"
              "print('torch' in sys.modules, code, file=sys.stderr)")
    for argv in commands:
        result = subprocess.run([sys.executable, "-c", script, json.dumps(argv)],
                                capture_output=True, text=True)
        assert result.stderr.strip().splitlines()[-1] in ("False 0", "False 2"), (argv,
                                                                                  result.stderr)


# 13. Every numeric config field has a range -------------------------------------------------------

OUT_OF_RANGE = {  # one value per numeric field, in its type but out of its range
    "data.image_size": "2", "data.channels": "0", "diffusion.timesteps": "10000000",
    "diffusion.sigma_data": "-0.5", "diffusion.sigma_min": "-1", "diffusion.sigma_max": "1e30",
    "diffusion.p_mean": "1e6", "diffusion.p_std": "-1", "diffusion.min_snr_gamma": "0",
    "diffusion.label_dropout": "-0.1", "optim.lr": "1e30", "optim.betas": "[0.9, 1.5]",
    "optim.weight_decay": "-1", "optim.warmup_steps": "-1", "optim.grad_clip": "-1",
    "optim.batch_size": "1000000000000", "optim.ema_half_life_images": "0",
    "optim.ema_rampup_ratio": "-1", "run.seed": "-1", "loop.steps": "4611686018427387906",
    "loop.minutes": "1e300", "loop.threads": "100000", "loop.log_every": "0",
    "loop.sample_every": "0", "loop.checkpoint_every": "0", "loop.eval_every": "-1",
    "loop.eval_n": "0", "sample.steps": "0", "sample.guidance": "-1",
    "sample.final_samples": "-1", "net.channels": "0", "net.channel_mult": "[0]",
    "net.num_res_blocks": "0", "net.attention_resolutions": "[0]",
    "net.attention_head_channels": "0", "net.dropout": "1", "net.groups": "0",
    "net.out_channels": "0", "net.patch_size": "0",
}


def numeric_fields() -> set[str]:
    config = TrainConfig()
    return {f"{s.name}.{f.name}" for s in dataclasses.fields(config)
            for f in dataclasses.fields(getattr(config, s.name))
            if str(f.type).replace(" | None", "").split("[")[0] in ("int", "float", "tuple")}


def test_every_numeric_config_field_is_range_checked(tmp_path, capsys):
    assert numeric_fields() == set(OUT_OF_RANGE)
    for name, value in OUT_OF_RANGE.items():
        result = run_cli(["train", "--data", "digits", "--steps", "1", "--out", tmp_path / "r",
                          *TINY, "--set", f"{name}={value}"], capsys)
        assert_standard(result, {}, mention=name)
        assert not (tmp_path / "r").exists(), name

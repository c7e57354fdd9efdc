"""Training loop: checkpoints, exact resume after a kill, NaN guard, and the CLI end to end."""
import contextlib
import io
import json
import os
import signal
import subprocess
import sys
import time

import numpy as np
import pytest
import torch

from difflab import cli
from difflab.training.checkpoint import CheckpointError, load_denoiser, read_checkpoint, save_checkpoint
from difflab.data.shape import DataShape
from difflab.config import ConfigError, TrainConfig, from_dict, parse_overrides, update, validate

TINY = ["--set", "net.channels=16", "--set", "net.channel_mult=[1,2]", "--set", "net.groups=4",
        "--set", "optim.batch_size=32", "--set", "loop.log_every=1", "--set", "sample.steps=4",
        "--no-bf16", "--threads", "1"]


def difflab(*args):
    """``difflab ARGS`` in this process (no interpreter start-up): returncode, stdout, stderr."""
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        try:
            code = cli.main([str(a) for a in args])
        except SystemExit as e:  # argparse
            code = e.code
    return subprocess.CompletedProcess(args, code, out.getvalue(), err.getvalue())


def tiny_config(out, steps=6):
    config = TrainConfig()
    update(config, parse_overrides(["data.dataset=digits", "net.channels=16", "net.channel_mult=[1,2]",
                                    "net.groups=4", "optim.batch_size=16", "run.precision=fp32",
                                    "loop.log_every=1", "loop.checkpoint_every=3", "loop.sample_every=1000",
                                    f"loop.out={out}", f"loop.steps={steps}", "loop.minutes=none",
                                    "loop.threads=1"]))
    return validate(config)


def test_checkpoint_round_trip_and_atomic_pointer(tmp_path):
    tensors = {"model.w": torch.randn(3, 4), "ema.w": torch.randn(3, 4), "rng.train": torch.Generator().get_state()}
    save_checkpoint(tmp_path, 5, {"a": 1}, tensors, {"note": "x"})
    save_checkpoint(tmp_path, 10, {"a": 1}, tensors)
    info, loaded = read_checkpoint(tmp_path)
    assert info["step"] == 10 and info["weights"] == "checkpoint-00000010.safetensors"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["checkpoint-00000010.safetensors", "checkpoint.json"]
    for k, v in tensors.items():
        assert torch.equal(loaded[k], v)


def test_corrupt_checkpoints_give_one_line_errors(tmp_path):
    with pytest.raises(CheckpointError, match="no checkpoint found"):
        read_checkpoint(tmp_path)
    save_checkpoint(tmp_path, 1, {}, {"model.w": torch.ones(2)})
    (tmp_path / "checkpoint-00000001.safetensors").write_bytes(b"\x00" * 16)
    with pytest.raises(CheckpointError, match="checkpoint-00000001.safetensors: not a valid safetensors file"):
        read_checkpoint(tmp_path)
    (tmp_path / "checkpoint.json").write_text("{not json")
    with pytest.raises(CheckpointError, match="checkpoint.json: not valid JSON"):
        read_checkpoint(tmp_path)


def test_config_validation_names_field_and_value():
    with pytest.raises(ConfigError, match=r"optim.lr: cannot parse 'abc' as float"):
        update(TrainConfig(), parse_overrides(["optim.lr=abc"]))
    with pytest.raises(ConfigError, match=r"unknown config field optim.learning_rate"):
        update(TrainConfig(), {"optim": {"learning_rate": 1}})
    with pytest.raises(ConfigError, match=r"diffusion.parameterization='score': choose from"):
        from_dict({"diffusion": {"parameterization": "score"}})
    with pytest.raises(ConfigError, match=r"optim.batch_size=0: must be at least 1"):
        from_dict({"optim": {"batch_size": 0}})


def test_a_bad_field_in_a_config_file_names_the_file(tmp_path, capsys):
    config = tmp_path / "recipe.json"
    for content, message in (({"net": {"chanels": 3}}, "unknown config field net.chanels"),
                             ({"optim": {"lr": "fast"}}, "optim.lr: cannot parse 'fast' as float")):
        config.write_text(json.dumps(content))
        assert cli.main(["train", "--data", "digits", "--config", str(config), "--out",
                         str(tmp_path / "run")]) == 2
        assert capsys.readouterr().err.strip().startswith(f"difflab: error: {config}: {message}")
        assert not (tmp_path / "run").exists()


def test_training_reduces_loss_and_checkpoint_loads(tmp_path):
    from difflab.data import load_dataset
    from difflab.diffusion.denoiser import build_denoiser
    from difflab.diffusion.loss import denoising_loss
    from difflab.training.train import train

    config = tiny_config(tmp_path / "run", steps=60)
    config.optim.warmup_steps = 5
    out = train(config)
    assert len((out / "metrics.jsonl").read_text().splitlines()) == 60

    # held-out check at fixed noise: the trained weights denoise far better than the initial ones
    g = torch.Generator().manual_seed(7)
    x0 = load_dataset("digits").images[-256:]
    sigma = torch.logspace(-1.5, 1, 256)
    noise = torch.randn(x0.shape, generator=g)
    torch.manual_seed(config.run.seed)
    trained, loaded_config, shape = load_denoiser(out, ema=False)
    initial = build_denoiser(config, shape)
    with torch.no_grad():
        before = denoising_loss(initial, x0, sigma, noise).item()
        after = denoising_loss(trained, x0, sigma, noise).item()
    assert after < 0.6 * before
    assert loaded_config.loop.steps == 60 and shape == DataShape(1, (8, 8), 10)
    assert load_denoiser(out)[0](torch.randn(2, 1, 8, 8), 1.0).shape == (2, 1, 8, 8)  # EMA weights


def test_nan_loss_stops_with_step_and_last_checkpoint(tmp_path, monkeypatch):
    import difflab.training.train as train_module

    real_loss, calls = train_module.denoising_loss, [0]

    def poisoned(*args, **kwargs):
        calls[0] += 1
        loss = real_loss(*args, **kwargs)
        return loss * float("nan") if calls[0] == 5 else loss

    monkeypatch.setattr(train_module, "denoising_loss", poisoned)
    with pytest.raises(train_module.TrainingError,
                       match=r"loss became nan at step 5; last good checkpoint: .*checkpoint.json"):
        train_module.train(tiny_config(tmp_path / "run", steps=10))
    assert read_checkpoint(tmp_path / "run")[0]["step"] == 3  # the NaN state was never saved


def test_kill_and_resume_is_bit_exact(tmp_path):
    """SIGKILL a run after a checkpoint, resume it: same loss curve and weights as a run never killed."""
    args = ["train", "--data", "digits", "--steps", 24, *TINY, "--set", "loop.checkpoint_every=4",
            "--set", "loop.sample_every=1000", "--final-samples", 0]
    assert difflab(*args, "--out", tmp_path / "whole").returncode == 0

    killed = tmp_path / "killed"
    proc = subprocess.Popen([sys.executable, "-m", "difflab", *map(str, args), "--out", str(killed)],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                            env={**os.environ, "OMP_NUM_THREADS": "1"})
    deadline = time.time() + 120
    while time.time() < deadline:
        index = killed / "checkpoint.json"
        if index.exists() and json.loads(index.read_text())["step"] >= 8:
            break
        time.sleep(0.05)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    stopped_at = read_checkpoint(killed)[0]["step"]
    assert 8 <= stopped_at < 24, "the run was not interrupted mid-way"
    result = difflab(*args, "--out", killed, "--resume")
    assert result.returncode == 0, result.stderr

    def curve(run):
        return [(r["step"], r["loss"], r["grad_norm"]) for r in map(json.loads, (run / "metrics.jsonl").read_text().splitlines())]

    assert curve(killed) == curve(tmp_path / "whole")
    _, a = read_checkpoint(killed)
    _, b = read_checkpoint(tmp_path / "whole")
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def test_cli_end_to_end_on_digits(tmp_path):
    run = tmp_path / "run"
    result = difflab("train", "--data", "digits", "--steps", 30, "--out", run, "--final-samples", 100, *TINY,
                     "--set", "loop.sample_every=15")
    assert result.returncode == 0, result.stderr
    for name in ("report.md", "samples.png", "samples.npz", "loss.png", "metrics.jsonl", "checkpoint.json"):
        assert (run / name).exists(), name
    assert (run / "samples" / "step-00000015.png").exists()
    samples = np.load(run / "samples.npz")["samples"]
    assert samples.shape == (100, 1, 8, 8) and samples.min() >= 0 and samples.max() <= 1
    assert "## Samples" in (run / "report.md").read_text()

    result = difflab("sample", run, "--n", 10, "--steps", 5, "--sampler", "ddpm", "--out",
                     tmp_path / "g.png", "--npz", tmp_path / "s.npz")
    assert result.returncode == 0, result.stderr
    assert np.load(tmp_path / "s.npz")["samples"].shape == (10, 1, 8, 8)

    # a second train into the same directory must not clobber it
    again = difflab("train", "--data", "digits", "--steps", 2, "--out", run, *TINY)
    assert again.returncode == 2 and "already has a checkpoint" in again.stderr


@pytest.mark.parametrize("args, message", [
    (["sample", "nowhere"], "nowhere: no checkpoint found"),
    (["train", "--set", "optim.lr=abc"], "optim.lr: cannot parse 'abc' as float"),
    (["train", "--set", "lr=1"], "override 'lr=1' must look like section.field=value"),
    (["train", "--steps", "0"], "loop.steps=0: must be at least 1"),
])
def test_cli_bad_input_is_one_line(args, message):
    result = difflab(*args)
    assert result.returncode == 2
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and message in lines[0]


def test_sample_cli_validates_sampler_and_ranges(tmp_path):
    run = tmp_path / "run"
    assert difflab("train", "--data", "digits", "--steps", 2, "--out", run, "--final-samples", 0,
                   "--unconditional", *TINY).returncode == 0
    for args, message in ((["--sampler", "bogus"], "unknown sampler 'bogus'"),
                          (["--steps", "0"], "--steps must be an integer in [1, 10000], got 0"),
                          (["--eta", "2"], "--eta must be in [0, 1]"),
                          (["--class-label", "3"], "--class-label 3: the model has no classes")):
        result = difflab("sample", run, *args)
        assert result.returncode == 2 and message in result.stderr, result.stderr


def test_class_conditional_training_and_guided_sampling(tmp_path):
    run = tmp_path / "cond"
    result = difflab("train", "--data", "digits", "--steps", 6, "--out", run,
                     "--final-samples", 20, *TINY)
    assert result.returncode == 0, result.stderr
    _, tensors = read_checkpoint(run)
    assert tensors["model.class_emb.weight"].shape[0] == 11  # ten digits + the "no label" token
    result = difflab("sample", run, "--n", 6, "--steps", 3, "--class-label", 3, "--guidance", 2.0,
                     "--out", tmp_path / "three.png", "--npz", tmp_path / "three.npz")
    assert result.returncode == 0, result.stderr
    assert np.load(tmp_path / "three.npz")["samples"].shape == (6, 1, 8, 8)


def test_resume_without_new_steps_records_a_changed_sample_section(tmp_path):
    """--resume with only the sample section changed and no step left to train rewrites the
    checkpoint's config (the guidance the run's report and `difflab sample` then use); an
    unchanged resume leaves the checkpoint alone."""
    from difflab.training.train import train

    config = tiny_config(tmp_path / "run", steps=3)
    train(config)
    info, _ = read_checkpoint(tmp_path / "run")
    train(config, resume=True)
    assert read_checkpoint(tmp_path / "run")[0] == info
    update(config, parse_overrides(["sample.guidance=3.5"]))
    train(validate(config), resume=True)
    info2, _ = read_checkpoint(tmp_path / "run")
    assert info2["step"] == 3 and info2["config"]["sample"]["guidance"] == 3.5


def test_adamw_is_fused_and_a_run_resumes_with_the_kernel_it_was_trained_with(tmp_path, monkeypatch):
    """Training runs AdamW's fused kernel on CPU (saved in the checkpoint's param groups). A run
    trained before that, whose checkpoint says ``fused: null`` (torch's per-tensor loop), resumes
    with the loop: trained to step 3 and resumed by today's code, it ends bit-identical to the
    same run trained whole with the loop."""
    import difflab.training.train as train_module

    train_module.train(tiny_config(tmp_path / "fused", steps=3))
    info, _ = read_checkpoint(tmp_path / "fused")
    assert [group["fused"] for group in info["param_groups"]] == [True]

    real = train_module.make_optimizer

    def loop_kernel(net, config, device):  # the optimizer of runs trained before the fused kernel
        optimizer = real(net, config, device)
        for group in optimizer.param_groups:
            group["fused"] = None
        return optimizer

    with monkeypatch.context() as patch:
        patch.setattr(train_module, "make_optimizer", loop_kernel)
        train_module.train(tiny_config(tmp_path / "whole", steps=6))
        train_module.train(tiny_config(tmp_path / "old", steps=3))
    assert [group["fused"] for group in read_checkpoint(tmp_path / "old")[0]["param_groups"]] == [None]
    train_module.train(tiny_config(tmp_path / "old", steps=6), resume=True)  # today's code
    _, resumed = read_checkpoint(tmp_path / "old")
    _, whole = read_checkpoint(tmp_path / "whole")
    assert resumed.keys() == whole.keys() and all(torch.equal(resumed[k], whole[k]) for k in whole)

"""The architecture's contracts: one generation path behind difflab.load, the network factory and
the recorded data shape, old checkpoints, device/precision choice, the CLI's flag table, resume
rules by section, progress lines, and no import cycles."""
import ast
import io
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

import difflab
from difflab import cli
from difflab.config import (RESUMABLE_SECTIONS, ConfigError, TrainConfig, from_dict,
                            parse_overrides, trajectory, update, upgrade_legacy)
from difflab.data.shape import DataShape
from difflab.diffusion.denoiser import build_denoiser
from difflab.diffusion.generation import model_sigmas
from difflab.training.checkpoint import read_checkpoint, save_checkpoint

SRC = Path(__file__).resolve().parents[1] / "src" / "difflab"
TINY = ["--set", "net.channels=16", "--set", "net.channel_mult=[1,2]", "--set", "net.groups=4",
        "--set", "optim.batch_size=16", "--set", "sample.steps=3", "--set", "sample.guidance=2.5",
        "--set", "sample.sampler=heun", "--precision", "fp32", "--threads", "1"]


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory):
    """A tiny class-conditional digits run (3 steps) whose recipe differs from every CLI default."""
    run = tmp_path_factory.mktemp("runs") / "digits"
    assert cli.main(["train", "--data", "digits", "--steps", "3", "--out", str(run),
                     "--final-samples", "0", *TINY]) == 0
    return run


def test_load_sample_uses_the_runs_recipe(run_dir):
    model = difflab.load(run_dir)
    assert model.shape == DataShape(1, (8, 8), 10) and model.precision == "fp32"
    images = model.sample(6, seed=3)
    assert images.shape == (6, 1, 8, 8) and images.dtype == torch.float32
    assert images.min() >= 0 and images.max() <= 1
    explicit = model.sample(6, steps=3, sampler="heun", guidance=2.5, seed=3)
    assert torch.equal(images, explicit)
    assert not torch.equal(images, model.sample(6, steps=3, sampler="heun", guidance=1.0, seed=3))
    assert not torch.equal(images, model.sample(6, seed=4))


def test_sample_cli_without_options_reproduces_the_recipe(run_dir, tmp_path, capsys):
    npz = tmp_path / "s.npz"
    assert cli.main(["sample", str(run_dir), "--n", "6", "--seed", "3", "--out",
                     str(tmp_path / "g.png"), "--npz", str(npz)]) == 0
    assert "(heun, 3 steps, guidance 2.5, fp32)" in capsys.readouterr().out
    cli_images = torch.from_numpy(np.load(npz)["samples"])
    torch.testing.assert_close(cli_images, difflab.load(run_dir).sample(6, seed=3), rtol=0, atol=1e-6)


def test_a_class_label_outside_the_model_is_refused_with_the_valid_range(run_dir, capsys):
    model = difflab.load(run_dir)  # 10 classes
    with pytest.raises(ValueError, match=r"class label 10: the model has 10 classes \(0-9\)"):
        model.sample(2, class_label=10)
    with pytest.raises(ValueError, match=r"class label -1: the model has 10 classes \(0-9\)"):
        model.inpaint(torch.zeros(1, 1, 8, 8), torch.ones(1, 1, 8, 8, dtype=torch.bool).logical_not()
                      .logical_or(torch.eye(8, dtype=torch.bool)), class_label=-1)
    assert cli.main(["sample", str(run_dir), "--n", "2", "--class-label", "12"]) == 2
    assert capsys.readouterr().err.strip() == \
        "difflab: error: --class-label 12: the model has 10 classes (0-9)"


def test_version_1_checkpoint_still_loads_and_samples(run_dir, tmp_path):
    """A checkpoint in the layout written before the net/run/loop/sample split (unet section with
    the data shape in it, run.bf16, sampling fields in run) loads with the same weights."""
    info, tensors = read_checkpoint(run_dir)
    config = info["config"]
    net = {k: v for k, v in config["net"].items() if k != "kind"}
    old = {"data": config["data"], "diffusion": config["diffusion"], "optim": config["optim"],
           "unet": {"in_channels": 1, "image_size": 8, "num_classes": 10, "extra": {}, **net},
           "run": {"out": "elsewhere", "steps": 3, "minutes": None, "seed": 0, "bf16": False,
                   "threads": 1, "log_every": 25, "sample_every": 500, "checkpoint_every": 250,
                   "sample_steps": 3, "sample_sampler": "heun", "sample_guidance": 2.5,
                   "final_samples": 0, "eval_every": 0, "eval_n": 1000}}
    old_dir = tmp_path / "old"
    save_checkpoint(old_dir, 3, old, tensors)
    index = json.loads((old_dir / "checkpoint.json").read_text())
    index["version"] = 1
    (old_dir / "checkpoint.json").write_text(json.dumps(index))
    before, after = difflab.load(old_dir), difflab.load(run_dir)
    assert before.config.sample == after.config.sample and before.shape == after.shape
    assert before.precision == "fp32"
    assert torch.equal(before.sample(4, seed=1), after.sample(4, seed=1))
    del old["unet"]["image_size"]
    with pytest.raises(ConfigError, match="old-format config has no unet.image_size"):
        upgrade_legacy(old, "x/checkpoint.json")


def test_network_factory_and_shape():
    config = from_dict({"net": {"kind": "unet", "channels": 16, "groups": 4}})
    denoiser = build_denoiser(config, DataShape(3, (16, 16), 0))
    assert denoiser.net.stem.in_channels == 3 and denoiser.net.class_emb is None
    with pytest.raises(ConfigError, match="net.kind='transformer': choose from unet, dit"):
        update(TrainConfig(), {"net": {"kind": "transformer"}})
    with pytest.raises(ValueError, match="cannot be halved"):
        build_denoiser(config, DataShape(1, (14, 14), 0)).net
    assert DataShape.from_dict(DataShape(1, (28, 28), 10).to_dict()) == DataShape(1, (28, 28), 10)
    with pytest.raises(ValueError, match="malformed data shape"):
        DataShape.from_dict({"channels": 0, "size": [8, 8]})


def test_every_train_flag_names_a_config_field_and_sets_it():
    parser = cli.build_parser()
    for flag, (dotted, _) in cli.TRAIN_FLAGS.items():
        cli.config_field(dotted)  # raises KeyError for a flag that drifted from the config
    value = {"data.dataset": "digits", "data.data_dir": "d", "data.folder": "f", "loop.out": "o",
             "loop.steps": "7", "loop.minutes": "2.5", "loop.threads": "2", "loop.eval_every": "3",
             "loop.eval_n": "9", "run.seed": "5", "run.device": "cpu", "run.precision": "bf16",
             "optim.batch_size": "8", "sample.final_samples": "4"}
    assert set(value) == {d for d, _ in cli.TRAIN_FLAGS.values()}
    argv = ["train"] + [a for flag, (d, _) in cli.TRAIN_FLAGS.items() for a in (flag, value[d])]
    config = cli.train_config(parser.parse_args(argv)).to_dict()
    for dotted, text in value.items():
        section, name = dotted.split(".")
        assert str(config[section][name]) == text, dotted
    config = cli.train_config(parser.parse_args(["train", "--no-bf16", "--unconditional"]))
    assert config.run.precision == "fp32" and config.data.class_conditional is False


def test_resume_may_change_only_loop_and_sample_sections():
    assert RESUMABLE_SECTIONS == ("loop", "sample")
    base = TrainConfig().to_dict()
    moved = update(TrainConfig(), parse_overrides(["loop.out=/elsewhere", "loop.steps=9",
                                                   "sample.guidance=1"])).to_dict()
    assert trajectory(moved) == trajectory(base)
    for change in ("run.seed=1", "run.precision=fp32", "optim.lr=1e-3", "net.channels=16"):
        assert trajectory(update(TrainConfig(), parse_overrides([change])).to_dict()) != \
            trajectory(base), change


def test_precision_auto_is_bf16_only_where_the_cpu_has_it():
    """auto -> bf16 exactly when the CPU has AMX; fp32 on simulated CPUs without it (AVX2,
    AVX-512, AVX-512 with bf16 instructions but no AMX)."""
    code = ("import torch; from difflab.device import resolve_precision; "
            "print(resolve_precision('auto', torch.device('cpu'))[0])")

    def auto(extra_env):
        env = {k: v for k, v in os.environ.items()
               if k not in ("ONEDNN_MAX_CPU_ISA", "ATEN_CPU_CAPABILITY")}
        return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                              env={**env, **extra_env}, check=True).stdout.strip()

    assert auto({"ONEDNN_MAX_CPU_ISA": "AVX2", "ATEN_CPU_CAPABILITY": "avx2"}) == "fp32"
    assert auto({"ONEDNN_MAX_CPU_ISA": "AVX512_CORE"}) == "fp32"  # AVX-512 without bf16
    assert auto({"ONEDNN_MAX_CPU_ISA": "AVX512_CORE_BF16"}) == "fp32"  # bf16, but slower there
    from difflab.device import DeviceError, resolve_device, resolve_precision

    flags = Path("/proc/cpuinfo").read_text() if Path("/proc/cpuinfo").exists() else ""
    amx = " amx_bf16" in flags and \
        "ONEDNN_MAX_CPU_ISA" not in os.environ and "ATEN_CPU_CAPABILITY" not in os.environ
    assert resolve_precision("auto", torch.device("cpu"))[0] == ("bf16" if amx else "fp32")
    assert resolve_precision("fp32", torch.device("cpu"))[0] == "fp32"
    assert resolve_precision("bf16", torch.device("cpu"))[0] == "bf16"
    with pytest.raises(DeviceError, match="run.precision='fp16'"):
        resolve_precision("fp16", torch.device("cpu"))
    with pytest.raises(DeviceError, match="run.device='gpu'"):
        resolve_device("gpu")
    if not torch.cuda.is_available():
        with pytest.raises(DeviceError, match="CUDA is not available"):
            resolve_device("cuda")


def test_precision_auto_needs_amx_whatever_else_the_cpu_has(monkeypatch):
    """The CPU's flags decide once oneDNN and ATen run at the AVX-512 level: bf16 with AMX only;
    AVX512-BF16 alone measured slower than fp32 (BENCHMARKS.md, "Precision")."""
    from difflab import device

    if not torch.ops.mkldnn._is_mkldnn_bf16_supported() or \
            not torch.backends.cpu.get_cpu_capability().startswith("AVX512") or \
            os.environ.get("ONEDNN_MAX_CPU_ISA"):
        pytest.skip("needs oneDNN and ATen at the AVX-512 level (this CPU or its ISA caps lack it)")
    try:
        for flags, expected in (({"avx512f", "avx512_bf16", "amx_bf16", "amx_tile"}, "bf16"),
                                ({"avx512f", "avx512_bf16"}, "fp32"), ({"avx512f"}, "fp32")):
            monkeypatch.setattr(device, "_cpu_flags", lambda: flags)
            device.cpu_bf16_faster.cache_clear()
            assert device.resolve_precision("auto", torch.device("cpu"))[0] == expected, flags
    finally:  # later tests see this CPU's answer, also when an assertion above fails
        device.cpu_bf16_faster.cache_clear()


def test_progress_prints_a_plain_line_every_few_percent_off_a_terminal():
    from difflab.progress import Progress

    stream = io.StringIO()
    progress = Progress(steps=100, seconds=None, stream=stream, every_percent=10)
    for step in range(1, 101):
        progress.update(step, 0.6 * step, loss="0.1")
    progress.close()
    lines = stream.getvalue().splitlines()
    assert [int(line.split("%")[0].split()[-1]) for line in lines] == list(range(0, 101, 10))
    timed = io.StringIO()
    progress = Progress(steps=None, seconds=60.0, stream=timed, every_percent=50)
    progress.update(1, 30.0)
    progress.update(2, 61.0)
    assert len(timed.getvalue().splitlines()) == 2 and "100%" in timed.getvalue()
    counted = io.StringIO()  # another phase names itself and what it counts
    progress = Progress(1000, None, stream=counted, every_percent=25, label="sample", unit="image")
    for done in (250, 500, 750, 1000):
        progress.update(done, 0.3 * done)
    lines = counted.getvalue().splitlines()
    assert len(lines) == 4 and lines[0] == "sample:  25% image 250 1.2 min"


def _imports(path: Path, modules) -> set[str]:
    """difflab modules imported anywhere in a file (module level and inside functions);
    ``from package import submodule`` counts as importing the submodule only."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            found |= {a.name for a in node.names if a.name.startswith("difflab")}
        elif isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("difflab"):
            names = {f"{node.module}.{a.name}" for a in node.names}
            found |= names & modules
            if names - modules:
                found.add(node.module)
    return found


def test_no_import_cycles_between_modules():
    """The import graph of src/difflab, counting imports inside functions too, has no cycle
    (a package's __init__ is the package's own node)."""
    modules, extensions = {}, set()
    for path in [*SRC.rglob("*.py"), *SRC.rglob("*.c")]:  # .c: compiled extension modules
        parts = path.relative_to(SRC.parent).with_suffix("").parts
        name = ".".join(parts[:-1] if parts[-1] == "__init__" else parts)
        if path.suffix == ".py":
            modules[name] = path
        else:
            extensions.add(name)
    known = set(modules) | extensions
    graph = {name: {m for m in _imports(path, known) if m in modules and m != name}
             for name, path in modules.items()}
    state = {}

    def visit(node, stack):
        state[node] = "open"
        for nxt in graph[node]:
            if state.get(nxt) == "open":
                cycle = stack[stack.index(nxt):] + [nxt]
                pytest.fail("import cycle: " + " -> ".join(cycle))
            if nxt not in state:
                visit(nxt, stack + [nxt])
        state[node] = "done"

    for name in sorted(graph):
        if name not in state:
            visit(name, [name])


def test_optimized_schedule_is_saved_and_used_by_grid_optimized(run_dir, tmp_path, capsys):
    from difflab.diffusion.schedule_store import load_schedules

    run = tmp_path / "run"
    run.mkdir()
    for path in run_dir.iterdir():
        if path.is_file():
            (run / path.name).write_bytes(path.read_bytes())
    model = difflab.load(run)
    with pytest.raises(ValueError, match="no optimized grid for euler at 3 steps"):
        model.sample(2, steps=3, sampler="euler", grid="optimized")
    # the recipe's grid is auto: without a saved grid, the fixed few-step rule
    assert model.config.sample.grid == "auto"
    few = model_sigmas(model.denoiser, 3, "auto", "euler")
    assert torch.equal(model.sample(2, steps=3, sampler="euler"),
                       model.sample(2, steps=3, sampler="euler", grid=few))
    assert cli.main(["schedule", str(run), "--sampler", "euler", "--steps", "3", "--n", "4"]) == 0
    sigmas = load_schedules(run)["euler/3"]["sigmas"]
    assert len(sigmas) == 4 and sigmas[-1] == 0 and (sigmas[1:] < sigmas[:-1]).all()
    assert torch.equal(model.sample(2, steps=3, sampler="euler", grid="optimized"),
                       model.sample(2, steps=3, sampler="euler", grid=sigmas))
    assert torch.equal(model.sample(2, steps=3, sampler="euler"),  # auto: the saved grid now
                       model.sample(2, steps=3, sampler="euler", grid=sigmas))
    capsys.readouterr()
    assert cli.main(["schedule", str(run), "--sampler", "ddpm", "--steps", "3"]) == 2
    assert "deterministic samplers only" in capsys.readouterr().err

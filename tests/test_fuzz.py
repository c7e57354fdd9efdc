"""Bad input, generated: families of bad values, corrupt files and bad paths go into the CLI, and
every case must meet the standard: no traceback (an exception escaping ``cli.main`` fails the
test), exit status 2 with exactly one stderr line ``difflab: error: ...`` naming the problem (or,
where a mutation happens to be harmless, exit 0), and the sha256 of every file that existed before
unchanged. Cases come from generators over the config dataclasses, the CLI's option table and
mutations of real files, so new fields and options are fuzzed without editing this file."""
import dataclasses
import hashlib
import json
import random
import zlib
from pathlib import Path

import numpy as np
import pytest

from difflab import cli
from difflab.config import TrainConfig

SEED = 20261127
TINY = ["--set", "net.channels=8", "--set", "net.channel_mult=[1,2]", "--set", "net.groups=4",
        "--set", "net.attention_head_channels=8", "--set", "optim.batch_size=8",
        "--set", "sample.steps=2", "--precision", "fp32", "--threads", "1"]


def run_cli(argv, capsys):
    """(exit status, stdout, stderr) of ``difflab ARGV`` run in this process."""
    try:
        code = cli.main([str(a) for a in argv])
    except SystemExit as e:  # argparse
        code = e.code
    out = capsys.readouterr()
    return code, out.out, out.err


def hashes(root: Path) -> dict:
    return {p: hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(root.rglob("*"))
            if p.is_file()}


def assert_standard(result, before: dict, allow_success=False, mention=None):
    """Exit 2 with one error line (the last; progress lines may come before it) naming
    ``mention``, or exit 0 where ``allow_success``; every file in ``before`` unchanged."""
    code, _, err = result
    lines = err.strip().splitlines()
    assert "Traceback" not in err, err[-2000:]
    if code == 0 and allow_success:
        pass
    else:
        assert code == 2, f"exit {code}, stderr: {err[-500:]}"
        errors = [line for line in lines if line.startswith("difflab: error: ")]
        assert len(errors) == 1 and lines[-1] == errors[0], err[-500:]
        if mention is not None:
            assert mention in errors[0], errors[0]
    for path, digest in before.items():
        assert path.is_file() and hashlib.sha256(path.read_bytes()).hexdigest() == digest, path


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory):
    run = tmp_path_factory.mktemp("fuzz") / "run"
    assert cli.main(["train", "--data", "digits", "--steps", "2", "--out", str(run),
                     "--final-samples", "0", *TINY]) == 0
    return run


# ---------------------------------------------------------------------------------------------
# Bad values: every config field, every numeric CLI option
# ---------------------------------------------------------------------------------------------

def bad_values(annotation: str) -> list[str]:
    """Values that no field of this declared type may take."""
    base = annotation.replace("| None", "").strip()
    junk = ["abc", "[1, 2", "{}"]
    if base == "int":
        return junk + ["1.5", "NaN", "Infinity", "true", "[1]", "1e400"]
    if base == "float":
        return junk + ["NaN", "Infinity", "-Infinity", "1e400", "true", "[0.5]"]
    if base == "bool":
        return ["maybe", "2", "[]"]
    if base == "str":
        return []  # any text is a string; names are checked by RANGE_CASES, types by config files
    if base.startswith("tuple["):
        return ["abc", "5", "[\"a\"]", "[NaN]", "[[1]]"]
    raise AssertionError(annotation)


def field_cases():
    config = TrainConfig()
    for section in dataclasses.fields(config):
        for fld in dataclasses.fields(getattr(config, section.name)):
            if fld.name == "kind":
                continue
            for value in bad_values(str(fld.type)):
                yield f"{section.name}.{fld.name}", value


FIELD_CASES = list(field_cases())


def test_field_cases_cover_every_config_field():
    names = {name for name, _ in FIELD_CASES}
    config = TrainConfig()
    typed = {f"{s.name}.{f.name}" for s in dataclasses.fields(config)
             for f in dataclasses.fields(getattr(config, s.name))
             if f.name != "kind" and not str(f.type).startswith("str")}
    assert names == typed and len(names) > 30 and "diffusion.sigma_max" in names


@pytest.mark.parametrize("chunk", range(4))
def test_every_config_field_rejects_bad_values(chunk, tmp_path, capsys):
    before = hashes(tmp_path)
    for name, value in FIELD_CASES[chunk::4]:
        result = run_cli(["train", "--data", "digits", "--steps", "1", "--out", tmp_path / "r",
                          *TINY, "--set", f"{name}={value}"], capsys)
        assert_standard(result, before, mention=name)
        assert not (tmp_path / "r").exists(), (name, value)


RANGE_CASES = [  # (flag or --set, value): in the field's type but out of its range
    ("loop.steps", "0"), ("loop.minutes", "-1"), ("loop.threads", "0"), ("loop.threads", "-1"),
    ("loop.log_every", "0"), ("loop.eval_every", "-2"), ("optim.lr", "0"), ("optim.lr", "-1e-3"),
    ("optim.batch_size", "0"), ("optim.grad_clip", "-1"), ("diffusion.sigma_min", "0"),
    ("diffusion.sigma_max", "0.001"), ("diffusion.label_dropout", "1"),
    ("diffusion.timesteps", "1"), ("sample.steps", "100000000"), ("sample.guidance", "-1"),
    ("sample.final_samples", "-5"), ("sample.sampler", "bogus"), ("sample.grid", "bogus"),
    ("run.device", "gpu"), ("run.device", "cuda:x"), ("run.precision", "fp16"),
    ("data.dataset", "imagenet"), ("data.image_size", "0"), ("data.image_size", "100000"),
    ("data.channels", "2"), ("net.channels", "7"), ("net.channel_mult", "[]"),
    ("net.dropout", "1.5"), ("net.kind", "transformer"), ("optim.betas", "[0.9]"),
    ("run.seed", "-1"), ("run.seed", str(2**70)), ("optim.batch_size", "100000000"),
    ("net.channels", "8192"),  # memory: refused before anything is allocated
]


def test_fields_reject_values_out_of_range(tmp_path, capsys):
    before = hashes(tmp_path)
    for name, value in RANGE_CASES:
        result = run_cli(["train", "--data", "digits", "--steps", "1", "--out", tmp_path / "r",
                          *TINY, "--set", f"{name}={value}"], capsys)
        assert_standard(result, before, mention=name.split(".")[0])
        assert not (tmp_path / "r").exists(), (name, value)


def numeric_option_cases():
    """(command, option, value) for the integer/float options of sample and eval: junk, NaN,
    inf, below the minimum and absurdly large."""
    parser = cli.build_parser()
    sub = next(a for a in parser._actions if a.dest == "command")
    for command in ("sample", "eval"):
        for action in sub.choices[command]._actions:
            if action.type in (int, float) and action.option_strings:
                flag = action.option_strings[0]
                values = ["abc", "nan" if action.type is float else "1.5", "-1", "1e30"]
                if flag in ("--seed",):
                    values = ["abc", "1.5"]
                if flag in ("--guidance",):
                    values += ["inf", "-inf"]
                for value in values:
                    yield command, flag, value


@pytest.mark.parametrize("command, flag, value", list(numeric_option_cases()))
def test_sample_and_eval_options_reject_bad_numbers(command, flag, value, run_dir, tmp_path, capsys):
    before = hashes(run_dir)
    extra = ["--ref", "mnist-test"] if command == "eval" else ["--out", tmp_path / "g.png"]
    result = run_cli([command, run_dir, flag, value, *extra], capsys)
    assert_standard(result, before)
    assert not (tmp_path / "g.png").exists()


# ---------------------------------------------------------------------------------------------
# Corrupt files: checkpoint.json, weights, --config files, sample arrays, images
# ---------------------------------------------------------------------------------------------

RETYPES = [None, "x", 1.5, -1, [], {}, True]


def json_mutations(value, path=()):
    """Every way of deleting one key or retyping one value of a JSON document (bounded)."""
    if isinstance(value, dict):
        for key, item in value.items():
            yield ("del", *path, key), None
            for new in RETYPES:
                if type(new) is not type(item):
                    yield ("set", *path, key), new
            yield from json_mutations(item, (*path, key))


def apply(document, mutation, new):
    document = json.loads(json.dumps(document))
    action, *keys = mutation
    target = document
    for key in keys[:-1]:
        target = target[key]
    if action == "del":
        del target[keys[-1]]
    else:
        target[keys[-1]] = new
    return document


def byte_corruptions(data: bytes, rng: random.Random):
    """Truncations, flipped bytes, an empty file and random bytes of the same length."""
    yield b""
    for cut in (1, 8, len(data) // 2, len(data) - 1):
        yield data[:cut]
    for _ in range(4):
        flipped = bytearray(data)
        for i in rng.sample(range(len(data)), k=min(16, len(data))):
            flipped[i] ^= 0xFF
        yield bytes(flipped)
    yield bytes(rng.getrandbits(8) for _ in range(min(len(data), 4096)))


def copy_run(run_dir: Path, dest: Path) -> Path:
    dest.mkdir()
    for p in run_dir.iterdir():
        if p.is_file():
            (dest / p.name).write_bytes(p.read_bytes())
    return dest


def test_mutated_checkpoint_json_fails_cleanly_or_samples(run_dir, tmp_path, capsys):
    index = json.loads((run_dir / "checkpoint.json").read_text())
    mutations = list(json_mutations(index))
    rng = random.Random(SEED)
    chosen = rng.sample(mutations, k=min(60, len(mutations)))
    assert len(mutations) > 100
    for i, (mutation, new) in enumerate(chosen):
        run = copy_run(run_dir, tmp_path / f"m{i}")
        (run / "checkpoint.json").write_text(json.dumps(apply(index, mutation, new)))
        before = hashes(run)
        out = tmp_path / f"g{i}.png"
        result = run_cli(["sample", run, "--n", "2", "--steps", "1", "--out", out], capsys)
        assert_standard(result, before, allow_success=True)
        assert (result[0] == 0) == out.exists(), (mutation, new)


def test_corrupt_checkpoint_bytes_fail_in_one_line(run_dir, tmp_path, capsys):
    rng = random.Random(SEED + 1)
    weights = next(run_dir.glob("checkpoint-*.safetensors"))
    for name in ("checkpoint.json", weights.name):
        for i, data in enumerate(byte_corruptions((run_dir / name).read_bytes(), rng)):
            run = copy_run(run_dir, tmp_path / f"{name}-{i}")
            (run / name).write_bytes(data)
            before = hashes(run)
            result = run_cli(["sample", run, "--n", "2", "--steps", "1", "--out",
                              tmp_path / "g.png"], capsys)
            assert_standard(result, before)
            result = run_cli(["train", "--data", "digits", "--out", run, "--resume", *TINY], capsys)
            assert_standard(result, before)


def test_corrupt_config_files(tmp_path, capsys):
    rng = random.Random(SEED + 2)
    good = json.dumps({"optim": {"lr": 1e-3}, "loop": {"steps": 1}}).encode()
    cases = [*byte_corruptions(good, rng), b"[1, 2]", b"3", b'{"optim": 5}', b'{"optim": []}',
             b'{"nope": {}}', b'{"optim": {"lr": "fast"}}', b'{"data": {"dataset": 5}}',
             b'{"run": {"device": null}}', b'{"loop": {"out": ["a"]}}', "{\"é\": 1}".encode("latin-1"),
             b"[" * 100000]
    for i, data in enumerate(cases):
        config = tmp_path / f"c{i}.json"
        config.write_bytes(data)
        before = hashes(tmp_path)
        result = run_cli(["train", "--data", "digits", "--config", config, "--out",
                          tmp_path / "r", *TINY], capsys)
        assert_standard(result, before)
        assert not (tmp_path / "r").exists()


def sample_arrays(rng: np.random.Generator):
    good = rng.random((20, 1, 28, 28), dtype=np.float32)
    yield good * 3                                   # out of [0, 1]
    yield np.where(good > 0.99, np.inf, good)        # inf pixels
    yield np.where(good > 0.99, np.nan, good)        # NaN pixels
    yield good[:, :, :20]                            # wrong size
    yield np.repeat(good, 3, axis=1)                 # wrong channels
    yield good[:1]                                   # too few for FID
    yield good.astype(np.int64)                      # wrong dtype
    yield good.reshape(20, -1)                       # wrong rank
    yield np.zeros((0, 1, 28, 28), np.float32)       # empty


def test_bad_sample_arrays_for_eval(tmp_path, data_dir, capsys):
    rng = np.random.default_rng(SEED)
    for i, array in enumerate(sample_arrays(rng)):
        path = tmp_path / f"s{i}.npz"
        np.savez(path, samples=array)
        before = hashes(tmp_path)
        result = run_cli(["eval", path, "--ref", "mnist-test", "--data-dir", data_dir], capsys)
        assert_standard(result, before, mention=path.name)
    path = tmp_path / "bytes.npz"
    for i, data in enumerate(byte_corruptions((tmp_path / "s0.npz").read_bytes(), random.Random(3))):
        path.write_bytes(data)
        before = hashes(tmp_path)
        assert_standard(run_cli(["eval", path, "--ref", "mnist-test"], capsys), before,
                        mention="bytes.npz")


def png_bomb(width: int, height: int) -> bytes:
    """A valid PNG header claiming width x height pixels, with pixel data for one row only."""
    def chunk(kind, payload):
        return (len(payload).to_bytes(4, "big") + kind + payload
                + zlib.crc32(kind + payload).to_bytes(4, "big"))
    header = width.to_bytes(4, "big") + height.to_bytes(4, "big") + bytes([8, 0, 0, 0, 0])
    return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header)
            + chunk(b"IDAT", zlib.compress(b"\x00" * 64)) + chunk(b"IEND", b""))


def test_bad_images_in_a_folder(tmp_path, capsys):
    from PIL import Image

    rng = random.Random(SEED + 3)
    good = tmp_path / "good.png"
    Image.fromarray(np.zeros((16, 16), np.uint8)).save(good)
    cases = [png_bomb(100_000, 100_000), png_bomb(64, 64), *byte_corruptions(good.read_bytes(), rng)]
    for i, data in enumerate(cases):
        folder = tmp_path / f"f{i}"
        folder.mkdir()
        Image.fromarray(np.zeros((16, 16), np.uint8)).save(folder / "a.png")
        (folder / "b.png").write_bytes(data)
        before = hashes(tmp_path)
        out = tmp_path / f"r{i}"
        result = run_cli(["train", "--data", "folder", "--folder", folder, "--out", out,
                          "--steps", "1", "--final-samples", "0", *TINY,
                          "--set", "data.image_size=8", "--set", "data.class_conditional=false"],
                         capsys)
        # a flipped byte in an ancillary chunk, or a cut after the pixel data, can leave a
        # decodable picture: then training on it is correct
        assert_standard(result, before, mention="b.png", allow_success=i > 1)
        assert out.exists() == (result[0] == 0)


def idx_headers():
    """MNIST image files whose header lies: zero images, other sizes, wrong rank."""
    for count, rows, cols in ((0, 28, 28), (2, 5, 5), (2, 28, 27)):
        yield (2051).to_bytes(4, "big") + b"".join(v.to_bytes(4, "big") for v in (count, rows, cols)) \
            + bytes(count * rows * cols)


def test_lying_mnist_headers(tmp_path, capsys):
    import gzip

    for i, images in enumerate(idx_headers()):
        root = tmp_path / f"d{i}" / "mnist"
        root.mkdir(parents=True)
        (root / "train-images-idx3-ubyte.gz").write_bytes(gzip.compress(images))
        count = int.from_bytes(images[4:8], "big")
        labels = (2049).to_bytes(4, "big") + count.to_bytes(4, "big") + bytes(count)
        (root / "train-labels-idx1-ubyte.gz").write_bytes(gzip.compress(labels))
        before = hashes(tmp_path)
        result = run_cli(["train", "--data-dir", root.parent, "--steps", "1", "--out",
                          tmp_path / "r", *TINY], capsys)
        assert_standard(result, before, mention="train-images-idx3-ubyte.gz")


# ---------------------------------------------------------------------------------------------
# Bad paths and run directories
# ---------------------------------------------------------------------------------------------

def test_bad_output_paths(run_dir, tmp_path, capsys):
    a_file, a_dir = tmp_path / "file.txt", tmp_path / "dir"
    a_file.write_text("keep me")
    a_dir.mkdir()
    (a_dir / "notes.md").write_text("mine")
    cases = [
        ["sample", run_dir, "--n", "2", "--out", a_dir],
        ["sample", run_dir, "--n", "2", "--out", tmp_path / "grid"],
        ["sample", run_dir, "--n", "2", "--npz", a_dir],
        ["sample", run_dir, "--n", "2", "--npz", tmp_path / "s.txt"],
        ["sample", a_file], ["sample", a_dir], ["sample", tmp_path / "missing"],
        ["eval", a_dir / "notes.md", "--ref", "mnist-test"],
        ["train", "--data", "digits", "--out", a_file, *TINY],
        ["train", "--data", "digits", "--out", a_file / "sub", *TINY],
        ["train", "--data", "digits", "--out", a_dir, *TINY],
        ["train", "--data", "digits", "--out", tmp_path / "nothing", "--resume", *TINY],
        ["train", "--data", "digits", "--out", run_dir, *TINY],
        ["train", "--data", "mnist", "--data-dir", tmp_path / "nowhere", *TINY,
         "--out", tmp_path / "r"],
        ["train", "--data", "digits", "--config", a_dir, *TINY, "--out", tmp_path / "r"],
        ["train", "--data", "folder", "--folder", a_file, *TINY, "--out", tmp_path / "r"],
    ]
    before = {**hashes(tmp_path), **hashes(run_dir)}
    for argv in cases:
        assert_standard(run_cli(argv, capsys), before)
    assert not (tmp_path / "r").exists() and not (tmp_path / "nothing").exists()
    assert sorted(p.name for p in a_dir.iterdir()) == ["notes.md"]


def test_run_killed_before_its_first_checkpoint_restarts_clean(tmp_path, capsys):
    from difflab.training.run_dir import MARKER

    out = tmp_path / "r"
    out.mkdir()
    (out / MARKER).touch()  # what a run killed before its first checkpoint leaves behind
    (out / "metrics.jsonl").write_text('{"step": 1, "loss": 9.0}\n{"step": 2, "loss": 8.0}\n')
    (out / "config.json").write_text("{}")
    code, _, err = run_cli(["train", "--data", "digits", "--steps", "2", "--out", out,
                            "--final-samples", "0", *TINY, "--set", "loop.log_every=1"], capsys)
    assert code == 0, err
    losses = [json.loads(line)["loss"] for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert len(losses) == 2 and 9.0 not in losses and 8.0 not in losses


def test_resume_removes_stale_checkpoint_temp_files(run_dir, tmp_path, capsys):
    run = copy_run(run_dir, tmp_path / "r")
    (run / ".difflab-run").touch()
    stale = [run / ".checkpoint-00000004.safetensors.tmp-12345", run / ".checkpoint.json.tmp-12345"]
    for path in stale:
        path.write_bytes(b"\x00" * 1000)
    code, _, err = run_cli(["train", "--data", "digits", "--steps", "3", "--out", run, "--resume",
                            "--final-samples", "0", *TINY], capsys)
    assert code == 0, err
    assert not any(p.exists() for p in stale)

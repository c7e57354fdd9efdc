"""Restoration commands on a trained run: PNG in, PNG out, known pixels kept exactly, the
measurement reproduced, and bad input (mask size, empty or full mask, non-image file, factor,
strength, channel mismatch) refused in one line with exit 2."""
import numpy as np
import pytest
import torch
from PIL import Image

import difflab
from difflab import cli

TINY = ["--set", "net.channels=8", "--set", "net.channel_mult=[1,2]", "--set", "net.groups=4",
        "--set", "net.attention_head_channels=8", "--set", "optim.batch_size=8",
        "--precision", "fp32", "--threads", "1"]


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    root = tmp_path_factory.mktemp("restore")
    assert cli.main(["train", "--data", "digits", "--steps", "2", "--out", str(root / "run"),
                     "--final-samples", "0", *TINY]) == 0
    rng = np.random.default_rng(0)
    digit = rng.integers(0, 256, (8, 8), dtype=np.uint8)
    Image.fromarray(digit).save(root / "digit.png")
    mask = np.full((8, 8), 255, np.uint8)
    mask[2:6, 2:6] = 0
    Image.fromarray(mask).save(root / "mask.png")
    Image.fromarray(digit[::2, ::2]).save(root / "small.png")
    Image.fromarray(digit[:3, :3]).save(root / "odd.png")
    Image.fromarray(np.stack([digit, digit.T, 255 - digit], -1)).save(root / "rgb.png")
    Image.fromarray(np.stack([digit] * 3, -1)).save(root / "gray-as-rgb.png")
    Image.fromarray(digit.astype(np.uint16) * 257).save(root / "digit16.png")  # 16-bit PNG
    Image.fromarray(np.zeros((8, 8), np.uint8)).save(root / "empty.png")
    Image.fromarray(np.full((8, 8), 255, np.uint8)).save(root / "full.png")
    Image.fromarray(mask[:4, :4]).save(root / "mask4.png")
    (root / "text.png").write_text("not an image")
    return root


def test_inpaint_keeps_known_pixels_exactly(files, tmp_path):
    out = tmp_path / "i.png"
    for method in ("ddnm", "ddrm", "repaint"):
        assert cli.main(["inpaint", str(files / "run"), str(files / "digit.png"), "--mask",
                         str(files / "mask.png"), "--method", method, "--steps", "5",
                         "--out", str(out)]) == 0
        restored = np.asarray(Image.open(out))
        known = np.asarray(Image.open(files / "mask.png")) > 127
        assert np.array_equal(restored[known], np.asarray(Image.open(files / "digit.png"))[known])


def test_upscale_reproduces_the_small_image(files, tmp_path):
    out = tmp_path / "u.png"
    assert cli.main(["upscale", str(files / "run"), str(files / "small.png"), "--factor", "2",
                     "--steps", "5", "--out", str(out)]) == 0
    big = torch.from_numpy(np.asarray(Image.open(out), dtype=np.float32))
    pooled = torch.nn.functional.avg_pool2d(big[None, None], 2)[0, 0]
    small = torch.from_numpy(np.asarray(Image.open(files / "small.png"), dtype=np.float32))
    # A x = y holds before the output is clipped to [0, 255]: check the blocks nothing clipped
    clipped = torch.nn.functional.max_pool2d(((big == 0) | (big == 255)).float()[None, None], 2)[0, 0] > 0
    assert big.shape == (8, 8) and (~clipped).sum() >= 8
    assert (pooled - small).abs()[~clipped].max() <= 1.0  # uint8 rounding only


def test_a_folder_is_restored_into_another_folder_never_over_itself(files, tmp_path, capsys):
    folder = tmp_path / "photos"
    folder.mkdir()
    for name in ("a.png", "b.png"):
        (folder / name).write_bytes((files / "digit.png").read_bytes())
    before = {p.name: p.read_bytes() for p in folder.iterdir()}
    argv = ["denoise", str(files / "run"), str(folder), "--sigma", "0.1", "--steps", "2"]
    assert cli.main(argv + ["--out", str(folder)]) == 2
    assert "would overwrite the input" in capsys.readouterr().err
    assert {p.name: p.read_bytes() for p in folder.iterdir()} == before
    assert cli.main(argv + ["--out", str(tmp_path / "restored")]) == 0
    assert sorted(p.name for p in (tmp_path / "restored").iterdir()) == ["a.png", "b.png"]


def test_api_matches_cli_and_edit_at_strength_zero_is_identity(files):
    model = difflab.load(files / "run")
    image = torch.from_numpy(np.array(Image.open(files / "digit.png"))).float()[None, None] / 255
    torch.testing.assert_close(model.edit(image, strength=0.0), image, rtol=0, atol=1e-6)
    mask = torch.ones(1, 1, 8, 8, dtype=torch.bool)
    mask[..., 2:6, 2:6] = False
    mean = model.inpaint(image, mask, steps=4, seed=1, draws=3)  # a mean of draws keeps known pixels
    one = model.inpaint(image, mask, steps=4, seed=1)
    torch.testing.assert_close(mean[mask.expand_as(mean)], image[mask], rtol=0, atol=1e-6)
    assert not torch.equal(mean, one)
    a = model.denoise(image, sigma=0.2, steps=4, seed=1)
    b = model.denoise(image, sigma=0.2, steps=4, seed=1, method="ddrm")  # the noisy tasks' default
    assert a.shape == image.shape and torch.equal(a, b) and a.min() >= 0 and a.max() <= 1
    assert not torch.equal(a, model.denoise(image, sigma=0.2, steps=4, seed=1, method="ddnm"))


def test_gray_pictures_stored_as_rgb_or_16_bit_restore_like_the_8_bit_gray_file(files, tmp_path):
    outputs = []
    for name in ("digit", "gray-as-rgb", "digit16"):
        out = tmp_path / f"{name}.png"
        assert cli.main(["denoise", str(files / "run"), str(files / f"{name}.png"), "--sigma",
                         "0.2", "--steps", "3", "--out", str(out)]) == 0
        outputs.append(np.asarray(Image.open(out)))
    assert outputs[0].shape == (8, 8)  # one channel out, as the model makes
    assert all(np.array_equal(outputs[0], other) for other in outputs[1:])


@pytest.mark.parametrize("argv, message", [
    (["inpaint", "{run}", "{digit}", "--mask", "{mask4}"],
     "mask4.png: 4x4 pixels, but the image(s) are 8x8"),
    (["inpaint", "{run}", "{digit}", "--mask", "{empty}"],
     "empty.png: the mask has no known (white)"),
    (["inpaint", "{run}", "{digit}", "--mask", "{full}"], "full.png: every pixel is known (white)"),
    # the input is never overwritten (the test checks every case's files below)
    (["denoise", "{run}", "{digit}", "--sigma", "0.1", "--out", "{digit}"],
     "digit.png: would overwrite the input"),
    (["inpaint", "{run}", "{digit}", "--mask", "{mask}", "--out", "{mask}"],
     "mask.png: would overwrite the input"),
    (["denoise", "{run}", "{digit}", "--sigma", "0.1", "--bogus"],
     "difflab: error: unrecognized arguments: --bogus"),
    (["inpaint", "{run}", "{text}", "--mask", "{mask}"], "text.png: cannot decode image"),
    (["inpaint", "{run}", "{digit}", "--mask", "{text}"], "text.png: cannot decode image"),
    (["upscale", "{run}", "{odd}", "--factor", "3"], "cannot restore 9x9 images"),
    (["upscale", "{run}", "{small}", "--factor", "1"], "--factor 1: must be an integer >= 2"),
    (["edit", "{run}", "{digit}", "--strength", "1.5"], "--strength must be in [0, 1]"),
    (["edit", "{run}", "{rgb}"], "rgb.png: colour image(s) (3 channel(s)), but edit with this "
                                 "model takes grayscale ones (1 channel(s))"),
    (["denoise", "{run}", "{rgb}", "--sigma", "0.1"], "rgb.png: colour image(s) (3 channel(s))"),
    (["denoise", "{run}", "{digit}", "--sigma", "nan"], "--sigma nan"),
    (["colorize", "{run}", "{digit}"], "colorize needs a colour model"),
    (["deblur", "{run}", "{digit}", "--kernel", "disk:3"], "give gaussian:STD"),
    (["deblur", "{run}", "{digit}", "--out", "{mask}x"], "give a file name ending in .png"),
    (["upscale", "{run}", "{small}", "--factor", "2", "--draws", "0"], "--draws must be at least 1, got 0"),
])
def test_bad_restoration_input_is_one_line(files, argv, message, capsys):
    names = {k: str(files / f"{k}.png") for k in ("digit", "mask", "mask4", "empty", "full",
                                                  "text", "small", "rgb", "odd")}
    argv = [a.format(run=files / "run", **names) for a in argv]
    before = {p: p.read_bytes() for p in files.glob("*.png")}
    try:
        code = cli.main(argv)
    except SystemExit as e:
        code = e.code
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1 and message in err[0], err
    assert all(p.read_bytes() == data for p, data in before.items())

"""``difflab inpaint|upscale|denoise|deblur|colorize|edit RUN IMAGE``: restoration commands
(``difflab.restoration.tasks``), PNG/JPEG in, PNG out."""
from __future__ import annotations

import os
import time
from pathlib import Path

from difflab.cli.args import UsageError, check_steps_and_seed


RESTORE_HELP = {"inpaint": "fill the pixels a mask marks black",
                "upscale": "super-resolve a small image by an integer factor",
                "denoise": "remove Gaussian noise of known std", "deblur": "undo a known blur",
                "colorize": "colour a grayscale image (colour models)",
                "edit": "SDEdit: noise an image to a strength, then sample from there"}


def add_restore_parsers(sub) -> None:
    """``difflab inpaint|upscale|denoise|deblur|colorize|edit RUN IMAGE ...``."""
    from difflab.options import DEFAULT_METHOD, RESTORATION_METHODS

    for task, help_text in RESTORE_HELP.items():
        p = sub.add_parser(task, help=help_text, description=f"{help_text[0].upper()}"
                           f"{help_text[1:]} with a trained run (PNG/JPEG in, PNG out).")
        p.add_argument("checkpoint", help="run directory or its checkpoint.json")
        p.add_argument("image", help="image file, or a folder of images of one size")
        if task == "inpaint":
            p.add_argument("--mask", required=True, help="image of the same size: white = "
                           "known pixels, black = pixels to fill (above mid-gray counts as "
                           "white; or a folder, one mask per image)")
        if task == "upscale":
            p.add_argument("--factor", type=int, required=True, help="integer upscaling factor")
        if task == "denoise":
            p.add_argument("--sigma", type=float, required=True,
                           help="noise std in [0, 1] pixel units, e.g. 0.2")
        if task == "deblur":
            p.add_argument("--kernel", default="gaussian:1.0",
                           help="gaussian:STD or box:SIZE (default gaussian:1.0)")
            p.add_argument("--sigma", type=float, default=None, help="noise std of the blurred "
                           "image in [0, 1] pixel units (default: 8-bit rounding, 0.0011)")
        if task == "edit":
            p.add_argument("--strength", type=float, default=0.5,
                           help="how far to noise the image, 0 (unchanged) to 1 (a new sample)")
        else:
            p.add_argument("--method", choices=RESTORATION_METHODS, default=None,
                           help=f"solver (default {DEFAULT_METHOD[task]})")
            p.add_argument("--draws", type=int, default=1, help="average this many restorations "
                           "(a posterior-mean estimate: higher PSNR, blurrier where uncertain; "
                           "antithetic pairs; draws x the time; default 1)")
        p.add_argument("--steps", type=int, default=None, help="solver steps (default 50)")
        p.add_argument("--seed", type=int, default=0)
        p.add_argument("--class-label", type=int, help="restore as this class, with the run's "
                       "guidance (class-conditional runs; default: unconditional)")
        p.add_argument("--out", default=f"{task}.png", help="PNG file, or a folder for a folder "
                       f"of images (default {task}.png)")
        p.set_defaults(func=cmd_restore, task=task)


def read_masks(path: str, pixels):
    """The mask file (or folder, one per image) at ``path`` for images ``pixels`` as a boolean
    [N or 1, 1, H, W] tensor: pixels above mid-gray in any channel are known. The API's checks
    (``restoration.tasks.check_mask``), here before the model loads and naming the file."""
    import torch

    from difflab.data import read_images
    from difflab.restoration.tasks import check_mask

    masks, names = read_images(path)
    files = [Path(path) / name for name in names] if Path(path).is_dir() else [Path(path)]
    known = torch.from_numpy(masks).amax(1, keepdim=True) > 127
    return check_mask(known, *pixels.shape[-2:], len(pixels), f"--mask {path}", files)


def cmd_restore(args) -> int:
    """The restoration commands: read the image(s) and mask, restore, write PNGs."""
    check_steps_and_seed(args.steps, args.seed)
    strength, draws = getattr(args, "strength", 0.5), getattr(args, "draws", 1)
    if draws < 1:
        raise UsageError(f"--draws must be at least 1, got {draws}")
    if not 0 <= strength <= 1:
        raise UsageError(f"--strength must be in [0, 1], got {strength}")
    folder_in = Path(args.image).is_dir()
    paths = output_paths(args, folder_in)
    import torch

    from difflab.data import read_images
    from difflab.evaluation.report import save_image
    from difflab.runs import load

    pixels, _ = read_images(args.image)
    options = {}
    if args.task == "inpaint":
        options["mask"] = read_masks(args.mask, pixels)
    elif args.task == "upscale":
        options["factor"] = args.factor
    elif args.task == "denoise":
        options["sigma"] = args.sigma
    elif args.task == "deblur":
        options["kernel"], options["sigma"] = args.kernel, args.sigma
    model = load(args.checkpoint)
    channels = 1 if args.task == "colorize" else model.shape.channels
    if channels == 1 and pixels.shape[1] == 3 and (pixels == pixels[:, :1]).all():
        pixels = pixels[:, :1]  # grayscale pictures stored as colour (RGB, or a gray palette)
    if pixels.shape[1] != channels:
        kind = {1: "grayscale", 3: "colour"}
        raise UsageError(f"{args.image}: {kind[pixels.shape[1]]} image(s) ({pixels.shape[1]} "
                         f"channel(s)), but {args.task} with this model takes {kind[channels]} "
                         f"ones ({channels} channel(s))")
    started = time.perf_counter()
    images = torch.from_numpy(pixels).float() / 255
    restored = model.restore(images, args.task, method=getattr(args, "method", None),
                             steps=args.steps, seed=args.seed, class_label=args.class_label,
                             strength=strength, draws=draws, **options)
    for image, path in zip(restored, paths):  # each written whole or not at all
        save_image(image, path)
    print(f"{len(restored)} image(s) restored in {time.perf_counter() - started:.1f} s: "
          f"{args.out if folder_in else paths[0]}")
    return 0


def output_paths(args, folder_in: bool) -> list[Path]:
    """The PNG files a restoration writes, one per input image: ``--out`` itself for one image,
    ``--out/<name>.png`` for a folder. Refused (one line, before anything is read or written):
    a name that is not a .png file (or not a folder), two inputs that would be written to one
    file (``a.png`` and ``a.jpg``), an output that is one of the input images or masks (also
    as a hard or symbolic link, or another spelling on a case-insensitive file system), and
    an output that is a file of a run directory."""
    from difflab.data import image_paths
    from difflab.training.run_dir import check_output

    out = Path(args.out).expanduser()
    images = image_paths(args.image)
    if not folder_in:
        if out.is_dir() or out.suffix.lower() != ".png":
            raise UsageError(f"--out {args.out}: give a file name ending in .png")
        paths = [out]
    else:
        if out.exists() and not out.is_dir() or out.suffix:
            raise UsageError(f"--out {args.out}: for a folder of images give a folder name")
        paths, source = [out / f"{p.stem}.png" for p in images], {}
        for image, path in zip(images, paths):
            if path in source:
                raise UsageError(f"{source[path]} and {image} would both be restored to "
                                 f"{path}; rename one of them")
            source[path] = image
    inputs = images + (image_paths(args.mask) if args.task == "inpaint" else [])
    written = [(out, [Path(args.image)])] if folder_in else []  # (output, inputs it must not be)
    for path in paths:
        check_output(path, "--out")
        written.append((path, inputs))
    for path, givens in written:  # the restoration never replaces what it was made from
        for given in givens:
            if path.exists() and os.path.samefile(path, given):
                raise UsageError(f"--out {args.out}: would overwrite the input {given}; give "
                                 f"another {'folder' if folder_in else 'file'}")
    return paths

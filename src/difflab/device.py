"""Where a model runs and in which precision: the one place that picks the device, the autocast
and whether bf16 pays on this machine.

``precision="auto"`` picks bf16 autocast only where it is faster than fp32: on a CPU with AMX
(oneDNN's AMX bf16 kernels: about 2x), on a CUDA device that supports bf16. Elsewhere auto picks
fp32: with AVX512-BF16 but no AMX (Cooper Lake, AMD Zen 4 and 5) bf16 autocast measured 1.2-1.4x
slower per training step, and without bf16 instructions (most laptops: AVX2) bf16 is emulated,
about 10x slower (BENCHMARKS.md, "Precision"). ``bf16`` and ``fp32`` force the choice.
"""
from __future__ import annotations

import contextlib
import functools
import os
from pathlib import Path

DEVICES = ("cpu", "cuda", "mps")
PRECISIONS = ("auto", "bf16", "fp32")


class DeviceError(ValueError):
    """A device or precision that this machine cannot provide; one line naming it."""


def check_device_name(name: str) -> str:
    """Validate the spelling of a device name ('cpu', 'cuda', 'cuda:1', 'mps')."""
    kind, _, index = str(name).partition(":")
    if kind not in DEVICES or (index and (not index.isdigit() or kind != "cuda")):
        raise DeviceError(f"run.device={name!r}: choose from cpu, cuda, cuda:N, mps")
    return name


def resolve_device(name: str) -> torch.device:
    """The torch.device called ``name``; DeviceError if this machine does not have it."""
    import torch  # here, not at the top: config validation reads this module without torch

    check_device_name(name)
    device = torch.device(name)
    if device.type == "cuda":
        if not torch.cuda.is_available():
            raise DeviceError(f"run.device={name!r}: CUDA is not available on this machine "
                              "(use --device cpu)")
        if device.index is not None and device.index >= torch.cuda.device_count():
            raise DeviceError(f"run.device={name!r}: this machine has "
                              f"{torch.cuda.device_count()} CUDA device(s)")
    if device.type == "mps" and not torch.backends.mps.is_available():
        raise DeviceError(f"run.device={name!r}: MPS is not available on this machine")
    return device


def _cpu_flags() -> set[str] | None:
    """CPU feature flags from /proc/cpuinfo (Linux), or None where that file does not exist."""
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:
        return None
    for line in text.splitlines():
        if line.startswith("flags"):
            return set(line.partition(":")[2].split())
    return None


def _has_amx(flags: set[str] | None) -> bool:
    """Whether the CPU has AMX with bf16: /proc/cpuinfo's ``amx_bf16`` on Linux, else torch's
    own CPU feature probe (every AMX CPU so far has the bf16 tiles)."""
    import torch

    if flags is not None:
        return "amx_bf16" in flags
    probe = getattr(torch.cpu, "_is_amx_tile_supported", None)
    return bool(probe and probe())


@functools.lru_cache(maxsize=None)
def cpu_bf16_faster() -> tuple[bool, str]:
    """(True, why) if bf16 autocast runs faster than fp32 on this CPU, else (False, why).

    Four conditions, all required: oneDNN has bf16 kernels; ``ONEDNN_MAX_CPU_ISA``, if set, lets
    it use AMX (a name with AMX in it, or DEFAULT / ALL); ATen's kernels run at the AVX-512
    level (``ATEN_CPU_CAPABILITY``); and the CPU has AMX. AVX512-BF16 alone is not enough: the
    default U-Net's training step ran 1.2-1.4x slower under bf16 autocast there, and its
    sampling step 1.06-1.13x (``ONEDNN_MAX_CPU_ISA=AVX512_CORE_BF16`` on this AMX machine)."""
    import torch

    capability = torch.backends.cpu.get_cpu_capability()
    if not torch.ops.mkldnn._is_mkldnn_bf16_supported():
        return False, f"oneDNN has no bf16 kernels for this CPU (ATen capability {capability})"
    isa_cap = os.environ.get("ONEDNN_MAX_CPU_ISA", "").strip().upper()
    if isa_cap not in ("", "DEFAULT", "ALL") and "AMX" not in isa_cap:
        return False, f"ONEDNN_MAX_CPU_ISA={isa_cap} keeps oneDNN from AMX"
    if not capability.startswith("AVX512"):
        return False, f"ATen CPU capability is {capability}, below AVX-512"
    flags = _cpu_flags()
    if not _has_amx(flags):
        if flags is None:
            return False, "the CPU has no AMX (bf16 autocast is not faster than fp32 without it)"
        if "avx512_bf16" in flags:
            return False, "the CPU has AVX512-BF16 but no AMX (bf16 autocast is slower there)"
        return False, "the CPU has neither AMX nor AVX512-BF16 (bf16 is emulated)"
    return True, "the CPU computes bf16 with AMX"


def resolve_precision(precision: str, device: torch.device) -> tuple[str, str]:
    """('bf16' or 'fp32', a sentence saying why) for a requested precision on ``device``."""
    if precision not in PRECISIONS:
        raise DeviceError(f"run.precision={precision!r}: choose from {', '.join(PRECISIONS)}")
    if precision != "auto":
        return precision, f"set explicitly (run.precision={precision})"
    if device.type == "cpu":
        faster, why = cpu_bf16_faster()
        return ("bf16" if faster else "fp32"), f"auto: {why}"
    if device.type == "cuda":
        import torch

        if torch.cuda.is_bf16_supported():
            return "bf16", "auto: the CUDA device supports bf16"
        return "fp32", "auto: the CUDA device does not support bf16"
    return "fp32", f"auto: fp32 on {device.type}"


def autocast(device: torch.device, precision: str):
    """The autocast context for a resolved precision ('bf16' or 'fp32') on ``device``."""
    import torch

    if precision == "fp32":
        return contextlib.nullcontext()
    return torch.autocast(device.type, dtype=torch.bfloat16)


def fast_layout(module: torch.nn.Module, device: torch.device) -> torch.nn.Module:
    """``module`` with its 4-D (convolution) weights in channels-last layout on a CPU, where
    oneDNN then runs the convolutions with activations in that layout too: for the MNIST U-Nets
    a training step is 1.0-1.1x and a sampling forward pass 1.5-1.6x as fast as in the default
    layout (``benchmarks/generative/cpu_speed.py``). Elsewhere the module is left as it is.
    Same arithmetic up to float rounding; checkpoints store the weights contiguous either way."""
    if device.type == "cpu":
        import torch

        module.to(memory_format=torch.channels_last)
    return module


def model_device(module) -> torch.device:
    """The device of a module's first parameter or buffer (cpu for a module without either)."""
    import torch

    for tensor in (*module.parameters(), *module.buffers()):
        return tensor.device
    return torch.device("cpu")

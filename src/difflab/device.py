"""Where a model runs and in which precision: the one place that picks the device, the autocast
and whether bf16 pays on this machine.

``precision="auto"`` picks bf16 autocast only where the hardware computes bf16 natively:
on a CPU with AVX512-BF16 or AMX (oneDNN's bf16 kernels), on a CUDA device that supports bf16.
Elsewhere bf16 is emulated and slower than fp32 (about 10x for the default U-Net on an AVX2-only
CPU, see BENCHMARKS.md), so auto picks fp32 there. ``bf16`` and ``fp32`` force the choice.
"""
from __future__ import annotations

import contextlib
import functools
from pathlib import Path

import torch

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


@functools.lru_cache(maxsize=None)
def cpu_bf16_native() -> tuple[bool, str]:
    """(True, why) if this CPU runs bf16 matrix products natively, else (False, why).

    Three conditions, all required: oneDNN reports bf16 support (it honours
    ``ONEDNN_MAX_CPU_ISA``), ATen's kernels run at the AVX-512 level (``ATEN_CPU_CAPABILITY``),
    and the CPU has the bf16 instructions themselves (``avx512_bf16`` or ``amx_bf16``; a plain
    AVX-512 CPU only emulates bf16)."""
    capability = torch.backends.cpu.get_cpu_capability()
    if not torch.ops.mkldnn._is_mkldnn_bf16_supported():
        return False, f"oneDNN has no bf16 kernels for this CPU (ATen capability {capability})"
    if not capability.startswith("AVX512"):
        return False, f"ATen CPU capability is {capability}, below AVX-512"
    flags = _cpu_flags()
    if flags is not None and not flags & {"avx512_bf16", "amx_bf16"}:
        return False, "the CPU has AVX-512 but neither AVX512-BF16 nor AMX (bf16 is emulated)"
    native = sorted(flags & {"avx512_bf16", "amx_bf16"}) if flags else ["oneDNN bf16"]
    return True, f"the CPU computes bf16 natively ({', '.join(native)})"


def resolve_precision(precision: str, device: torch.device) -> tuple[str, str]:
    """('bf16' or 'fp32', a sentence saying why) for a requested precision on ``device``."""
    if precision not in PRECISIONS:
        raise DeviceError(f"run.precision={precision!r}: choose from {', '.join(PRECISIONS)}")
    if precision != "auto":
        return precision, f"set explicitly (run.precision={precision})"
    if device.type == "cpu":
        native, why = cpu_bf16_native()
        return ("bf16" if native else "fp32"), f"auto: {why}"
    if device.type == "cuda":
        if torch.cuda.is_bf16_supported():
            return "bf16", "auto: the CUDA device supports bf16"
        return "fp32", "auto: the CUDA device does not support bf16"
    return "fp32", f"auto: fp32 on {device.type}"


def autocast(device: torch.device, precision: str):
    """The autocast context for a resolved precision ('bf16' or 'fp32') on ``device``."""
    if precision == "fp32":
        return contextlib.nullcontext()
    return torch.autocast(device.type, dtype=torch.bfloat16)


def model_device(module) -> torch.device:
    """The device of a module's first parameter or buffer (cpu for a module without either)."""
    for tensor in (*module.parameters(), *module.buffers()):
        return tensor.device
    return torch.device("cpu")

"""Several processes, one run: every distributed concern of difflab in one module.

``torchrun`` starts one process per rank and tells each its place through the environment
(``RANK``, ``WORLD_SIZE``, ``LOCAL_RANK``, ``MASTER_ADDR``, ``MASTER_PORT``). A command calls
:func:`init` once: it joins the process group (gloo on CPU, nccl where the device is CUDA) and
registers :func:`destroy` for exit. Started without torchrun, every function here is the
one-process case (rank 0 of 1, no communication), so single-process runs take the same code path.

| function      | role                                                                        |
|---------------|-----------------------------------------------------------------------------|
| wrap          | DistributedDataParallel around the network (rank 0's parameters at start)  |
| local_gradients | the backward pass without DDP's reducer (``no_sync``)                     |
| average_gradients | then the gradients' mean over ranks, one all-reduce                     |
| on_main       | rank 0 does some I/O while the others wait; its error is raised on every rank |
| all_mean      | a few numbers averaged over ranks, the same on every rank (stop decisions)  |
| shard, gather | a contiguous range of n items per rank; rank 0 collects them in order      |
"""
from __future__ import annotations

import atexit
import contextlib
import importlib
import os

import torch
import torch.distributed as dist
from torch.nn.parallel import DistributedDataParallel

_comm_device = torch.device("cpu")  # where collective tensors live: cpu for gloo, the GPU for nccl


def launched() -> bool:
    """True in a process started by torchrun (or any launcher that sets RANK and WORLD_SIZE)."""
    return "RANK" in os.environ and "WORLD_SIZE" in os.environ


def active() -> bool:
    return dist.is_available() and dist.is_initialized()


def rank() -> int:
    """This process's rank; from the environment before :func:`init`, 0 without torchrun."""
    return dist.get_rank() if active() else int(os.environ.get("RANK", 0)) if launched() else 0


def world_size() -> int:
    return dist.get_world_size() if active() else int(os.environ["WORLD_SIZE"]) if launched() else 1


def is_main() -> bool:
    return rank() == 0


def init(device: torch.device) -> torch.device:
    """Join torchrun's process group (once) and return the device this rank computes on: for
    CUDA, the GPU of its local rank. Without torchrun: ``device`` unchanged, nothing else."""
    global _comm_device
    if not launched():
        return device
    if device.type == "cuda":
        local = int(os.environ.get("LOCAL_RANK", 0))
        if device.index is not None and device.index != local and world_size() > 1:
            raise ValueError(f"run.device='{device}': under torchrun each process uses the GPU of "
                             f"its local rank (cuda:{local} here); pass --device cuda")
        device = torch.device("cuda", local)
        torch.cuda.set_device(device)
    elif device.type != "cpu":
        raise ValueError(f"run.device='{device}': torchrun runs need cpu (gloo) or cuda (nccl)")
    if not active():
        # torch._dynamo, which DistributedDataParallel imports on first use, keeps a reference
        # to the default process group if that exists when it is first imported; destroy() then
        # leaves gloo's threads running into interpreter exit, where their teardown is the likely
        # cause of an occasional abort ("terminate called without an active exception").
        # Imported before the group exists, it holds nothing (tests/test_distributed.py checks
        # that the threads end).
        importlib.import_module("torch._dynamo")
        dist.init_process_group("nccl" if device.type == "cuda" else "gloo")
        atexit.register(destroy)
    _comm_device = device
    return device


def destroy() -> None:
    """Leave the process group: at a command's normal end (``cli.main``), while the interpreter
    is whole, and registered at exit by :func:`init` for the other paths. No barrier: rank 0 may
    still be writing the report."""
    if active():
        dist.destroy_process_group()


def barrier() -> None:
    if active():
        dist.barrier()


def wrap(net: torch.nn.Module, device: torch.device) -> torch.nn.Module:
    """``net`` in DistributedDataParallel when there are several ranks (its backward averages
    the gradients over them), else ``net`` itself. Buffers (fixed, e.g. DiT's positions) are
    synchronized once, not at every forward."""
    if world_size() == 1:
        return net
    return DistributedDataParallel(net, device_ids=[device.index] if device.type == "cuda" else None,
                                   forward_sync_buffers=False)


def local_gradients(model: torch.nn.Module):
    """Context for the forward and backward pass: DDP's ``no_sync`` (its reducer stays out of
    the backward) for a DDP-wrapped model, nothing otherwise. Follow it with
    :func:`average_gradients`."""
    if isinstance(model, DistributedDataParallel):
        return model.no_sync()
    return contextlib.nullcontext()


def average_gradients(net: torch.nn.Module) -> None:
    """Every gradient of ``net`` replaced by its mean over ranks: one all-reduce of all of them
    flattened into one buffer, after the backward pass. It takes the place of DDP's reducer
    (several bucket all-reduces hooked into the backward), which measured slower on this 2-core
    CPU: 2 gloo ranks x 1 thread trained at 1.25x one process with DDP's reducer and at 1.38x
    this way, measured the same hour (``benchmarks/generative/ddp_speed.py``; BENCHMARKS.md,
    "DDP on this 2-core machine"). As with DDP without ``find_unused_parameters``, every rank
    must give the same parameters a gradient."""
    if world_size() == 1:
        return
    grads = [p.grad for p in net.parameters() if p.grad is not None]
    flat = torch.cat([g.reshape(-1) for g in grads])
    dist.all_reduce(flat)
    flat /= world_size()
    offset = 0
    for g in grads:
        g.copy_(flat[offset:offset + g.numel()].view_as(g))
        offset += g.numel()


def _broadcast_text(text: str) -> str:
    """Rank 0's ``text`` on every rank (utf-8 bytes in tensors: nothing is pickled)."""
    data = torch.tensor(list(text.encode()), dtype=torch.uint8, device=_comm_device)
    size = torch.tensor([len(data)], dtype=torch.long, device=_comm_device)
    dist.broadcast(size, 0)
    if not is_main():
        data = torch.empty(int(size), dtype=torch.uint8, device=_comm_device)
    dist.broadcast(data, 0)
    return bytes(data.cpu().tolist()).decode()


def on_main(fn, *args, **kwargs):
    """``fn(*args, **kwargs)`` on rank 0 while the other ranks wait; its result on rank 0 (None
    elsewhere). If it raises, every rank raises: rank 0 its own error, the others a ValueError
    with its message, so no rank waits forever for one that failed."""
    result, error = None, None
    if is_main():
        try:
            result = fn(*args, **kwargs)
        except Exception as e:  # noqa: BLE001 - re-raised below, on every rank
            error = e
    if active():
        message = _broadcast_text("" if error is None else f"{type(error).__name__}: {error}")
        if message and error is None:
            raise ValueError(f"rank 0 failed ({message})")
    if error is not None:
        raise error
    return result


def check_same(text: str, what: str) -> None:
    """ValueError on every rank (none waits for another) unless every rank's ``text`` equals rank
    0's; ``what`` names it in the message."""
    if not active():
        return
    differs = _broadcast_text(text) != text
    if all_mean([float(differs)])[0] > 0:
        raise ValueError(f"the processes disagree on {what}; give every machine the same "
                         "settings (e.g. the same --precision: auto may pick another precision, "
                         "and with it another recipe, on another CPU)")


def all_mean(values: list[float]) -> list[float]:
    """The mean over ranks of each of ``values`` (float64), identical on every rank."""
    if not active():
        return list(values)
    total = torch.tensor(values, dtype=torch.float64, device=_comm_device)
    dist.all_reduce(total)
    return (total / world_size()).tolist()


def shard(n: int, block: int = 1, r: int | None = None) -> tuple[int, int]:
    """(start, count) of rank ``r``'s (default: this rank's) contiguous share of ``n`` items cut
    in blocks of ``block`` (e.g. batches, so that every rank's batches are those of one process):
    rank r gets the r-th of ``world_size()`` nearly equal runs of blocks, in order."""
    blocks = -(-n // block)
    base, extra = divmod(blocks, world_size())
    r = rank() if r is None else r
    first = r * base + min(r, extra)
    start = min(first * block, n)
    return start, min((first + base + (r < extra)) * block, n) - start


def gather(part: torch.Tensor, n: int, block: int = 1) -> torch.Tensor | None:
    """The rows of every rank's :func:`shard` of ``n`` items (same ``block``), in rank order, on
    rank 0 (on the CPU; None on the other ranks). ``part`` is this rank's rows."""
    if not active():
        return part.cpu()
    sizes = [shard(n, block, r)[1] for r in range(world_size())]
    # every rank sends the same shape: its rows, zero-padded to the longest share
    padded = torch.zeros((max(sizes), *part.shape[1:]), dtype=part.dtype, device=_comm_device)
    padded[:len(part)] = part
    parts = [torch.empty_like(padded) for _ in sizes] if is_main() else None
    dist.gather(padded, parts, dst=0)
    if not is_main():
        return None
    return torch.cat([p[:size] for p, size in zip(parts, sizes)]).cpu()

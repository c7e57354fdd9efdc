"""How much memory this machine has and how much a network's forward pass needs: the
estimates behind the refusals (one line, before anything large is allocated) of commands that
would otherwise be killed or fail deep inside torch."""
from __future__ import annotations

import os
import weakref

import torch
import torch.nn.functional as F
from torch.overrides import TorchFunctionMode
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_flatten


def machine_memory() -> int | None:
    """Bytes of physical memory of this machine, or None where that is not known."""
    try:
        return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (ValueError, OSError, AttributeError):
        return None


class _PeakBytes(TorchDispatchMode):
    """Counts the bytes of the tensors that operations create and that are still alive, and
    their peak. Run on the meta device, nothing is allocated; without autograd a tensor dies
    when the last reference to it goes, as it would on a real device."""

    def __init__(self):
        super().__init__()
        self.live, self.peak = 0, 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        for t in tree_flatten(out)[0]:
            if isinstance(t, torch.Tensor) and t._base is None:  # views own no new memory
                size = t.untyped_storage().nbytes()
                self.live += size
                self.peak = max(self.peak, self.live)
                weakref.finalize(t, self._free, size)
        return out

    def _free(self, size: int) -> None:
        self.live -= size


class _FusedAttention(TorchFunctionMode):
    """``F.scaled_dot_product_attention`` as the fused kernels run it on CPU and GPU (flash or
    memory-efficient attention: memory linear in the sequence length), not as the full softmax
    matrix that its decomposition on the meta device would count: only its output is made."""

    def __torch_function__(self, func, types, args=(), kwargs=None):
        if func is F.scaled_dot_product_attention:
            q, v = args[0], args[2]
            return q.new_empty((*q.shape[:-1], v.shape[-1]))
        return func(*args, **(kwargs or {}))


def forward_peak_bytes(net_config, shape, batch: int = 1) -> int:
    """Peak bytes of the activations of one forward pass, without gradients, of the network
    ``net_config`` describes on a batch of ``batch`` items of ``shape`` (a DataShape), found by
    building and running it on the meta device (no memory), with attention counted as the fused
    kernels need it (``_FusedAttention``)."""
    from difflab.nets import build_net

    with torch.device("meta"):
        net = build_net(net_config, shape)
        x, c_noise = torch.zeros(batch, *shape.item), torch.zeros(batch)
        cond = torch.zeros(batch, dtype=torch.long) if shape.num_classes else None
    with torch.no_grad(), _FusedAttention(), _PeakBytes() as counter:
        net(x, c_noise, cond)
    return counter.peak

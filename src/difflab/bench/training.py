"""The training loop of one benchmark run: mini-batch steps over a resident train tensor, the
evaluation curve, divergence, loss spikes. An ensemble run calls ``train`` once per member on
the same ``Trace``, so its curve is its members' curves one after another on the run's epoch
axis (member k of M covers epochs k E/M .. (k + 1) E/M).
"""
from __future__ import annotations

import math
import time
from collections import deque
from typing import Callable

import torch
import torch.nn.functional as F

from difflab.bench.problems import Problem

SPIKE_FACTOR = 2.0      # a step loss above SPIKE_FACTOR x the running median is a spike
SPIKE_WINDOW = 50


@torch.no_grad()
def evaluate(model, x: torch.Tensor, y: torch.Tensor, batch: int = 1000) -> tuple[float, float]:
    """(mean cross-entropy, accuracy) over a resident tensor."""
    total_loss, correct = 0.0, 0
    for i in range(0, x.shape[0], batch):
        out = model(x[i:i + batch])
        total_loss += F.cross_entropy(out, y[i:i + batch], reduction="sum").item()
        correct += (out.argmax(1) == y[i:i + batch]).sum().item()
    return total_loss / x.shape[0], correct / x.shape[0]


def train_batch(model, opt, problem: Problem, idx: torch.Tensor) -> float:
    """One optimizer step on the mini-batch ``idx`` gathered from the resident train tensor."""
    xb, yb = problem.train_x[idx], problem.train_y[idx]
    opt.zero_grad(set_to_none=True)
    loss = F.cross_entropy(model(xb), yb)
    loss.backward()
    opt.step()
    return loss.item()


def _finite(v: float) -> float | None:
    return v if math.isfinite(v) else None


class Chunked(torch.nn.Module):
    """``model`` applied in chunks of ``batch`` rows (bounded memory on the whole test set)."""

    def __init__(self, model, batch: int = 1000):
        super().__init__()
        self.model, self.batch = model, batch

    def forward(self, x):
        return torch.cat([self.model(x[i:i + self.batch]) for i in range(0, x.shape[0], self.batch)])


class Trace:
    """Everything the loop records for one run record: the evaluation curve (val; in the final
    phase also test and the fixed train subset), the training clock at each evaluation, spikes,
    divergence, the last epoch's step losses and the initial train-subset loss."""

    def __init__(self, problem: Problem, final_phase: bool, epochs: int, evals_per_epoch: int,
                 batch_size: int):
        self.problem, self.final_phase = problem, final_phase
        self.epochs, self.batch_size = epochs, batch_size
        self.steps_per_epoch = math.ceil(problem.n_train / batch_size)
        self.eval_every = max(1, math.ceil(self.steps_per_epoch / evals_per_epoch))
        self.total_evals = epochs * math.ceil(self.steps_per_epoch / self.eval_every)
        self.n_train_eval = min(problem.n_train, problem.val_x.shape[0])
        self.curve = {k: [] for k in ("epoch", "val_loss", "val_acc", "train_loss")}
        if final_phase:
            self.curve.update(test_loss=[], test_acc=[], train_eval_loss=[], train_eval_acc=[])
        self.train_seconds: list[float] = []
        self.clock = 0.0
        self.spikes, self.diverged, self.steps = 0, False, 0
        self.initial_loss: float | None = None
        self.last_epoch_losses: list[float] = []
        self._running: list[float] = []

    def record_eval(self, model, epoch_pos: float) -> None:
        p, c = self.problem, self.curve
        c["epoch"].append(round(epoch_pos, 6))
        c["train_loss"].append(sum(self._running) / len(self._running) if self._running else None)
        self._running.clear()
        m = self.n_train_eval
        for split, x, y in (("val", p.val_x, p.val_y), ("test", p.test_x, p.test_y),
                            ("train_eval", p.train_x[:m], p.train_y[:m])):
            if split != "val" and not self.final_phase:
                continue
            if self.diverged:
                loss, acc = float("nan"), 1.0 / p.num_classes
            else:
                loss, acc = evaluate(model, x, y)
            c[f"{split}_loss"].append(_finite(loss))
            c[f"{split}_acc"].append(acc)
        self.train_seconds.append(self.clock)

    def fill_after_divergence(self, model) -> None:
        """Remaining evaluation points at chance level, so curves keep their length."""
        for j in range(len(self.curve["epoch"]), self.total_evals):
            self.record_eval(model, self.epochs * (j + 1) / self.total_evals)

    def oscillation(self) -> float | None:
        """Std of the step losses of the last epoch trained (None for fewer than 2 steps)."""
        v = self.last_epoch_losses
        if len(v) < 2:
            return None
        mean = sum(v) / len(v)
        return math.sqrt(sum((x - mean) ** 2 for x in v) / (len(v) - 1))


def train(model, opt, trace: Trace, seed: int, epochs: int, epoch_offset: int = 0,
          after_step: Callable[[object, int], None] | None = None) -> None:
    """Train ``model`` for ``epochs`` epochs (data order from a generator seeded with ``seed``),
    recording into ``trace`` at the run's epoch positions ``epoch_offset + ...``.
    ``after_step(model, step)`` runs after every finite optimizer step (``step`` counts the
    steps of the whole record). On divergence the rest of the curve is filled and it returns."""
    problem = trace.problem
    if trace.initial_loss is None:
        m = trace.n_train_eval
        trace.initial_loss = evaluate(model, problem.train_x[:m], problem.train_y[:m])[0]
    order = torch.Generator().manual_seed(seed)
    n, bs, steps = problem.n_train, trace.batch_size, trace.steps_per_epoch
    recent: deque = deque(maxlen=SPIKE_WINDOW)
    for epoch in range(epoch_offset, epoch_offset + epochs):
        perm = torch.randperm(n, generator=order)
        trace.last_epoch_losses = []
        for k in range(steps):
            t0 = time.perf_counter()
            value = train_batch(model, opt, problem, perm[k * bs:(k + 1) * bs])
            trace.clock += time.perf_counter() - t0
            if not math.isfinite(value) or not all(torch.isfinite(p).all()
                                                   for p in model.parameters()):
                trace.diverged = True
                trace.fill_after_divergence(model)
                return
            if len(recent) == SPIKE_WINDOW and value > SPIKE_FACTOR * sorted(recent)[len(recent) // 2]:
                trace.spikes += 1
            if after_step is not None:
                after_step(model, trace.steps)
            trace.steps += 1
            recent.append(value)
            trace._running.append(value)
            trace.last_epoch_losses.append(value)
            if (k + 1) % trace.eval_every == 0 or k + 1 == steps:
                trace.record_eval(model, epoch + (k + 1) / steps)

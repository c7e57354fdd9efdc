"""One training run per (problem, arm, hyperparameters, seed) -> one JSON-serializable record.

Common random numbers: for a given seed every arm starts from the same initialization (model
seeded with ``seed``) and sees the same mini-batch order (permutations from a generator seeded
with ``seed``); the Langevin noise comes from the optimizer's own generator (seed
``seed + NOISE_SEED_OFFSET``), so comparisons are paired by seed.

Every field that depends on wall-clock time lives under ``record["timing"]``; everything else is
a deterministic function of the spec (given the torch build and thread count), which is what
lets records from different executors be compared for identity.
"""
from __future__ import annotations

import json
import math
import os
import platform
import time
from collections import deque
from dataclasses import asdict, dataclass, field

import torch
import torch.nn.functional as F

from difflab.bench import calibration
from difflab.bench.problems import Problem, load_problem
from difflab.optim import Langevin
from difflab.optim.cyclical import SamplingSchedule
from difflab.optim.posterior import PredictiveAverage
from difflab.optim.normal import kernel_available

ARMS = ("sgd", "momentum", "momentum_wd", "adam", "langevin", "tutorial", "sghmc", "annealed")
BASELINES = ("sgd", "momentum", "momentum_wd", "adam")
LANGEVIN_ARMS = ("langevin", "tutorial", "sghmc", "annealed")
# noiseless twins (final runs only): the partner Langevin arm's selected lr and seeds with
# temperature 0, i.e. the same update rule without the noise. twin -> (partner, its baseline)
TWINS = {"langevin_twin": ("langevin", "sgd"), "sghmc_twin": ("sghmc", "momentum")}
RUN_ARMS = ARMS + tuple(TWINS)      # every arm a run record may carry
# arms whose final records also hold the trajectory average of test predictions
AVERAGED_ARMS = LANGEVIN_ARMS + tuple(TWINS)
CALIBRATION_BINS = 15
TRAJECTORY_SAMPLES = 10   # thinning = steps_per_epoch // TRAJECTORY_SAMPLES over the last epoch
# the second hyperparameter each arm reads (all arms read lr)
ARM_KNOBS = {"momentum_wd": "weight_decay", "langevin": "temperature_n", "tutorial": "noise_std",
             "sghmc": "temperature_n", "annealed": "eta"}
NOISE_SEED_OFFSET = 1_000_003
SPIKE_FACTOR = 2.0      # a step loss above SPIKE_FACTOR x the running median is a spike
SPIKE_WINDOW = 50


@dataclass(frozen=True)
class RunSpec:
    """Everything that determines a run; ``key`` identifies it in the results file."""

    problem: str
    arm: str
    hparams: tuple           # sorted (name, value) pairs
    seed: int
    epochs: int
    phase: str               # "tune" | "grid" | "final"
    n_train: int | None = None
    n_val: int | None = None
    n_test: int | None = None
    batch_size: int = 128
    evals_per_epoch: int = 1
    threads: int = 1
    extra: dict = field(default_factory=dict, compare=False, hash=False)

    def __post_init__(self) -> None:
        """A spec whose record ``executors.append_record`` would refuse fails here, before
        its run (one-line ValueError naming the field and value)."""
        def bad(name: str, rule: str):
            raise ValueError(f"RunSpec: invalid {name} {getattr(self, name)!r} ({rule})")

        if not isinstance(self.problem, str) or not self.problem:
            bad("problem", "a non-empty string")
        if self.arm not in RUN_ARMS:
            bad("arm", f"choose from {', '.join(RUN_ARMS)}")
        if self.phase not in ("tune", "grid", "final"):
            bad("phase", "choose from tune, grid, final")
        if self.arm in TWINS and self.phase != "final":
            bad("phase", f"arm {self.arm} runs in the final phase only")
        for name, lo in (("seed", 0), ("epochs", 1), ("batch_size", 1), ("evals_per_epoch", 1),
                         ("threads", 1)):
            v = getattr(self, name)
            if not isinstance(v, int) or isinstance(v, bool) or v < lo:
                bad(name, f"an integer >= {lo}")
        for name in ("n_train", "n_val", "n_test"):
            v = getattr(self, name)
            if v is not None and (not isinstance(v, int) or isinstance(v, bool) or v < 1):
                bad(name, "an integer >= 1 or None")
        pairs = self.hparams
        if not isinstance(pairs, tuple) or not all(
                isinstance(p, tuple) and len(p) == 2 and isinstance(p[0], str)
                and isinstance(p[1], (int, float)) and not isinstance(p[1], bool)
                and math.isfinite(p[1]) for p in pairs):
            bad("hparams", "hp(name=finite number, ...)")
        if not dict(pairs).get("lr", 0) > 0:
            bad("hparams", "needs lr > 0")

    @property
    def key(self) -> str:
        d = asdict(self)
        d.pop("extra")
        d["hparams"] = dict(self.hparams)
        return json.dumps(d, sort_keys=True)


def hp(**kwargs) -> tuple:
    """Hyperparameters as the sorted tuple a RunSpec stores."""
    return tuple(sorted(kwargs.items()))


def make_optimizer(arm: str, params, hparams: dict, n_train: int, seed: int):
    """Arm name + hyperparameters -> optimizer. Temperatures of the Langevin arms are given as
    ``temperature_n = D * N`` (D = 1/N is the posterior temperature of a mean loss)."""
    for name in ("lr", ARM_KNOBS.get(arm)):
        if name is not None and name not in hparams:
            raise ValueError(f"optimizer arm {arm!r} needs the hyperparameter {name!r} "
                             f"(got {sorted(hparams)})")
    lr = hparams["lr"]
    noise_seed = seed + NOISE_SEED_OFFSET
    if arm == "sgd":
        return torch.optim.SGD(params, lr=lr, foreach=True)
    if arm == "momentum":
        return torch.optim.SGD(params, lr=lr, momentum=0.9, foreach=True)
    if arm == "momentum_wd":
        return torch.optim.SGD(params, lr=lr, momentum=0.9, weight_decay=hparams["weight_decay"],
                               foreach=True)
    if arm == "adam":
        return torch.optim.Adam(params, lr=lr, foreach=True)
    if arm == "langevin":
        return Langevin(params, lr=lr, temperature=hparams["temperature_n"] / n_train,
                        noise="langevin", seed=noise_seed)
    if arm == "tutorial":
        return Langevin(params, lr=lr, temperature=hparams["noise_std"], noise="constant",
                        seed=noise_seed)
    if arm == "sghmc":
        return Langevin(params, lr=lr, temperature=hparams["temperature_n"] / n_train,
                        noise="langevin", momentum=0.9, seed=noise_seed)
    if arm == "annealed":
        return Langevin(params, lr=lr, temperature=hparams["eta"], noise="annealed",
                        gamma=0.55, seed=noise_seed)
    if arm == "langevin_twin":
        return Langevin(params, lr=lr, temperature=0.0, noise="langevin", seed=noise_seed)
    if arm == "sghmc_twin":
        return Langevin(params, lr=lr, temperature=0.0, noise="langevin", momentum=0.9,
                        seed=noise_seed)
    raise ValueError(f"unknown optimizer arm {arm!r} (choose from {', '.join(ARMS)})")


def environment(threads: int) -> dict:
    cpu = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    cpu = line.split(":", 1)[1].strip()
                    break
    except OSError:
        pass
    return {"torch": torch.__version__, "python": platform.python_version(), "cpu": cpu,
            "threads": threads, "host_cpus": os.cpu_count(),
            "noise_kernel": "compiled" if kernel_available() else "numpy"}


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


class _Chunked(torch.nn.Module):
    """``model`` applied in chunks of ``batch`` rows (bounded memory on the whole test set)."""

    def __init__(self, model, batch: int = 1000):
        super().__init__()
        self.model, self.batch = model, batch

    def forward(self, x):
        return torch.cat([self.model(x[i:i + self.batch]) for i in range(0, x.shape[0], self.batch)])


def calibration_metrics(probs: torch.Tensor, labels: torch.Tensor) -> dict | None:
    """Test NLL, Brier and ECE (``CALIBRATION_BINS`` bins) of class probabilities; None if any
    probability is not finite (a diverged model)."""
    if not torch.isfinite(probs).all():
        return None
    out = {"nll": calibration.nll(probs, labels), "brier": calibration.brier(probs, labels),
           "ece": calibration.ece(probs, labels, bins=CALIBRATION_BINS)}
    return out if all(math.isfinite(v) for v in out.values()) else None


def trajectory_schedule(epochs: int, steps_per_epoch: int) -> SamplingSchedule:
    """The iterates averaged for ``calibration.average``: the last epoch's steps, thinned to
    about ``TRAJECTORY_SAMPLES`` (0-based global steps burn_in + thinning - 1, ...)."""
    return SamplingSchedule(burn_in=(epochs - 1) * steps_per_epoch,
                            thinning=max(1, steps_per_epoch // TRAJECTORY_SAMPLES))


def run_one(spec: RunSpec, data_dir: str | None = None, on_step=None) -> dict:
    """Train one model as described by ``spec`` and return its record.

    Final runs also get ``record["calibration"]``: ``{"bins": 15, "final": {nll, brier, ece}
    or null, "average": ...}`` with the test NLL / Brier / ECE of the final iterate and, for
    ``AVERAGED_ARMS``, ``"average"``: the same metrics of the mean of the test softmax
    probabilities over the iterates ``trajectory_schedule`` selects (``PredictiveAverage``),
    plus ``samples``, ``thinning`` and ``from_step``; metrics are null after a divergence.
    ``on_step(model, step)`` (tests) is called after every optimizer step."""
    if torch.get_num_threads() != spec.threads:
        torch.set_num_threads(spec.threads)
    started = time.time()
    problem: Problem = load_problem(spec.problem, None if data_dir is None else str(data_dir),
                                   spec.n_train, spec.n_val, spec.n_test)
    hparams = dict(spec.hparams)
    model = problem.make_model(spec.seed)
    n_params = sum(p.numel() for p in model.parameters())
    opt = make_optimizer(spec.arm, model.parameters(), hparams, problem.n_train, spec.seed)
    order = torch.Generator().manual_seed(spec.seed)
    n, bs = problem.n_train, spec.batch_size
    steps_per_epoch = math.ceil(n / bs)
    eval_every = max(1, math.ceil(steps_per_epoch / spec.evals_per_epoch))
    final_phase = spec.phase == "final"
    n_train_eval = min(n, problem.val_x.shape[0])   # train accuracy on a fixed train subset

    curve = {k: [] for k in ("epoch", "val_loss", "val_acc", "train_loss")}
    if final_phase:
        curve.update(test_loss=[], test_acc=[], train_eval_loss=[], train_eval_acc=[])
    train_seconds, train_clock = [], 0.0
    initial_loss, _ = evaluate(model, problem.train_x[:n_train_eval], problem.train_y[:n_train_eval])
    recent = deque(maxlen=SPIKE_WINDOW)
    spikes, diverged, last_epoch_losses, running = 0, False, [], []
    averager = None
    if final_phase and spec.arm in AVERAGED_ARMS:
        averager = PredictiveAverage(_Chunked(model), problem.test_x,
                                     trajectory_schedule(spec.epochs, steps_per_epoch))
    global_step = 0

    def record_eval(epoch_pos: float) -> None:
        curve["epoch"].append(round(epoch_pos, 6))
        curve["train_loss"].append(sum(running) / len(running) if running else None)
        running.clear()
        for split, x, y in (("val", problem.val_x, problem.val_y),
                            ("test", problem.test_x, problem.test_y),
                            ("train_eval", problem.train_x[:n_train_eval],
                             problem.train_y[:n_train_eval])):
            if split != "val" and not final_phase:
                continue
            if diverged:
                loss, acc = float("nan"), 1.0 / problem.num_classes
            else:
                loss, acc = evaluate(model, x, y)
            curve[f"{split}_loss"].append(_finite(loss))
            curve[f"{split}_acc"].append(acc)
        train_seconds.append(train_clock)

    for epoch in range(spec.epochs):
        perm = torch.randperm(n, generator=order)
        last_epoch_losses = []
        for k in range(steps_per_epoch):
            t0 = time.perf_counter()
            value = train_batch(model, opt, problem, perm[k * bs:(k + 1) * bs])
            train_clock += time.perf_counter() - t0
            if not math.isfinite(value) or not all(torch.isfinite(p).all()
                                                   for p in model.parameters()):
                diverged = True
                break
            if len(recent) == SPIKE_WINDOW and value > SPIKE_FACTOR * sorted(recent)[len(recent) // 2]:
                spikes += 1
            if averager is not None:
                averager.step()
            if on_step is not None:
                on_step(model, global_step)
            global_step += 1
            recent.append(value)
            running.append(value)
            last_epoch_losses.append(value)
            if (k + 1) % eval_every == 0 or k + 1 == steps_per_epoch:
                record_eval(epoch + (k + 1) / steps_per_epoch)
        if diverged:
            # fill the remaining evaluation points at chance level so curves keep their length
            done = len(curve["epoch"])
            total = spec.epochs * math.ceil(steps_per_epoch / eval_every)
            for j in range(done, total):
                record_eval(spec.epochs * (j + 1) / total)
            break

    m = len(last_epoch_losses)
    mean_last = sum(last_epoch_losses) / m if m else float("nan")
    osc = math.sqrt(sum((v - mean_last) ** 2 for v in last_epoch_losses) / (m - 1)) if m > 1 else None
    extra = {}
    if final_phase:
        cal: dict = {"bins": CALIBRATION_BINS, "final": None}
        if not diverged:
            with torch.no_grad():
                model.eval()
                probs = _Chunked(model)(problem.test_x).softmax(-1)
                model.train()
            cal["final"] = calibration_metrics(probs, problem.test_y)
        if averager is not None:
            sched = averager.schedule
            ok = not diverged and averager.count > 0
            cal["average"] = {"samples": averager.count, "thinning": sched.thinning,
                              "from_step": sched.burn_in,
                              "metrics": calibration_metrics(averager.mean, problem.test_y)
                              if ok else None}
        extra["calibration"] = cal
    return {
        "key": spec.key, "problem": spec.problem, "arm": spec.arm, "hparams": hparams,
        "seed": spec.seed, "phase": spec.phase, "epochs": spec.epochs, "n_train": problem.n_train,
        "n_val": problem.val_x.shape[0], "n_test": problem.test_x.shape[0],
        "batch_size": bs, "n_params": n_params, "env": environment(spec.threads),
        "initial_loss": initial_loss, "diverged": diverged, "spikes": spikes,
        "last_epoch_loss_std": osc, "curve": curve, **extra,
        "timing": {"train_seconds": train_seconds, "wall_seconds": time.time() - started,
                   "started": started, "finished": time.time()},
    }

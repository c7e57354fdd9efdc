"""Progress of the long phases (training, drawing samples, scoring): a tqdm bar on a terminal, a
plain line every few percent elsewhere (a log file, CI), so progress stays visible when output
goes to a file."""
from __future__ import annotations

import sys

from tqdm import tqdm


class Progress:
    """Progress of a phase that stops after ``steps`` steps (or items) or ``seconds``, whichever
    comes first (either may be None); ``label`` and ``unit`` name the phase and what it counts."""

    def __init__(self, steps: int | None, seconds: float | None, step: int = 0, stream=None,
                 every_percent: int = 5, label: str = "train", unit: str = "step"):
        self.steps, self.seconds, self.stream = steps, seconds, stream or sys.stderr
        self.every, self.label, self.unit = every_percent, label, unit
        self.terminal = hasattr(self.stream, "isatty") and self.stream.isatty()
        self.bar = tqdm(total=steps, initial=step, unit=unit, desc=label, dynamic_ncols=True,
                        mininterval=1.0, file=self.stream) if self.terminal else None
        self.last_percent = None

    def fraction(self, step: int, train_seconds: float) -> float:
        parts = [step / self.steps if self.steps else 0.0,
                 train_seconds / self.seconds if self.seconds else 0.0]
        return min(1.0, max(parts))

    def update(self, step: int, train_seconds: float, **values) -> None:
        """Report that ``step`` steps (items) took ``train_seconds``; ``values`` are shown beside
        it."""
        if self.bar is not None:
            self.bar.update(step - self.bar.n)
            if values:
                self.bar.set_postfix(values, refresh=False)
            return
        percent = int(100 * self.fraction(step, train_seconds)) // self.every * self.every
        if self.last_percent is None or percent > self.last_percent:
            self.last_percent = percent
            shown = " ".join(f"{k} {v}" for k, v in values.items())
            print(f"{self.label}: {percent:3d}% {self.unit} {step} {train_seconds / 60:.1f} min "
                  f"{shown}".rstrip(), file=self.stream, flush=True)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()

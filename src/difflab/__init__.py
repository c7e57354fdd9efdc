"""difflab: diffusion in deep learning, on a laptop CPU.

Two halves that share the Langevin SDE dx = drift dt + sqrt(2D) dW: diffusion generative models
(forward process, denoisers, training, samplers, metrics) and Langevin optimizers with an honest
benchmark harness (``difflab.optim``, ``difflab.bench``).
"""
__version__ = "0.1.0"


def __getattr__(name: str):
    """``difflab.load(RUN)`` and ``difflab.Model``, imported on first use (``difflab.runs``)."""
    if name in ("load", "Model"):
        from difflab import runs

        return getattr(runs, name)
    raise AttributeError(f"module 'difflab' has no attribute {name!r}")

"""difflab: diffusion in deep learning, on a laptop CPU.

Two halves that share the Langevin SDE dx = drift dt + sqrt(2D) dW: diffusion generative models
(forward process, denoisers, training, samplers, metrics) and Langevin optimizers with an honest
benchmark harness (``difflab.optim``, ``difflab.bench``).
"""
__version__ = "0.1.0"

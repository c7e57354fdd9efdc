"""Training-free image restoration with a trained diffusion model: linear measurement operators
(``operators``), posterior samplers over any denoiser (``solvers``: DDNM/DDNM+, DDRM, PiGDM,
RePaint, SDEdit; ``restore_mean`` averages draws into a posterior-mean estimate) and an exact
Gaussian oracle (``gaussian``)."""
from difflab.restoration.gaussian import GaussianPrior, operator_matrix
from difflab.restoration.operators import (Blur, Downsample, Grayscale, Identity, Inpainting,
                                           LinearOperator)
from difflab.restoration.solvers import (SOLVERS, get_solver, repaint_path, restore_ddnm,
                                         restore_ddrm, restore_mean, restore_pigdm,
                                         restore_repaint, restore_sdedit)

__all__ = ["Blur", "Downsample", "GaussianPrior", "Grayscale", "Identity", "Inpainting",
           "LinearOperator", "SOLVERS", "get_solver", "operator_matrix", "repaint_path",
           "restore_ddnm", "restore_ddrm", "restore_mean", "restore_pigdm", "restore_repaint",
           "restore_sdedit"]
